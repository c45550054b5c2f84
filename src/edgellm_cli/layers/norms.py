"""Normalisation layers."""

import torch
from torch import nn

from edgellm_cli.spec import Architecture


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
        # Exported as LiteRT's `odml.rms_norm` composite (its body is the same math): one op that
        # LiteRT's CPU path runs fused, where the plain math is six.
        from litert_torch.hlfb import StableHLOCompositeBuilder

        composite = StableHLOCompositeBuilder(name="odml.rms_norm", attr={"epsilon": self.eps})
        x, scale = composite.mark_inputs(x, scale)
        return composite.mark_outputs(self._norm(x, scale))

    def _norm(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * scale).type_as(x)


def make_norm(arch: Architecture, dim: int | None = None) -> nn.Module:
    dim = dim or arch.hidden_size
    if arch.norm == "layer":
        return nn.LayerNorm(dim, eps=arch.norm_eps)
    return RMSNorm(dim, arch.norm_eps, arch.norm_offset)
