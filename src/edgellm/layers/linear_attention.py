"""Gated delta-rule linear attention (Qwen3.5's `linear_attention` layers): a fixed-size state in
place of a KV cache.

    q, k, v = silu(causal_conv(in_proj_qkv(h)))       the conv's state: kv_cache_c_{i}
    per token t, per value head:                       the recurrent state S: kv_cache_r_{i} [1, heads, dk, dv]
        S = S * exp(g_t)                               g_t = -exp(A_log) * softplus(a_t + dt_bias): decay
        S = S + k_t (beta_t (v_t - k_t S))             beta_t = sigmoid(b_t): the delta rule's step
        y_t = q_t S                                    q, k L2-normalised, q scaled by dk ** -0.5
    out_proj(rms_norm(y) * silu(z))

Key heads are shared by consecutive value heads (as GQA shares KV heads). The N tokens of a prefill
(or decode's one) are one chunk of the delta rule's parallel form (the WY representation, as
transformers' chunked kernel computes it): a handful of [N, N] matmuls and one unit lower-triangular
inverse, built by doubling its diagonal blocks (log2 N steps), instead of N sequential steps that
would lower to N times the ops. A padded prefill's padding gets beta = 0 and g = 0, which leaves S
as the last real token left it.
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgellm.layers.conv import causal_conv
from edgellm.layers.norms import RMSNorm
from edgellm.spec.schema import Architecture


def _l2_normalised(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def unit_lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """(I + L)^-1 for strictly lower-triangular L [..., N, N]. At each step the inverse is exact on
    diagonal blocks of size s; two neighbouring blocks A, D and the block C of L between them give
    the inverse of [[A, 0], [C, D]]: [[A^-1, 0], [-D^-1 C A^-1, D^-1]], for all pairs in one
    T - T (L masked to those C blocks) T."""
    masks = _masks(lower.shape[-1])
    if not masks["between"]:  # one token: the identity (broadcast over heads, never stored per head)
        return masks["identity"]
    inverse = masks["identity"] - lower * masks["between"][0]  # the first step, from the identity
    for between in masks["between"][1:]:
        inverse = inverse - inverse @ (lower * between) @ inverse
    return inverse


@functools.cache
def _masks(n: int) -> dict:
    """The constant [N, N] masks of a chunk, made once per N so every layer and call shares one
    tensor (the converter then stores each once), and made here, not from torch.arange or torch.eye:
    those lower to an iota op the LiteRT runtime does not have."""
    row, col = np.arange(n)[:, None], np.arange(n)[None, :]
    sizes = [2**i for i in range(max(n - 1, 1).bit_length())]

    def constant(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, np.float32))

    return {
        "causal": constant(row >= col), "strictly_lower": constant(row > col), "identity": constant(row == col),
        "positions": constant(np.arange(n)),
        # at step s: the blocks below the diagonal that join two neighbouring s-blocks
        "between": [constant((row // (2 * s) == col // (2 * s)) & (row // s % 2 == 1) & (col // s % 2 == 0)) for s in sizes if s < n],
    }


def delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over N tokens at once: q, k [1, heads, N, dk], v [1, heads, N, dv], g and
    beta [1, heads, N], state [1, heads, dk, dv]. Returns the outputs [1, heads, N, dv] and the state
    after the last token."""
    n = q.shape[2]
    causal = _masks(n)["causal"]
    cumulative = g @ causal.T  # log of the decay from the chunk's start through each token
    # decay[i, j]: from token j to token i (j <= i); above the diagonal 0 (the difference there is
    # positive: clamped first, so exp cannot overflow)
    decay = torch.exp(torch.clamp(cumulative[..., :, None] - cumulative[..., None, :], max=0.0)) * causal
    k_beta = k * beta[..., None]
    solve = unit_lower_inverse((k_beta @ k.transpose(-1, -2)) * decay * _masks(n)["strictly_lower"])
    grown = cumulative.exp()[..., None]
    new_values = solve @ (v * beta[..., None]) - solve @ (k_beta * grown) @ state
    out = (q * grown) @ state + ((q @ k.transpose(-1, -2)) * decay) @ new_values
    last = cumulative[..., -1:]
    state = state * last.exp()[..., None] + (k * (last - cumulative).exp()[..., None]).transpose(-1, -2) @ new_values
    return out, state


class GatedDeltaNet(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.key_heads, self.value_heads = arch.linear_num_key_heads, arch.linear_num_value_heads
        self.key_dim, self.value_dim = arch.linear_key_head_dim, arch.linear_value_head_dim
        dim, keys, values = arch.hidden_size, self.key_heads * self.key_dim, self.value_heads * self.value_dim
        self.in_proj_qkv = nn.Linear(dim, 2 * keys + values, bias=False)
        self.in_proj_z = nn.Linear(dim, values, bias=False)
        self.in_proj_b = nn.Linear(dim, self.value_heads, bias=False)
        self.in_proj_a = nn.Linear(dim, self.value_heads, bias=False)
        self.kernel = nn.Parameter(torch.empty(2 * keys + values, 1, arch.conv_kernel))
        self.dt_bias = nn.Parameter(torch.empty(self.value_heads))
        self.A_log = nn.Parameter(torch.empty(self.value_heads))
        self.norm = RMSNorm(self.value_dim, arch.norm_eps)  # scaled by its weight alone, whatever the model's norm_offset
        self.out_proj = nn.Linear(values, dim, bias=False)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        channels, _, taps = self.kernel.shape
        return {"c": (1, channels, taps - 1), "r": (1, self.value_heads, self.key_dim, self.value_dim)}

    def forward(self, h: torch.Tensor, conv_state: torch.Tensor, state: torch.Tensor,
                real_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [1, N, dim]; returns the output [1, N, dim], the new conv state and the new recurrent state."""
        n, heads = h.shape[1], self.value_heads
        mixed, conv_state = causal_conv(self.in_proj_qkv(h), conv_state, self.kernel, real_tokens)
        keys = self.key_heads * self.key_dim
        q, k, v = F.silu(mixed).split([keys, keys, heads * self.value_dim], dim=-1)
        share = heads // self.key_heads
        q, k = (t.view(1, n, self.key_heads, 1, self.key_dim).expand(1, n, self.key_heads, share, self.key_dim).reshape(1, n, heads, self.key_dim)
                for t in (q, k))
        q, k, v = _l2_normalised(q) * self.key_dim**-0.5, _l2_normalised(k), v.view(1, n, heads, self.value_dim)
        beta = torch.sigmoid(self.in_proj_b(h))  # [1, N, heads]
        g = -self.A_log.exp() * F.softplus(self.in_proj_a(h) + self.dt_bias)
        if real_tokens is not None:  # padding neither decays nor writes the state
            real = (_masks(n)["positions"] < real_tokens).to(h.dtype)[None, :, None]
            beta, g = beta * real, g * real
        # [1, heads, N, ...]: one chunk per head
        y, state = delta_rule_chunk(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g.transpose(1, 2), beta.transpose(1, 2), state)
        y = y.transpose(1, 2)  # [1, N, heads, dv]
        z = self.in_proj_z(h).view(1, n, heads, self.value_dim)
        y = self.norm(y) * F.silu(z)
        return self.out_proj(y.reshape(1, n, heads * self.value_dim)), conv_state, state
