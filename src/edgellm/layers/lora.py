"""Swappable LoRA: low-rank weights a signature takes as inputs, in LiteRT-LM's convention.

A projection with LoRA computes `W x + (x @ A') @ B'`, where A' [in, r] is the adapter's lora_A
transposed and already scaled (alpha / r) and B' [r, out] its lora_B transposed. LiteRT-LM binds a
loaded adapter file's tensors to the signature inputs of the same names, and fills the inputs it has
no tensor for with zeros: so a rank-r base model runs any adapter of rank up to r (zero-padded), and
runs as the base model with all-zero inputs.
"""

from __future__ import annotations

import torch

# The attention projections LiteRT-LM feeds (runtime/util/lora_util.cc's input-name pattern).
TARGETS = ("q", "k", "v", "o")


def lora_input_name(target: str, factor: str, layer: int) -> str:
    """`lora_atten_{q|k|v|o}_{a|b}_prime_weight_{layer}`: the signature input (and adapter tensor) name."""
    return f"lora_atten_{target}_{factor}_prime_weight_{layer}"


def lora_shapes(in_features: dict[str, int], out_features: dict[str, int], rank: int, targets: list[str], layers: list[int]) -> dict[str, tuple[int, int]]:
    """Every LoRA input's shape, by name: A' [in, rank] and B' [rank, out] per target and (attention) layer."""
    shapes = {}
    for layer in layers:
        for target in targets:
            shapes[lora_input_name(target, "a", layer)] = (in_features[target], rank)
            shapes[lora_input_name(target, "b", layer)] = (rank, out_features[target])
    return shapes


def layer_lora(inputs: dict[str, torch.Tensor], layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One layer's (A', B') per target, from a signature's flat LoRA inputs (empty: no LoRA)."""
    return {
        target: (inputs[a], inputs[lora_input_name(target, "b", layer)])
        for target in TARGETS
        if (a := lora_input_name(target, "a", layer)) in inputs
    }


def low_rank(x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor | int:
    """(x @ A') @ B', or 0 for a projection without LoRA."""
    if factors is None:
        return 0
    a, b = factors
    return torch.matmul(torch.matmul(x, a), b)
