"""Layers whose state is not a KV cache (LFM2's short convolutions, Qwen3.5's linear attention): the
state after a padded prefill, the delta rule's parallel form, and a conversation that rewinds, which
such a state cannot do without recomputing."""

import json

import pytest
import torch
from conftest import SPECS
from tiny_models import make_tiny_checkpoint

from edgellm.layers.decoder import Decoder
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.load import load_spec
from edgellm.spec.schema import Architecture

ARCH = Architecture(vocab_size=64, hidden_size=16, num_layers=3, intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=8,
                    max_position_embeddings=64, layer_types=["conv", "full_attention", "linear_attention"], conv_kernel=3,
                    linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=4, linear_value_head_dim=6)


def _decoder() -> Decoder:
    """Random weights, q/k/v and gate/up merged into one matmul each as the loader makes them."""
    torch.manual_seed(0)
    decoder = Decoder(ARCH).eval()
    decoder.merge_projections()
    for name, param in list(decoder.named_parameters()):
        module, _, attr = name.rpartition(".")
        setattr(decoder.get_submodule(module), attr, torch.nn.Parameter(torch.randn(param.shape) * 0.3, requires_grad=False))
    return decoder


def test_a_padded_prefill_stops_the_states_at_the_last_real_token():
    """Three real tokens at positions 5.. in an 8-wide prefill, padded with position 0 (how runtimes
    pad): the conv and recurrent states and the real rows' logits are those of the three tokens alone."""
    decoder, tokens = _decoder(), torch.tensor([[7, 21, 40]])
    cache = {name: torch.randn_like(t) for name, t in decoder.empty_cache(16).items()}  # an earlier turn's state
    with torch.no_grad():
        alone = decoder(tokens, torch.arange(5, 8), cache)
        padded = decoder(torch.cat([tokens, torch.zeros((1, 5), dtype=torch.long)], 1), torch.tensor([5, 6, 7, 0, 0, 0, 0, 0]), cache)
    for name in ("kv_cache_c_0", "kv_cache_c_2", "kv_cache_r_2"):
        torch.testing.assert_close(padded[name], alone[name], rtol=1e-5, atol=1e-5)  # layer 2 after attention: matmul widths differ
        assert not torch.equal(padded[name], cache[name])  # the state did move
    torch.testing.assert_close(padded["logits"][:, :3], alone["logits"], rtol=1e-5, atol=1e-5)
    # Unmasked, the padding would have pushed the state past the real tokens.
    assert set(decoder.empty_cache(16)) == {"kv_cache_c_0", "kv_cache_k_1", "kv_cache_v_1", "kv_cache_c_2", "kv_cache_r_2"}


@pytest.mark.slow
def test_a_conversation_that_rewinds_recomputes_the_conv_state(tiny_build):
    """A session fed A+B, then A+C, gives what a fresh session fed A+C gives: a conv state cannot go
    back to the end of A, so the second feed starts over instead of reusing A."""
    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.runtime.generate import Session

    spec, folder, cache = tiny_build("lfm2-350m")  # the conversion the architecture tests made
    model = LiteRTModel(Pipeline(spec, checkpoint=folder, cache=cache).result("convert").file)
    assert model.recurrent
    prefix = [1, 17, 101, 230, 45]
    session = Session(model)
    session.feed(prefix + [300, 301, 302])
    session.feed(prefix + [400, 401])
    assert session.computed == len(prefix) + 2
    rewound = session._logits.copy()
    fresh = Session(model)
    fresh.feed(prefix + [400, 401])
    assert (rewound == fresh._logits).all()
    session.feed(prefix + [400, 401, 402])  # a continuation still reuses what the state holds
    assert session.computed == 1


@pytest.mark.parametrize("n", [1, 5, 32])
def test_the_delta_rule_in_one_chunk_is_transformers_token_by_token_rule(n):
    """The parallel form over N tokens (and its unit lower-triangular inverse) against transformers'
    own sequential reference, from a non-zero state: outputs and final state."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_recurrent_gated_delta_rule

    from edgellm.layers.linear_attention import delta_rule_chunk

    torch.manual_seed(n)
    heads, dk, dv = 3, 8, 6
    q, k = (torch.nn.functional.normalize(torch.randn(1, n, heads, dk), dim=-1) for _ in range(2))
    v, state = torch.randn(1, n, heads, dv), torch.randn(1, heads, dk, dv)
    g, beta = -torch.rand(1, n, heads), torch.rand(1, n, heads)
    theirs, their_state = torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)
    ours, our_state = delta_rule_chunk(*(t.transpose(1, 2) for t in (q * dk**-0.5, k, v, g, beta)), state)
    torch.testing.assert_close(ours.transpose(1, 2), theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_state, their_state, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_swappable_lora_feeds_the_attention_layers_only(tmp_path):
    """A --lora-rank build of a model with conv layers has LoRA inputs for its attention layers; an
    adapter of those changes the text, and one that also adapts a conv layer is refused in one line."""
    from conftest import run_cli
    from tiny_models import make_tiny_adapter

    spec = load_spec(SPECS / "lfm2-350m.yaml")
    folder = make_tiny_checkpoint("lfm2-350m", tmp_path / "ckpt", spec.tokenizer.file)
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert run_cli("build", "--spec", "lfm2-350m", "--checkpoint", str(folder), "--lora-rank", "16", "-o", str(out), cache=cache).code == 0
    model = out / "model.tflite"
    attention = make_tiny_adapter(folder, tmp_path / "attention", ["q_proj", "k_proj", "v_proj"])
    wrote = run_cli("adapter", str(attention), "--base", str(model), "-o", str(tmp_path / "a.bin"), cache=cache)
    assert wrote.code == 0 and "3 adapted weights" in wrote.stdout, wrote.stderr  # q, k, v of the one attention layer

    def text(*adapter: str) -> str:
        done = run_cli("run", str(model), "--prompt", "the king", "--max-tokens", "8", "--json", *adapter, cache=cache)
        assert done.code == 0, done.stderr
        return json.loads(done.stdout)["text"]

    assert text("--adapter", str(tmp_path / "a.bin")) != text()
    conv = make_tiny_adapter(folder, tmp_path / "conv", ["out_proj"])  # also the conv layers' out_proj
    refused = run_cli("adapter", str(conv), "--base", str(model), "-o", str(tmp_path / "b.bin"), cache=cache)
    assert refused.code == 2 and "conv.out_proj" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.bin").exists()
