"""CLI behaviour that does not need a model: instant help, spec checks, cache commands."""

import json
import subprocess
import sys

import pytest
from conftest import SPECS, run_cli


def test_help_does_not_import_torch():
    code = "import sys; from edgellm.cli import cli; print(sorted(m for m in ('torch', 'transformers', 'litert_torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_commands_and_examples(cache):
    result = run_cli("--help", cache=cache)
    assert result.code == 0
    for word in ("build", "fetch", "verify", "convert", "run", "Examples:"):
        assert word in result.stdout


def test_spec_check_reports_each_file(cache):
    result = run_cli("spec", "check", str(SPECS / "stories260k.yaml"), str(SPECS / "llama-3.2-1b.yaml"), cache=cache)
    assert result.code == 0 and result.stdout.count("ok ") == 2


def test_cache_path_and_clear(cache):
    (cache / "convert" / "k").mkdir(parents=True)
    (cache / "convert" / "k" / "model.tflite").write_bytes(b"x" * 1_500_000)
    assert run_cli("cache", "path", cache=cache).stdout.strip() == str(cache)
    assert "freed 1.5 MB" in run_cli("cache", "clear", cache=cache).stdout
    assert not cache.exists()


@pytest.mark.parametrize(
    "override, field",
    [("norm_eps: lots", "norm_eps"), ("sliding_window: -3", "sliding_window"), ("num_heads: 0", "num_heads"),
     ("layer_types: [full_attention, bogus]", "layer_types[1]"), ("num_heads: 6\n  num_kv_heads: 4", "num_kv_heads")],
)
def test_spec_check_refuses_a_bad_architecture_value_in_one_line(tmp_path, cache, override, field):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"extends: {SPECS / 'stories260k.yaml'}\narchitecture:\n  {override}\n")
    result = run_cli("spec", "check", str(spec), cache=cache)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "bad.yaml" in lines[0] and field in lines[0], result.stderr


def test_spec_check_takes_family_files_and_every_shipped_spec(cache):
    result = run_cli("spec", "check", *sorted(str(p) for p in SPECS.glob("*.yaml")), cache=cache)
    assert result.code == 0, result.stderr
    assert "(family file)" in result.stdout and "(stories260k)" in result.stdout


def test_spec_init_without_bos_in_config_takes_it_from_the_tokenizer(demo_copy, tmp_path, cache):
    config = json.loads((demo_copy / "config.json").read_text())
    del config["bos_token_id"]
    (demo_copy / "config.json").write_text(json.dumps(config))
    (demo_copy / "generation_config.json").unlink()
    assert run_cli("spec", "init", "--from", str(demo_copy), "-o", str(tmp_path / "draft.yaml"), cache=cache).code == 0
    assert "add_bos: true" in (tmp_path / "draft.yaml").read_text()
    fetched = run_cli("fetch", "--spec", str(tmp_path / "draft.yaml"), "--json", cache=cache)
    assert fetched.code == 0, fetched.stderr
    assert json.loads(fetched.stdout)["stages"][0]["prompt"]["bos_id"] == 1  # tokenizer.model's BOS


def test_spec_list_names_the_shipped_specs_that_build_takes(tmp_path):
    result = run_cli("spec", "list", "--json", cache=tmp_path / "cache")
    assert result.code == 0, result.stderr
    listed = {row["name"]: row["source"] for row in json.loads(result.stdout)}
    assert listed["stories260k"] == "embedded: stories260K" and listed["smollm2-135m"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not any(name.startswith("_") for name in listed)  # family files are not models
