"""Convert stage: lower our Decoder through litert_torch into one multi-signature `.tflite`.

Signatures follow the MediaPipe / LiteRT-LM convention: `prefill_{N}` per requested N and
`decode`, with inputs `tokens` int32 [1, N], `input_pos` int32 [N], `kv_cache_k_{i}` /
`kv_cache_v_{i}` float32 (K [1, kv_heads, T, head_dim], V [1, kv_heads, head_dim, T]); outputs the
updated caches. `decode` also outputs `logits` [1, 1, vocab] and `next_token` int32 [1, 1], the
arg-max of its logits (for greedy loops).

A prefill computes no logits: LiteRT-LM reads none (it decodes the prompt's last token), and the
output head over every position is up to a third of prefill's work (Qwen's 152k vocabulary). It
outputs `hidden` [1, N, hidden] instead, and `head_{N}` turns those into `logits` for the callers
that score every position (edgellm's eval, verify, calibration and search).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.layers import Decoder
from edgellm_cli.layers.attention import softcap
from edgellm_cli.quiet import native_output_to


class _SignatureModule(torch.nn.Module):
    """Gives the Decoder flat keyword inputs, so each cache tensor gets its own signature name."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **kv_cache: torch.Tensor) -> dict[str, torch.Tensor]:
        decode = tokens.shape[1] == 1
        out = self.decoder(tokens, input_pos, kv_cache, logits=decode)
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
        self.lm_head, self.cap = decoder.lm_head, decoder.arch.final_logit_softcap

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": softcap(self.lm_head(hidden), self.cap)}


@functools.cache
def _register_lowerings() -> None:
    """Lower our cache update to stablehlo.dynamic_update_slice, which LiteRT runs in place, and the
    attention matmuls to dot_general contracting both last axes (a batched matmul with adj_y)."""
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import stablehlo
    from litert_torch.backend import lowerings

    @lowerings.lower(torch.ops.edgellm.update_cache)
    def _update_cache(lctx, cache, update, start, dim):
        i32 = ir.IntegerType.get_signless(32)
        zero = stablehlo.constant(ir.DenseElementsAttr.get_splat(ir.RankedTensorType.get([], i32), ir.IntegerAttr.get(i32, 0)))
        starts = [zero] * ir.RankedTensorType(cache.type).rank
        starts[dim] = start
        return stablehlo.dynamic_update_slice(cache, update, starts)

    @lowerings.lower(torch.ops.edgellm.matmul_transposed)
    def _matmul_transposed(lctx, lhs, rhs):
        lhs_type, rhs_type = ir.RankedTensorType(lhs.type), ir.RankedTensorType(rhs.type)
        batch, last = list(range(lhs_type.rank - 2)), lhs_type.rank - 1
        dims = stablehlo.DotDimensionNumbers.get(
            lhs_batching_dimensions=batch, rhs_batching_dimensions=batch, lhs_contracting_dimensions=[last], rhs_contracting_dimensions=[last]
        )
        result = ir.RankedTensorType.get([*lhs_type.shape[:-1], rhs_type.shape[-2]], lhs_type.element_type)
        return stablehlo.dot_general(result, lhs, rhs, dims)


def signature_inputs(decoder: Decoder, length: int, kv_cache_length: int) -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.zeros((1, length), dtype=torch.int32),
        "input_pos": torch.arange(length, dtype=torch.int32),
        **decoder.empty_cache(kv_cache_length),
    }


def convert_to_tflite(decoder: Decoder, prefill_lengths: list[int], kv_cache_length: int, out_path: Path, log_path: Path) -> None:
    """Write `out_path`: one `.tflite` holding prefill_{N} and head_{N} for each N, and decode; the
    converter's own output goes to `log_path`."""
    module, head = _SignatureModule(decoder).eval(), _HeadModule(decoder).eval()
    signatures = []
    for n in sorted(prefill_lengths):
        signatures += [(f"prefill_{n}", module, signature_inputs(decoder, n, kv_cache_length)),
                       (f"head_{n}", head, {"hidden": torch.zeros((1, n, decoder.arch.hidden_size))})]
    write_tflite([*signatures, ("decode", module, signature_inputs(decoder, 1, kv_cache_length))], out_path, log_path)


def write_tflite(signatures: list[tuple[str, torch.nn.Module, dict[str, torch.Tensor]]], out_path: Path, log_path: Path) -> None:
    """Lower each (name, module, sample inputs) as one signature of one `.tflite` at `out_path`."""
    import litert_torch

    _register_lowerings()
    litert_torch.config.show_progress = False
    converter = litert_torch.Converter()
    for name, module, sample in signatures:
        converter.signature(name, module, sample_kwargs=sample)
    try:
        with torch.no_grad(), native_output_to(log_path):
            # Lightweight conversion keeps weights out of the lowered module until the flatbuffer is
            # written: same ops and numbers, far less memory and time (bench/convert_vs_litert_torch.py).
            converter.convert(lightweight_conversion=True).export(str(out_path))
    except Exception as exc:
        raise EdgeLLMError(f"litert_torch could not convert the model ({type(exc).__name__}: {str(exc).splitlines()[0]}); see {log_path}") from exc
