"""LiteRT-LM's LoRA file: the weights one conversation binds to a model's LoRA inputs.

A TFLite flatbuffer with no operators: one subgraph of float32 tensors named as the model's LoRA
inputs (`lora_atten_q_a_prime_weight_0`, ...), each buffer's data stored after the flatbuffer and
located by the buffer's offset and size (LiteRT-LM maps each tensor from there), and a metadata
entry `lora_rank` whose buffer field holds the rank itself (runtime/util/lora_data.cc reads it so).
LiteRT-LM 0.18's CPU engine takes ranks 16 and 32 and zero-fills inputs the file has no tensor for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.tflite.file import IDENTIFIER, Signature, buffer_data

RANK_METADATA = "lora_rank"
_ALIGN = 64
_PAGE = 4096  # LiteRT-LM maps whole pages around each tensor: the file must end on a page boundary


def _flatbuffer(tensors: dict[str, np.ndarray], rank: int, offsets: list[int]) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version, model.description = 3, "lora_params"
    model.buffers = [schema.BufferT()]  # buffer 0 is empty by convention
    subgraph = schema.SubGraphT()
    subgraph.name, subgraph.tensors = "lora_params", []
    for index, ((name, array), offset) in enumerate(zip(tensors.items(), offsets), start=1):
        buffer = schema.BufferT()
        buffer.offset, buffer.size = offset, array.nbytes
        model.buffers.append(buffer)
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, list(array.shape), schema.TensorType.FLOAT32, index
        subgraph.tensors.append(tensor)
    model.subgraphs = [subgraph]
    rank_entry = schema.MetadataT()
    rank_entry.name, rank_entry.buffer = RANK_METADATA, rank
    model.metadata = [rank_entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def _aligned(position: int) -> int:
    return -(-position // _ALIGN) * _ALIGN


def write_lora_file(path: Path, tensors: dict[str, np.ndarray], rank: int) -> None:
    """Write `tensors` (float32) as a LoRA file of rank `rank`, atomically (no half-written file)."""
    arrays = {name: np.ascontiguousarray(t, np.float32) for name, t in tensors.items()}
    # Offsets are written into the flatbuffer that precedes the data: lay it out with stand-in
    # offsets first (a non-zero field is stored whatever its value, so the size does not change).
    head = _flatbuffer(arrays, rank, [1] * len(arrays))
    offsets, position = [], _aligned(len(head))
    for array in arrays.values():
        offsets.append(position)
        position = _aligned(position + array.nbytes)
    head = _flatbuffer(arrays, rank, offsets)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        f.write(head)
        for offset, array in zip(offsets, arrays.values()):
            f.seek(offset)
            f.write(array.tobytes())
        f.truncate(-(-f.tell() // _PAGE) * _PAGE)
    os.replace(partial, path)


def read_lora_file(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    """A LoRA file's rank and tensors, every one checked to lie inside the file."""
    from ai_edge_litert import schema_py_generated as schema

    def damaged(why: str) -> EdgeLLMError:
        return EdgeLLMError(f"adapter {path}: {why}; write it again with `edgellm adapter`")

    if not path.is_file():
        raise EdgeLLMError(f"adapter {path} does not exist; write one with `edgellm adapter PEFT_DIR --base MODEL -o {path.name}`")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise damaged("not a LiteRT-LM LoRA file (no TFL3 flatbuffer)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        rank = next((model.Metadata(i).Buffer() for i in range(model.MetadataLength()) if model.Metadata(i).Name() == RANK_METADATA.encode()), None)
        subgraph = model.Subgraphs(0)
        tensors = {}
        for i in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(i)
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
            where = buffer_data(model.Buffers(tensor.Buffer()))
            count = int(np.prod(shape))
            if where is None or where[1] != 4 * count or where[0] + where[1] > len(data):
                raise damaged(f"tensor {tensor.Name().decode()} has no data of its shape {list(shape)} inside the file")
            tensors[tensor.Name().decode()] = np.frombuffer(data, np.float32, count, where[0]).reshape(shape)
    except (IndexError, AttributeError, ValueError, TypeError) as exc:
        raise damaged(f"unreadable ({type(exc).__name__})") from None
    if rank is None:
        raise damaged(f"no {RANK_METADATA} metadata")
    return rank, tensors


def lora_input_shapes(signature: Signature) -> dict[str, tuple[int, ...]]:
    """A signature's LoRA inputs (layers/lora.py's names) and their shapes; empty for a model without."""
    return {name: tuple(signature.shapes[name]) for name in signature.inputs if name.startswith("lora_")}


def lora_rank(shapes: dict[str, tuple[int, ...]]) -> int:
    """The rank of LoRA inputs of these shapes: A' is [in, rank]."""
    return next(shape[1] for name, shape in shapes.items() if "_a_prime_" in name)


def zero_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """All-zero LoRA weights of these shapes: the base model."""
    return {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}


def write_zero_lora_file(out: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """The all-zero LoRA file for LoRA inputs of these shapes: the base model, in LiteRT-LM."""
    write_lora_file(out, zero_weights(shapes), lora_rank(shapes))
