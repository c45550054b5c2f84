"""A decoder-only transformer assembled from an `Architecture`; the whole forward pass in one place."""

import torch
from torch import nn

from edgellm.layers.attention import Attention, softcap
from edgellm.layers.conv import ShortConv
from edgellm.layers.linear_attention import GatedDeltaNet
from edgellm.layers.lora import layer_lora, lora_shapes
from edgellm.layers.mlp import MLP
from edgellm.layers.norms import make_norm
from edgellm.layers.rope import RotaryEmbedding
from edgellm.spec.schema import Architecture

# Additive mask value: large enough that exp() underflows to 0, small enough to stay finite.
_MASKED = -1e9


def _optional(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if module is None else module(x)


class Block(nn.Module):
    """A token mixer (attention, a short convolution or linear attention) and an MLP, sequential or in
    parallel, each with an optional norm on its input (pre-norm) and on its output (post-norm; both:
    a sandwich), added to the residual stream scaled or not."""

    def __init__(self, arch: Architecture, layer: int):
        super().__init__()
        self.sliding = arch.layer_type(layer) == "sliding_attention"
        self.rotates = arch.uses_rope(layer)
        self.parallel, self.residual_scale = arch.parallel_residual, arch.residual_multiplier
        self.attn_norm = make_norm(arch) if arch.pre_norm else None
        mixer = arch.layer_type(layer)
        self.attn = Attention(arch) if arch.is_attention(layer) else None
        self.conv = ShortConv(arch) if mixer == "conv" else None
        self.linear_attn = GatedDeltaNet(arch) if mixer == "linear_attention" else None
        self.recurrent = self.conv or self.linear_attn  # the mixer with a state that is not per position, if any
        self.state_letters = "".join(self.recurrent.state_shapes()) if self.recurrent else "kv"
        self.post_attn_norm = make_norm(arch) if arch.post_attention_norm else None
        self.mlp_norm = make_norm(arch) if arch.pre_norm and not arch.parallel_residual else None
        self.mlp = MLP(arch)
        self.post_mlp_norm = make_norm(arch) if arch.post_mlp_norm else None

    def state_shapes(self, kv_cache_length: int, kv_heads: int, head_dim: int) -> dict[str, tuple[int, ...]]:
        """This layer's state tensors by letter, kv_cache_{letter}_{layer}: K [1, kv_heads, T, head_dim]
        and V [1, kv_heads, head_dim, T] (layers/kv_cache.py says why), or a recurrent mixer's."""
        if self.recurrent is not None:
            return self.recurrent.state_shapes()
        return {"k": (1, kv_heads, kv_cache_length, head_dim), "v": (1, kv_heads, head_dim, kv_cache_length)}

    def forward(self, x, rope, mask, state: tuple[torch.Tensor, ...], input_pos, real_tokens, lora=None):
        """`state`: the layer's tensors in state_shapes order; returns the new x and state."""
        h = _optional(self.attn_norm, x)
        if self.recurrent is not None:
            mixed, *state = self.recurrent(h, *state, real_tokens)
        else:
            mixed, *state = self.attn(h, rope if self.rotates else None, mask, *state, input_pos, lora)
        if self.parallel:
            return x + self._scaled(mixed) + self._scaled(self.mlp(h)), tuple(state)
        x = x + self._scaled(_optional(self.post_attn_norm, mixed))
        out = _optional(self.post_mlp_norm, self.mlp(_optional(self.mlp_norm, x)))
        return x + self._scaled(out), tuple(state)

    def _scaled(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.residual_scale == 1.0 else out * self.residual_scale


class Decoder(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.blocks = nn.ModuleList(Block(arch, i) for i in range(arch.num_layers))
        self.norm = make_norm(arch)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=arch.lm_head_bias)
        self.tie_weights()
        self.rope = RotaryEmbedding(arch.rotary_dim, arch.rope_theta, arch.rope_scaling)
        # Sliding layers may rotate with their own base (two RoPE bases); otherwise they share.
        local = arch.rope_local_theta is not None
        self.rope_local = RotaryEmbedding(arch.rotary_dim, arch.rope_local_theta) if local else None

    def merge_projections(self) -> dict[str, list[str]]:
        """Merge the linear layers that read the same input (q/k/v, gate/up): fewer, larger matmuls
        for the runtime. Returns each merged parameter's parts, by full name."""
        return {
            f"blocks.{i}.{kind}.{name}": [f"blocks.{i}.{kind}.{part}" for part in parts]
            for i, block in enumerate(self.blocks)
            for kind, module in (("attn", block.attn), ("mlp", block.mlp)) if module is not None
            for name, parts in module.merge_projections().items()
        }

    def tie_weights(self) -> None:
        if self.arch.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def state_shapes(self, kv_cache_length: int) -> dict[str, tuple[int, ...]]:
        """Every layer's state by input name, kv_cache_{letter}_{layer} (Block.state_shapes)."""
        return {
            f"kv_cache_{letter}_{i}": shape
            for i, block in enumerate(self.blocks)
            for letter, shape in block.state_shapes(kv_cache_length, self.arch.num_kv_heads, self.arch.head_dim).items()
        }

    def empty_cache(self, kv_cache_length: int) -> dict[str, torch.Tensor]:
        return {name: torch.zeros(shape) for name, shape in self.state_shapes(kv_cache_length).items()}

    def lora_shapes(self, rank: int, targets: list[str]) -> dict[str, tuple[int, int]]:
        """The swappable LoRA inputs of rank `rank` for the attention projections `targets` (layers/lora.py)."""
        dim, q_dim, kv_dim = self.arch.hidden_size, self.arch.num_heads * self.arch.head_dim, self.arch.num_kv_heads * self.arch.head_dim
        ins, outs = {"q": dim, "k": dim, "v": dim, "o": q_dim}, {"q": q_dim, "k": kv_dim, "v": kv_dim, "o": dim}
        attention = [i for i in range(self.arch.num_layers) if self.arch.is_attention(i)]
        return lora_shapes(ins, outs, rank, targets, attention)

    def masks(self, input_pos: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Additive masks, causal and causal within the sliding window, as every layer adds them to its
        scores: [1, 1, groups * N, T], the N query rows once per query head sharing a KV head."""
        key_pos = torch.arange(kv_len, dtype=input_pos.dtype)[None, :]
        query_pos = input_pos[:, None]
        causal = key_pos <= query_pos
        groups = self.arch.num_heads // self.arch.num_kv_heads

        def rows(visible: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.where(visible, 0.0, _MASKED)] * groups)[None, None]

        if self.arch.sliding_window is None:
            return rows(causal), None
        return rows(causal), rows(causal & (key_pos > query_pos - self.arch.sliding_window))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv_cache: dict[str, torch.Tensor], logits: bool = True,
                lora: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """tokens [1, N] at positions input_pos [N] (consecutive); returns logits [1, N, vocab] and the
        new caches, or with `logits=False` the final hidden states [1, N, hidden] instead of logits.
        `lora`: swappable LoRA inputs by name (lora_shapes)."""
        first_keys = next(name for name in kv_cache if name.startswith("kv_cache_k_"))
        full_mask, sliding_mask = self.masks(input_pos, kv_cache[first_keys].shape[2])
        rope = self.rope(input_pos)
        rope_local = self.rope_local(input_pos) if self.rope_local is not None else rope
        x = self.embed(tokens)
        if self.arch.embedding_scale:
            x = x * (self.arch.hidden_size**0.5)
        if self.arch.embedding_multiplier != 1.0:
            x = x * self.arch.embedding_multiplier
        real_tokens = real_token_count(input_pos)
        new_cache = {}
        for i, block in enumerate(self.blocks):
            names = [f"kv_cache_{letter}_{i}" for letter in block.state_letters]
            mask, block_rope = (sliding_mask, rope_local) if block.sliding else (full_mask, rope)
            x, state = block(x, block_rope, mask, tuple(kv_cache[n] for n in names), input_pos, real_tokens, layer_lora(lora or {}, i))
            new_cache.update(zip(names, state))
        hidden = self.norm(x)
        if not logits:
            return {"hidden": hidden, **new_cache}
        return {"logits": output_logits(self.lm_head, self.arch, hidden), **new_cache}


def real_token_count(input_pos: torch.Tensor) -> torch.Tensor | None:
    """How many of a prefill's tokens are real: a runtime pads a prefill past its real tokens with
    positions that do not increase (LiteRT-LM's convention, and edgellm's), so the real ones are those
    up to the first position that is not above the one before. None for a single token (decode)."""
    if input_pos.shape[0] == 1:
        return None
    return 1 + (input_pos[1:] > input_pos[:-1]).to(torch.int32).sum()


def output_logits(lm_head: nn.Linear, arch: Architecture, hidden: torch.Tensor) -> torch.Tensor:
    """The output head on the final hidden states: divided, then softcapped, as the architecture says."""
    logits = lm_head(hidden)
    if arch.logit_divisor != 1.0:
        logits = logits / arch.logit_divisor
    return softcap(logits, arch.final_logit_softcap)
