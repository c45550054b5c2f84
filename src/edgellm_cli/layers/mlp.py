"""Feed-forward blocks."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from edgellm_cli.layers.linear import merged
from edgellm_cli.spec import Architecture

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
        self.gate_up: nn.Linear | None = None  # gate and up as one matmul, once merge_projections ran

    def merge_projections(self) -> None:
        """gate and up read the same input: one matmul for the export (their weights side by side)."""
        if self.gate is not None:
            self.gate_up = merged(self.gate, self.up)
        if self.gate_up is not None:
            del self.gate, self.up
            self.gate = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        if self.gate is None:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))
