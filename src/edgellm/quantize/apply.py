"""A recipe applied to a `.tflite` through ai-edge-quantizer: which weights each rule takes, GPTQ
weights written in, degenerate scales repaired, and the result checked against the float model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.quantize.recipes import QuantRule, Recipe


@dataclass(frozen=True)
class OpInfo:
    name: str  # TFLite op name
    scope: str  # its output tensor names, what rules match against
    weight_shape: tuple[int, ...] | None  # the constant weight input of FULLY_CONNECTED / EMBEDDING_LOOKUP
    position: tuple[int, int]  # (subgraph, operator) index in the file


_WEIGHT_OPS = {"FULLY_CONNECTED", "EMBEDDING_LOOKUP"}


def model_ops(model_path: Path) -> list[OpInfo]:
    """Every op of every signature, as ai-edge-quantizer sees them."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(str(model_path))
    ops = []
    for s, subgraph in enumerate(model.subgraphs):
        for o, op in enumerate(subgraph.operators):
            code = model.operatorCodes[op.opcodeIndex].builtinCode
            name = tfl.TFL_OP_CODE_TO_NAME.get(code, f"BUILTIN_{code}")  # ops it cannot quantize have no name there
            weight = subgraph.tensors[op.inputs[1]] if name in _WEIGHT_OPS and len(op.inputs) > 1 else None
            shape = tuple(int(d) for d in weight.shape) if weight is not None and weight.buffer > 0 else None
            ops.append(OpInfo(name, tfl.get_op_scope(op, subgraph.tensors), shape, (s, o)))
    return ops


def _selects(rule: QuantRule, op: OpInfo) -> bool:
    return ("*" in rule.ops or op.name in rule.ops) and re.search(rule.match, op.scope) is not None


def _winner(recipe: Recipe, op: OpInfo) -> QuantRule | None:
    """The rule that decides `op`: the last that selects it."""
    return next((r for r in reversed(recipe.rules) if _selects(r, op)), None)


def _short_name(scope: str) -> str:
    """`Block_3.Linear_down` for our long module-path tensor names; the signature output otherwise."""
    blocks, linears = re.findall(r"Block_\d+", scope), re.findall(r"Linear_[a-z_]+?(?=;|$)", scope)
    if blocks and linears:
        return f"{blocks[-1]}.{linears[-1]}"
    return re.sub(r"^(prefill_\d+|head_\d+|decode)_", "", scope.split(";")[0])


def plan_recipe(recipe: Recipe, ops: list[OpInfo]) -> tuple[list[dict], list[str]]:
    """The ai-edge-quantizer recipe for these ops, and the weights that fell back from blocks to channels.

    A blockwise rule cannot split a weight whose input dimension is not a multiple of the block;
    such weights keep the rule's bits with one scale per channel instead.
    """
    for index, rule in enumerate(recipe.rules, 1):
        if not any(_selects(rule, op) for op in ops):
            raise EdgeLLMError(
                f"recipe {recipe.name} rule {index} (match {rule.match!r}, ops {rule.ops}) selects no op of this model; "
                "fix its regular expression or op names"
            )
    entries, fallbacks = recipe.to_aeq(), []
    per_channel: dict[tuple[int, str], set[str]] = {}  # (rule index, op name): scopes
    for op in ops:
        winner = _winner(recipe, op)
        if winner is None or op.weight_shape is None or not winner.granularity.startswith("block"):
            continue
        if op.weight_shape[-1] % int(winner.granularity.removeprefix("block")):
            per_channel.setdefault((recipe.rules.index(winner), op.name), set()).add(re.escape(op.scope))
            fallbacks.append(_short_name(op.scope))
    # One rule per winner and op type: the quantizer compiles each distinct pattern, and Python's
    # regex cache (512 patterns) thrashed at one per op (minutes on SmolLM2 with 128-blocks).
    for (index, op_name), scopes in per_channel.items():
        match = "^(?:" + "|".join(sorted(scopes)) + ")$"
        entries += recipe.rules[index].model_copy(update={"match": match, "ops": [op_name], "granularity": "channel"}).to_aeq()
    return entries, sorted(set(fallbacks))


def calibrated_weights(recipe: Recipe, ops: list[OpInfo], hessians: dict[int, object], readers: dict[int, list[tuple[int, int, int]]]) -> list[int]:
    """The calibrated weights (float buffers) whose every reader is decided by a gptq rule."""
    by_position = {op.position: op for op in ops}
    chosen = []
    for buffer in hessians:
        rules = [_winner(recipe, by_position[(s, o)]) for s, o, _ in readers.get(buffer, [])]
        if rules and all(rule is not None and rule.algorithm == "gptq" for rule in rules):
            chosen.append(buffer)
    return chosen


