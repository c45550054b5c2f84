"""An encoder-decoder (T5) verified on the decoder's logits for a fixed teacher-forced target over a
fixed input, against `transformers`' T5ForConditionalGeneration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.verify import logits as decoder_verify

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

    from edgellm.runtime.padding import padded, smallest_length

    tokens, mask = padded(encoder_ids, smallest_length(len(encoder_ids), lengths))
    _, encoder_mask = padded(encoder_ids, max(lengths))
    with torch.no_grad():
        cross = model.encode(torch.from_numpy(tokens), torch.from_numpy(mask), max(lengths))
        out = model.decode(torch.tensor([decoder_ids], dtype=torch.int32), torch.arange(len(decoder_ids), dtype=torch.int32),
                           torch.from_numpy(encoder_mask), {**model.empty_cache(kv_cache_length), **cross})
    return out["logits"][0].numpy()
