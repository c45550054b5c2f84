"""What ships inside the package: model specs, quantization recipes, calibration text and the demo
model, under `edgellm/data/`. Found through importlib.resources, so an installed wheel finds them
as a source checkout does."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_path(*parts: str) -> Path:
    """A shipped file or folder as a filesystem path (the package is installed as plain files)."""
    return Path(str(files("edgellm").joinpath("data", *parts)))
