"""Every bad input: a one-line error naming the problem, a non-zero exit, nothing left in the cache."""

import pytest
import torch
from conftest import SPECS, cache_files, run_cli
from safetensors.torch import load_file, save_file

STORIES = str(SPECS / "stories260k.yaml")


def assert_clean_failure(result, cache, *needles, code=2):
    assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert cache_files(cache) == []


def write_spec(tmp_path, body: str, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(f"extends: {SPECS / '_hf-llama.yaml'}\nname: bad\nsource:\n  path: {SPECS.parent / 'demo' / 'stories260K'}\n" + body)
    return str(path)


def resave(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_unknown_spec_key(tmp_path, cache):
    spec = write_spec(tmp_path, "export:\n  prefill_lenghts: [8]\n")
    assert_clean_failure(run_cli("build", "--spec", spec, cache=cache), cache, "bad.yaml", "export.prefill_lenghts", "unknown key")


def test_unknown_architecture_key(tmp_path, cache):
    spec = write_spec(tmp_path, "architecture:\n  num_layerz: 3\n")
    assert_clean_failure(run_cli("build", "--spec", spec, cache=cache), cache, "bad.yaml", "num_layerz")


def test_wrong_type_in_spec(tmp_path, cache):
    spec = write_spec(tmp_path, "export:\n  kv_cache_length: lots\n")
    assert_clean_failure(run_cli("build", "--spec", spec, cache=cache), cache, "bad.yaml", "export.kv_cache_length")


def test_missing_required_field(tmp_path, cache):
    path = tmp_path / "noname.yaml"
    path.write_text("source:\n  path: .\nweights: {}\n")
    assert_clean_failure(run_cli("build", "--spec", str(path), cache=cache), cache, "noname.yaml", "name", "missing")


def test_invalid_yaml(tmp_path, cache):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    assert_clean_failure(run_cli("build", "--spec", str(path), cache=cache), cache, "broken.yaml", "not valid YAML")


def test_missing_checkpoint_folder(tmp_path, cache):
    missing = tmp_path / "nowhere"
    assert_clean_failure(run_cli("build", "--spec", STORIES, "--checkpoint", str(missing), cache=cache), cache, str(missing), "does not exist")


def test_missing_tensor(demo_copy, cache):
    resave(demo_copy, lambda t: t.pop("model.layers.3.mlp.up_proj.weight"))
    result = run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache)
    assert_clean_failure(result, cache, "model.layers.3.mlp.up_proj.weight", "missing")


def test_shape_mismatch_names_tensor_and_both_shapes(demo_copy, cache):
    resave(demo_copy, lambda t: t.update({"model.layers.2.self_attn.k_proj.weight": torch.zeros(16, 64)}))
    result = run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache)
    assert_clean_failure(result, cache, "model.layers.2.self_attn.k_proj.weight", "[16, 64]", "[32, 64]")


def test_unexpected_tensor(demo_copy, cache):
    resave(demo_copy, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}))
    result = run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache)
    assert_clean_failure(result, cache, "model.layers.0.self_attn.q_norm.weight", "ignore_tensors")


@pytest.mark.parametrize("keep_bytes", [100, 600_000])
def test_truncated_safetensors(demo_copy, cache, keep_bytes):
    weights = demo_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep_bytes])
    result = run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache)
    assert_clean_failure(result, cache, "model.safetensors", "truncated")


def test_mapping_that_loads_but_is_wrong_fails_verification(tmp_path, cache):
    # gate and up swapped: every shape fits, so only the logits can catch it.
    spec = write_spec(
        tmp_path,
        "weights:\n"
        "  blocks.{layer}.mlp.gate.weight: model.layers.{layer}.mlp.up_proj.weight\n"
        "  blocks.{layer}.mlp.up.weight: model.layers.{layer}.mlp.gate_proj.weight\n",
    )
    result = run_cli("verify", "--spec", spec, cache=cache)
    assert result.code == 3, result.stderr
    assert "reauthored_vs_transformers" in result.stderr and "top-1 agreement" in result.stderr
    assert not (cache / "verify").exists()


def test_unknown_command_option_is_a_usage_error(cache):
    result = run_cli("build", "--spec", STORIES, "--no-such-flag", cache=cache)
    assert result.code == 2 and "No such option" in result.stderr
