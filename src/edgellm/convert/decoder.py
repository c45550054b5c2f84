"""A decoder's signatures, which convert lowers into one multi-signature `.tflite`.

Signatures follow the MediaPipe / LiteRT-LM convention: `prefill_{N}` per requested N and
`decode`, with inputs `tokens` int32 [1, N], `input_pos` int32 [N], `kv_cache_k_{i}` /
`kv_cache_v_{i}` float32 (K [1, kv_heads, T, head_dim], V [1, kv_heads, head_dim, T]); outputs the
updated caches. A model built for swappable LoRA (export.lora_rank) also takes LiteRT-LM's
`lora_atten_{q,k,v,o}_{a,b}_prime_weight_{i}` inputs (layers/lora.py) in every signature. `decode` also outputs `logits` [1, 1, vocab] and `next_token` int32 [1, 1], the
arg-max of its logits (for greedy loops).

A prefill computes no logits: LiteRT-LM reads none (it decodes the prompt's last token), and the
output head over every position is up to a third of prefill's work (Qwen's 152k vocabulary). It
outputs `hidden` [1, N, hidden] instead, and `head_{N}` turns those into `logits` for the callers
that score every position (edgellm's eval, verify, calibration and search).
"""

from __future__ import annotations

import functools

import torch

from edgellm.layers.decoder import Decoder, output_logits
from edgellm.spec.schema import ExportSection


class _SignatureModule(torch.nn.Module):
    """Gives the Decoder flat keyword inputs, so each cache tensor gets its own signature name."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **state: torch.Tensor) -> dict[str, torch.Tensor]:
        decode = tokens.shape[1] == 1
        kv_cache = {name: t for name, t in state.items() if name.startswith("kv_cache_")}
        lora = {name: t for name, t in state.items() if name.startswith("lora_")}
        out = self.decoder(tokens, input_pos, kv_cache, logits=decode, lora=lora)
        if decode:  # also its greedy pick, so a greedy loop never reads logits
            # The arg-max of the logits as they are: selecting the last row first ([:, -1]) made the
            # converter compute the output head a second time for it (a whole extra vocab matmul).
            out["next_token"] = out["logits"].argmax(-1).to(torch.int32)
        return out


class _HeadModule(torch.nn.Module):
    """The output head alone: `hidden` [1, N, hidden] (a prefill's output) to `logits`. It holds the
    head's weights only: exported with the whole Decoder, every weight was lowered once more."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.lm_head, self.arch = decoder.lm_head, decoder.arch

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": output_logits(self.lm_head, self.arch, hidden)}


@functools.cache
def signature_inputs(decoder: Decoder, length: int, kv_cache_length: int) -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.zeros((1, length), dtype=torch.int32),
        "input_pos": torch.arange(length, dtype=torch.int32),
        **decoder.empty_cache(kv_cache_length),
    }


def decoder_signatures(decoder: Decoder, export: ExportSection) -> list[tuple[str, torch.nn.Module, dict]]:
    """prefill_{N} and head_{N} for each N, and decode: what convert lowers into one `.tflite`."""
    module, head = _SignatureModule(decoder).eval(), _HeadModule(decoder).eval()
    lora = {}
    if export.lora_rank is not None:
        lora = {name: torch.zeros(shape) for name, shape in decoder.lora_shapes(export.lora_rank, export.lora_targets).items()}

    def inputs(length: int) -> dict[str, torch.Tensor]:
        return {**signature_inputs(decoder, length, export.kv_cache_length), **lora}

    signatures = []
    for n in sorted(export.prefill_lengths):
        signatures += [(f"prefill_{n}", module, inputs(n)), (f"head_{n}", head, {"hidden": torch.zeros((1, n, decoder.arch.hidden_size))})]
    return [*signatures, ("decode", module, inputs(1))]
