"""Rotary position embedding: inverse frequencies built once, cos/sin taken at `input_pos`."""

import math

import torch
from torch import nn

from edgellm.spec.schema import RopeScaling


def inverse_frequencies(rotary_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    # An explicit device: the model may be built under torch.device("meta"), but this is computed, not loaded.
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device="cpu") / rotary_dim
    inv_freq = 1.0 / theta**exponents
    if scaling is None:
        return inv_freq.float()
    if scaling.type == "linear":
        return (inv_freq / scaling.factor).float()
    return _llama3_scale(inv_freq, scaling).float()


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # Long wavelengths are divided by `factor`, short ones kept, and the band between is blended.
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, rotary_dim: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(rotary_dim, theta, scaling), persistent=False)

    def forward(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin for positions `input_pos` [N], each [1, 1, N, rotary_dim]: shaped
        once here for every layer's rotation, which then needs no reshape of its own."""
        angles = input_pos.float()[:, None] * self.inv_freq[None, :]
        cos, sin = torch.cos(angles), torch.sin(angles)
        return torch.cat((cos, cos), -1)[None, None], torch.cat((-sin, sin), -1)[None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary_dim features of x [B, heads, N, head_dim], Hugging Face half-split layout:
    [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] = x * cos + [x2, x1] * [-sin, sin] (six ops, not nine)."""
    rotary_dim = cos.shape[-1]
    half = rotary_dim // 2
    rotated, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    out = rotated * cos + torch.cat((rotated[..., half:], rotated[..., :half]), -1) * sin
    return out if rest.shape[-1] == 0 else torch.cat((out, rest), -1)
