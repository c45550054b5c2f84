"""An encoder-decoder (T5) assembled from an `Architecture`: pre-norm blocks with RMS norms and no
biases, a learned relative position bias shared by all blocks of a stack, and a decoder whose
cross-attention reads keys and values computed once from the encoder output.

The split follows the LiteRT convention for seq2seq (litert-torch's T5 example has `encode` and
`decode` signatures): `encode_{N}` runs the encoder over N tokens and returns every decoder
layer's cross-attention K/V (`cross_k_{i}`, `cross_v_{i}`, padded to the longest N); `decode`
takes one token, its position, the encoder's padding mask, those cross caches and the
self-attention caches (`kv_cache_k_{i}` / `kv_cache_v_{i}`, as decoders have them), and returns
logits, the updated self-attention caches and its greedy pick.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgellm.layers.encoder import MASKED, SelfAttention, attend, padding_bias
from edgellm.layers.kv_cache import update_cache
from edgellm.layers.mlp import MLP
from edgellm.layers.norms import make_norm
from edgellm.spec.schema import Architecture


def relative_buckets(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (key - query): exact for small distances, logarithmic
    bins up to max_distance, one bucket beyond. The same float32 ops as transformers, so the
    boundaries fall where they do there."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).to(relative.dtype) * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).to(relative.dtype)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(relative < max_exact, relative, large)


class RelativePositionBias(nn.Module):
    """bias[1, heads, N, T] for queries at `query_pos` over keys 0..T-1.

    Distances past max_distance all share the last bucket, so buckets are tabulated once for
    -max_distance..max_distance (in torch, at build time) and the graph only clamps and gathers.
    """

    def __init__(self, arch: Architecture, bidirectional: bool):
        super().__init__()
        self.max_distance = arch.relative_attention_max_distance
        self.bias = nn.Embedding(arch.relative_attention_num_buckets, arch.num_heads)
        distances = torch.arange(-self.max_distance, self.max_distance + 1, device="cpu")  # computed, not loaded (meta-safe)
        table = relative_buckets(distances, bidirectional, arch.relative_attention_num_buckets, self.max_distance)
        self.register_buffer("buckets", table.to(torch.int32), persistent=False)

    def forward(self, query_pos: torch.Tensor, key_len: int) -> torch.Tensor:
        keys = torch.arange(key_len, dtype=query_pos.dtype)[None, :]
        distance = torch.clamp(keys - query_pos[:, None], -self.max_distance, self.max_distance) + self.max_distance
        return self.bias(self.buckets[distance]).permute(2, 0, 1)[None]


class T5Block(nn.Module):
    """Pre-norm self-attention, then (decoder) cross-attention, then the feed-forward, each residual."""

    def __init__(self, arch: Architecture, cross: bool):
        super().__init__()
        self.attn_norm = make_norm(arch)
        self.attn = SelfAttention(arch)
        self.cross_norm = make_norm(arch) if cross else None
        self.cross = SelfAttention(arch) if cross else None
        self.mlp_norm = make_norm(arch)
        self.mlp = MLP(arch)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.mlp_norm(x))

    def cross_kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This block's cross-attention keys and values of the encoder output, [B, S, heads, dim]."""
        b, s, _ = states.shape
        shape = (b, s, self.cross.num_heads, self.cross.head_dim)
        return self.cross.k(states).view(shape), self.cross.v(states).view(shape)

    def decode(self, x, input_pos, self_bias, k_cache, v_cache, cross_k, cross_v, cross_bias):
        """x [B, N, dim]; caches [B, T, heads, dim]; cross K/V [B, S, heads, dim]."""
        attn = self.attn
        h = self.attn_norm(x)
        q, k, v = (proj(h).view(*h.shape[:2], attn.num_heads, attn.head_dim) for proj in (attn.q, attn.k, attn.v))
        k_cache = update_cache(k_cache, k, input_pos[0], 1)
        v_cache = update_cache(v_cache, v, input_pos[0], 1)
        y = attend(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2), self_bias, attn.scale)
        x = x + attn.out(y.transpose(1, 2).reshape(*x.shape[:2], -1))
        h = self.cross_norm(x)
        y = attend(self.cross.heads(self.cross.q(h)), cross_k.transpose(1, 2), cross_v.transpose(1, 2), cross_bias, self.cross.scale)
        x = x + self.cross.out(y.transpose(1, 2).reshape(*x.shape[:2], -1))
        return self.feed_forward(x), k_cache, v_cache


