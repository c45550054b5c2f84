"""`edgellm inspect`: what is inside a `.tflite`, `.litertlm` or `.task` file."""

from __future__ import annotations

import hashlib
import io
import mmap
import re
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

from edgellm.errors import EdgeLLMError


def _file_type(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head == b"LITERTLM":
        return "litertlm"
    if zipfile.is_zipfile(path):
        return "task"
    raise EdgeLLMError(f"{path}: not a .tflite, .litertlm or .task file (unrecognised header {head[:8]!r})")


def _dtype_name(dtype) -> str:
    import numpy as np

    return np.dtype(dtype).name


def inspect_tflite(path: Path) -> dict:
    """Signatures with their inputs and outputs, and weight bytes by dtype and by layer group."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.compiled_model import CompiledModel

    from edgellm.infra.quiet import native_output_to
    from edgellm.tflite.file import buffer_data, read_signatures

    read_signatures(path)  # a damaged file would crash the runtime
    with native_output_to():
        compiled = CompiledModel.from_file(str(path))
    signatures = {}
    for name in compiled.get_signature_list():
        signatures[name] = {
            direction: {t: {"shape": [int(d) for d in info["shape"]], "dtype": _dtype_name(info["dtype"])} for t, info in details(name).items()}
            for direction, details in (("inputs", compiled.get_input_tensor_details), ("outputs", compiled.get_output_tensor_details))
        }

    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        flat = schema.Model.GetRootAs(data, 0)
        type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        by_dtype, by_group, seen, starts_by_size = Counter(), defaultdict(Counter), set(), defaultdict(list)
        for s in range(flat.SubgraphsLength()):
            subgraph = flat.Subgraphs(s)
            for t in range(subgraph.TensorsLength()):
                tensor = subgraph.Tensors(t)
                index = tensor.Buffer()
                if index in seen or index <= 0:
                    continue
                start, size = buffer_data(flat.Buffers(index)) or (0, 0)
                if not size:
                    continue
                seen.add(index)
                starts_by_size[size].append(start)
                block = re.search(r"Block_(\d+)", tensor.Name().decode(errors="replace"))
                dtype = type_names.get(tensor.Type(), str(tensor.Type()))
                by_dtype[dtype] += size
                by_group[f"block {int(block.group(1)):03d}" if block else "embedding, head, other"][dtype] += size
        duplicates = _duplicate_bytes(data, starts_by_size)
    return {
        "format": "tflite",
        "size_bytes": path.stat().st_size,
        "signatures": signatures,
        "weight_bytes_by_dtype": dict(by_dtype.most_common()),
        "weight_bytes_by_group": {group: sum(dtypes.values()) for group, dtypes in sorted(by_group.items())},
        "weight_bytes_by_group_and_dtype": {group: dict(dtypes.most_common()) for group, dtypes in sorted(by_group.items())},
        "duplicate_weight_bytes": duplicates,
    }


def _duplicate_bytes(data: mmap.mmap, starts_by_size: dict[int, list[int]]) -> int:
    """Bytes of buffers whose contents another buffer already holds: a weight stored twice (a
    converter that folds a constant once per signature writes one copy for each). Only buffers
    of equal size are compared, each hashed in place."""
    duplicates = 0
    with memoryview(data) as view:
        for size, starts in starts_by_size.items():
            if len(starts) > 1 and size >= 1024:  # weights, not the scalars and shapes every graph repeats
                duplicates += size * (len(starts) - len({hashlib.sha1(view[start:start + size]).digest() for start in starts}))
    return duplicates


def inspect_litertlm(path: Path) -> dict:
    from litert_lm_builder import litertlm_peek

    text = io.StringIO()
    try:
        litertlm_peek.peek_litertlm_file(str(path), None, text)
    except Exception as exc:  # noqa: BLE001 - the reader raises whatever its flatbuffer parser hits
        raise EdgeLLMError(f"{path}: unreadable .litertlm ({type(exc).__name__}: {exc})") from None
    contents = [line for line in text.getvalue().splitlines() if line.strip()]
    return {"format": "litertlm", "size_bytes": path.stat().st_size, "sections": _litertlm_sections(contents), "contents": contents}


def _litertlm_sections(contents: list[str]) -> list[dict]:
    """Each section's data type and bytes, from the reader's text (`Section N:`, offsets, `Data Type:`)."""
    sections = []
    for line in contents:
        if re.fullmatch(r"Section \d+:", line.strip()):
            sections.append({"index": len(sections)})
        elif sections and (field := re.match(r"\s*(Begin Offset|End Offset|Data Type):\s*(\S+)", line)):
            sections[-1][field[1]] = field[2]
    return [{"index": s["index"], "type": s.get("Data Type", "?"), "bytes": int(s.get("End Offset", 0)) - int(s.get("Begin Offset", 0))} for s in sections]


def inspect_file(path: Path) -> dict:
    file_type = _file_type(path)
    if file_type == "tflite":
        return inspect_tflite(path)
    if file_type == "litertlm":
        return inspect_litertlm(path)
    from edgellm.bundle.task import read_task

    return {"format": "task", "size_bytes": path.stat().st_size, **read_task(path)}
