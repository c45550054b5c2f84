"""An encoder's signatures, which convert lowers into one `.tflite`."""

from __future__ import annotations


def encoder_signatures(model, lengths: list[int]) -> list[tuple[str, object, dict]]:
    """embed_{N}: tokens and attention_mask int32 [1, N] -> embedding float32 [1, hidden]."""
    import torch

    return [
        (f"embed_{n}", model.eval(), {"tokens": torch.zeros((1, n), dtype=torch.int32), "attention_mask": torch.ones((1, n), dtype=torch.int32)})
        for n in sorted(lengths)
    ]
