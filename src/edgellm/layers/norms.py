"""Normalisation layers."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgellm.spec.schema import Architecture


def _as_composite(name: str, attr: dict, body: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """`body(*inputs)`, exported as one LiteRT composite op (its decomposition is the same math).
    The boundary also keeps the converter from folding a norm's scale into the matmuls after it:
    it folds in each signature separately and stores every folded copy of those weights."""
    from litert_torch.hlfb import StableHLOCompositeBuilder

    composite = StableHLOCompositeBuilder(name=name, attr=attr)
    return composite.mark_outputs(body(*composite.mark_inputs(*inputs)))


class RMSNorm(nn.Module):
    """Root-mean-square norm in float32, scaled by (offset + weight)."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.float() + self.offset if self.offset else self.weight.float()
        if not torch.compiler.is_exporting():
            return self._norm(x, scale)
        # LiteRT's CPU path runs `odml.rms_norm` as one fused op, where the plain math is six.
        return _as_composite("odml.rms_norm", {"epsilon": self.eps}, self._norm, x, scale)

    def _norm(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * scale).type_as(x)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm, exported as a composite: see _as_composite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting():
            return super().forward(x)
        return _as_composite("odml.layer_norm", {"epsilon": self.eps}, self._norm, x, self.weight, self.bias)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


def make_norm(arch: Architecture, dim: int | None = None) -> nn.Module:
    dim = dim or arch.hidden_size
    if arch.norm == "layer":
        return LayerNorm(dim, eps=arch.norm_eps)
    return RMSNorm(dim, arch.norm_eps, arch.norm_offset)
