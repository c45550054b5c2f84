"""The LiteRT runtime path: prefill choice and chunking, sampling, streaming detokenisation."""

import numpy as np
import pytest
from conftest import DEMO, asset

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.runtime import LiteRTModel, Sampler, generate
from edgellm_cli.tokenizer import StreamDecoder, Tokenizer


@pytest.fixture(scope="module")
def model(stories_build):
    return LiteRTModel(stories_build.output / "model.tflite")


def test_signature_discovery(model):
    assert model.prefill_signatures == {8: "prefill_8", 32: "prefill_32"}
    assert model.kv_cache_length == 256 and len(model.cache_specs) == 10


def test_chunked_prefill_matches_token_by_token_decode(model):
    tokens = Tokenizer(DEMO / "tokenizer.model").encode("Once upon a time there was a big dog who liked to run in the park with his friends. One day he saw a cat and they played")
    tokens = [1] + tokens
    assert len(tokens) > 32  # forces chunks: prefill_32, then the rest
    chunked = model.prefill(tokens, 0, model.empty_cache())
    cache = model.empty_cache()
    stepwise = np.stack([model.decode(t, i, cache) for i, t in enumerate(tokens)])
    np.testing.assert_allclose(chunked, stepwise, atol=1e-4)


def test_prefill_plan_picks_the_smallest_signature_that_holds_the_prompt(model):
    assert model._prefill_plan(5, 0) == ("prefill_8", 5)
    assert model._prefill_plan(9, 0) == ("prefill_32", 9)
    assert model._prefill_plan(40, 0) == ("prefill_32", 32)
    assert model._prefill_plan(3, 250) == ("decode", 1)  # padding to 8 would run past the cache


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    def sample(seed):
        return list(generate(model, [1], 40, Sampler(temperature=1.0, top_p=0.95, seed=seed), stop_ids=[]))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_top_k_one_is_greedy(model):
    greedy = list(generate(model, [1], 30, Sampler(), stop_ids=[]))
    assert list(generate(model, [1], 30, Sampler(temperature=0.7, top_k=1, seed=3), stop_ids=[])) == greedy


def test_generation_stops_at_a_stop_token(model):
    greedy = list(generate(model, [1], 30, Sampler(), stop_ids=[]))
    assert list(generate(model, [1], 30, Sampler(), stop_ids=[greedy[5]])) == greedy[: greedy.index(greedy[5])]


def test_prompt_past_the_cache_is_a_clear_error(model):
    with pytest.raises(EdgeLLMError, match="exceeds the KV cache"):
        list(generate(model, [1] * 100, 200, Sampler(), stop_ids=[]))


def test_streaming_keeps_multibyte_utf8_whole():
    tokenizer = Tokenizer(asset("tokenizers/llama2-spm/tokenizer.model"))
    text = "Grüße, 世界! 🙂 naïve café"
    ids = tokenizer.encode(text)
    stream = StreamDecoder(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
