"""How faithful a converted SentencePiece `tokenizer.model` is to the tokenizer it came from,
measured three ways: litert-torch's random token pairs (strict and loose mismatch), llama.cpp's
test vectors, and a text corpus line by line."""

from __future__ import annotations

import random
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.text.chat_template import encode_with_specials
from edgellm.text.tokenizer import Tokenizer, load_tokenizer, locate

VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"


class Candidate:
    """A SentencePiece model encoding text the way edgellm's runtime does.

    SentencePiece never matches CONTROL pieces in text, so their strings are cut out and placed
    as ids (as for rendered chat templates); the text between is encoded.
    """

    def __init__(self, path: Path):
        self.tokenizer = load_tokenizer(path)
        sp = self.tokenizer.sentencepiece
        if sp is None:
            raise EdgeLLMError(f"candidate {path}: not a SentencePiece tokenizer.model; pass the file that to-spm wrote")
        specials = [i for i in range(sp.GetPieceSize()) if sp.IsControl(i) or sp.IsUnknown(i)]
        self.specials = {sp.IdToPiece(i): i for i in specials if sp.IdToPiece(i)}

    def encode(self, text: str) -> list[int]:
        return encode_with_specials(self.tokenizer, text, self.specials)


def check(reference: Path, candidate: Path, pairs: int = 1000, seed: int = 0, vectors: Path | None = None, corpus: Path | None = None, corpus_lines: int | None = None) -> dict:
    """Measure `candidate` (a SentencePiece .model) against `reference` (the original tokenizer)."""
    ref = Tokenizer(locate(reference, prefer_spm=False))
    if not candidate.is_file():
        raise EdgeLLMError(f"candidate {candidate} does not exist; pass the tokenizer.model that to-spm wrote")
    cand = Candidate(candidate)
    report: dict = {"reference": str(ref.path), "candidate": str(candidate)}
    if pairs:
        report["pairs"] = random_pairs(ref, cand, pairs, seed)
    if vectors is not None:
        report["vectors"] = vector_match(ref, cand, vectors)
    if corpus is not None:
        report["corpus"] = corpus_match(ref, cand, corpus, corpus_lines)
    return report


def random_pairs(ref: Tokenizer, cand: Candidate, pairs: int, seed: int) -> dict:
    """litert-torch's measure: decode 2 random ids with the reference, re-encode with both.

    strict: SentencePiece's ids differ from the reference's re-encoding. loose: a strict mismatch
    where the reference's re-encoding gives back the pair itself. Unlike litert-torch, neither side
    adds a BOS, so a dropped first id cannot pass for a match.
    """
    rng = random.Random(seed)
    strict = loose = 0
    examples = []
    for _ in range(pairs):
        pair = rng.sample(range(ref.vocab_size), 2)
        text = ref.decode(pair)
        expected, got = ref.encode(text), cand.encode(text)
        if got != expected:
            strict += 1
            loose += expected == pair
            if len(examples) < 5:
                examples.append({"text": text, "reference": expected, "candidate": got})
    return {
        "pairs": pairs,
        "seed": seed,
        "strict_mismatches": strict,
        "loose_mismatches": loose,
        "strict_rate": strict / pairs,
        "loose_rate": loose / pairs,
        "examples": examples,
    }


def read_vectors(path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's `X.gguf.inp` / `X.gguf.out` (either may be named, or the `X.gguf` stem)."""
    stem = path.with_suffix("") if path.suffix in (".inp", ".out") else path
    inp, out = stem.with_name(stem.name + ".inp"), stem.with_name(stem.name + ".out")
    if not inp.is_file() or not out.is_file():
        raise EdgeLLMError(f"{stem}: llama.cpp test vectors need both {inp.name} and {out.name}; pass --vectors with one of them")
    # Both files end with their separator, so each splits into 47 parts, the last an empty
    # input with empty ids: llama.cpp counts it, and so do we (47/47).
    texts = inp.read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    expected = [[int(x) for x in line.split()] for line in out.read_text(encoding="utf-8").split("\n")]
    if len(expected) != len(texts):
        raise EdgeLLMError(f"{out}: {len(expected)} expected id lines for {len(texts)} inputs; re-download the vectors")
    return list(zip(texts, expected))


def vector_match(ref: Tokenizer, cand: Candidate, path: Path) -> dict:
    cases = read_vectors(path)
    failed = [text for text, ids in cases if cand.encode(text) != ids]
    return {
        "file": str(path),
        "total": len(cases),
        "passed": len(cases) - len(failed),
        "reference_passed": sum(ref.encode(text) == ids for text, ids in cases),
        "failed_inputs": failed[:10],
    }


def corpus_match(ref: Tokenizer, cand: Candidate, path: Path, max_lines: int | None = None) -> dict:
    """Each non-empty line (without its line ending) encoded by both; the exact-match rate."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"corpus {path} is unreadable ({exc}); pass a UTF-8 text file") from None
    lines = lines[:max_lines] if max_lines else lines
    expected = ref.encode_batch(lines)
    mismatched = [line for line, ids in zip(lines, expected) if cand.encode(line) != ids]
    return {
        "file": str(path),
        "lines": len(lines),
        "exact": len(lines) - len(mismatched),
        "exact_rate": (len(lines) - len(mismatched)) / len(lines) if lines else 1.0,
        "mismatched_examples": mismatched[:3],
    }