class EncoderDecoder(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.num_decoder_layers = arch.num_decoder_layers or arch.num_layers
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)  # shared by encoder and decoder
        self.encoder_position_bias = RelativePositionBias(arch, bidirectional=True)
        self.encoder_blocks = nn.ModuleList(T5Block(arch, cross=False) for _ in range(arch.num_layers))
        self.encoder_norm = make_norm(arch)
        self.decoder_position_bias = RelativePositionBias(arch, bidirectional=False)
        self.decoder_blocks = nn.ModuleList(T5Block(arch, cross=True) for _ in range(self.num_decoder_layers))
        self.decoder_norm = make_norm(arch)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.arch.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def empty_cache(self, kv_cache_length: int) -> dict[str, torch.Tensor]:
        shape = (1, kv_cache_length, self.arch.num_heads, self.arch.head_dim)
        return {f"kv_cache_{kind}_{i}": torch.zeros(shape) for i in range(self.num_decoder_layers) for kind in "kv"}

    def encode(self, tokens: torch.Tensor, attention_mask: torch.Tensor, cross_length: int) -> dict[str, torch.Tensor]:
        """tokens, attention_mask [1, N] -> cross_k_{i} / cross_v_{i} [1, cross_length, heads, dim], zero past N."""
        n = tokens.shape[1]
        bias = self.encoder_position_bias(torch.arange(n, dtype=torch.int32), n) + padding_bias(attention_mask)
        x = self.embed(tokens)
        for block in self.encoder_blocks:
            x = block.feed_forward(x + block.attn(block.attn_norm(x), bias))
        states = self.encoder_norm(x)
        out = {}
        for i, block in enumerate(self.decoder_blocks):
            k, v = block.cross_kv(states)
            pad = (0, 0, 0, 0, 0, cross_length - n)  # rows past N stay zero; decode's encoder_mask hides them
            out[f"cross_k_{i}"], out[f"cross_v_{i}"] = F.pad(k, pad), F.pad(v, pad)
        return out

    def decode(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, encoder_mask: torch.Tensor, caches: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """tokens [1, N] at consecutive positions input_pos [N]; encoder_mask [1, S]; caches: the
        self-attention kv_cache_* and the encoder's cross_*. Returns logits [1, N, vocab] and the new kv_cache_*."""
        kv_len = caches["kv_cache_k_0"].shape[1]
        causal = torch.arange(kv_len, dtype=input_pos.dtype)[None, :] <= input_pos[:, None]
        self_bias = self.decoder_position_bias(input_pos, kv_len) + torch.where(causal, 0.0, MASKED)
        cross_bias = padding_bias(encoder_mask)
        x = self.embed(tokens)
        new = {}
        for i, block in enumerate(self.decoder_blocks):
            k, v = f"kv_cache_k_{i}", f"kv_cache_v_{i}"
            x, new[k], new[v] = block.decode(x, input_pos, self_bias, caches[k], caches[v], caches[f"cross_k_{i}"], caches[f"cross_v_{i}"], cross_bias)
        x = self.decoder_norm(x)
        if self.arch.scale_decoder_outputs:
            x = x * self.arch.hidden_size**-0.5
        return {"logits": self.lm_head(x), **new}


class _Encode(nn.Module):
    def __init__(self, model: EncoderDecoder, cross_length: int):
        super().__init__()
        self.model, self.cross_length = model, cross_length

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.encode(tokens, attention_mask, self.cross_length)


class _Decode(nn.Module):
    def __init__(self, model: EncoderDecoder):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, encoder_mask: torch.Tensor, **caches: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model.decode(tokens, input_pos, encoder_mask, caches)
        out["next_token"] = out["logits"][:, -1].argmax(-1, keepdim=True).to(torch.int32)  # a greedy loop reads one int
        return out


def seq2seq_signatures(model: EncoderDecoder, lengths: list[int], kv_cache_length: int) -> list[tuple[str, nn.Module, dict]]:
    """encode_{N} per length and one decode, with the shapes the module docstring gives."""
    longest = max(lengths)
    encode = _Encode(model.eval(), longest)
    signatures = [
        (f"encode_{n}", encode, {"tokens": torch.zeros((1, n), dtype=torch.int32), "attention_mask": torch.ones((1, n), dtype=torch.int32)})
        for n in sorted(lengths)
    ]
    cross = {name: t for name, t in encode(torch.zeros((1, 1), dtype=torch.int32), torch.ones((1, 1), dtype=torch.int32)).items()}
    decode_inputs = {
        "tokens": torch.zeros((1, 1), dtype=torch.int32),
        "input_pos": torch.zeros(1, dtype=torch.int32),
        "encoder_mask": torch.ones((1, longest), dtype=torch.int32),
        **model.empty_cache(kv_cache_length),
        **{name: torch.zeros_like(t) for name, t in cross.items()},
    }
    return [*signatures, ("decode", _Decode(model), decode_inputs)]
