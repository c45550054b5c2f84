"""edgellm as a user installs it: a wheel made by `python -m build`, installed (not editable) into a
fresh virtualenv, run from an empty folder outside the repository, finds its shipped specs,
recipes, calibration text and demo model."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

SHIPPED = ["edgellm/data/model_specs/stories260k.yaml", "edgellm/data/model_specs/_hf-llama.yaml", "edgellm/data/recipes/int4.yaml",
           "edgellm/data/recipes/calibration.txt", "edgellm/data/demo/stories260K/model.safetensors", "edgellm/data/demo/stories260K/tokenizer.model"]


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools) comes from this environment, not from the network.
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO))
    (found,) = dist.glob("edgellm-*.whl")
    return found


def test_the_wheel_carries_the_shipped_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names, sorted(set(SHIPPED) - names)
    assert not any(name.startswith(("tests/", "bench/", "scripts/")) for name in names)


@pytest.mark.slow
def test_a_non_editable_install_builds_and_runs_the_demo_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    # The libraries edgellm needs come from this environment's site-packages (added to sys.path as a
    # plain folder, so the editable install's import hook there is not loaded); edgellm itself only
    # from the wheel.
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel))
    located = run(str(python), "-c", "import edgellm.infra.resources as r; print(r.data_path('model_specs'))").stdout.strip()
    assert Path(located).is_relative_to(venv), located

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    edgellm = str(venv / "bin" / "edgellm")
    run(edgellm, "build", "--spec", "stories260k", "-o", "out", cwd=empty, env=env)
    generated = run(edgellm, "run", "out/model.tflite", "--max-tokens", "20", "--json", cwd=empty, env=env)
    assert generated.stdout.count('"tokens"') == 1 and "Once upon a time" in generated.stdout
    assert sorted(p.name for p in empty.iterdir()) == ["out"]
