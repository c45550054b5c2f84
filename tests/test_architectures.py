"""The shipped Llama-family specs against transformers, on tiny random checkpoints of their shape."""

import pytest
import torch
from conftest import SPECS, asset, tiny_llama
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from edgellm_cli.cache import ArtifactCache
from edgellm_cli.layers.rope import inverse_frequencies
from edgellm_cli.pipeline import Pipeline
from edgellm_cli.spec import Architecture, RopeScaling, architecture_from_hf_config, load_spec

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def test_llama3_inverse_frequencies_match_transformers():
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_parameters=LLAMA3_ROPE)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    scaling = RopeScaling(type="llama3", **{k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")})
    ours = inverse_frequencies(64, 500000.0, scaling)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)


def test_architecture_reads_both_rope_config_formats():
    v5 = {"rope_parameters": LLAMA3_ROPE}
    v4 = {"rope_theta": 500000.0, "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}}
    assert architecture_from_hf_config(v5) == architecture_from_hf_config(v4)
    assert architecture_from_hf_config(v5)["rope_scaling"]["factor"] == 32.0


@pytest.mark.parametrize(
    "spec_name, tokenizer, config",
    [
        ("tinyllama-1.1b.yaml", "tokenizers/tinyllama-chat/tokenizer.model", {"tie_word_embeddings": False}),
        ("smollm2-135m.yaml", "tokenizers/phi-2/tokenizer.json", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
        ("llama-3.2-1b.yaml", "tokenizers/phi-3-mini/tokenizer.json", {"tie_word_embeddings": True, "rope_parameters": LLAMA3_ROPE}),
    ],
)
def test_spec_verifies_against_transformers(tmp_path, spec_name, tokenizer, config):
    checkpoint = tiny_llama(tmp_path / "ckpt", tokenizer=asset(tokenizer), **config)
    spec = load_spec(SPECS / spec_name)
    pipeline = Pipeline(spec, checkpoint=checkpoint, cache=ArtifactCache(tmp_path / "cache"))
    fetched = pipeline.fetch().report
    assert Architecture.model_validate(fetched["architecture"]).tie_word_embeddings == config["tie_word_embeddings"]
    metrics = pipeline.verify().report["comparisons"]["reauthored_vs_transformers"]
    assert metrics["top1_agreement"] == 1.0
    assert metrics["max_abs_logit_diff"] <= 1e-4


def test_llama3_scaled_model_converts_and_the_tflite_matches(tmp_path):
    checkpoint = tiny_llama(tmp_path / "ckpt", tokenizer=asset("tokenizers/phi-3-mini/tokenizer.json"),
                            tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)
    spec = load_spec(SPECS / "llama-3.2-1b.yaml").model_copy(
        update={"export": load_spec(SPECS / "stories260k.yaml").export}
    )
    pipeline = Pipeline(spec, checkpoint=checkpoint, cache=ArtifactCache(tmp_path / "cache"))
    assert pipeline.fetch().report["architecture"]["rope_scaling"]["type"] == "llama3"
    report = pipeline.verify_tflite().report["comparisons"]
    for name, metrics in report.items():
        assert metrics["top1_agreement"] == 1.0, name
        assert metrics["max_abs_logit_diff"] <= 1e-3, name
