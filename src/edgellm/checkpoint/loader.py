"""Weight loading: read a checkpoint tensor by tensor and place it in our Decoder.

The checkpoint's inventory (names, shapes, dtypes) comes from file headers alone, so the
mapping is checked against the model before a single weight is read. Weights are then
streamed one at a time into a model built on the meta device, so memory holds one copy of the
model, never two. A float32 tensor used whole stays a view of the file's mapping (no copy); any
other is read with plain reads, since mapped pages count in the process's memory until the file
is closed: a bfloat16 checkpoint would sit in memory beside its float32 copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import inside
from edgellm.spec.schema import Architecture, ModelSpec, TensorRule

_LAYER = "{layer}"


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    file: str
    float32: bool = False  # stored as float32, so a whole tensor needs no conversion


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

    @classmethod
    def open_file(cls, path: Path) -> Checkpoint:
        """The tensors of one weights file (a PEFT adapter's, say), safetensors or PyTorch .bin."""
        return cls(path.parent, _read_file_inventory(path))

    def files(self) -> list[str]:
        return sorted({info.file for info in self.tensors.values()})

    def read(self, name: str, mapped: bool = False) -> torch.Tensor:
        """Tensor `name`; `mapped`: a view of the file's mapping rather than a copy in memory (for
        a tensor used as it is stored, safetensors only)."""
        file = self.tensors[name].file
        if (file, mapped) not in self._open:
            self._open[file, mapped] = _open_tensor_file(self.folder / file, mapped)
        handle = self._open[file, mapped]
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor `name`, read alone (a plain read of just those rows from safetensors)."""
        file = self.tensors[name].file
        if (file, False) not in self._open:
            self._open[file, False] = _open_tensor_file(self.folder / file, mapped=False)
        handle = self._open[file, False]
        return handle.get_slice(name)[start:stop] if hasattr(handle, "get_slice") else handle[name][start:stop]


def _open_tensor_file(path: Path, mapped: bool = True):
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(str(path), framework="pt", backend="mmap" if mapped else "pread")
        except SafetensorError as exc:
            raise EdgeLLMError(f"{path}: corrupt or truncated safetensors file ({exc}); re-download it") from None
        except FileNotFoundError:
            raise EdgeLLMError(f"{path}: weight file is missing; re-download the checkpoint") from None
    try:
        # weights_only refuses pickled code; mmap keeps the tensors on disk until used.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise EdgeLLMError(f"{path}: weight file is missing; re-download the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad pickle or zip
        raise EdgeLLMError(f"{path}: unreadable PyTorch weights ({type(exc).__name__}: {exc}); re-download it") from None


def _read_file_inventory(path: Path) -> dict[str, TensorInfo]:
    handle = _open_tensor_file(path)
    if hasattr(handle, "get_slice"):
        names = handle.keys()  # a safetensors handle is not iterable itself
        return {name: TensorInfo(tuple(handle.get_slice(name).get_shape()), path.name, handle.get_slice(name).get_dtype() == "F32") for name in names}
    return {name: TensorInfo(tuple(t.shape), path.name, t.dtype == torch.float32) for name, t in handle.items()}


def _read_sharded(folder: Path, index_name: str) -> dict[str, TensorInfo]:
    index_path = folder / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EdgeLLMError(f"{index_path}: not a valid shard index ({exc}); re-download the checkpoint") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        inventory = _read_file_inventory(inside(folder, shard, f"{index_name}: shard"))
        for name, file in weight_map.items():
            if file == shard and name not in inventory:
                raise EdgeLLMError(f"{index_path}: lists tensor {name} in {shard}, which does not hold it; re-download the checkpoint")
        tensors.update(inventory)
    return tensors


@dataclass(frozen=True)
class TensorLoad:
    """How to make one of our parameters: read `tensor`, maybe transpose it, maybe take a slice."""

    tensor: str
    transpose: bool = False
    axis: int = 0
    start: int | None = None  # slice [start, stop) along axis: one part of a fused tensor
    stop: int | None = None

    def read(self, checkpoint: Checkpoint, mapped: bool = True) -> torch.Tensor:
        """The parameter; `mapped=False` reads a copy even where a view of the file's mapping would do."""
        whole = not self.transpose and self.start is None
        tensor = checkpoint.read(self.tensor, mapped=mapped and whole and checkpoint.tensors[self.tensor].float32)
        if tensor.is_floating_point() and not _all_finite(tensor):
            # Caught here, it is a damaged checkpoint; caught by verify, it would look like a wrong mapping.
            raise EdgeLLMError(f"checkpoint tensor {self.tensor} holds NaN or infinite values; the checkpoint is damaged: re-download it")
        if self.transpose:
            tensor = tensor.t()
        if self.start is not None:
            tensor = tensor.narrow(self.axis, self.start, self.stop - self.start)
        return tensor.to(torch.float32).contiguous()


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in `tensor`. A sum is NaN or infinite whenever an element is, and takes
    one pass with no mask (a third of the whole load's time, element-wise); only a sum that
    overflows needs the element-wise check."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _expand(rule: TensorRule, our_template: str, num_layers: int) -> list[tuple[str, TensorRule]]:
    if _LAYER in rule.source and _LAYER not in our_template:
        raise ValueError(f"weights.{our_template} maps to a per-layer name; add {_LAYER} to both sides")
    if _LAYER not in our_template:
        return [(our_template, rule)]
    return [
        (our_template.replace(_LAYER, str(i)), rule.model_copy(update={"source": rule.source.replace(_LAYER, str(i))}))
        for i in range(num_layers)
    ]


def _layer_count(template: str, ours: dict, default: int) -> int:
    """Blocks a per-layer name spans (an encoder-decoder's encoder and decoder may differ in depth)."""
    if _LAYER not in template:
        return default
    # The last block that has it: some names are in some layers only (attention's q, a conv's kernel).
    present = [i for i in range(len(ours)) if template.replace(_LAYER, str(i)) in ours]
    return present[-1] + 1 if present else default


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def plan_weights(spec: ModelSpec, arch: Architecture, checkpoint: Checkpoint, build: Callable[[Architecture], torch.nn.Module]) -> dict[str, TensorLoad]:
    """Our parameter name -> how to load it, with every name and shape checked (`build` makes our model for `arch`).

    Raises a one-line error for a mapping key that is not our parameter, a parameter with no
    mapping, a tensor missing from the checkpoint, a shape mismatch (fused tensors included), or
    a checkpoint tensor that nothing uses (unless `ignore_tensors` names it).
    """
    with torch.device("meta"):
        model = build(arch)
    ours = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    tied = set(ours) - dict(model.named_parameters()).keys()  # aliases, e.g. a tied output head
    rules = _rules(spec, arch, ours)

    unmapped = [name for name in ours if name not in rules and name not in tied]
    if unmapped:
        raise EdgeLLMError(f"spec {spec.name}: no weights entry for parameter {unmapped[0]}; add it to `weights`")
    rules = {name: rule for name, rule in rules.items() if not (name in tied and rule.source not in checkpoint.tensors)}

    plan = {}
    for source, group in _group_by_source(rules).items():
        info = checkpoint.tensors.get(source)
        if info is None:
            raise EdgeLLMError(
                f"checkpoint {checkpoint.folder.name}: tensor {source} (for {group[0][0]}) is missing; "
                "check the checkpoint or the spec's `weights` mapping"
            )
        plan.update(_plan_group(source, info.shape, group, ours, checkpoint.folder.name))

    used = {rule.source for rule in rules.values()}
    ignored = [re.compile(p) for p in spec.ignore_tensors]
    unexpected = [n for n in checkpoint.tensors if n not in used and not any(p.fullmatch(n) for p in ignored)]
    if unexpected:
        raise EdgeLLMError(
            f"checkpoint {checkpoint.folder.name}: tensor {min(unexpected)} is not used by the spec "
            f"({len(unexpected)} unused in all); map it in `weights` or list it in `ignore_tensors`"
        )
    return {name: load for name, load in plan.items() if name not in tied}


def resolve_output_head(spec: ModelSpec, arch: Architecture, checkpoint: Checkpoint,
                        build: Callable[[Architecture], torch.nn.Module]) -> tuple[Architecture, str]:
    """The architecture to build, and in a few words which tensor the output head reads ("" for a
    model without one).

    A config.json may tie the head to the embedding while the checkpoint also stores the head's own
    tensor with other values (some tools save both): transformers then loads the stored head,
    untied (it only warns that the config is wrong), and so do we. A stored copy equal to the
    embedding (a .bin checkpoint saves both names) stays tied, as there.
    """
    with torch.device("meta"):
        model = build(arch.model_copy(update={"tie_word_embeddings": True}))  # to find which parameters a tie aliases
    owners = {id(p): name for name, p in model.named_parameters()}
    everything = dict(model.named_parameters(remove_duplicate=False))
    heads = {name: owners[id(p)] for name, p in everything.items() if owners[id(p)] != name}
    if not heads:
        return arch, ""
    sources = {name: rule.source for name, rule in _rules(spec, arch, everything).items()}
    if not arch.tie_word_embeddings:
        return arch, ", ".join(sorted({sources[head] for head in heads if head in sources}))
    stored = sorted({sources[head] for head, owner in heads.items()
                     if sources.get(head) in checkpoint.tensors and sources.get(owner) in checkpoint.tensors
                     and sources[head] != sources[owner] and not _same_values(checkpoint, sources[head], sources[owner])})
    if not stored:
        return arch, "the embedding (tied)"
    untied = arch.model_copy(update={"tie_word_embeddings": False})
    return untied, f"stored {', '.join(stored)} (config.json ties it to the embedding; transformers loads the stored one)"


def _same_values(checkpoint: Checkpoint, first: str, second: str, rows: int = 4096) -> bool:
    """Whether two checkpoint tensors hold equal values, compared a block of rows at a time: two
    different matrices differ in the first block, and equal ones never sit in memory whole."""
    shape = checkpoint.tensors[first].shape
    if shape != checkpoint.tensors[second].shape or not shape:
        return False
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        if not torch.equal(checkpoint.read_rows(first, start, stop).float(), checkpoint.read_rows(second, start, stop).float()):
            return False
    return True


def checkpoint_name(spec: ModelSpec, source: str) -> str:
    """A `weights` source as the checkpoint names it: under another prefix where the spec's
    tensor_prefixes says so (a family's names on a multimodal checkpoint's text model)."""
    for prefix, actual in spec.tensor_prefixes.items():
        if source.startswith(prefix):
            return actual + source.removeprefix(prefix)
    return source


def _rules(spec: ModelSpec, arch: Architecture, ours: dict) -> dict[str, TensorRule]:
    """The spec's `weights`, per layer: our parameter name -> the rule that makes it."""
    rules: dict[str, TensorRule] = {}
    for our_template, rule in spec.weights.items():
        rule = TensorRule(source=rule) if isinstance(rule, str) else rule
        rule = rule.model_copy(update={"source": checkpoint_name(spec, rule.source)})
        try:
            expanded = _expand(rule, our_template, _layer_count(our_template, ours, arch.num_layers))
        except ValueError as exc:
            raise EdgeLLMError(f"spec {spec.name}: {exc}") from None
        # A per-layer name may be in some layers only (attention layers' q, conv layers' kernel).
        present = [(our_name, layer_rule) for our_name, layer_rule in expanded if our_name in ours]
        if not present:
            raise EdgeLLMError(
                f"spec {spec.name}: weights key {our_template!r} is not a parameter of this architecture "
                f"(its parameters: {', '.join(sorted(_templates(ours)))})"
            )
        rules.update(present)
    return rules


def _group_by_source(rules: dict[str, TensorRule]) -> dict[str, list[tuple[str, TensorRule]]]:
    groups: dict[str, list[tuple[str, TensorRule]]] = {}
    for our_name, rule in rules.items():
        groups.setdefault(rule.source, []).append((our_name, rule))
    return groups


def _plan_group(source: str, shape: tuple[int, ...], group: list[tuple[str, TensorRule]], ours: dict, folder: str) -> dict[str, TensorLoad]:
    """Plan the parameters made from one checkpoint tensor: a plain copy, or the parts of a fused tensor."""
    first = group[0][1]
    have = tuple(reversed(shape)) if first.transpose else shape
    parts = sorted(group, key=lambda item: -1 if item[1].part is None else item[1].part)
    if all(rule.part is None for _, rule in group):
        plan = {name: TensorLoad(source, transpose=rule.transpose) for name, rule in group}
        want = ours[group[0][0]]
    else:
        numbers = [rule.part for _, rule in parts]
        if numbers != list(range(len(parts))) or any(r.axis != first.axis or r.transpose != first.transpose for _, r in group):
            names = ", ".join(name for name, _ in parts)
            raise EdgeLLMError(f"weights: the parts of {source} ({names}) must be numbered 0..{len(parts) - 1} with one axis and transpose")
        plan, offset = {}, 0
        for name, rule in parts:
            size = ours[name][rule.axis]
            plan[name] = TensorLoad(source, transpose=rule.transpose, axis=rule.axis, start=offset, stop=offset + size)
            offset += size
        want = list(ours[parts[0][0]])
        want[first.axis] = offset
        want = tuple(want)
    if have != want:
        targets = ", ".join(name for name, _ in parts)
        raise EdgeLLMError(
            f"checkpoint {folder}: tensor {source} has shape {_shape(shape)} but {targets} "
            f"need{'s' if len(parts) == 1 else ''} {_shape(want)}{' (transposed)' if first.transpose else ''}; "
            "the spec's architecture does not match this checkpoint"
        )
    return plan


def _templates(names) -> set[str]:
    return {re.sub(r"\.\d+\.", f".{_LAYER}.", n) for n in names}


def load_model(spec: ModelSpec, arch: Architecture, checkpoint: Checkpoint, build: Callable[[Architecture], torch.nn.Module],
               mapped: bool = True) -> torch.nn.Module:
    """Build our model (`build`: its kind's, from the kinds registry) and fill it with the checkpoint's weights, one tensor at a time, as float32;
    `mapped=False` reads every weight as a copy, for a caller that writes to them."""
    plan = plan_weights(spec, arch, checkpoint, build)
    with torch.device("meta"):
        model = build(arch)
        # A decoder's q/k/v and gate/up become one matmul each before any weight is read. Their
        # parts are read as copies, not views of the file's mapping: a mapped page stays resident
        # after its view is gone, and the merged copy would come on top of it.
        merges = model.merge_projections() if hasattr(model, "merge_projections") else {}

    def put(our_name: str, tensor: torch.Tensor) -> None:
        module_name, _, attr = our_name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(tensor, requires_grad=False))

    merged_parts = {part for parts in merges.values() for part in parts}
    for our_name, load in plan.items():
        if our_name not in merged_parts:
            put(our_name, load.read(checkpoint, mapped=mapped))
    for our_name, parts in merges.items():
        put(our_name, torch.cat([plan[part].read(checkpoint, mapped=False) for part in parts]))
    model.tie_weights()
    return model.eval()
