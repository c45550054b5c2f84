"""Every shipped spec against its architecture's real transformers class, on tiny random checkpoints:
the re-authored model, then the converted .tflite; and `spec init` drafts that build unedited."""

import json

import pytest
import torch
from conftest import SPECS, run_cli
from tiny_models import LLAMA3_ROPE, TINY, make_tiny_checkpoint
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from edgellm.infra.cache import ArtifactCache
from edgellm.layers.rope import inverse_frequencies
from edgellm.measure.inspect import inspect_tflite
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.draft import FAMILY_SPECS
from edgellm.spec.hf_config import architecture_from_hf_config
from edgellm.spec.load import load_spec
from edgellm.spec.schema import RopeScaling


def test_llama3_inverse_frequencies_match_transformers():
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_parameters=LLAMA3_ROPE)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    scaling = RopeScaling(type="llama3", **{k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")})
    torch.testing.assert_close(inverse_frequencies(64, 500000.0, scaling), theirs.float(), rtol=1e-6, atol=0)


def test_architecture_reads_both_rope_config_formats():
    v5 = {"rope_parameters": LLAMA3_ROPE}
    v4 = {"rope_theta": 500000.0, "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}}
    assert architecture_from_hf_config(v5) == architecture_from_hf_config(v4)
    assert architecture_from_hf_config(v5)["rope_scaling"]["factor"] == 32.0


def assert_within_tolerance(comparisons):
    for name, metrics in comparisons.items():
        assert metrics.top1_agreement == 1.0, (name, metrics)
        assert metrics.max_abs_logit_diff <= 1e-3, (name, metrics)


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tiny_build):
    """A tiny checkpoint for one shipped spec, and the run's cache for it (a draft spec that matches
    the shipped one reuses its conversion, as a user's would; so does a build)."""
    return tiny_build(request.param)


@pytest.mark.slow
def test_shipped_spec_verifies_and_converts(tiny):
    spec, folder, cache = tiny
    pipeline = Pipeline(spec, checkpoint=folder, cache=cache)
    comparisons = pipeline.result("verify").report.comparisons | pipeline.result("verify-tflite").report.comparisons
    assert set(comparisons) == {"reauthored_vs_transformers", "tflite_vs_transformers", "tflite_vs_reauthored"}
    assert_within_tolerance(comparisons)
    arch = pipeline.result("fetch").report.architecture
    if arch.sliding_window is not None:
        assert arch.sliding_window < spec.verify.num_tokens  # the window is really exercised


@pytest.mark.slow
def test_greedy_through_the_tflite_equals_transformers_generate(tiny):
    """32 new tokens after a short prompt, past every sliding window: the .tflite through edgellm's
    runtime (prefill, then decode steps) against transformers' own generate."""
    from transformers import AutoModelForCausalLM

    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.runtime.generate import generate
    from edgellm.runtime.sampler import Sampler

    spec, folder, cache = tiny
    pipeline = Pipeline(spec, checkpoint=folder, cache=cache)
    bos = pipeline.result("fetch").report.prompt.start_id
    prompt = [*([bos] if bos is not None else []), 17, 101, 230]
    ours = list(generate(LiteRTModel(pipeline.result("convert").file), prompt, 32, Sampler(), stop_ids=[]))
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
    assert ours == theirs


@pytest.mark.slow
def test_spec_init_draft_builds_and_verifies_unedited(tiny, tmp_path):
    spec, folder, cache = tiny
    result = run_cli("spec", "init", "--from", str(folder), "-o", str(tmp_path / "draft.yaml"), cache=tmp_path / "cache")
    assert result.code == 0, result.stderr
    draft = load_spec(tmp_path / "draft.yaml")
    assert draft.model_dump(include={"weights", "architecture"}) == spec.model_dump(include={"weights", "architecture"})
    assert draft.export == spec.export
    pipeline = Pipeline(draft, cache=cache)
    assert_within_tolerance(pipeline.result("verify").report.comparisons | pipeline.result("verify-tflite").report.comparisons)


def test_a_text_only_qwen3_5_checkpoint_drafts_the_text_family_and_verifies(tmp_path):
    """Qwen3_5ForCausalLM (a text model saved alone; the shipped spec reads one inside a multimodal
    checkpoint) drafts Qwen3.5's names with no multimodal prefix, and matches transformers."""
    import transformers
    from tiny_models import COMMON, QWEN3_5_TEXT, small_bpe_tokenizer

    torch.manual_seed(0)
    transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**{**COMMON, **QWEN3_5_TEXT})).save_pretrained(tmp_path / "ckpt")
    small_bpe_tokenizer().save(str(tmp_path / "ckpt" / "tokenizer.json"))
    result = run_cli("spec", "init", "--from", str(tmp_path / "ckpt"), "-o", str(tmp_path / "draft.yaml"), cache=tmp_path / "cache")
    assert result.code == 0, result.stderr
    assert "extends: _hf-qwen3_5.yaml" in (tmp_path / "draft.yaml").read_text()
    pipeline = Pipeline(load_spec(tmp_path / "draft.yaml"), cache=ArtifactCache(tmp_path / "cache"))
    assert_within_tolerance(pipeline.result("verify").report.comparisons)


