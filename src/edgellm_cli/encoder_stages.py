"""The verify, convert and verify-tflite stages for models that are not decoder-only LMs:
sentence-embedding encoders (BERT family) and encoder-decoders (T5). The pipeline hands these
kinds here; the stage table, cache keys and artifacts are the decoders'.

Encoders are checked on their pooled embeddings (cosine and max |Δ| against transformers plus
sentence-transformers' pooling); encoder-decoders on the decoder's logits for a teacher-forced
target, as decoders are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm_cli.errors import EdgeLLMError, VerificationFailed
from edgellm_cli.spec import Architecture, ModelSpec, VerifySection

EMBEDDINGS = ("reference_embeddings.npy", "reauthored_embeddings.npy")


# -- encoders: inputs and references ------------------------------------------------------------


def verification_inputs(vocab_size: int, num_tokens: int, longest: int) -> list[list[int]]:
    """Fixed pseudo-random texts of three lengths (a full one and two that leave padding), the same every run."""
    from edgellm_cli.verify import verification_tokens

    full = verification_tokens(vocab_size, min(num_tokens, longest), None)
    return [full, full[: max(1, len(full) // 2)][::-1], full[:3]]


def padded(ids: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens and attention_mask, int32 [1, length], the ids first and zeros (masked) after."""
    tokens, mask = np.zeros((1, length), np.int32), np.zeros((1, length), np.int32)
    tokens[0, : len(ids)], mask[0, : len(ids)] = ids, 1
    return tokens, mask


def smallest_length(count: int, lengths: list[int]) -> int:
    """The shortest signature length holding `count` tokens (the longest when none does)."""
    return min((n for n in lengths if n >= count), default=max(lengths))


def reference_embeddings(checkpoint_dir: Path, arch: Architecture, inputs: list[list[int]]) -> np.ndarray:
    """transformers' encoder, pooled as sentence-transformers' Pooling and Normalize modules do."""
    import torch

    from edgellm_cli.verify import load_reference

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
    from edgellm_cli.embedding import EmbeddingModel

    model = EmbeddingModel(path)
    return np.stack([model.embed_ids(ids) for ids in inputs])


def compare_embeddings(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """The lowest cosine over the inputs and the largest |Δ| of any component."""
    cosine = (candidate * reference).sum(-1) / (np.linalg.norm(candidate, axis=-1) * np.linalg.norm(reference, axis=-1))
    return {"min_cosine": float(cosine.min()), "max_abs_diff": float(np.abs(candidate - reference).max()), "inputs": int(reference.shape[0])}


def check_embeddings(report: dict, limits: VerifySection) -> None:
    for name, metrics in report["comparisons"].items():
        if metrics["min_cosine"] < limits.min_cosine:
            raise VerificationFailed(
                f"{name}: cosine {metrics['min_cosine']:.6f} (limit {limits.min_cosine}), max |Δ| {metrics['max_abs_diff']:.3g}; "
                "the spec's architecture (pooling, norms) or weight mapping does not match the checkpoint"
            )


# -- encoders: conversion --------------------------------------------------------------------------


def encoder_signatures(model, lengths: list[int]) -> list[tuple[str, object, dict]]:
    """embed_{N}: tokens and attention_mask int32 [1, N] -> embedding float32 [1, hidden]."""
    import torch

    return [
        (f"embed_{n}", model.eval(), {"tokens": torch.zeros((1, n), dtype=torch.int32), "attention_mask": torch.ones((1, n), dtype=torch.int32)})
        for n in sorted(lengths)
    ]


# -- the stages ----------------------------------------------------------------------------------


def check_lengths(spec: ModelSpec, arch: Architecture) -> None:
    """fetch: every signature length must fit the position table."""
    if arch.position_embedding == "learned" and max(spec.export.sequence_lengths) > arch.max_position_embeddings:
        raise EdgeLLMError(f"spec {spec.name}: export.sequence_lengths {max(spec.export.sequence_lengths)} exceeds the model's "
                           f"{arch.max_position_embeddings} positions; lower it")


def verify(p, folder: Path) -> dict:
    """verify stage: our model against transformers."""
    fetched = p.result("fetch").report
    arch = Architecture.model_validate(fetched["architecture"])
    if arch.kind == "encoder-decoder":
        from edgellm_cli import seq2seq_verify

        return seq2seq_verify.verify(p, folder, arch)
    lengths = p.spec.export.sequence_lengths
    inputs = verification_inputs(arch.vocab_size, p.spec.verify.num_tokens, max(lengths))
    reference = reference_embeddings(Path(fetched["checkpoint_dir"]), arch, inputs)
    ours = reauthored_embeddings(p.load_decoder(), inputs, lengths)
    for name, array in zip(EMBEDDINGS, (reference, ours)):
        np.save(folder / name, array)
    report = {"inputs": inputs, "comparisons": {"reauthored_vs_transformers": compare_embeddings(ours, reference)}}
    check_embeddings(report, p.spec.verify)
    return report


def convert(spec: ModelSpec, arch: Architecture, model, out: Path, log: Path) -> None:
    """convert stage (in the converter's worker): the model's signatures into one .tflite."""
    from edgellm_cli.convert import write_tflite

    if arch.kind == "encoder-decoder":
        from edgellm_cli.layers.t5 import seq2seq_signatures

        write_tflite(seq2seq_signatures(model, spec.export.sequence_lengths, spec.export.kv_cache_length), out, log)
    else:
        write_tflite(encoder_signatures(model, spec.export.sequence_lengths), out, log)


def verify_tflite(p) -> dict:
    """verify-tflite stage: the .tflite against transformers and against our model."""
    verified, converted = p.result("verify"), p.result("convert")
    if "tokens" in verified.report:  # an encoder-decoder's teacher-forced logits
        from edgellm_cli import seq2seq_verify

        return seq2seq_verify.verify_tflite(p, verified, converted)
    inputs = verified.report["inputs"]
    ours = tflite_embeddings(converted.file, inputs)
    reference, reauthored = (np.load(verified.path / name) for name in EMBEDDINGS)
    report = {
        "inputs": inputs,
        "comparisons": {
            "tflite_vs_transformers": compare_embeddings(ours, reference),
            "tflite_vs_reauthored": compare_embeddings(ours, reauthored),
        },
    }
    check_embeddings(report, p.spec.verify)
    return report
