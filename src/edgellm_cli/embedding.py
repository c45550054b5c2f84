"""Sentence embeddings from an encoder `.tflite` (signatures `embed_{N}`) on the LiteRT runtime.

A text is tokenized with the checkpoint's own `tokenizer.json` (its post-processor adds [CLS] and
[SEP]), then goes through the smallest `embed_N` that holds it, padded and masked; a longer text
is truncated to the largest N, as sentence-transformers truncates to max_seq_length. The pooling
(and normalisation) happen inside the model, so what comes back is the sentence embedding.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.metadata import model_metadata
from edgellm_cli.quiet import native_output_to
from edgellm_cli.tflite_file import read_signatures

SIGNATURE = re.compile(r"embed_(\d+)")


def embed_lengths(path: Path) -> dict[int, str]:
    """N -> signature name of a model's embed_N signatures; {} for other models."""
    return {int(m.group(1)): name for name in read_signatures(path) if (m := SIGNATURE.fullmatch(name))}


@dataclass(frozen=True)
class Embedded:
    vector: np.ndarray  # [hidden] float32
    tokens: int  # tokens the model saw (after truncation)
    truncated_from: int | None  # the text's length in tokens when it was cut, else None


class EmbeddingModel:
    """An embed_N `.tflite` with its tokenizer: text in, pooled embedding out."""

    def __init__(self, path: Path, tokenizer: Path | None = None, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.lengths = embed_lengths(path)
        if not self.lengths:
            raise EdgeLLMError(f"{path}: no embed_<N> signatures (found {sorted(read_signatures(path)) or 'none'}); "
                               "this is not an embedding model: build one from an encoder spec (e.g. all-minilm-l6-v2)")
        self.path, self._tokenizer_path = path, tokenizer
        with native_output_to():
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._runners = {n: self._interpreter.get_signature_runner(name) for n, name in self.lengths.items()}

    @property
    def longest(self) -> int:
        return max(self.lengths)

    def signature_for(self, count: int) -> int:
        """The smallest N that holds `count` tokens (the longest when none does)."""
        return min((n for n in self.lengths if n >= count), default=self.longest)

    def embed_ids(self, ids: list[int]) -> np.ndarray:
        """The embedding of token ids (special tokens included), at most the longest N of them."""
        n = self.signature_for(len(ids))
        ids = ids[:n]
        tokens, mask = np.zeros((1, n), np.int32), np.zeros((1, n), np.int32)
        tokens[0, : len(ids)], mask[0, : len(ids)] = ids, 1
        return self._runners[n](tokens=tokens, attention_mask=mask)["embedding"][0].copy()

    def _text_tokenizer(self):
        """The checkpoint's tokenizer.json, truncating as sentence-transformers does: specials kept, the text cut."""
        from tokenizers import Tokenizer

        _, path = model_metadata(self.path, self._tokenizer_path)
        if path.suffix != ".json":
            raise EdgeLLMError(f"{path}: embedding models need the checkpoint's tokenizer.json (its post-processor adds [CLS]/[SEP]); pass --tokenizer")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception type for a bad file
            raise EdgeLLMError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]}); re-download it") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    def embed(self, texts: list[str]) -> list[Embedded]:
        tokenizer = self._text_tokenizer()
        results = []
        for text in texts:
            ids = tokenizer.encode(text).ids
            cut = None
            if len(ids) > self.longest:  # keep [CLS] ... [SEP]: let the tokenizer cut the text between them
                tokenizer.enable_truncation(max_length=self.longest)
                cut, ids = len(ids), tokenizer.encode(text).ids
                tokenizer.no_truncation()
            results.append(Embedded(self.embed_ids(ids), len(ids), cut))
        return results

    def benchmark(self, repeats: int) -> dict:
        """Milliseconds per call of each embed_N (the fastest of `repeats`), on a full-length input."""
        rows = {}
        for n in sorted(self.lengths):
            ids = [0] * n
            times = []
            for _ in range(repeats + 1):  # the first call warms up
                started = time.perf_counter()
                self.embed_ids(ids)
                times.append(time.perf_counter() - started)
            ms = 1000 * min(times[1:])
            rows[self.lengths[n]] = {"ms": round(ms, 3), "tokens_per_second": round(n / ms * 1000, 1)}
        return {"model": str(self.path), "signatures": rows}


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True).clip(min=1e-12)
    return unit @ unit.T


def compare_models(models: list[Path], texts: list[str], tokenizer: Path | None = None) -> dict:
    """Each model's embeddings of `texts` against the first model's: mean and lowest cosine."""
    tokenizer = model_metadata(models[0], tokenizer)[1]
    reference, rows = None, []
    for path in models:
        vectors = np.stack([e.vector for e in EmbeddingModel(path, tokenizer).embed(texts)])
        row = {"model": str(path), "size_bytes": path.stat().st_size}
        if reference is None:
            reference = vectors
        else:
            cosine = (vectors * reference).sum(-1) / (np.linalg.norm(vectors, axis=-1) * np.linalg.norm(reference, axis=-1))
            row |= {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}
        rows.append(row)
    return {"texts": len(texts), "models": rows}
