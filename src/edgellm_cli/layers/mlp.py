"""Feed-forward blocks."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))
