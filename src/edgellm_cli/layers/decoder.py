"""A decoder-only transformer assembled from an `Architecture`; the whole forward pass in one place."""

import torch
from torch import nn

from edgellm_cli.layers.attention import Attention
from edgellm_cli.layers.mlp import GatedMLP
from edgellm_cli.layers.norms import RMSNorm
from edgellm_cli.layers.rope import RotaryEmbedding
from edgellm_cli.spec import Architecture

# Additive mask value: large enough that exp() underflows to 0, small enough to stay finite.
_MASKED = -1e9


class Block(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.attn_norm = RMSNorm(arch.hidden_size, arch.norm_eps)
        self.attn = Attention(arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim)
        self.mlp_norm = RMSNorm(arch.hidden_size, arch.norm_eps)
        self.mlp = GatedMLP(arch.hidden_size, arch.intermediate_size, arch.activation)

    def forward(self, x, rope, mask, k_cache, v_cache, input_pos):
        h, k_cache, v_cache = self.attn(self.attn_norm(x), rope, mask, k_cache, v_cache, input_pos)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), k_cache, v_cache


class Decoder(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.norm_eps)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        self.tie_weights()
        self.rope = RotaryEmbedding(arch.head_dim, arch.rope_theta, arch.rope_scaling)

    def tie_weights(self) -> None:
        if self.arch.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def cache_shape(self, kv_cache_length: int) -> tuple[int, int, int, int]:
        return (1, kv_cache_length, self.arch.num_kv_heads, self.arch.head_dim)

    def empty_cache(self, kv_cache_length: int) -> dict[str, torch.Tensor]:
        shape = self.cache_shape(kv_cache_length)
        return {f"kv_cache_{kind}_{i}": torch.zeros(shape) for i in range(self.arch.num_layers) for kind in "kv"}

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv_cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """tokens [1, N] at positions input_pos [N] (consecutive); returns logits [1, N, vocab] and the new caches."""
        kv_len = kv_cache["kv_cache_k_0"].shape[1]
        visible = torch.arange(kv_len, dtype=input_pos.dtype)[None, :] <= input_pos[:, None]
        mask = torch.where(visible, 0.0, _MASKED)
        rope = self.rope(input_pos)
        x = self.embed(tokens)
        new_cache = {}
        for i, block in enumerate(self.blocks):
            k, v = f"kv_cache_k_{i}", f"kv_cache_v_{i}"
            x, new_cache[k], new_cache[v] = block(x, rope, mask, kv_cache[k], kv_cache[v], input_pos)
        return {"logits": self.lm_head(self.norm(x)), **new_cache}
