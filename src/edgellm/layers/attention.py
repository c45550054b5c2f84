"""Causal self-attention with grouped-query heads over an externalised KV cache."""

import torch
from torch import nn

from edgellm.layers.kv_cache import matmul_transposed, update_cache
from edgellm.layers.linear import merged
from edgellm.layers.lora import low_rank
from edgellm.layers.norms import make_norm
from edgellm.layers.rope import apply_rotary
from edgellm.spec.schema import Architecture


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


class Attention(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, arch.head_dim
        self.scale = arch.attention_scale if arch.attention_scale is not None else arch.head_dim**-0.5
        self.logit_softcap = arch.attn_logit_softcap
        dim, q_dim, kv_dim = arch.hidden_size, arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
        # With an output gate, each head's rows of q are its query, then its gate (the checkpoint's layout).
        self.gated = arch.attention_output_gate
        self.q = nn.Linear(dim, 2 * q_dim if self.gated else q_dim, bias=arch.attention_bias)
        self.k = nn.Linear(dim, kv_dim, bias=arch.attention_bias)
        self.v = nn.Linear(dim, kv_dim, bias=arch.attention_bias)
        self.out = nn.Linear(q_dim, dim, bias=arch.attention_out_bias)
        self.qkv: nn.Linear | None = None  # q, k and v as one matmul: merge_projections, before loading
        self.norm_projections = arch.qk_norm_over == "projection"  # else each head, over head_dim
        self.q_norm = make_norm(arch, q_dim if self.norm_projections else arch.head_dim) if arch.qk_norm else None
        self.k_norm = make_norm(arch, kv_dim if self.norm_projections else arch.head_dim) if arch.qk_norm else None

    def merge_projections(self) -> dict[str, list[str]]:
        """q, k and v read the same input: one matmul (their weights side by side). Returns each
        merged parameter's parts, by name."""
        self.qkv = merged(self.q, self.k, self.v)
        del self.q, self.k, self.v
        return {f"qkv.{p}": [f"{part}.{p}" for part in "qkv"] for p in ("weight", "bias") if getattr(self.qkv, p) is not None}

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        input_pos: torch.Tensor,
        lora: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, dim]; rope (cos, sin), or None for a layer that does not rotate; mask [1, 1, groups * N, T]
        additive (Decoder.masks); caches K [B, kv_heads, T, head_dim], V [B, kv_heads, head_dim, T];
        lora: swappable LoRA factors (A', B') by projection, q k v o (layers/lora.py)."""
        b, n, _ = x.shape
        kvh, groups, d = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        lora = lora or {}
        q, k, v = self.qkv(x).split([self.num_heads * d * (2 if self.gated else 1), kvh * d, kvh * d], dim=-1)
        if self.gated:
            q, gate = (t.reshape(b, n, self.num_heads * d) for t in q.view(b, n, self.num_heads, 2 * d).chunk(2, dim=-1))
        q, k, v = q + low_rank(x, lora.get("q")), k + low_rank(x, lora.get("k")), v + low_rank(x, lora.get("v"))
        if self.q_norm is not None and self.norm_projections:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, n, self.num_heads, d).transpose(1, 2)
        k = k.view(b, n, kvh, d).transpose(1, 2)
        v = v.view(b, n, kvh, d)
        if self.q_norm is not None and not self.norm_projections:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        k_cache = update_cache(k_cache, k, input_pos[0], 2)
        v_cache = update_cache(v_cache, v.permute(0, 2, 3, 1), input_pos[0], 3)

        # The query heads that share a KV head are adjacent, so folding them into the row axis is a
        # view: one batched matmul per KV head, and the cache is never repeated per query head.
        # Scaling q (not the scores) touches head_dim values per query instead of T.
        q = (q * self.scale).reshape(b, kvh, groups * n, d)
        scores = softcap(matmul_transposed(q, k_cache), self.logit_softcap) + mask
        probs = torch.softmax(scores.float(), dim=-1).type_as(q)
        y = matmul_transposed(probs, v_cache).view(b, self.num_heads, n, d).transpose(1, 2)
        y = y.reshape(b, n, self.num_heads * d)
        if self.gated:
            y = y * torch.sigmoid(gate)
        return self.out(y) + low_rank(y, lora.get("o")), k_cache, v_cache
