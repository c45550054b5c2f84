"""Short causal convolutions: token mixers whose state is the last few inputs, not a KV cache.

`causal_conv` is the depthwise convolution both conv-state layers share (this file's ShortConv, and
the one in front of linear attention, layers/linear_attention.py). Its state `kv_cache_c_{i}`
[1, channels, kernel - 1] (LiteRT-LM's name and layout) holds the inputs of the last kernel - 1
tokens, so a step sees them before its own. A prefill padded past its real tokens must not move the
state past them: the caller passes how many tokens are real (Decoder.forward counts them from the
positions), and the new state ends at the last real one.
"""

import functools

import torch
from torch import nn

from edgellm.spec.schema import Architecture


def causal_conv(x: torch.Tensor, state: torch.Tensor, kernel: torch.Tensor, real_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [1, N, C] after the inputs in `state` [1, C, kernel - 1], through the depthwise `kernel`
    [C, 1, taps] (Conv1d's layout); real_tokens: a 0-d count of the first tokens that are real (None:
    all N). Returns the output [1, N, C] and the new state."""
    n, taps = x.shape[1], kernel.shape[-1]
    inputs = torch.cat([state, x.transpose(1, 2)], dim=-1)  # [1, C, kernel - 1 + N]
    # The taps as N-wide slices, multiplied and added: elementwise ops the runtime runs as they
    # are, with no convolution kernel to pick for a 3- or 4-tap filter.
    weight = kernel[:, 0]
    out = functools.reduce(torch.add, (inputs[:, :, j : j + n] * weight[:, j : j + 1] for j in range(taps)))
    if real_tokens is None:
        return out.transpose(1, 2), inputs[:, :, n:]
    return out.transpose(1, 2), inputs.index_select(2, real_tokens + torch.arange(taps - 1))


class ShortConv(nn.Module):
    """A gated short convolution (LFM2):

        B, C, x = in_proj(h)            three [N, dim] thirds of one projection
        y = out_proj(C * conv(B * x))   conv: causal and depthwise, `conv_kernel` taps per channel
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        dim, bias = arch.hidden_size, arch.conv_bias
        self.in_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.kernel = nn.Parameter(torch.empty(dim, 1, arch.conv_kernel))
        self.kernel_bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        dim, _, taps = self.kernel.shape
        return {"c": (1, dim, taps - 1)}

    def forward(self, h: torch.Tensor, state: torch.Tensor, real_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h [1, N, dim]; returns the output [1, N, dim] and the new conv state."""
        b, c, x = self.in_proj(h).chunk(3, dim=-1)
        conv, state = causal_conv(b * x, state, self.kernel, real_tokens)
        if self.kernel_bias is not None:
            conv = conv + self.kernel_bias
        return self.out_proj(c * conv), state
