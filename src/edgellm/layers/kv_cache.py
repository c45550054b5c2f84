"""The externalised KV cache: caches come in as inputs and leave as outputs, updated at `input_pos`.

The decoder keeps K as [batch, kv_heads, T, head_dim] and V as [batch, kv_heads, head_dim, T]
(litert-torch's layout): both attention matmuls then read the cache as a transposed right-hand
side, which LiteRT's CPU kernels take as is, so no layer copies its cache to transpose it.
Both matmuls are `matmul_transposed`, which the converter lowers to one batched matmul.
The update is its own op so the converter can lower it to one `dynamic_update_slice`
(an in-place write) instead of a scatter; eagerly it is an `index_copy`.
"""

import torch


@torch.library.custom_op("edgellm::update_cache", mutates_args=())
def update_cache(cache: torch.Tensor, update: torch.Tensor, start: torch.Tensor, dim: int) -> torch.Tensor:
    """Write `update` into `cache` at positions start .. start+N-1 along `dim` (N = update.shape[dim])."""
    positions = torch.arange(update.shape[dim], dtype=torch.long) + start.long()
    return cache.index_copy(dim, positions, update)


@update_cache.register_fake
def _(cache: torch.Tensor, update: torch.Tensor, start: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.empty_like(cache)


@torch.library.custom_op("edgellm::matmul_transposed", mutates_args=())
def matmul_transposed(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """lhs [..., M, K] @ rhs [..., N, K]^T, lowered to one batched matmul that reads `rhs` transposed
    (torch.export would otherwise put a transpose, a copy of the whole cache, before the matmul)."""
    return lhs @ rhs.transpose(-1, -2)


@matmul_transposed.register_fake
def _(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return lhs.new_empty((*lhs.shape[:-1], rhs.shape[-2]))
