"""An encoder verified on its pooled embeddings: cosine and max |Δ| against transformers plus
sentence-transformers' pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.runtime.padding import padded, smallest_length
from edgellm.spec.schema import Architecture
from edgellm.verify.report import EmbeddingComparison

EMBEDDINGS = ("reference_embeddings.npy", "reauthored_embeddings.npy")


def verification_inputs(vocab_size: int, num_tokens: int, longest: int) -> list[list[int]]:
    """Fixed pseudo-random texts of three lengths (a full one and two that leave padding), the same every run."""
    from edgellm.verify.logits import verification_tokens

    full = verification_tokens(vocab_size, min(num_tokens, longest), None)
    return [full, full[: max(1, len(full) // 2)][::-1], full[:3]]


def reference_embeddings(checkpoint_dir: Path, arch: Architecture, inputs: list[list[int]]) -> np.ndarray:
    """transformers' encoder, pooled as sentence-transformers' Pooling and Normalize modules do."""
    import torch

    from edgellm.verify.logits import load_reference

    model = load_reference(checkpoint_dir, "MODEL_MAPPING")
    rows = []
    with torch.no_grad():
        for ids in inputs:
            states = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).last_hidden_state[0]
            pooled = states[0] if arch.pooling == "cls" else states.mean(0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1) if arch.normalize_embedding else pooled)
    return torch.stack(rows).numpy()


def reauthored_embeddings(model, inputs: list[list[int]], lengths: list[int]) -> np.ndarray:
    """Our TextEncoder's embeddings, each input padded to the signature the runtime would use."""
    import torch

    rows = []
    with torch.no_grad():
        for ids in inputs:
            tokens, mask = padded(ids, smallest_length(len(ids), lengths))
            rows.append(model(torch.from_numpy(tokens), torch.from_numpy(mask))["embedding"][0].numpy())
    return np.stack(rows)


def tflite_embeddings(path: Path, inputs: list[list[int]]) -> np.ndarray:
    from edgellm.runtime.encoder import EmbeddingModel

    model = EmbeddingModel(path)
    return np.stack([model.embed_ids(ids) for ids in inputs])


def compare_embeddings(candidate: np.ndarray, reference: np.ndarray) -> EmbeddingComparison:
    """The lowest cosine over the inputs and the largest |Δ| of any component."""
    cosine = (candidate * reference).sum(-1) / (np.linalg.norm(candidate, axis=-1) * np.linalg.norm(reference, axis=-1))
    return EmbeddingComparison(min_cosine=float(cosine.min()), max_abs_diff=float(np.abs(candidate - reference).max()), inputs=int(reference.shape[0]))
