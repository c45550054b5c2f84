"""A bidirectional text encoder (BERT, MiniLM) that pools its token states into one embedding.

Every token sees every real token: padding is hidden by an additive mask built from
`attention_mask` (1 for a token, 0 for padding), so one fixed-length signature serves any
shorter input. Blocks are post-norm (BERT's norm(x + sublayer(x))); positions are a learned table.
"""

import torch
import torch.nn.functional as F
from torch import nn

from edgellm.layers.mlp import MLP
from edgellm.layers.norms import make_norm
from edgellm.spec.schema import Architecture

# Additive mask value, as in the decoder: exp() underflows to 0 and the scores stay finite.
MASKED = -1e9


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, with q [B, H, N, D], k and v [B, H, T, D], bias broadcast to [B, H, N, T]."""
    probs = torch.softmax((q @ k.transpose(-1, -2)) * scale + bias, dim=-1)
    return probs @ v


def padding_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] of 1 (token) / 0 (padding) -> additive [B, 1, 1, T] that hides the padding keys."""
    return (1.0 - attention_mask.float())[:, None, None, :] * MASKED


class SelfAttention(nn.Module):
    """Multi-head attention of the input over itself, with biases as BERT has them."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.num_heads, self.head_dim = arch.num_heads, arch.head_dim
        self.scale = arch.attention_scale if arch.attention_scale is not None else arch.head_dim**-0.5
        dim, inner = arch.hidden_size, arch.num_heads * arch.head_dim
        self.q = nn.Linear(dim, inner, bias=arch.attention_bias)
        self.k = nn.Linear(dim, inner, bias=arch.attention_bias)
        self.v = nn.Linear(dim, inner, bias=arch.attention_bias)
        self.out = nn.Linear(inner, dim, bias=arch.attention_out_bias)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, H * D] -> [B, H, N, D]."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        y = attend(self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x)), bias, self.scale)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class EncoderBlock(nn.Module):
    """Post-norm: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.attn = SelfAttention(arch)
        self.attn_norm = make_norm(arch)
        self.mlp = MLP(arch)
        self.mlp_norm = make_norm(arch)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, bias))
        return self.mlp_norm(x + self.mlp(x))


class TextEncoder(nn.Module):
    """tokens [1, N] and attention_mask [1, N] -> {"embedding": [1, hidden]}, pooled as the checkpoint declares."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.position_embed = nn.Embedding(arch.max_position_embeddings, arch.hidden_size)
        self.type_embed = nn.Embedding(arch.type_vocab_size, arch.hidden_size) if arch.type_vocab_size else None
        self.embed_norm = make_norm(arch) if arch.embedding_norm else None
        self.blocks = nn.ModuleList(EncoderBlock(arch) for _ in range(arch.num_layers))

    def tie_weights(self) -> None:
        """Nothing is shared; here so every model kind loads the same way."""

    def token_states(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last block's output [1, N, hidden] (padding rows included: pooling drops them)."""
        x = self.embed(tokens) + self.position_embed.weight[: tokens.shape[1]]
        if self.type_embed is not None:
            x = x + self.type_embed.weight[0]  # one segment: sentence embeddings never pair texts
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        bias = padding_bias(attention_mask)
        for block in self.blocks:
            x = block(x, bias)
        return x

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.token_states(tokens, attention_mask)
        if self.arch.pooling == "cls":
            pooled = states[:, 0]
        else:  # mean over the real tokens, as sentence-transformers' Pooling does
            weights = attention_mask.float()[..., None]
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.arch.normalize_embedding:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return {"embedding": pooled}
