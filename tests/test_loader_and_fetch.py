"""Checkpoint formats (single, sharded, .bin) and the fetch stage (local folder, local hub cache)."""

import json
import shutil

import pytest
import torch
from conftest import DEMO, SPECS, cache_files, run_cli
from safetensors.torch import load_file
from tiny_models import make_tiny_checkpoint

from edgellm.checkpoint.loader import Checkpoint, plan_weights
from edgellm.checkpoint.locate import locate_checkpoint
from edgellm.errors import EdgeLLMError
from edgellm.infra.cache import ArtifactCache
from edgellm.kinds import KINDS
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.hf_config import resolve_architecture
from edgellm.spec.load import load_spec

TINYLLAMA = SPECS / "tinyllama-1.1b.yaml"
DECODER = KINDS["decoder"]


def as_pytorch_bin(folder):
    """transformers 5 saves only safetensors; older checkpoints ship the same tensors pickled."""
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_checkpoint_formats_load_and_verify(tmp_path, layout):
    folder = make_tiny_checkpoint("tinyllama-1.1b", tmp_path / "ckpt", "tokenizer.model", max_shard_size="100KB" if layout == "sharded" else None)
    if layout == "bin":
        as_pytorch_bin(folder)
    checkpoint = Checkpoint.open(folder)
    if layout == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and len(checkpoint.files()) > 1
    else:
        assert checkpoint.files() == ["pytorch_model.bin"]
    pipeline = Pipeline(load_spec(TINYLLAMA), checkpoint=folder, cache=ArtifactCache(tmp_path / "cache"))
    metrics = pipeline.result("verify").report.comparisons["reauthored_vs_transformers"]
    assert metrics.top1_agreement == 1.0 and metrics.max_abs_logit_diff <= 1e-4


def test_folder_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(EdgeLLMError, match="no weights found"):
        Checkpoint.open(tmp_path)


def lay_out_hub_cache(hub_cache, repo_id, revision_name, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub itself writes: blobs, snapshots/<commit>/, refs/<revision>."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(DEMO, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision_name).write_text(commit)
    return snapshot


def hub_spec(tmp_path, repo_id="karpathy/stories260K", revision="main"):
    path = tmp_path / "hub.yaml"
    path.write_text(
        f"extends: {SPECS / 'stories260k.yaml'}\nname: hub-stories\nsource:\n  hub:\n    repo_id: {repo_id}\n    revision: {revision}\n"
    )
    return str(path)


def test_fetch_from_local_hub_cache_offline(tmp_path, cache):
    hub_cache = tmp_path / "hub"
    snapshot = lay_out_hub_cache(hub_cache, "karpathy/stories260K", "main")
    result = run_cli("fetch", "--spec", hub_spec(tmp_path), "--json", cache=cache, env={"HF_HUB_CACHE": str(hub_cache)})
    assert result.code == 0, result.stderr
    fetched = json.loads(result.stdout)["stages"][0]
    assert fetched["checkpoint_dir"] == str(snapshot)
    assert fetched["architecture"]["num_layers"] == 5


@pytest.mark.parametrize("repo_id, revision", [("nobody/nothing", "main"), ("karpathy/stories260K", "v2")])
def test_fetch_of_what_the_offline_hub_cache_lacks_says_what_to_do(tmp_path, cache, repo_id, revision):
    hub_cache = tmp_path / "hub"
    lay_out_hub_cache(hub_cache, "karpathy/stories260K", "main")
    result = run_cli("fetch", "--spec", hub_spec(tmp_path, repo_id, revision), cache=cache, env={"HF_HUB_CACHE": str(hub_cache)})
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and f"{repo_id}@{revision}" in result.stderr and "--checkpoint" in result.stderr
    assert cache_files(cache) == []


def test_hub_source_and_local_override(tmp_path):
    spec = load_spec(hub_spec(tmp_path))
    assert spec.source.path is None and spec.source.hub.repo_id == "karpathy/stories260K"
    assert locate_checkpoint(spec, checkpoint=DEMO) == DEMO


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory):
    return make_tiny_checkpoint("phi-3-mini", tmp_path_factory.mktemp("phi3") / "ckpt", "tokenizer.model")


def phi3_spec_with(tmp_path, body):
    path = tmp_path / "fused.yaml"
    path.write_text(f"extends: {SPECS / 'phi-3-mini.yaml'}\n{body}")
    return load_spec(path)


def test_fused_tensor_parts_are_sliced_by_our_shapes(tiny_phi3):
    spec = load_spec(SPECS / "phi-3-mini.yaml")
    arch = resolve_architecture(spec, tiny_phi3)
    plan = plan_weights(spec, arch, Checkpoint.open(tiny_phi3), DECODER.build)
    q, k, v = (plan[f"blocks.0.attn.{n}.weight"] for n in "qkv")
    assert (q.start, q.stop, k.start, k.stop, v.start, v.stop) == (0, 64, 64, 96, 96, 128)  # 4 q heads, 2 kv heads of 16
    assert plan["blocks.1.mlp.up.weight"].start == 96


def test_fused_parts_must_be_numbered_from_zero(tmp_path, tiny_phi3):
    spec = phi3_spec_with(tmp_path, 'weights:\n  blocks.{layer}.attn.v.weight: {from: "model.layers.{layer}.self_attn.qkv_proj.weight", part: 3}\n')
    with pytest.raises(EdgeLLMError, match=r"parts of model.layers.0.self_attn.qkv_proj.weight .* numbered 0..2"):
        plan_weights(spec, resolve_architecture(spec, tiny_phi3), Checkpoint.open(tiny_phi3), DECODER.build)


def test_fused_tensor_shape_mismatch_names_all_parts(tmp_path, tiny_phi3):
    spec = phi3_spec_with(tmp_path, "architecture:\n  num_kv_heads: 4\n")
    with pytest.raises(EdgeLLMError, match=r"qkv_proj.weight has shape \[128, 64\] but blocks.0.attn.q.weight, blocks.0.attn.k.weight, blocks.0.attn.v.weight need \[192, 64\]"):
        plan_weights(spec, resolve_architecture(spec, tiny_phi3), Checkpoint.open(tiny_phi3), DECODER.build)


def test_transposed_tensor_rule(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(DEMO, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"] = tensors["model.layers.0.mlp.down_proj.weight"].t().contiguous()
    from safetensors.torch import save_file

    (folder / "model.safetensors").chmod(0o644)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    path = tmp_path / "t.yaml"
    path.write_text(f"extends: {SPECS / 'stories260k.yaml'}\nweights:\n  blocks.0.mlp.down.weight: {{from: model.layers.0.mlp.down_proj.weight, transpose: true}}\n")
    spec = load_spec(path)
    plan = plan_weights(spec, resolve_architecture(spec, folder), Checkpoint.open(folder), DECODER.build)
    assert plan["blocks.0.mlp.down.weight"].transpose
    assert tuple(plan["blocks.0.mlp.down.weight"].read(Checkpoint.open(folder)).shape) == (64, 172)
