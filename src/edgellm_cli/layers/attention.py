"""Causal self-attention with grouped-query heads over an externalised KV cache."""

import torch
from torch import nn

from edgellm_cli.layers.kv_cache import update_cache
from edgellm_cli.layers.norms import make_norm
from edgellm_cli.layers.rope import apply_rotary
from edgellm_cli.spec import Architecture


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


class Attention(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, arch.head_dim
        self.scale = arch.attention_scale if arch.attention_scale is not None else arch.head_dim**-0.5
        self.logit_softcap = arch.attn_logit_softcap
        dim, q_dim, kv_dim = arch.hidden_size, arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
        self.q = nn.Linear(dim, q_dim, bias=arch.attention_bias)
        self.k = nn.Linear(dim, kv_dim, bias=arch.attention_bias)
        self.v = nn.Linear(dim, kv_dim, bias=arch.attention_bias)
        self.out = nn.Linear(q_dim, dim, bias=arch.attention_out_bias)
        self.q_norm = make_norm(arch, arch.head_dim) if arch.qk_norm else None
        self.k_norm = make_norm(arch, arch.head_dim) if arch.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, dim]; mask [N, T] additive; caches [B, T, kv_heads, head_dim]."""
        b, n, _ = x.shape
        kvh, groups, d = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        q = self.q(x).view(b, n, self.num_heads, d)
        k = self.k(x).view(b, n, kvh, d)
        v = self.v(x).view(b, n, kvh, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        k_cache = update_cache(k_cache, k, input_pos[0])
        v_cache = update_cache(v_cache, v, input_pos[0])

        # Fold the query heads that share a KV head into the row axis: one batched matmul per
        # KV head, and the cache is never repeated per query head.
        q = q.view(b, n, kvh, groups, d).permute(0, 2, 3, 1, 4).reshape(b, kvh, groups * n, d)
        scores = softcap(q @ k_cache.permute(0, 2, 3, 1) * self.scale, self.logit_softcap)
        scores = scores.view(b, kvh, groups, n, -1) + mask
        probs = torch.softmax(scores.float(), dim=-1).type_as(q).view(b, kvh, groups * n, -1)
        y = probs @ v_cache.transpose(1, 2)
        y = y.view(b, kvh, groups, n, d).permute(0, 3, 1, 2, 4).reshape(b, n, self.num_heads * d)
        return self.out(y), k_cache, v_cache
