"""Causal self-attention with grouped-query heads over an externalised KV cache."""

import math

import torch
from torch import nn

from edgellm_cli.layers.kv_cache import update_cache
from edgellm_cli.layers.rope import apply_rotary


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.k = nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.v = nn.Linear(dim, num_kv_heads * head_dim, bias=False)
        self.out = nn.Linear(num_heads * head_dim, dim, bias=False)

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
        q = apply_rotary(self.q(x).view(b, n, self.num_heads, d), *rope)
        k = apply_rotary(self.k(x).view(b, n, kvh, d), *rope)
        v = self.v(x).view(b, n, kvh, d)
        k_cache = update_cache(k_cache, k, input_pos[0])
        v_cache = update_cache(v_cache, v, input_pos[0])

        # Fold the query heads that share a KV head into the row axis: one batched matmul per
        # KV head, and the cache is never repeated per query head.
        q = q.view(b, n, kvh, groups, d).permute(0, 2, 3, 1, 4).reshape(b, kvh, groups * n, d)
        scores = q @ k_cache.permute(0, 2, 3, 1) * (1.0 / math.sqrt(d))
        scores = scores.view(b, kvh, groups, n, -1) + mask
        probs = torch.softmax(scores.float(), dim=-1).type_as(q).view(b, kvh, groups * n, -1)
        y = probs @ v_cache.transpose(1, 2)
        y = y.view(b, kvh, groups, n, d).permute(0, 3, 1, 2, 4).reshape(b, n, self.num_heads * d)
        return self.out(y), k_cache, v_cache
