"""Weight loading: read a checkpoint tensor by tensor and place it in our Decoder.

The checkpoint's inventory (names, shapes, dtypes) comes from file headers alone, so the
mapping is checked against the model before a single weight is read. Weights are then
streamed one at a time from memory-mapped files into a model built on the meta device,
so memory holds one copy of the model, never two.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.layers import Decoder
from edgellm_cli.spec import Architecture, ModelSpec

_LAYER = "{layer}"


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    file: str


class Checkpoint:
    """The tensors of a checkpoint folder: safetensors (single or sharded) or PyTorch .bin."""

    def __init__(self, folder: Path, tensors: dict[str, TensorInfo]):
        self.folder = folder
        self.tensors = tensors
        self._open: dict[str, object] = {}

    @classmethod
    def open(cls, folder: Path) -> Checkpoint:
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (folder / index_name).is_file():
                return cls(folder, _read_sharded(folder, index_name))
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (folder / single).is_file():
                return cls(folder, _read_file_inventory(folder / single))
        raise EdgeLLMError(
            f"{folder}: no weights found (looked for model.safetensors, pytorch_model.bin and their .index.json); "
            "point the spec or --checkpoint at a Hugging Face checkpoint folder"
        )

    def files(self) -> list[str]:
        return sorted({info.file for info in self.tensors.values()})

    def read(self, name: str) -> torch.Tensor:
        file = self.tensors[name].file
        if file not in self._open:
            self._open[file] = _open_tensor_file(self.folder / file)
        handle = self._open[file]
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]


def _open_tensor_file(path: Path):
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(str(path), framework="pt")
        except SafetensorError as exc:
            raise EdgeLLMError(f"{path}: corrupt or truncated safetensors file ({exc}); re-download it") from None
        except FileNotFoundError:
            raise EdgeLLMError(f"{path}: weight file is missing; re-download the checkpoint") from None
    try:
        # weights_only refuses pickled code; mmap keeps the tensors on disk until used.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise EdgeLLMError(f"{path}: weight file is missing; re-download the checkpoint") from None
    except Exception as exc:  # torch raises many types for a bad pickle or zip
        raise EdgeLLMError(f"{path}: unreadable PyTorch weights ({type(exc).__name__}: {exc}); re-download it") from None


def _read_file_inventory(path: Path) -> dict[str, TensorInfo]:
    handle = _open_tensor_file(path)
    if hasattr(handle, "get_slice"):
        return {name: TensorInfo(tuple(handle.get_slice(name).get_shape()), path.name) for name in handle.keys()}
    return {name: TensorInfo(tuple(t.shape), path.name) for name, t in handle.items()}


def _read_sharded(folder: Path, index_name: str) -> dict[str, TensorInfo]:
    index_path = folder / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EdgeLLMError(f"{index_path}: not a valid shard index ({exc}); re-download the checkpoint") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        inventory = _read_file_inventory(folder / shard)
        for name, file in weight_map.items():
            if file == shard and name not in inventory:
                raise EdgeLLMError(f"{index_path}: lists tensor {name} in {shard}, which does not hold it; re-download the checkpoint")
        tensors.update(inventory)
    return tensors


def _expand(template: str, num_layers: int) -> list[tuple[str, int | None]]:
    if _LAYER in template:
        return [(template.replace(_LAYER, str(i)), i) for i in range(num_layers)]
    return [(template, None)]


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def plan_weights(spec: ModelSpec, arch: Architecture, checkpoint: Checkpoint) -> dict[str, str]:
    """Our parameter name -> checkpoint tensor name, with every name and shape checked.

    Raises a one-line error for a mapping key that is not our parameter, a parameter with no
    mapping, a tensor missing from the checkpoint, a shape mismatch, or a checkpoint tensor
    that nothing uses (unless `ignore_tensors` names it).
    """
    with torch.device("meta"):
        model = Decoder(arch)
    ours = dict(model.named_parameters(remove_duplicate=False))
    tied = set(ours) - dict(model.named_parameters()).keys()  # aliases, e.g. a tied output head

    plan: dict[str, str] = {}
    for our_template, their_template in spec.weights.items():
        if _LAYER in their_template and _LAYER not in our_template:
            raise EdgeLLMError(f"spec {spec.name}: weights.{our_template} maps to a per-layer name; add {_LAYER} to both sides")
        for our_name, layer in _expand(our_template, arch.num_layers):
            their_name = their_template.replace(_LAYER, str(layer)) if layer is not None else their_template
            if our_name not in ours:
                raise EdgeLLMError(
                    f"spec {spec.name}: weights key {our_template!r} is not a parameter of the model "
                    f"(parameters look like: {', '.join(sorted(_templates(ours)))})"
                )
            plan[our_name] = their_name

    unmapped = [name for name in ours if name not in plan and name not in tied]
    if unmapped:
        raise EdgeLLMError(f"spec {spec.name}: no weights entry for parameter {unmapped[0]}; add it to `weights`")

    for our_name, their_name in plan.items():
        info = checkpoint.tensors.get(their_name)
        if info is None:
            if our_name in tied:
                continue
            raise EdgeLLMError(
                f"checkpoint {checkpoint.folder.name}: tensor {their_name} (for {our_name}) is missing; "
                "check the checkpoint or the spec's `weights` mapping"
            )
        want = tuple(ours[our_name].shape)
        if info.shape != want:
            raise EdgeLLMError(
                f"checkpoint {checkpoint.folder.name}: tensor {their_name} has shape {_shape(info.shape)} "
                f"but {our_name} needs {_shape(want)}; the spec's architecture does not match this checkpoint"
            )

    used = set(plan.values())
    ignored = [re.compile(p) for p in spec.ignore_tensors]
    unexpected = [n for n in checkpoint.tensors if n not in used and not any(p.fullmatch(n) for p in ignored)]
    if unexpected:
        raise EdgeLLMError(
            f"checkpoint {checkpoint.folder.name}: tensor {sorted(unexpected)[0]} is not used by the spec "
            f"({len(unexpected)} unused in all); map it in `weights` or list it in `ignore_tensors`"
        )
    return {ours_: theirs for ours_, theirs in plan.items() if ours_ not in tied}


def _templates(names) -> set[str]:
    return {re.sub(r"\.\d+\.", f".{_LAYER}.", n) for n in names}


def load_model(spec: ModelSpec, arch: Architecture, checkpoint: Checkpoint) -> Decoder:
    """Build our Decoder and fill it with the checkpoint's weights, one tensor at a time, as float32."""
    plan = plan_weights(spec, arch, checkpoint)
    with torch.device("meta"):
        model = Decoder(arch)
    for our_name, their_name in plan.items():
        module_name, _, attr = our_name.rpartition(".")
        tensor = checkpoint.read(their_name).to(torch.float32)
        setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(tensor, requires_grad=False))
    model.tie_weights()
    return model.eval()