def test_spec_init_refuses_an_unsupported_class_and_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    result = run_cli("spec", "init", "--from", str(tmp_path), cache=tmp_path / "cache")
    assert result.code == 2 and "GPT2LMHeadModel" in result.stderr and ", ".join(sorted(FAMILY_SPECS)) in result.stderr
    assert not list(tmp_path.glob("*.yaml"))


def test_qk_rope_and_attention_knobs_really_come_from_the_config(tmp_path):
    folder = make_tiny_checkpoint("gemma-3-1b", tmp_path / "g3", "tokenizer.model")
    pipeline = Pipeline(load_spec(SPECS / "gemma-3-1b.yaml"), checkpoint=folder, cache=ArtifactCache(tmp_path / "cache"))
    arch = pipeline.result("fetch").report.architecture
    assert arch.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (arch.rope_theta, arch.rope_local_theta) == (1000000.0, 10000.0)
    assert arch.qk_norm and arch.norm_offset == 1.0 and arch.embedding_scale and arch.attention_scale == 16**-0.5


@pytest.mark.slow
def test_a_layernorm_model_stores_each_weight_once(tmp_path):
    # Phi-2's shape at a width where the converter folds each LayerNorm's scale into the q/k/v and
    # MLP weights after it, once per signature: 33.6 MB for 16.1 MB of weights before LayerNorm
    # became a composite op.
    folder = make_tiny_checkpoint("phi-2", tmp_path / "phi", "tokenizer.json", hidden_size=320, intermediate_size=1280)
    pipeline = Pipeline(load_spec(SPECS / "phi-2.yaml"), checkpoint=folder, cache=ArtifactCache(tmp_path / "cache"))
    inspected = inspect_tflite(pipeline.result("convert").file)
    assert inspected["duplicate_weight_bytes"] == 0
    assert inspected["size_bytes"] < 1.05 * (folder / "model.safetensors").stat().st_size


# The families added for the models shipped to phones in 2025-26 (issue #26), each bundled and run in LiteRT-LM's engine.
NEW_FAMILIES = ["granite-3.3-2b", "lfm2-350m", "olmo-2-1b", "olmo-3-7b", "qwen3.5-0.8b", "smollm3-3b"]


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def new_family(request, tiny_build):
    return tiny_build(request.param)


@pytest.mark.slow
def test_new_family_bundles_for_litert_lm_and_quantizes(new_family, tmp_path):
    """LiteRT-LM's engine writes edgellm run's text; int8-dynamic and int4 build, load and run."""
    pytest.importorskip("litert_lm", reason="litert-lm-api is a dev extra: make install")
    from edgellm.bundle.adapter import engine_texts

    spec, folder, cache = new_family
    name, out = spec.name, tmp_path / "out"
    # The conversion is the one the tests above cached for this spec and checkpoint.
    result = run_cli("build", "--spec", name, "--checkpoint", str(folder), "--bundle", "litertlm", "-o", str(out), cache=cache.root)
    assert result.code == 0, result.stderr
    ours = run_cli("run", str(out / "model.tflite"), "--prompt", "the king", "--max-tokens", "32", "--json", cache=cache.root)
    assert ours.code == 0, ours.stderr
    assert engine_texts(out / f"{name}.litertlm", [None], "the king", 32) == [json.loads(ours.stdout)["text"]]
    for recipe in ("int8-dynamic", "int4"):  # quantized, each loads and generates (int4: GPTQ-calibrated)
        quantized = out / f"model-{recipe}.tflite"
        done = run_cli("quantize", str(out / "model.tflite"), "--recipe", recipe, "-o", str(quantized), cache=cache.root)
        assert done.code == 0, done.stderr
        done = run_cli("run", str(quantized), "--prompt", "the king", "--max-tokens", "8", "--json", cache=cache.root)
        assert done.code == 0 and json.loads(done.stdout)["prompt_tokens"] > 0, done.stderr
