"""A gated short convolution: a token mixer whose state is the last few inputs, not a KV cache.

    B, C, x = in_proj(h)            three [N, dim] thirds of one projection
    y = out_proj(C * conv(B * x))   conv: causal and depthwise, `conv_kernel` taps per channel

The state `kv_cache_c_{i}` [1, dim, kernel - 1] (LiteRT-LM's name and layout) holds the conv inputs
B * x of the last kernel - 1 tokens, so a step sees them before its own. A prefill padded past its
real tokens must not move the state past them: the caller passes how many tokens are real
(Decoder.forward counts them from the positions), and the new state ends at the last real one.
"""

import functools

import torch
from torch import nn

from edgellm.spec.schema import Architecture


class ShortConv(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        dim, bias = arch.hidden_size, arch.conv_bias
        self.in_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.kernel = nn.Parameter(torch.empty(dim, 1, arch.conv_kernel))  # Conv1d's depthwise layout
        self.kernel_bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def state_shape(self) -> tuple[int, int, int]:
        dim, _, taps = self.kernel.shape
        return (1, dim, taps - 1)

    def forward(self, h: torch.Tensor, state: torch.Tensor, real_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h [1, N, dim]; state [1, dim, kernel - 1]; real_tokens: a 0-d count of the first tokens that
        are real (None: all N). Returns the output [1, N, dim] and the new state."""
        n, taps = h.shape[1], self.kernel.shape[-1]
        b, c, x = self.in_proj(h).chunk(3, dim=-1)
        inputs = torch.cat([state, (b * x).transpose(1, 2)], dim=-1)  # [1, dim, kernel - 1 + N]
        # The taps as N-wide slices, multiplied and added: elementwise ops the runtime runs as they
        # are, with no convolution kernel to pick for a 3-tap filter.
        weight = self.kernel[:, 0]
        conv = functools.reduce(torch.add, (inputs[:, :, j : j + n] * weight[:, j : j + 1] for j in range(taps)))
        if self.kernel_bias is not None:
            conv = conv + self.kernel_bias[:, None]
        if real_tokens is None:
            new_state = inputs[:, :, n:]
        else:
            new_state = inputs.index_select(2, real_tokens + torch.arange(taps - 1))
        return self.out_proj(c * conv.transpose(1, 2)), new_state
