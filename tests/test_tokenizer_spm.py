"""`edgellm tokenizer to-spm` / `check` on the real tokenizers in ../shared/assets."""

from __future__ import annotations

import json

import pytest
from conftest import asset, run_cli

from edgellm.errors import EdgeLLMError
from edgellm.text.spm import to_sentencepiece
from edgellm.text.tokenizer import load_spm
from edgellm.text.tokenizer_check import check

WIKITEXT = "corpora/wikitext2-test/wikitext-2-raw-test.txt"


def vectors(name: str):
    return asset(f"tokenizer-vectors/ggml-vocab-{name}.gguf.inp")


def test_tinyllama_tokenizer_json_converts_without_loss(tmp_path):
    source = asset("tokenizers/tinyllama-chat/tokenizer.json")
    out = tmp_path / "tokenizer.model"
    report = to_sentencepiece(source, out)
    assert report["kind"] == "sentencepiece-bpe"
    assert report["check"]["pairs"]["strict_mismatches"] == 0 and report["check"]["pairs"]["loose_mismatches"] == 0
    result = check(source, out, pairs=0, vectors=vectors("llama-spm"), corpus=asset(WIKITEXT))
    assert (result["vectors"]["passed"], result["vectors"]["total"]) == (47, 47)
    assert result["corpus"]["exact"] == result["corpus"]["lines"] > 2000
    # The same ids as the official SentencePiece model, piece for piece.
    official = load_spm(asset("tokenizers/tinyllama-chat/tokenizer.model"))
    ours = load_spm(out)
    assert [ours.IdToPiece(i) for i in range(32000)] == [official.IdToPiece(i) for i in range(32000)]


def test_a_folder_with_tokenizer_model_is_copied(tmp_path):
    folder = asset("tokenizers/tinyllama-chat")
    out = tmp_path / "tokenizer.model"
    report = to_sentencepiece(folder, out)
    assert report["kind"] == "sentencepiece"
    assert out.read_bytes() == (folder / "tokenizer.model").read_bytes()
    assert report["check"]["pairs"]["strict_mismatches"] == 0


@pytest.mark.parametrize(
    ("name", "source", "vector_name"),
    [("gpt2", "gpt2", "gpt-2"), ("phi-2", "phi-2/tokenizer.json", "phi-2"), ("qwen2", "qwen2", "qwen2")],
)
def test_byte_level_bpe_strict_mismatch_at_most_half_a_percent(tmp_path, name, source, vector_name):
    out = tmp_path / f"{name}.model"
    report = to_sentencepiece(asset(f"tokenizers/{source}"), out)
    assert report["kind"] == "byte-level-bpe"
    pairs = report["check"]["pairs"]
    assert pairs["pairs"] == 1000 and pairs["strict_rate"] <= 0.005, pairs["examples"]
    assert pairs["loose_mismatches"] <= pairs["strict_mismatches"]
    result = check(asset(f"tokenizers/{source}"), out, pairs=0, vectors=vectors(vector_name), corpus=asset(WIKITEXT), corpus_lines=300)
    assert result["vectors"]["reference_passed"] == 47  # the reference reading is right
    assert result["vectors"]["passed"] >= 40
    assert result["corpus"]["exact_rate"] >= 0.95


def test_byte_level_pieces_decode_to_the_original_text(tmp_path):
    out = tmp_path / "gpt2.model"
    to_sentencepiece(asset("tokenizers/gpt2"), out, pairs=0)
    sp = load_spm(out)
    text = "Hello, y'all! \x00 naïve   spaces\n\ttabs — 我想"
    assert sp.DecodeIds(sp.EncodeAsIds(text)) == text


def test_check_is_reproducible_and_catches_a_wrong_model(tmp_path):
    gpt2 = tmp_path / "gpt2.model"
    to_sentencepiece(asset("tokenizers/gpt2"), gpt2, pairs=0)
    first = check(asset("tokenizers/gpt2"), gpt2, pairs=200, seed=7)
    assert first == check(asset("tokenizers/gpt2"), gpt2, pairs=200, seed=7)
    # A Llama model measured against GPT-2 mismatches almost everywhere.
    wrong = check(asset("tokenizers/gpt2"), asset("tokenizers/llama2-spm/tokenizer.model"), pairs=200)
    assert wrong["pairs"]["strict_rate"] > 0.9


def test_the_broken_tokenizer_is_a_one_line_error(tmp_path):
    out = tmp_path / "tokenizer.model"
    with pytest.raises(EdgeLLMError, match="not a valid tokenizer.json") as caught:
        to_sentencepiece(asset("tokenizers/llama2-altered-invalid"), out)
    assert "\n" not in str(caught.value) and "re-download" in str(caught.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_inputs_name_the_fix(tmp_path):
    with pytest.raises(EdgeLLMError, match="does not exist"):
        to_sentencepiece(tmp_path / "missing", tmp_path / "o.model")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(EdgeLLMError, match="merges.txt is missing"):
        to_sentencepiece(tmp_path, tmp_path / "o.model")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(EdgeLLMError, match="not valid JSON"):
        to_sentencepiece(tmp_path / "tokenizer.json", tmp_path / "o.model")
    (tmp_path / "bad.model").write_bytes(b"garbage")
    with pytest.raises(EdgeLLMError, match="not a valid SentencePiece model"):
        check(asset("tokenizers/gpt2"), tmp_path / "bad.model")


# Through the real CLI.


def test_cli_to_spm_prints_the_check_and_json(tmp_path, cache):
    out = tmp_path / "tokenizer.model"
    result = run_cli("tokenizer", "to-spm", str(asset("tokenizers/tinyllama-chat/tokenizer.json")), "-o", str(out), cache=cache)
    assert result.code == 0, result.stderr
    assert "strict mismatch" in result.stdout and "0 (0.00 %)" in result.stdout
    result = run_cli("tokenizer", "to-spm", str(asset("tokenizers/phi-2")), "-o", str(out), "--json", cache=cache)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "byte-level-bpe" and report["check"]["pairs"]["strict_rate"] <= 0.005


def test_cli_check_with_vectors(tmp_path, cache):
    out = tmp_path / "tokenizer.model"
    assert run_cli("tokenizer", "to-spm", str(asset("tokenizers/tinyllama-chat/tokenizer.json")), "-o", str(out), "--pairs", "0", cache=cache).code == 0
    result = run_cli(
        "tokenizer", "check", "--reference", str(asset("tokenizers/tinyllama-chat")), "--candidate", str(out),
        "--vectors", str(vectors("llama-spm")), "--pairs", "100", "--json", cache=cache,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["vectors"]["passed"] == 47 and report["pairs"]["strict_mismatches"] == 0


def test_cli_broken_tokenizer_exits_2_with_one_line(tmp_path, cache):
    result = run_cli("tokenizer", "to-spm", str(asset("tokenizers/llama2-altered-invalid")), "-o", str(tmp_path / "t.model"), cache=cache)
    assert result.code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "tokenizer.json" in result.stderr
