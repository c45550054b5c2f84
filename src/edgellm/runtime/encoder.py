"""Sentence embeddings from an encoder `.tflite` (signatures `embed_{N}`) on the LiteRT runtime.

A text is tokenized with the checkpoint's own `tokenizer.json` (its post-processor adds [CLS] and
[SEP]), then goes through the smallest `embed_N` that holds it, padded and masked; a longer text
is truncated to the largest N, as sentence-transformers truncates to max_seq_length. The pooling
(and normalisation) happen inside the model, so what comes back is the sentence embedding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.runtime.litert import Signatures
from edgellm.runtime.padding import padded, smallest_length
from edgellm.tflite.file import read_signatures
from edgellm.tflite.metadata import model_metadata

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
        self.lengths = embed_lengths(path)
        if not self.lengths:
            raise EdgeLLMError(f"{path}: no embed_<N> signatures (found {sorted(read_signatures(path)) or 'none'}); "
                               "this is not an embedding model: build one from an encoder spec (e.g. all-minilm-l6-v2)")
        self.path, self._tokenizer_path = path, tokenizer
        self._signatures = Signatures(path, threads)

    @property
    def longest(self) -> int:
        return max(self.lengths)

    def embed_ids(self, ids: list[int]) -> np.ndarray:
        """The embedding of token ids (special tokens included), at most the longest N of them."""
        n = smallest_length(len(ids), list(self.lengths))
        tokens, mask = padded(ids[:n], n)
        return self._signatures(self.lengths[n], tokens=tokens, attention_mask=mask)["embedding"][0].copy()

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


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True).clip(min=1e-12)
    return unit @ unit.T
