"""The stage table and its cache keys: keys follow edgellm's code and its libraries, every stage
is declared once, and stories260K's stages compose the way `build` runs them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SPECS

from edgellm.bundle import formats
from edgellm.infra import cache
from edgellm.infra.cache import ArtifactCache, artifact_key, code_digest, package_digest
from edgellm.pipeline.stages import STAGES, Pipeline
from edgellm.quantize.recipes import load_recipe
from edgellm.spec.load import load_spec

PACKAGE = REPO / "src" / "edgellm"

KEY_OF = """
import sys
from pathlib import Path
from edgellm.infra.cache import ArtifactCache
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.load import load_spec
print(Pipeline(load_spec(sys.argv[1]), cache=ArtifactCache(Path(sys.argv[2]))).key(sys.argv[3]))
"""


def key_with_package(package: Path, stage: str, cache_dir: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    done = subprocess.run([sys.executable, "-c", KEY_OF, str(SPECS / "stories260k.yaml"), str(cache_dir), stage],
                          check=True, capture_output=True, text=True, env=env, timeout=300)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_editing_a_layer_changes_the_convert_key(tmp_path):
    original, changed = tmp_path / "a" / "edgellm", tmp_path / "b" / "edgellm"
    for copy in (original, changed):
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (changed / "layers" / "attention.py").open("a") as f:
        f.write("\n# an edit\n")
    first = key_with_package(original, "convert", tmp_path / "cache")
    assert first == key_with_package(original, "convert", tmp_path / "cache")  # stable for the same code
    assert key_with_package(changed, "convert", tmp_path / "cache") != first


@pytest.mark.parametrize("edited", sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "layers").glob("*.py")))
def test_every_layer_file_is_in_the_code_digest(tmp_path, edited):
    copy = tmp_path / "edgellm"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = package_digest(copy)
    (copy / edited).write_text((copy / edited).read_text().replace("\n", "\n\n", 1))
    assert package_digest(copy) != before and package_digest(PACKAGE) == code_digest()


def test_library_versions_enter_the_key(monkeypatch):
    before = artifact_key("quantize", {"model": "k"}, ("ai-edge-quantizer",))
    monkeypatch.setattr(cache, "library_versions", lambda names: dict.fromkeys(names, "99.0"))
    assert artifact_key("quantize", {"model": "k"}, ("ai-edge-quantizer",)) != before


def test_every_stage_needs_only_declared_stages_and_bundles_follow_the_registry(tmp_path):
    assert {f"bundle-{name}" for name in formats.FORMATS} <= set(STAGES)
    spec_build = Pipeline(load_spec(SPECS / "stories260k.yaml"), recipe=load_recipe("int8-dynamic"), formats=("litertlm", "task"),
                          output=tmp_path / "out", cache=ArtifactCache(tmp_path / "cache"))
    model_file = tmp_path / "m.tflite"
    model_file.write_bytes(b"x")
    file_build = Pipeline(model=model_file, recipe=load_recipe("int8-dynamic"), formats=("task",))
    for pipeline in (spec_build, file_build):
        for stage in STAGES.values():
            if pipeline.spec is not None or "convert" not in stage.needs(pipeline):
                assert set(stage.needs(pipeline)) <= set(STAGES)
    assert spec_build.build_stages() == ["fetch", "verify", "convert", "verify-tflite", "quantize", "bundle-litertlm", "bundle-task", "export"]
    assert (spec_build.model_stage, spec_build.final_stage) == ("convert", "quantize")
    assert (file_build.model_stage, file_build.final_stage) == ("model-file", "quantize")


def test_a_change_downstream_keeps_the_upstream_keys(tmp_path):
    cache_dir = ArtifactCache(tmp_path / "cache")
    spec = load_spec(SPECS / "stories260k.yaml")
    looser = spec.model_copy(update={"verify": spec.verify.model_copy(update={"max_abs_logit_diff": 1e-2})})
    first, second = Pipeline(spec, cache=cache_dir), Pipeline(looser, cache=cache_dir)
    assert first.key("convert") == second.key("convert")  # the model does not depend on verify limits
    assert first.key("verify") != second.key("verify")


def test_every_stage_report_reads_back_what_it_writes():
    """report.json leaves out fields a stage did not fill (None): each such field must default to None,
    or a cached stage could not be read back."""
    for name, stage in STAGES.items():
        for field, info in stage.report.model_fields.items():
            if type(None) in getattr(info.annotation, "__args__", ()) or info.annotation is None:
                assert not info.is_required(), f"{name}: {stage.report.__name__}.{field} may be None, so it needs a default"
