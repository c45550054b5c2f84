"""Lowering through litert_torch: each (name, module, sample inputs) becomes one signature of one
`.tflite`, with edgellm's own lowerings of the ops LiteRT runs better as one op."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from edgellm.errors import EdgeLLMError
from edgellm.infra.quiet import native_output_to


@functools.cache
def _register_lowerings() -> None:
    """Lower our cache update to stablehlo.dynamic_update_slice, which LiteRT runs in place, and the
    attention matmuls to dot_general contracting both last axes (a batched matmul with adj_y)."""
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import stablehlo
    from litert_torch.backend import lowerings

    import edgellm.layers.kv_cache  # noqa: F401 - defines the ops lowered here, whatever kind of model is converted

    @lowerings.lower(torch.ops.edgellm.update_cache)
    def _update_cache(lctx, cache, update, start, dim):
        i32 = ir.IntegerType.get_signless(32)
        zero = stablehlo.constant(ir.DenseElementsAttr.get_splat(ir.RankedTensorType.get([], i32), ir.IntegerAttr.get(i32, 0)))
        starts = [zero] * ir.RankedTensorType(cache.type).rank
        starts[dim] = start
        return stablehlo.dynamic_update_slice(cache, update, starts)

    @lowerings.lower(torch.ops.edgellm.matmul_transposed)
    def _matmul_transposed(lctx, lhs, rhs):
        lhs_type, rhs_type = ir.RankedTensorType(lhs.type), ir.RankedTensorType(rhs.type)
        batch, last = list(range(lhs_type.rank - 2)), lhs_type.rank - 1
        dims = stablehlo.DotDimensionNumbers.get(
            lhs_batching_dimensions=batch, rhs_batching_dimensions=batch, lhs_contracting_dimensions=[last], rhs_contracting_dimensions=[last]
        )
        result = ir.RankedTensorType.get([*lhs_type.shape[:-1], rhs_type.shape[-2]], lhs_type.element_type)
        return stablehlo.dot_general(result, lhs, rhs, dims)


def write_tflite(signatures: list[tuple[str, torch.nn.Module, dict[str, torch.Tensor]]], out_path: Path, log_path: Path) -> None:
    """Lower each (name, module, sample inputs) as one signature of one `.tflite` at `out_path`."""
    import litert_torch

    _register_lowerings()
    litert_torch.config.show_progress = False
    converter = litert_torch.Converter()
    for name, module, sample in signatures:
        converter.signature(name, module, sample_kwargs=sample)
    try:
        with torch.no_grad(), native_output_to(log_path):
            # Lightweight conversion keeps weights out of the lowered module until the flatbuffer is
            # written: same ops and numbers, far less memory and time (bench/convert_vs_litert_torch.py).
            converter.convert(lightweight_conversion=True).export(str(out_path))
    except Exception as exc:
        raise EdgeLLMError(f"litert_torch could not convert the model ({type(exc).__name__}: {str(exc).splitlines()[0]}); see {log_path}") from exc
