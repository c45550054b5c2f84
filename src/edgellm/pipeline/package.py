"""The stages that hand a model over: a bundle per format, and export of the build's outputs into
the user's folder. Plain functions from typed inputs to typed reports."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edgellm.bundle.inputs import BundleInputs, BundleReport
from edgellm.infra.files import publish
from edgellm.infra.reports import StageReport
from edgellm.tflite.metadata import MODEL_FILE, ModelMetadata


class ExportReport(StageReport):
    path: str = Field(exclude=True)  # the user's folder (the stage is not cached)
    outputs: list[str]

    def summary(self) -> str:
        return f"{len(self.outputs)} files in {self.path}"


def bundle(model: Path, tokenizer: Path, metadata: ModelMetadata, fmt: str, folder: Path) -> BundleReport:
    from edgellm.bundle.formats import write_bundle

    out = folder / f"model.{fmt}"
    report = write_bundle(BundleInputs(model, tokenizer, metadata), fmt, out)
    return report.model_copy(update={"file": out.name, "size_bytes": out.stat().st_size})


def export(model: Path, tokenizer: Path, metadata: ModelMetadata, bundles: dict[str, Path], name: str, out: Path) -> ExportReport:
    """The build's outputs in the user's folder: model, tokenizer, edgellm.json and bundles."""
    outputs = [publish(model, out / MODEL_FILE), publish(tokenizer, out / tokenizer.name), metadata.write(out)]
    outputs += [publish(path, out / f"{name}.{fmt}") for fmt, path in bundles.items()]
    return ExportReport(path=str(out), outputs=[str(o) for o in outputs])