def quantize_tflite(model_path: Path, recipe: Recipe, out_path: Path, calibration: Path | None = None) -> dict:
    """Write `out_path`, the model quantized by `recipe` (GPTQ where its rules say so, from the
    calibration stage's folder); returns its sizes, the block fallbacks, how the quantized model
    agrees with the float one and the peak memory of the worker that quantized it."""
    from edgellm.infra.isolated import run_isolated

    ops = model_ops(model_path)
    entries, fallbacks = plan_recipe(recipe, ops)
    calibrated: list[int] = []
    if recipe.calibrated:
        from edgellm.quantize.calibration import load_hessians, weight_readers

        if calibration is None:
            raise EdgeLLMError(f"recipe {recipe.name} uses gptq, which needs calibration text")
        calibrated = calibrated_weights(recipe, ops, load_hessians(calibration), weight_readers(model_path)[0])
    # ai-edge-quantizer's memory (its model and output, a third of the float model) outlives the
    # call; in a worker it ends with it, before the check loads the float model into LiteRT.
    (repaired, solved), peak = run_isolated(_write_quantized, (model_path, entries, recipe.name, out_path, calibration, calibrated), "ai-edge-quantizer")
    before, after = model_path.stat().st_size, out_path.stat().st_size
    return {
        "recipe": recipe.name,
        "size_before": before,
        "size_after": after,
        "ratio": round(after / before, 4),
        "block_fallbacks": fallbacks,
        "zero_scales_repaired": repaired,
        "gptq_weights": solved,
        "worker_peak_rss_bytes": peak,
        **check_quantized(model_path, out_path, recipe.name),
    }


def _write_quantized(model_path: Path, entries: list[dict], recipe_name: str, out_path: Path, calibration: Path | None,
                     calibrated: list[int]) -> tuple[int, int]:
    """ai-edge-quantizer's run of the recipe `entries`, written to `out_path`, then GPTQ's integers
    for the `calibrated` weights; returns the zero scales repaired and the weights GPTQ solved."""
    from ai_edge_quantizer import quantizer

    from edgellm.infra.files import write_bytes_atomically
    from edgellm.infra.quiet import native_output_to

    try:
        with native_output_to(out_path.with_suffix(".log")):
            qt = quantizer.Quantizer(str(model_path))
            qt.load_quantization_recipe(entries)
            qt.quantize().export_model(str(out_path), overwrite=True)
            del qt
    except Exception as exc:  # noqa: BLE001 - whatever the quantizer raises, the remedy is another rule
        raise EdgeLLMError(
            f"recipe {recipe_name}: ai-edge-quantizer failed on it ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "change the mode or granularity of the rule for these ops"
        ) from None
    data = bytearray(out_path.read_bytes())
    solved = 0
    if calibrated:
        from edgellm.quantize.calibration import load_hessians

        hessians = load_hessians(calibration)
        solved = write_calibrated_weights(data, model_path, {buffer: hessians[buffer] for buffer in calibrated})
    repaired = repair_zero_scales(data)
    if solved or repaired:
        write_bytes_atomically(out_path, data)
    return repaired, solved


def _scales_of(flat, schema, subgraph, tensor):
    """(position, count, dtype, block) of a quantized weight's scales in the file: blockwise
    scales live in a tensor of their own, per-channel scales in the quantization parameters; None
    for a tensor without scales."""
    import numpy as np

    from edgellm.tflite.file import buffer_data

    quantization = tensor.Quantization()
    if quantization is None:
        return None
    if quantization.DetailsType() == schema.QuantizationDetails.BlockwiseQuantization:
        details = schema.BlockwiseQuantization()
        details.Init(quantization.Details().Bytes, quantization.Details().Pos)
        scales = subgraph.Tensors(details.Scales())
        place = buffer_data(flat.Buffers(scales.Buffer()))
        if not place:
            return None
        dtype = np.float16 if scales.Type() == schema.TensorType.FLOAT16 else np.float32
        return place[0], place[1] // np.dtype(dtype).itemsize, dtype, details.BlockSize()
    if quantization.ScaleLength():
        return quantization._tab.Vector(quantization._tab.Offset(8)), quantization.ScaleLength(), np.float32, None  # `scale: [float]`
    return None


def repair_zero_scales(data: bytearray) -> int:
    """Give zero quantization scales the smallest positive value; returns how many there were.

    A block or channel of weights that are all zero gets scale 0, and LiteRT's CPU path refuses to
    load such a model ("unsupported scale value (0.000000) ... for INT4 tensor"); its quantized
    values are all 0, so any positive scale dequantizes them to the same zeros.
    """
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    flat = schema.Model.GetRootAs(data, 0)
    repaired = 0
    for s in range(flat.SubgraphsLength()):
        subgraph = flat.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            found = _scales_of(flat, schema, subgraph, subgraph.Tensors(t))
            if found is None:
                continue
            position, count, dtype, _ = found
            scales = np.frombuffer(data, dtype=dtype, count=count, offset=position)
            zeros = scales == 0
            if zeros.any():
                repaired += int(zeros.sum())
                patched = np.where(zeros, np.finfo(dtype).tiny, scales).astype(dtype)
                data[position : position + patched.nbytes] = patched.tobytes()
    return repaired


