"""A `.tflite` checked in Python before any native code maps it.

LiteRT trusts the offsets inside a model file: a truncated or damaged file makes it read past the
end and the process dies with a segmentation fault. So every command that hands a model to
native code (run, chat, bench, eval, verify, inspect, quantize, bundle) reads it here first: the
flatbuffer identifier, every buffer's data inside the file, every index (tensors, buffers,
opcodes, subgraphs) inside its table, and the signatures the command needs.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import EdgeLLMError

IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class Signature:
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, list[int]]  # of every input and output, by name


class _Damaged(Exception):
    """A structural fault, described for the one-line error."""


def inline_data(buffer) -> tuple[int, int] | None:
    """Where a buffer's data lies inside the flatbuffer (start, bytes), or None when it has none
    there (no data, or data stored after the flatbuffer)."""
    field = buffer._tab.Offset(4)  # `data: [ubyte]`
    return (buffer._tab.Vector(field), buffer._tab.VectorLen(field)) if field else None


def buffer_data(buffer) -> tuple[int, int] | None:
    """Where a buffer's data lies in the file (start, bytes): inside the flatbuffer, or after it
    (large models keep weights past the 2 GB flatbuffer limit); None when it has none."""
    if buffer.Offset() > 1:
        return buffer.Offset(), buffer.Size()
    return inline_data(buffer)


def _count(length: int, element_bytes: int, size: int, what: str) -> int:
    """A vector length that fits in the file (a damaged length could ask for billions of reads)."""
    if length < 0 or length * element_bytes > size:
        raise _Damaged(f"{what} claims {length} entries")
    return length


def _check_buffers(flat, size: int) -> int:
    count = _count(flat.BuffersLength(), 4, size, "the buffer table")
    for i in range(count):
        buffer = flat.Buffers(i)
        offset, length = buffer.Offset(), buffer.Size()
        if offset > 1 and offset + length > size:  # weights stored after the flatbuffer
            raise _Damaged(f"buffer {i} ends at byte {offset + length}, past the end of the file")
        inline = inline_data(buffer)
        if inline:
            start, inline = inline
            if start + inline > size:
                raise _Damaged(f"buffer {i} ends at byte {start + inline}, past the end of the file")
    return count


def _check_subgraph(flat, index: int, buffers: int, opcodes: int, size: int) -> int:
    subgraph = flat.Subgraphs(index)
    tensors = _count(subgraph.TensorsLength(), 4, size, f"subgraph {index}'s tensor table")
    for t in range(tensors):
        tensor = subgraph.Tensors(t)
        if not 0 <= tensor.Buffer() < max(buffers, 1):
            raise _Damaged(f"tensor {t} of subgraph {index} names buffer {tensor.Buffer()} of {buffers}")
        _count(tensor.ShapeLength(), 4, size, f"tensor {t}'s shape")
    for o in range(_count(subgraph.OperatorsLength(), 4, size, f"subgraph {index}'s operators")):
        op = subgraph.Operators(o)
        if not 0 <= op.OpcodeIndex() < opcodes:
            raise _Damaged(f"operator {o} of subgraph {index} names opcode {op.OpcodeIndex()} of {opcodes}")
        ios = [op.Inputs(j) for j in range(_count(op.InputsLength(), 4, size, "an operator's inputs"))]
        ios += [op.Outputs(j) for j in range(_count(op.OutputsLength(), 4, size, "an operator's outputs"))]
        if any(not -1 <= i < tensors for i in ios):
            raise _Damaged(f"operator {o} of subgraph {index} names a tensor outside its {tensors}")
    return tensors


def _read(data, size: int) -> dict[str, Signature]:
    from ai_edge_litert import schema_py_generated as schema

    if size < 16 or data[4:8] != IDENTIFIER:
        raise _Damaged(f"no {IDENTIFIER.decode()} flatbuffer identifier")
    if struct.unpack_from("<I", data, 0)[0] >= size:
        raise _Damaged("the root table lies past the end of the file")
    flat = schema.Model.GetRootAs(data, 0)
    buffers = _check_buffers(flat, size)
    for m in range(_count(flat.MetadataLength(), 4, size, "the metadata table")):
        entry = flat.Metadata(m)
        if not 0 <= entry.Buffer() < buffers:
            raise _Damaged(f"metadata {entry.Name()!r} names buffer {entry.Buffer()} of {buffers}")
        if entry.Name() == b"min_runtime_version" and flat.Buffers(entry.Buffer()).DataLength() > 16:
            raise _Damaged("the min_runtime_version metadata is not a version string")
    opcodes = _count(flat.OperatorCodesLength(), 4, size, "the opcode table")
    subgraphs = _count(flat.SubgraphsLength(), 4, size, "the subgraph table")
    tensors = [_check_subgraph(flat, s, buffers, opcodes, size) for s in range(subgraphs)]
    signatures = {}
    for i in range(_count(flat.SignatureDefsLength(), 4, size, "the signature table")):
        sig = flat.SignatureDefs(i)
        if not 0 <= sig.SubgraphIndex() < subgraphs:
            raise _Damaged(f"signature {i} names subgraph {sig.SubgraphIndex()} of {subgraphs}")
        maps = [[sig.Inputs(j) for j in range(_count(sig.InputsLength(), 4, size, "a signature's inputs"))],
                [sig.Outputs(j) for j in range(_count(sig.OutputsLength(), 4, size, "a signature's outputs"))]]
        if any(not 0 <= m.TensorIndex() < tensors[sig.SubgraphIndex()] for side in maps for m in side):
            raise _Damaged(f"signature {i} names a tensor outside its subgraph")
        names = [[m.Name().decode() for m in side] for side in maps]
        subgraph = flat.Subgraphs(sig.SubgraphIndex())
        shapes = {m.Name().decode(): [int(d) for d in subgraph.Tensors(m.TensorIndex()).ShapeAsNumpy()] for side in maps for m in side}
        signatures[(sig.SignatureKey() or b"").decode()] = Signature(*names, shapes)
    return signatures


def read_signatures(path: Path) -> dict[str, Signature]:
    """The model's signatures (input and output names), once its structure is known to be sound."""
    if not path.is_file():
        raise EdgeLLMError(f"model {path} does not exist; pass the path of a .tflite file")
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            if size == 0:
                raise _Damaged("the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _read(data, size)
    except _Damaged as exc:
        raise EdgeLLMError(f"{path}: not a sound .tflite model ({exc}); it is damaged or truncated: rebuild or re-download it") from None
    except (struct.error, IndexError, TypeError, ValueError, OverflowError, UnicodeDecodeError):
        # flatbuffers raises these for offsets past the end of the data or out of range
        raise EdgeLLMError(f"{path}: not a sound .tflite model (its structure points past the end of the file); it is damaged or truncated: "
                           "rebuild or re-download it") from None
    except OSError as exc:
        raise EdgeLLMError(f"{path}: unreadable ({exc.strerror or exc}); check the path and its permissions") from None


def head_signature(prefill: str) -> str:
    """The signature giving the logits of prefill `prefill`'s hidden states (edgellm's models have one)."""
    return f"head_{prefill.removeprefix('prefill_')}"


def head_runner(interpreter, prefill: str):
    """The signature runner of prefill `prefill`'s head in a LiteRT `Interpreter`; None when the
    prefill gives its logits itself."""
    head = head_signature(prefill)
    return interpreter.get_signature_runner(head) if head in interpreter.get_signature_list() else None


def empty_state(input_shapes: dict[str, tuple[int, ...]]):
    """The inputs beside tokens and positions for a run from position 0 of the base model: empty
    KV caches (`kv_cache_*`) and zero swappable LoRA weights (`lora_*`), float32 by name."""
    import numpy as np

    return {name: np.zeros(shape, np.float32) for name, shape in input_shapes.items() if name.startswith(("kv_cache", "lora_"))}


def check_generative(path: Path) -> dict[str, Signature]:
    """A sound model with what generation needs: prefill_N and decode signatures taking tokens,
    positions and KV-cache tensors, decode giving logits (a prefill may give none: LiteRT-LM reads
    none, and edgellm's and litert-torch's prefills compute none)."""
    signatures = read_signatures(path)
    prefill = [name for name in signatures if re.fullmatch(r"prefill_\d+", name)]
    if "decode" not in signatures or not prefill:
        raise EdgeLLMError(f"{path}: expected signatures prefill_<N> and decode, found {sorted(signatures) or 'none'}; convert it with edgellm")
    for name in [*prefill, "decode"]:
        inputs = signatures[name].inputs
        missing = [n for n in ("tokens", "input_pos") if n not in inputs]
        if missing:
            raise EdgeLLMError(f"{path}: signature {name} has no {missing[0]} input; it does not follow the prefill/decode convention")
        if not any(n.startswith("kv_cache_") for n in inputs):
            raise EdgeLLMError(f"{path}: signature {name} has no kv_cache_* inputs (no KV cache); edgellm runs models that carry their cache")
    if "logits" not in signatures["decode"].outputs:
        raise EdgeLLMError(f"{path}: signature decode has no logits output; it does not follow the prefill/decode convention")
    return signatures


def stores_weights_narrower_than_computed(path: Path) -> bool:
    """Whether weights are stored in a narrower type than the CPU computes with (float16, or int8
    dequantized before a float op): XNNPack then packs them as float32, several times their size."""
    from ai_edge_litert import schema_py_generated as schema

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        flat = schema.Model.GetRootAs(data, 0)
        codes = {flat.OperatorCodes(i).BuiltinCode() for i in range(flat.OperatorCodesLength())}
        if schema.BuiltinOperator.DEQUANTIZE in codes:
            return True
        return any(
            flat.Subgraphs(s).Tensors(t).Type() == schema.TensorType.FLOAT16
            for s in range(flat.SubgraphsLength())
            for t in range(flat.Subgraphs(s).TensorsLength())
        )
