"""Feed-forward blocks."""

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"silu": F.silu}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), the SwiGLU of Llama-family models."""

    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))