def write_calibrated_weights(data: bytearray, float_model: Path, hessians: dict[int, object]) -> int:
    """Replace the round-to-nearest integers and scales ai-edge-quantizer wrote for the weights in
    `hessians` (keyed by their buffer in the float model) with GPTQ's; returns how many weights.

    The quantizer kept every tensor of the float model at its index and name, and chose each
    weight's bits and block; GPTQ takes those as given and rewrites values and scales in place.
    """
    import mmap

    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    from edgellm.quantize.gptq import quantize_weight
    from edgellm.tflite.file import buffer_data

    flat = schema.Model.GetRootAs(data, 0)
    done: dict[int, object] = {}
    with open(float_model, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as source:
        original = schema.Model.GetRootAs(source, 0)
        for s in range(flat.SubgraphsLength()):
            subgraph, float_subgraph = flat.Subgraphs(s), original.Subgraphs(s)
            for t in range(float_subgraph.TensorsLength()):
                float_tensor = float_subgraph.Tensors(t)
                buffer = float_tensor.Buffer()
                tensor = subgraph.Tensors(t)
                if buffer not in hessians or tensor.Type() not in (schema.TensorType.INT4, schema.TensorType.INT8):
                    continue
                if tensor.Name() != float_tensor.Name():
                    raise EdgeLLMError(f"ai-edge-quantizer moved tensor {float_tensor.Name().decode()}; calibrated recipes cannot place its weights")
                found = _scales_of(flat, schema, subgraph, tensor)
                if found is None:
                    raise EdgeLLMError(f"weight {float_tensor.Name().decode()}: its quantization scales are not where the quantizer puts them")
                position, count, dtype, block = found
                bits = 4 if tensor.Type() == schema.TensorType.INT4 else 8
                if buffer not in done:
                    start, length = buffer_data(original.Buffers(buffer))
                    weight = np.frombuffer(source, np.float32, length // 4, start).reshape(float_tensor.ShapeAsNumpy())
                    done[buffer] = quantize_weight(weight, hessians[buffer], bits, block or None)
                    del weight
                quantized = done[buffer]
                data[position : position + count * np.dtype(dtype).itemsize] = quantized.scales.astype(dtype).tobytes()
                start, length = buffer_data(flat.Buffers(tensor.Buffer()))
                values = _packed(quantized.values, bits)
                if len(values) != length:
                    raise EdgeLLMError(f"weight {float_tensor.Name().decode()}: {length} bytes in the quantized file, {len(values)} computed")
                data[start : start + length] = values
        del original
    return len(done)


def _packed(values, bits: int) -> bytes:
    """int8 values as the file stores them: int4 two to a byte, the first in the low nibble."""
    import numpy as np

    flat = values.reshape(-1).astype(np.uint8)
    if bits == 8:
        return flat.tobytes()
    return ((flat[0::2] & 0xF) | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def check_quantized(float_model: Path, quantized: Path, recipe: str, count: int = 16) -> dict:
    """The quantized model loads in LiteRT's default CPU path and runs prefill and decode; its top-1
    agreement with the float model goes into the stage report, measured on text the float model
    writes itself (greedy from a fixed token), so it is text the model finds likely."""
    import numpy as np

    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.tflite.file import check_generative

    try:
        check_generative(float_model)
    except EdgeLLMError:
        return {}  # not a prefill/decode model: nothing to run it on

    model = LiteRTModel(float_model)
    tokens, rows = [int(np.random.default_rng(0).integers(model.vocab_size))], []
    for position in range(count):
        rows.append(model.decode(tokens[-1], position).copy())
        tokens.append(int(rows[-1].argmax()))
    reference, tokens = np.stack(rows), tokens[:count]
    del model  # one model in memory at a time
    try:
        model = LiteRTModel(quantized)
        ours = np.concatenate([model.prefill(tokens[: count // 2], 0), *(model.decode(t, count // 2 + i)[None].copy() for i, t in enumerate(tokens[count // 2 :]))])
    except EdgeLLMError as exc:
        raise EdgeLLMError(f"recipe {recipe} wrote a model LiteRT cannot run ({exc}); choose another mode or granularity for its rules") from None
    if not np.isfinite(ours).all():
        raise EdgeLLMError(f"recipe {recipe} wrote a model whose logits are not finite; choose another mode or granularity for its rules")
    return {"top1_agreement_with_float": float((ours.argmax(-1) == reference.argmax(-1)).mean()), "agreement_tokens": count}
