"""Encoders end to end, through the real CLI, converter and LiteRT runtime: the real
all-MiniLM-L6-v2 (sentence embeddings) and a tiny random T5 written by transformers (seq2seq)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SPECS, run_cli

from edgellm.errors import EdgeLLMError
from edgellm.spec.load import load_spec
from edgellm.spec.sentence_config import sentence_pooling

pytestmark = pytest.mark.slow  # builds a real MiniLM and a tiny T5: make test runs them, make test-fast does not

MINILM = Path.home() / ".cache" / "edgellm-real-models" / "all-minilm-l6-v2"
EXAMPLE = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
T5_PROMPTS = ["First Citizen:", "What say you to the king?", "O Romeo", "Before we proceed any further, hear me speak."]


def signatures_and_comparisons(report: dict) -> tuple[list[str], dict]:
    """The converted model's signatures, and every verification stage's comparisons (all three expected)."""
    convert = next(s for s in report["stages"] if s["stage"] == "convert")
    found = {}
    for stage in report["stages"]:
        found.update(stage.get("comparisons", {}))
    assert set(found) == {"reauthored_vs_transformers", "tflite_vs_transformers", "tflite_vs_reauthored"}
    return convert["signatures"], found


def build(root: Path, *args: str) -> tuple[Path, dict]:
    """`edgellm build ARGS -o ROOT/out --json` with a cache in ROOT; the folder and the report."""
    result = run_cli("build", *args, "-o", str(root / "out"), "--json", cache=root / "cache")
    assert result.code == 0, result.stderr
    return root, json.loads(result.stdout)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    if not (MINILM / "modules.json").is_file():
        pytest.skip(f"the real all-MiniLM-L6-v2 folder is absent at {MINILM}; run ../shared/tools/get_real_models.sh {MINILM.parent}")
    return build(tmp_path_factory.mktemp("minilm"), "--spec", "all-minilm-l6-v2", "--checkpoint", str(MINILM))


def test_minilm_build_verifies_pooled_embeddings_against_transformers(minilm):
    signatures, comparisons = signatures_and_comparisons(minilm[1])
    assert signatures == ["embed_16", "embed_64", "embed_256"]
    for name, metrics in comparisons.items():
        assert metrics["min_cosine"] >= 0.9999, name
        assert metrics["inputs"] == 3


def test_minilm_stores_each_weight_once(minilm):
    root, _ = minilm
    inspected = json.loads(run_cli("inspect", str(root / "out/model.tflite"), "--json", cache=root / "cache").stdout)
    # The converter folded each LayerNorm's scale into the matmul after it once per signature:
    # 118.7 MB for 90.9 MB of float32 weights, before LayerNorm became a composite op.
    assert inspected["duplicate_weight_bytes"] == 0
    assert inspected["size_bytes"] < 1.01 * (MINILM / "model.safetensors").stat().st_size


def test_embed_similarity_prints_the_published_sentence_transformers_values(minilm):
    root, _ = minilm
    result = run_cli("embed", str(root / "out/model.tflite"), *EXAMPLE, "--similarity", cache=root / "cache")
    assert result.code == 0, result.stderr
    rows = [line.split()[1:4] for line in result.stdout.splitlines()]
    assert rows == [["1.000", "0.666", "0.105"], ["0.666", "1.000", "0.141"], ["0.105", "0.141", "1.000"]]


def test_embed_json_gives_unit_vectors_and_warns_when_it_truncates(minilm):
    import numpy as np

    root, _ = minilm
    long_text = "word " * 400
    result = run_cli("embed", str(root / "out/model.tflite"), "short", long_text, "--json", cache=root / "cache")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dimension"] == 384 and len(report["embeddings"]) == 2
    assert np.allclose(np.linalg.norm(report["embeddings"], axis=1), 1.0, atol=1e-5)
    assert "text 2 has 402 tokens; truncated to 256" in result.stderr


def test_quantized_minilm_stays_close_to_float_in_eval(minilm, tmp_path):
    root, _ = minilm
    model = root / "out/model.tflite"
    quantized = run_cli("quantize", str(model), "--recipe", "int8-weight-only", "--json", cache=root / "cache")
    assert quantized.code == 0, quantized.stderr
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join([*EXAMPLE, "A man is playing a guitar.", "Stocks fell sharply on Monday."]))
    result = run_cli("eval", str(model), json.loads(quantized.stdout)["output"], "--corpus", str(corpus), "--json", cache=root / "cache")
    assert result.code == 0, result.stderr
    row = json.loads(result.stdout)["models"][1]
    assert row["min_cosine"] > 0.99


def test_bench_times_each_embed_signature(minilm):
    root, _ = minilm
    result = run_cli("bench", str(root / "out/model.tflite"), "--repeats", "1", "--json", cache=root / "cache")
    assert result.code == 0, result.stderr
    assert set(json.loads(result.stdout)["signatures"]) == {"embed_16", "embed_64", "embed_256"}


def test_run_refuses_an_embedding_model_in_one_line(minilm):
    root, _ = minilm
    result = run_cli("run", str(root / "out/model.tflite"), cache=root / "cache")
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "does not handle encoder models" in result.stderr and "edgellm embed" in result.stderr


def test_spec_init_drafts_the_shipped_minilm_spec(tmp_path):
    if not (MINILM / "config.json").is_file():
        pytest.skip(f"the real all-MiniLM-L6-v2 folder is absent at {MINILM}")
    result = run_cli("spec", "init", "--from", str(MINILM), "-o", str(tmp_path / "drafted.yaml"), cache=tmp_path / "cache")
    assert result.code == 0, result.stderr
    drafted, shipped = load_spec(tmp_path / "drafted.yaml"), load_spec(SPECS / "all-minilm-l6-v2.yaml")
    assert drafted.weights == shipped.weights and drafted.export.sequence_lengths == shipped.export.sequence_lengths
    assert drafted.architecture.overrides["kind"] == "encoder"


def test_pooling_comes_from_the_checkpoint_and_unsupported_modes_are_refused(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                                                       {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert sentence_pooling(tmp_path) == {"pooling": "cls", "normalize_embedding": False}
    (tmp_path / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(EdgeLLMError, match="pooling_mode_max_tokens is not supported"):
        sentence_pooling(tmp_path)


# -- T5 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    from tiny_t5 import make_tiny_t5

    root = tmp_path_factory.mktemp("t5")
    make_tiny_t5(root / "tiny-t5")
    drafted = run_cli("spec", "init", "--from", str(root / "tiny-t5"), "-o", str(root / "tiny-t5.yaml"), cache=root / "cache")
    assert drafted.code == 0, drafted.stderr
    return build(root, "--spec", str(root / "tiny-t5.yaml"))


def test_t5_builds_and_verifies_against_transformers(t5):
    signatures, comparisons = signatures_and_comparisons(t5[1])
    assert signatures == ["decode", "encode_32", "encode_128"]
    for name, metrics in comparisons.items():
        assert metrics["max_abs_logit_diff"] <= 1e-3 and metrics["top1_agreement"] == 1.0, name


def test_t5_run_greedy_gives_the_tokens_of_transformers_generate(t5):
    import sentencepiece
    import torch
    import transformers

    root, _ = t5
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(root / "tiny-t5/spiece.model"))
    reference = transformers.T5ForConditionalGeneration.from_pretrained(root / "tiny-t5").eval()
    outputs = set()
    for prompt in T5_PROMPTS:
        result = run_cli("run", str(root / "out/model.tflite"), "--prompt", prompt, "--max-tokens", "12", "--json", cache=root / "cache")
        assert result.code == 0, result.stderr
        ids = tokenizer.encode(prompt) + [1]  # T5 inputs end with EOS
        # use_cache=False: transformers 5.24 sizes T5's generation cache by the encoder's depth, which differs here
        expected = reference.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, use_cache=False)[0, 1:].tolist()
        expected = expected[: expected.index(1)] if 1 in expected else expected  # edgellm stops at EOS and does not print it
        assert json.loads(result.stdout)["tokens"] == expected, prompt
        outputs.add(tuple(expected))
    assert len(outputs) > 1  # the inputs reach the decoder


def test_t5_run_sampling_is_seeded_and_bounded(t5):
    root, _ = t5
    args = ("run", str(root / "out/model.tflite"), "--prompt", "O Romeo", "--temperature", "1.0", "--top-k", "40", "--seed", "3", "--max-tokens", "10", "--json")
    first, second = run_cli(*args, cache=root / "cache"), run_cli(*args, cache=root / "cache")
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["tokens"] == json.loads(second.stdout)["tokens"]
    assert 0 < len(json.loads(first.stdout)["tokens"]) <= 10


@pytest.mark.parametrize("command", ["bench", "eval"])
def test_bench_and_eval_refuse_a_seq2seq_model_in_one_line(t5, tmp_path, command):
    root, _ = t5
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n")
    extra = ["--corpus", str(corpus)] if command == "eval" else []
    result = run_cli(command, str(root / "out/model.tflite"), *extra, cache=root / "cache")
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "does not handle encoder-decoder models" in result.stderr
