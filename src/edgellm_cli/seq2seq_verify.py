"""verify and verify-tflite for encoder-decoders (T5): the decoder's logits for a fixed
teacher-forced target over a fixed input, against `transformers`' T5ForConditionalGeneration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm_cli import verify as decoder_verify
from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.spec import Architecture

LOGITS = ("reference_logits.npy", "reauthored_logits.npy")


def verification_pair(vocab_size: int, num_tokens: int, longest_input: int, kv_cache_length: int, start_id: int) -> tuple[list[int], list[int]]:
    """A fixed encoder input (at most the longest encode_N) and a decoder target opened by the start token."""
    tokens = decoder_verify.verification_tokens(vocab_size, num_tokens, None)
    return tokens[: min(num_tokens, longest_input)], [start_id, *tokens[::-1]][: min(num_tokens, kv_cache_length)]


def reference_logits(checkpoint_dir: Path, encoder_ids: list[int], decoder_ids: list[int]) -> np.ndarray:
    import torch

    model = decoder_verify.load_reference(checkpoint_dir, "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING")
    with torch.no_grad():
        return model(input_ids=torch.tensor([encoder_ids]), decoder_input_ids=torch.tensor([decoder_ids])).logits[0].numpy()


def reauthored_logits(model, encoder_ids: list[int], decoder_ids: list[int], lengths: list[int], kv_cache_length: int) -> np.ndarray:
    """Ours, as the .tflite runs: the input padded to its encode_N, the target in one decoder pass."""
    import torch

    from edgellm_cli.encoder_stages import padded, smallest_length

    tokens, mask = padded(encoder_ids, smallest_length(len(encoder_ids), lengths))
    _, encoder_mask = padded(encoder_ids, max(lengths))
    with torch.no_grad():
        cross = model.encode(torch.from_numpy(tokens), torch.from_numpy(mask), max(lengths))
        out = model.decode(torch.tensor([decoder_ids], dtype=torch.int32), torch.arange(len(decoder_ids), dtype=torch.int32),
                           torch.from_numpy(encoder_mask), {**model.empty_cache(kv_cache_length), **cross})
    return out["logits"][0].numpy()


def verify(p, folder: Path, arch: Architecture) -> dict:
    fetched, export = p.result("fetch").report, p.spec.export
    start = fetched["prompt"].get("decoder_start_id")
    if start is None:
        raise EdgeLLMError(f"spec {p.spec.name}: the checkpoint's config.json has no decoder_start_token_id; an encoder-decoder needs one")
    encoder_ids, decoder_ids = verification_pair(arch.vocab_size, p.spec.verify.num_tokens, max(export.sequence_lengths), export.kv_cache_length, start)
    reference = reference_logits(Path(fetched["checkpoint_dir"]), encoder_ids, decoder_ids)
    ours = reauthored_logits(p.load_decoder(), encoder_ids, decoder_ids, export.sequence_lengths, export.kv_cache_length)
    for name, array in zip(LOGITS, (reference, ours)):
        np.save(folder / name, array)
    report = {"encoder_tokens": encoder_ids, "tokens": decoder_ids, "comparisons": {"reauthored_vs_transformers": decoder_verify.compare(ours, reference)}}
    decoder_verify.check(report, p.spec.verify)
    return report


def verify_tflite(p, verified, converted) -> dict:
    from edgellm_cli.seq2seq import Seq2SeqModel

    model = Seq2SeqModel(converted.file)
    state = model.encode(verified.report["encoder_tokens"])
    logits = np.stack([model.decode(token, i, state).copy() for i, token in enumerate(verified.report["tokens"])])
    reference, reauthored = (np.load(verified.path / name) for name in LOGITS)
    report = {
        "encoder_tokens": verified.report["encoder_tokens"],
        "tokens": verified.report["tokens"],
        "comparisons": {
            "tflite_vs_transformers": decoder_verify.compare(logits, reference),
            "tflite_vs_reauthored": decoder_verify.compare(logits, reauthored),
        },
    }
    decoder_verify.check(report, p.spec.verify)
    return report
