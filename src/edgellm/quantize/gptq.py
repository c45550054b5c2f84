"""GPTQ (Frantar et al., 2022): integer weights chosen column by column, each column's rounding
error pushed onto the columns not yet quantized through the inverse Hessian of the layer's inputs,
so the layer's output on calibration activations, not its weights, stays close to float.

Scales are fixed before the columns move ("static groups"), chosen per block or channel by a
clipping search weighted by how strongly each input is driven; they are rounded to the precision
the file stores them in (blockwise scales: bfloat16 mantissa in float16, as ai-edge-quantizer
writes them), so the integers written are exactly the ones this search optimised. Columns go in
order of decreasing Hessian diagonal ("act order"): the strongest inputs are rounded first, while
there are the most columns left to absorb their error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Clipping candidates: the scale is ratio * max|w| / qmax. Slightly clipped outliers often cost
# less than the coarser grid every other weight of the block pays without clipping.
_CLIP_RATIOS = np.linspace(1.0, 0.5, 26)
_DAMPING = 0.01  # of the mean Hessian diagonal: keeps the inverse well conditioned
_COLUMNS_PER_PASS = 128  # lazy batch: error to later columns applied once per batch


@dataclass(frozen=True)
class QuantizedWeight:
    values: np.ndarray  # int8 [out, in], within the range of `bits`
    scales: np.ndarray  # float32 [out, in // block] (blockwise) or [out] (per channel)
    block: int | None  # None: one scale per output channel

    def dequantized(self) -> np.ndarray:
        scales = self.scales if self.block is None else np.repeat(self.scales, self.block, axis=1)
        return self.values.astype(np.float32) * (scales[:, None] if self.block is None else scales)


def integer_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _stored_scale(scale, blockwise: bool):
    """The scale as the file stores it: blockwise scales go through bfloat16 into float16."""
    import torch

    return scale.to(torch.bfloat16).to(torch.float16).to(scale.dtype) if blockwise else scale.to(torch.float32).to(scale.dtype)


def choose_scales(weight, importance, bits: int, block: int | None):
    """Per block (or channel) the clipped scale with the least importance-weighted rounding error."""
    import torch

    rows, cols = weight.shape
    group = block or cols
    grouped = weight.reshape(rows, cols // group, group)
    weights = importance.reshape(1, cols // group, group)
    low, high = integer_range(bits)
    amax = grouped.abs().amax(-1).clamp_min(1e-9)
    best_scale, best_error = None, None
    for ratio in _CLIP_RATIOS:
        scale = _stored_scale(amax * float(ratio) / high, block is not None).clamp_min(torch.finfo(torch.float16).tiny)
        rounded = (grouped / scale[..., None]).round().clamp(low, high) * scale[..., None]
        error = ((grouped - rounded) ** 2 * weights).sum(-1)
        if best_error is None:
            best_scale, best_error = scale, error
        else:
            better = error < best_error
            best_scale, best_error = torch.where(better, scale, best_scale), torch.where(better, error, best_error)
    return best_scale  # [rows, groups]


def quantize_weight(weight: np.ndarray, hessian: np.ndarray | None, bits: int, block: int | None) -> QuantizedWeight:
    """`weight` [out, in] as integers and scales; with `hessian` ([in, in], sum of x xᵀ over
    calibration inputs) by GPTQ, without it by the clipping search alone (round to nearest)."""
    import torch

    w = torch.from_numpy(np.array(weight, dtype=np.float64))  # a copy: the weight may be a read-only view of the file
    rows, cols = w.shape
    if block is not None and cols % block:
        raise ValueError(f"input dimension {cols} is not a multiple of block {block}")
    h = torch.from_numpy(np.asarray(hessian, dtype=np.float64)).clone() if hessian is not None else torch.eye(cols, dtype=torch.float64)
    dead = torch.diag(h) == 0  # inputs calibration never drove: their weights cannot matter
    h[dead, dead] = 1.0
    scales = choose_scales(w, torch.diag(h), bits, block)  # [rows, groups]
    low, high = integer_range(bits)
    column_group = torch.arange(cols) // (block or cols)
    if hessian is None:
        values = (w / scales[:, column_group]).round().clamp(low, high)
        return _result(values, scales, block)

    order = torch.argsort(torch.diag(h), descending=True)
    h = h[order][:, order]
    h += _DAMPING * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    # The factorisation in float64; the column sweep, where the time goes, in float32.
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    w, column_scales = w[:, order].float(), scales[:, column_group[order]].float().contiguous()
    values = torch.zeros_like(w)
    for start in range(0, cols, _COLUMNS_PER_PASS):
        end = min(start + _COLUMNS_PER_PASS, cols)
        part, errors, inv = w[:, start:end].clone(), torch.zeros(rows, end - start), inverse[start:end, start:end]
        for i in range(end - start):
            scale = column_scales[:, start + i]
            q = (part[:, i] / scale).round().clamp(low, high)
            values[:, start + i] = q
            error = (part[:, i] - q * scale) / inv[i, i]
            part[:, i:] -= error[:, None] * inv[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    unpermuted = torch.empty_like(values)
    unpermuted[:, order] = values
    return _result(unpermuted, scales, block)


def _result(values, scales, block: int | None) -> QuantizedWeight:
    scales = scales.float().numpy()
    return QuantizedWeight(values.numpy().astype(np.int8), scales[:, 0] if block is None else scales, block)
