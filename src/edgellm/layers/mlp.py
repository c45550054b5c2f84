"""Feed-forward blocks."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from edgellm.layers.linear import merged
from edgellm.spec.schema import Architecture

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}


class MLP(nn.Module):
    """gated: down(act(gate(x)) * up(x)) (SwiGLU, GeGLU); plain: down(act(up(x)))."""

    def __init__(self, arch: Architecture):
        super().__init__()
        dim, hidden, bias = arch.hidden_size, arch.intermediate_size, arch.mlp_bias
        self.gate = nn.Linear(dim, hidden, bias=bias) if arch.mlp == "gated" else None
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.act = _ACTIVATIONS[arch.activation]
        self.gate_up: nn.Linear | None = None  # gate and up as one matmul: merge_projections, before loading

    def merge_projections(self) -> dict[str, list[str]]:
        """gate and up read the same input: one matmul (their weights side by side). Returns each
        merged parameter's parts, by name."""
        if self.gate is None:
            return {}
        self.gate_up = merged(self.gate, self.up)
        del self.gate, self.up
        self.gate = None
        return {f"gate_up.{p}": [f"gate.{p}", f"up.{p}"] for p in ("weight", "bias") if getattr(self.gate_up, p) is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        if self.gate is None:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))
