"""Calibration: what a model's fully connected layers see on real text, for GPTQ.

The float `.tflite` runs its largest prefill signature over windows of the calibration text in
LiteRT's reference path, keeping every intermediate tensor, and for each weight read only by
FULLY_CONNECTED ops accumulates the Hessian of its inputs, H = sum of x xᵀ over all tokens. The
weights are keyed by their buffer in the float model, the one thing the prefill, decode and
quantized graphs share. It measures exactly the graph that ships, from any converter.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.progress import advance
from edgellm.infra.resources import data_path

DEFAULT_CALIBRATION = data_path("recipes", "calibration.txt")
DEFAULT_WINDOWS = 32  # windows of the largest prefill length: 4,096 tokens at 128
HESSIANS = "hessians.json"


def read_calibration_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"calibration text {path}: unreadable as UTF-8 text ({exc}); pass --calibration FILE") from None
    if not text.strip():
        raise EdgeLLMError(f"calibration text {path} is empty; pass a file of the kind of text the model will see")
    return text


def calibration_windows(tokens: list[int], width: int, count: int) -> list[list[int]]:
    """Up to `count` consecutive, non-overlapping windows of exactly `width` tokens."""
    windows = [tokens[i : i + width] for i in range(0, len(tokens) - width + 1, width)][:count]
    if not windows:
        raise EdgeLLMError(f"calibration text has {len(tokens)} tokens, fewer than one window of {width}; give a longer text")
    return windows


def _fully_connected_weights(flat) -> dict[int, list[tuple[int, int, int]]]:
    """Per weight buffer read only by FULLY_CONNECTED ops: (subgraph, operator, input tensor) of
    each such op. `flat` is the model's flatbuffer (ai_edge_litert's schema)."""
    from ai_edge_litert import schema_py_generated as schema

    from edgellm.tflite.file import buffer_data

    codes = [max(flat.OperatorCodes(i).BuiltinCode(), flat.OperatorCodes(i).DeprecatedBuiltinCode()) for i in range(flat.OperatorCodesLength())]
    uses: dict[int, list[tuple[int, int, int]]] = {}
    elsewhere = set()
    for s in range(flat.SubgraphsLength()):
        subgraph = flat.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(o)
            inputs = op.InputsAsNumpy()
            for slot, tensor in enumerate(inputs):
                buffer = subgraph.Tensors(int(tensor)).Buffer() if tensor >= 0 else 0
                if buffer <= 0 or buffer_data(flat.Buffers(buffer)) is None:
                    continue
                if codes[op.OpcodeIndex()] == schema.BuiltinOperator.FULLY_CONNECTED and slot == 1:
                    uses.setdefault(buffer, []).append((s, o, int(inputs[0])))
                else:
                    elsewhere.add(buffer)
    return {buffer: ops for buffer, ops in uses.items() if buffer not in elsewhere}


def _signature_subgraph(flat, signature: str) -> int:
    return next(flat.SignatureDefs(i).SubgraphIndex() for i in range(flat.SignatureDefsLength()) if flat.SignatureDefs(i).SignatureKey().decode() == signature)


def weight_readers(model_path: Path, *signatures: str) -> tuple[dict[int, list[tuple[int, int, int]]], list[int]]:
    """The weights GPTQ can take (read only by FULLY_CONNECTED) with their readers, and the
    subgraph index of each of `signatures`."""
    from ai_edge_litert import schema_py_generated as schema

    with open(model_path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        flat = schema.Model.GetRootAs(data, 0)
        found = _fully_connected_weights(flat), [_signature_subgraph(flat, signature) for signature in signatures]
        del flat
    return found


def tensor_keeping_interpreter(model_path: Path):
    """An interpreter that keeps every intermediate tensor readable after a call (no delegate: the
    delegate's fused kernels would hide them)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgellm.infra.quiet import native_output_to

    with native_output_to(os.devnull):
        return Interpreter(model_path=str(model_path), experimental_preserve_all_tensors=True, num_threads=os.cpu_count(),
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def capture_hessians(model_path: Path, windows: list[list[int]], signature: str) -> dict[int, np.ndarray]:
    """H per weight buffer (float64 [in, in]), summed over every token of every window, each
    window run at positions 0.. with an empty KV cache through the prefill `signature` and its
    output head (`head_N`, where the prefill gives hidden states)."""
    import torch

    from edgellm.tflite.file import empty_state, head_runner, head_signature

    interpreter = tensor_keeping_interpreter(model_path)
    runner = interpreter.get_signature_runner(signature)
    inputs = runner.get_input_details()
    # Empty caches, and zero LoRA weights: the base model, which every adapter is added to.
    caches = empty_state({name: tuple(detail["shape"]) for name, detail in inputs.items()})
    unknown = set(inputs) - {"tokens", "input_pos"} - set(caches)
    if unknown:
        raise EdgeLLMError(f"{model_path.name}: calibration drives signatures with tokens, input_pos, KV caches and LoRA inputs; "
                           f"{signature} also takes {sorted(unknown)}")
    head = head_runner(interpreter, signature)
    # Weights that read the same activation (q, k and v; gate and up) share one Hessian.
    weights, indices = weight_readers(model_path, signature, *([head_signature(signature)] if head else []))
    readers: dict[tuple[int, int], list[int]] = {}  # (subgraph, activation tensor): weight buffers
    for buffer, ops in weights.items():
        for place in {(s, a) for s, _, a in ops if s in indices}:
            readers.setdefault(place, []).append(buffer)
    sums: dict[tuple[int, int], torch.Tensor] = {}
    for done, window in enumerate(windows, 1):
        out = runner(tokens=np.array([window], np.int32), input_pos=np.arange(len(window), dtype=np.int32), **caches)
        if head:
            head(hidden=out["hidden"])
        for place in readers:
            x = torch.from_numpy(interpreter.get_tensor(place[1], place[0]))
            x = x.reshape(-1, x.shape[-1])
            sums[place] = sums.get(place, 0) + (x.T @ x).double()  # float32 products, float64 sum
        advance(done, len(windows))
    hessians: dict[int, np.ndarray] = {}
    for place, buffers in readers.items():
        for buffer in buffers:
            hessians[buffer] = hessians[buffer] + sums[place].numpy() if buffer in hessians else sums[place].numpy()
    return hessians


def widest_prefill(model_path: Path) -> int:
    import re

    from edgellm.tflite.file import check_generative

    return max(int(name.removeprefix("prefill_")) for name in check_generative(model_path) if re.fullmatch(r"prefill_\d+", name))


def held_out_windows(tokens: list[int], width: int, count: int = 16) -> list[list[int]]:
    """Windows of the calibration text after those calibration used, for measuring choices made
    with it; the calibration windows themselves when the text has no more."""
    return calibration_windows(tokens[DEFAULT_WINDOWS * width :], width, count) if len(tokens) >= (DEFAULT_WINDOWS + 1) * width else \
        calibration_windows(tokens, width, count)


def calibrate(model_path: Path, tokenizer, text: str, folder: Path) -> dict:
    """Capture the Hessians of `model_path` on `text` into `folder`; returns the stage report."""
    width = widest_prefill(model_path)
    windows = calibration_windows(tokenizer.encode(text), width, DEFAULT_WINDOWS)
    hessians = capture_hessians(model_path, windows, f"prefill_{width}")
    _save_hessians(folder, hessians)
    return {"file": HESSIANS, "windows": len(windows), "tokens": len(windows) * width, "weights": len(hessians)}


def _save_hessians(folder: Path, hessians: dict[int, np.ndarray]) -> None:
    """One float32 .npy per distinct Hessian (q, k and v share theirs), and which weight reads which."""
    from edgellm.infra.files import write_json

    names: dict[int, str] = {}
    for h in hessians.values():
        if id(h) not in names:
            names[id(h)] = f"hessian-{len(names)}.npy"
            np.save(folder / names[id(h)], h.astype(np.float32))
    write_json(folder / HESSIANS, {str(buffer): names[id(h)] for buffer, h in hessians.items()})


def load_hessians(folder: Path) -> dict[int, np.ndarray]:
    """The calibration stage's Hessians per float weight buffer, memory-mapped."""
    from edgellm.infra.files import read_json

    return {int(buffer): np.load(folder / name, mmap_mode="r") for buffer, name in read_json(folder / HESSIANS, "calibration").items()}
