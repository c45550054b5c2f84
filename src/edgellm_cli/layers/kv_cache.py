"""The externalised KV cache: caches come in as inputs and leave as outputs, updated at `input_pos`.

Layout is [batch, kv_cache_length, num_kv_heads, head_dim], the LiteRT-LM / MediaPipe convention.
The update is its own op so the converter can lower it to one `dynamic_update_slice`
(an in-place write) instead of a scatter; eagerly it is an `index_copy`.
"""

import torch


@torch.library.custom_op("edgellm::update_cache", mutates_args=())
def update_cache(cache: torch.Tensor, update: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Write `update` [B, N, heads, dim] into `cache` at positions start .. start+N-1 along dim 1."""
    positions = torch.arange(update.shape[1], dtype=torch.long) + start.long()
    return cache.index_copy(1, positions, update)


@update_cache.register_fake
def _(cache: torch.Tensor, update: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(cache)
