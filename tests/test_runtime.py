"""The LiteRT runtime path: in-place KV cache, prefill choice and chunking, sampling, sessions,
streaming detokenisation, chat templates, and the run / chat / bench commands."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DEMO, EXPECTED_GREEDY, SPECS, asset, run_cli

from edgellm.errors import EdgeLLMError
from edgellm.runtime.decoder import LiteRTModel
from edgellm.runtime.generate import Session, generate
from edgellm.runtime.sampler import Sampler
from edgellm.text.chat_template import encode_with_specials, render_chat
from edgellm.text.tokenizer import TextStream, load_tokenizer
from edgellm.tflite.metadata import read_metadata
from edgellm.tflite.weight_cache import is_complete

STORY = "Once upon a time there was a big dog who liked to run in the park with his friends. One day he saw a cat and they played"


@pytest.fixture(scope="module")
def model(stories_build):
    return LiteRTModel(stories_build.output / "model.tflite")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO / "tokenizer.model")


def greedy_ids(model, prompt, count):
    return list(generate(model, prompt, count, Sampler(), stop_ids=[]))


def test_signature_discovery(model):
    assert model.prefill_signatures == {8: "prefill_8", 32: "prefill_32"}
    assert model.kv_cache_length == 256 and len(model.cache_names) == 10 and model.vocab_size == 512


def test_chunked_prefill_matches_token_by_token_decode(model, tokenizer):
    tokens = [1] + tokenizer.encode(STORY)
    assert len(tokens) > 32  # forces chunks: prefill_32, then the rest
    model.reset()
    chunked = model.prefill(tokens, 0)
    model.reset()
    stepwise = np.stack([model.decode(t, i).copy() for i, t in enumerate(tokens)])  # decode reuses its memory
    np.testing.assert_allclose(chunked, stepwise, atol=1e-4)


def test_decode_picks_the_arg_max_of_its_logits_on_device(model):
    assert model.greedy_pick is not None  # edgellm's decode signature outputs next_token
    model.reset()
    for position, token in enumerate([1, 400, 30, 77, 5]):
        logits = model.decode(token, position)
        assert model.greedy_pick[0] == int(logits.argmax())


def test_prefill_plan_picks_the_smallest_signature_that_holds_the_prompt(model):
    assert model.prefill_plan(5, 0) == ("prefill_8", 5)
    assert model.prefill_plan(9, 0) == ("prefill_32", 9)
    assert model.prefill_plan(40, 0) == ("prefill_32", 32)
    assert model.prefill_plan(3, 250) == ("decode", 1)  # padding to 8 would run past the cache


def test_greedy_continuation_is_the_same_through_small_prefill_chunks(stories_build, model):
    reference = greedy_ids(model, [1], 120)
    small = LiteRTModel(stories_build.output / "model.tflite", max_prefill=8)
    assert small.prefill_signatures == {8: "prefill_8"}
    assert greedy_ids(small, [1] + reference[:45], 75) == reference[45:]


def test_run_with_chunked_prefill_prints_the_rest_of_the_reference_story(stories_build, tokenizer):
    expected = asset(EXPECTED_GREEDY).read_text()
    prompt = tokenizer.decode(tokenizer.encode(expected)[:45])
    result = run_cli("run", str(stories_build.output / "model.tflite"), "--max-prefill", "8", "--prompt", prompt,
                     "--max-tokens", "155", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    assert (prompt + result.stdout).rstrip("\n") == expected.rstrip("\n")


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    def sample(seed):
        sampler = Sampler(temperature=1.0, top_p=0.95, min_p=0.01, repetition_penalty=1.1, seed=seed)
        return list(generate(model, [1], 40, sampler, stop_ids=[]))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


@pytest.mark.parametrize("sampler", [Sampler(temperature=0.7, top_k=1, seed=3), Sampler(temperature=2.0, min_p=1.0, seed=3)])
def test_samplers_that_keep_one_token_are_greedy(model, sampler):
    assert list(generate(model, [1], 30, sampler, stop_ids=[])) == greedy_ids(model, [1], 30)


def test_repetition_penalty_changes_greedy_output_and_avoids_repeats(model):
    penalised = list(generate(model, [1], 30, Sampler(repetition_penalty=1e6), stop_ids=[]))
    assert len(set(penalised)) == len(penalised)
    assert penalised != greedy_ids(model, [1], 30)


def test_sampler_filters_in_isolation():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = {Sampler(temperature=1.0, top_p=0.7, seed=s)(logits) for s in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7: the nucleus is the two best
    draws = {Sampler(temperature=1.0, min_p=0.5, seed=s)(logits) for s in range(200)}
    assert draws == {0, 1}  # 0.3 >= 0.5 * 0.5; 0.15 is not


def test_generation_stops_at_a_stop_token(model):
    greedy = greedy_ids(model, [1], 30)
    assert list(generate(model, [1], 30, Sampler(), stop_ids=[greedy[5]])) == greedy[: greedy.index(greedy[5])]


def test_prompt_past_the_cache_is_a_clear_error(model):
    with pytest.raises(EdgeLLMError, match="exceeds the KV cache"):
        list(generate(model, [1] * 100, 200, Sampler(), stop_ids=[]))


def test_session_reuses_the_cached_prefix_and_matches_a_fresh_prefill(model, tokenizer):
    turn1, turn2 = [1] + tokenizer.encode("Lily had a cat."), tokenizer.encode(" The cat was happy.")
    session = Session(model)
    session.feed(turn1)
    reply = list(session.generate(10, Sampler(), stop_ids=[]))
    transcript = turn1 + reply + turn2
    session.feed(transcript)
    assert session.computed == len(turn2) + 1  # the new turn and the reply's last token, nothing before
    continued = list(session.generate(20, Sampler(), stop_ids=[]))
    assert continued == greedy_ids(model, transcript, 20)


def test_streaming_keeps_multibyte_utf8_whole():
    tokenizer = load_tokenizer(asset("tokenizers/llama2-spm/tokenizer.model"))
    text = "Grüße, 世界! 🙂 naïve café"
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in tokenizer.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_streaming_byte_level_bpe_round_trips():
    tokenizer = load_tokenizer(asset("tokenizers/phi-2/tokenizer.json"))
    text = "def f(x):\n    return x ** 2  # naïve 🙂 ünïcödé\n\n\tend"
    stream = TextStream(tokenizer)
    assert "".join([stream.push(i) for i in tokenizer.encode(text)] + [stream.flush()]) == text


@pytest.mark.parametrize("path", ["tokenizers/llama2-spm/tokenizer.model", "tokenizers/tinyllama-chat/tokenizer.json",
                                  "tokenizers/phi-2/tokenizer.json", "tokenizers/phi-3-mini/tokenizer.json"])
def test_streamed_text_equals_decoding_the_whole_sequence(path):
    """Streaming appends each token's bytes; over real multilingual text, after a prompt or from
    the start, with special tokens among the output, it must write what decode writes."""
    tokenizer = load_tokenizer(asset(path))
    text = asset("corpora/wikitext2-test/wikitext-2-raw-test.txt").read_text(encoding="utf-8")[:6000]
    ids = tokenizer.encode(text + " Grüße, 世界! 🙂 naïve café 日本語 Ελληνικά\n\tend")
    rng = np.random.default_rng(0)
    for _ in range(60):
        start, context_length, length = int(rng.integers(0, len(ids) - 80)), int(rng.integers(0, 4)), int(rng.integers(1, 80))
        context, output = ids[start : start + context_length], ids[start + context_length : start + context_length + length]
        if rng.random() < 0.3:  # a special token in the output: BOS at the start or EOS in the middle
            output.insert(int(rng.integers(0, len(output))), int(rng.choice([1, 2])))
        stream = TextStream(tokenizer, context=context)
        streamed = "".join(stream.push(i) for i in output) + stream.flush()
        whole, before = tokenizer.decode(context + output), tokenizer.decode(context)
        assert streamed == whole[len(before) :], (context, output)


def test_stop_string_ends_the_text_before_it(tokenizer):
    stream = TextStream(tokenizer, stop_strings=["park"])
    pieces = []
    for token in tokenizer.encode("She went to the park and played."):
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    assert stream.stopped and "".join(pieces) == "She went to the "


def test_held_back_prefix_of_a_stop_string_is_released_at_the_end(tokenizer):
    stream = TextStream(tokenizer, stop_strings=["The end"])
    text = "".join(stream.push(t) for t in tokenizer.encode("It was The")) + stream.flush()
    assert text == "It was The" and not stream.stopped


@pytest.mark.parametrize("folder", ["qwen2", "phi-3-mini"])
def test_chat_template_renders_as_transformers_does(folder):
    from transformers import AutoTokenizer

    path = asset(f"tokenizers/{folder}")
    reference = AutoTokenizer.from_pretrained(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    strings = {"bos_token": config.get("bos_token") or "", "eos_token": config.get("eos_token") or ""}
    assert render_chat(config["chat_template"], messages, strings) == expected


def test_special_token_strings_become_their_ids(tokenizer):
    assert encode_with_specials(tokenizer, "<s>Lily<s>", {"<s>": 1}) == [1, *tokenizer.encode("Lily"), 1]


def test_chat_command_keeps_the_cache_between_turns(stories_build, tmp_path):
    template = tmp_path / "story.jinja"
    template.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    result = run_cli("chat", str(stories_build.output / "model.tflite"), "--chat-template", str(template), "--max-tokens", "12",
                     cache=stories_build.cache, stdin="Lily saw a dog.\nThe dog ran away.\n")
    assert result.code == 0, result.stderr
    stats = [line for line in result.stderr.splitlines() if "reused" in line]
    assert len(stats) == 2 and "0 reused" in stats[0] and "0 reused" not in stats[1]
    assert len(result.stdout.strip().splitlines()) >= 2


def test_chat_without_a_template_says_how_to_give_one(stories_build):
    result = run_cli("chat", str(stories_build.output / "model.tflite"), cache=stories_build.cache, stdin="hi\n")
    assert result.code == 2 and "--chat-template" in result.stderr


def test_bench_reports_every_measurement(stories_build):
    result = run_cli("bench", str(stories_build.output / "model.tflite"), "--threads", "1", "--decode-tokens", "32",
                     "--repeats", "1", "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["prefill"]) == {"prefill_8", "prefill_32"}
    assert all(row["tokens_per_second"] > 0 for row in report["prefill"].values())
    assert report["decode_tokens_per_second"] > 0 and report["raw_decode_tokens_per_second"] > 0
    assert report["time_to_first_token_ms"] > 0 and report["peak_rss_mb"] > 0 and report["threads"] == 1


def test_bench_prompt_as_long_as_the_cache_names_the_option(stories_build):
    result = run_cli("bench", str(stories_build.output / "model.tflite"), "--prompt-tokens", "256", cache=stories_build.cache)
    assert result.code == 2 and result.stderr.count("\n") == 1 and "--prompt-tokens 256" in result.stderr, result.stderr


def test_a_model_without_edgellm_json_starts_from_the_tokenizers_bos(stories_build, tmp_path):
    lone = tmp_path / "model.tflite"  # as another tool's output: no edgellm.json beside it
    shutil.copyfile(stories_build.output / "model.tflite", lone)
    result = run_cli("run", str(lone), "--tokenizer", str(DEMO / "tokenizer.model"), "--max-tokens", "200", "--stop-id", "1",
                     cache=stories_build.cache)
    assert result.code == 0, result.stderr
    assert result.stdout.rstrip("\n") == asset(EXPECTED_GREEDY).read_text().rstrip("\n")  # the story starts at BOS


def test_edgellm_json_is_typed_and_a_bad_field_is_one_line(stories_build, tmp_path):
    metadata = read_metadata(stories_build.output / "model.tflite")
    assert (metadata.tokenizer, metadata.start_id, metadata.kv_cache_length, metadata.prefill_lengths) == ("tokenizer.model", 1, 256, [8, 32])
    copy = tmp_path / "out"
    shutil.copytree(stories_build.output, copy)
    broken = json.loads((copy / "edgellm.json").read_text()) | {"stop_ids": "two"}
    (copy / "edgellm.json").write_text(json.dumps(broken))
    result = run_cli("run", str(copy / "model.tflite"), cache=stories_build.cache)
    assert result.code == 2 and result.stderr.count("\n") == 1 and "stop_ids" in result.stderr, result.stderr


LOGITS_OF = """
import sys, numpy as np
from pathlib import Path
from edgellm.runtime.decoder import LiteRTModel
model = LiteRTModel(Path(sys.argv[1]))
np.save(sys.argv[2], np.concatenate([model.prefill([1, 400, 30, 77], 0), model.decode(5, 4)[None]]))
"""


def logits_in_a_process(model, out, cache_dir, mode=""):
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(cache_dir), "EDGELLM_WEIGHT_CACHE": mode}
    done = subprocess.run([sys.executable, "-c", LOGITS_OF, str(model), str(out)], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out)


def test_weights_are_packed_once_into_a_cache_keyed_by_content_and_give_the_same_logits(stories_build, tmp_path):
    model, cache_dir = stories_build.output / "model.tflite", tmp_path / "cache"
    without = logits_in_a_process(model, tmp_path / "a.npy", cache_dir, "off")
    assert not (cache_dir / "xnnpack").exists()
    first = logits_in_a_process(model, tmp_path / "b.npy", cache_dir)
    files = list((cache_dir / "xnnpack").glob("*.xnnpack"))
    assert len(files) == 1 and is_complete(files[0]) and not list((cache_dir / "xnnpack").glob(".building-*"))
    second = logits_in_a_process(model, tmp_path / "c.npy", cache_dir)  # maps the packed file
    np.testing.assert_array_equal(first, without)
    np.testing.assert_array_equal(second, without)
    files[0].write_bytes(files[0].read_bytes()[:100])  # damaged: rebuilt, never trusted
    np.testing.assert_array_equal(logits_in_a_process(model, tmp_path / "d.npy", cache_dir), without)
    assert is_complete(files[0])
    changed = tmp_path / "other" / "model.tflite"  # other content, other key: never another model's packing
    changed.parent.mkdir()
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1  # a weight's lowest mantissa bit
    changed.write_bytes(bytes(data))
    logits_in_a_process(changed, tmp_path / "e.npy", cache_dir)
    assert len(list((cache_dir / "xnnpack").glob("*.xnnpack"))) == 2
    assert run_cli("cache", "clear", cache=cache_dir).code == 0 and not cache_dir.exists()


def _litert_torch_style(decoder, folder):
    """stories260K written with litert-torch's conventions: the causal mask an input [1, 1, N, T], no
    prefill logits (and the same K [1, heads, T, dim] / V [1, heads, dim, T] caches)."""
    import torch

    from edgellm.convert.decoder import signature_inputs
    from edgellm.convert.lowering import write_tflite

    groups = decoder.arch.num_heads // decoder.arch.num_kv_heads

    class MaskInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, tokens, input_pos, mask, **kv_cache):
            # The model adds the caller's mask instead of building its own.
            self.decoder.masks = lambda *_: (torch.cat([mask[0, 0]] * groups)[None, None], None)
            out = self.decoder(tokens, input_pos, kv_cache)
            return out if tokens.shape[1] == 1 else {name: value for name, value in out.items() if name != "logits"}

    def inputs(n):
        return {**signature_inputs(decoder, n, 64), "mask": torch.zeros(1, 1, n, 64)}

    path = folder / "litert-torch-style.tflite"
    write_tflite([("prefill_8", MaskInput().eval(), inputs(8)), ("decode", MaskInput().eval(), inputs(1))], path, folder / "convert.log")
    return path


def test_runtime_drives_litert_torch_conventions_to_the_same_logits_and_text(tmp_path):
    """A model that takes its mask as an input and gives no prefill logits runs through prefill,
    decode, sessions and bench exactly as edgellm's own: same logits, same greedy text."""
    from edgellm.checkpoint.loader import Checkpoint, load_model
    from edgellm.convert.decoder import decoder_signatures
    from edgellm.convert.lowering import write_tflite
    from edgellm.kinds import kind_named
    from edgellm.spec.hf_config import resolve_architecture
    from edgellm.spec.load import load_spec
    from edgellm.spec.schema import ExportSection

    spec = load_spec(SPECS / "stories260k.yaml")
    arch = resolve_architecture(spec, DEMO)
    decoder = load_model(spec, arch, Checkpoint.open(DEMO), kind_named("decoder").build)
    ours_path = tmp_path / "ours.tflite"
    write_tflite(decoder_signatures(decoder, ExportSection(prefill_lengths=[8], kv_cache_length=64)), ours_path, tmp_path / "ours.log")
    theirs = LiteRTModel(_litert_torch_style(load_model(spec, arch, Checkpoint.open(DEMO), kind_named("decoder").build), tmp_path))
    ours = LiteRTModel(ours_path)
    assert not theirs.prefill_gives_logits and ours.prefill_gives_logits and theirs.kv_cache_length == 64
    prompt = list(range(1, 21))  # past one prefill_8 chunk: chunks, then decode rows
    np.testing.assert_allclose(theirs.prefill(prompt, 0), ours.prefill(prompt, 0), atol=1e-4)
    texts = [list(generate(model, prompt, 30, Sampler(), stop_ids=[])) for model in (ours, theirs)]
    assert texts[0] == texts[1] and len(texts[0]) == 30
    result = run_cli("bench", str(ours_path), "--compare", str(tmp_path / "litert-torch-style.tflite"),
                     "--prompt-tokens", "12", "--decode-tokens", "8", "--repeats", "2", "--json", cache=tmp_path / "cache")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rounds"] == 2 and set(report["ratio"]) >= {"prefill (prefill_8)", "decode, raw invoke"} and all(r > 0 for r in report["ratio"].values())
