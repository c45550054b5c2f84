"""PEFT LoRA adapters: read, checked against the base checkpoint, and folded into its weights.

An adapter folder is what PEFT's `save_pretrained` writes: `adapter_config.json` and
`adapter_model.safetensors` (or `.bin`) with, per adapted linear layer, `lora_A` [r, in] and
`lora_B` [out, r] (and DoRA's `lora_magnitude_vector` [out]). Merged, a layer's weight becomes
W + s B A with s = alpha / r (alpha / sqrt(r) for rsLoRA); DoRA then rescales each output row to its
learned magnitude: m / ||W + s B A||_row (W + s B A). Adapters apply in order, each to the weights
the previous ones left.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from edgellm.checkpoint.loader import Checkpoint, checkpoint_name, plan_weights
from edgellm.errors import EdgeLLMError
from edgellm.infra.files import file_digest
from edgellm.layers.lora import TARGETS, lora_input_name
from edgellm.spec.schema import Architecture, LoraSource, ModelSpec

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# PEFT's saved names: base_model.model.<module>.lora_A.weight (some tools keep the adapter's name:
# lora_A.default.weight); DoRA adds <module>.lora_magnitude_vector.
_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)(?:\.[A-Za-z_]\w*)?(?:\.weight)?")


@dataclass(frozen=True)
class LoraFactors:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float
    magnitude: torch.Tensor | None = None  # DoRA: [out]

    def delta(self) -> torch.Tensor:
        return self.scale * (self.b @ self.a)

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        adapted = weight + self.delta()
        if self.magnitude is None:
            return adapted
        return (self.magnitude / torch.linalg.norm(adapted, dim=1))[:, None] * adapted


@dataclass(frozen=True)
class PeftAdapter:
    folder: Path
    method: str
    layers: dict[str, LoraFactors]  # by the base checkpoint tensor each adapts (`<module>.weight`)

    @property
    def rank(self) -> int:
        return max(f.a.shape[0] for f in self.layers.values())


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise EdgeLLMError(f"adapter {folder}: no {' or '.join(WEIGHT_FILES)}; pass the folder PEFT's save_pretrained wrote")


def adapter_digest(folder: Path) -> str:
    """The adapter's content: its config and weights (a retrained adapter in the same folder is another)."""
    return hashlib.sha256((file_digest(folder / CONFIG_FILE) + file_digest(_weights_file(folder))).encode()).hexdigest()


def _read_config(folder: Path) -> dict:
    if not (folder / CONFIG_FILE).is_file():
        raise EdgeLLMError(f"adapter {folder}: no {CONFIG_FILE}; pass the folder PEFT's save_pretrained wrote")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise EdgeLLMError(f"adapter {folder}: {CONFIG_FILE} is not JSON ({exc}); re-save the adapter") from None
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise EdgeLLMError(f"adapter {folder}: a {kind} adapter; edgellm takes LoRA adapters (peft_type LORA)")
    unsupported = [(config.get("fan_in_fan_out"), "fan_in_fan_out (Conv1D weights)"), (config.get("lora_bias"), "lora_bias"),
                   (config.get("layer_replication"), "layer_replication"), (config.get("target_parameters"), "target_parameters"),
                   (config.get("modules_to_save"), "modules_to_save (whole trained modules)")]
    for setting, name in unsupported:
        if setting:
            raise EdgeLLMError(f"adapter {folder}: {name} is not supported; merge it with peft's merge_and_unload and pass the merged checkpoint")
    return config


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches a module name or its dotted suffix."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    weights = Checkpoint.open_file(_weights_file(folder))
    return {name: weights.read(name).to(torch.float32) for name in weights.tensors}


def read_peft_adapter(folder: Path) -> PeftAdapter:
    """A PEFT LoRA adapter folder, every tensor checked for pairs, ranks and finite values."""
    if not folder.is_dir():
        raise EdgeLLMError(f"adapter {folder} is not a folder; pass the folder PEFT's save_pretrained wrote")
    config = _read_config(folder)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in _read_tensors(folder).items():
        match = _KEY.fullmatch(name)
        if match is None:
            raise EdgeLLMError(f"adapter {folder}: tensor {name} is not a LoRA factor (embedding LoRA and trained whole modules are not supported)")
        if not bool(torch.isfinite(tensor).all()):
            raise EdgeLLMError(f"adapter {folder}: tensor {name} holds NaN or infinite values; the adapter is damaged")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise EdgeLLMError(f"adapter {folder}: holds no LoRA tensors; the adapter is damaged")
    method = "dora" if config.get("use_dora") else "rslora" if config.get("use_rslora") else "lora"
    layers = {}
    for module, factors in sorted(parts.items()):
        a, b = factors.get("lora_A"), factors.get("lora_B")
        if a is None or b is None:
            missing = "lora_A" if a is None else "lora_B"
            raise EdgeLLMError(f"adapter {folder}: {module} has no {missing}; the adapter is damaged")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise EdgeLLMError(f"adapter {folder}: {module}'s lora_A {list(a.shape)} and lora_B {list(b.shape)} do not make a low-rank pair; "
                               "the adapter is damaged")
        rank = a.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        magnitude = factors.get("lora_magnitude_vector")
        if (magnitude is not None) != (method == "dora") or (magnitude is not None and magnitude.shape != (b.shape[0],)):
            raise EdgeLLMError(f"adapter {folder}: {module}'s DoRA magnitude does not match use_dora or its layer; the adapter is damaged")
        layers[f"{module}.weight"] = LoraFactors(a, b, scale, magnitude.reshape(-1) if magnitude is not None else None)
    return PeftAdapter(folder, method, layers)


def check_adapter(adapter: PeftAdapter, checkpoint: Checkpoint) -> None:
    """Every adapted layer is a 2-D weight of the checkpoint with the adapter's shape: an adapter
    trained on another base model fails here, in one line."""
    for tensor, factors in adapter.layers.items():
        info = checkpoint.tensors.get(tensor)
        want = (factors.b.shape[0], factors.a.shape[1])
        if info is None or tuple(info.shape) != want:
            found = "does not have it" if info is None else f"has it as {list(info.shape)}"
            raise EdgeLLMError(f"adapter {adapter.folder}: adapts {tensor} {list(want)}, but checkpoint {checkpoint.folder.name} {found}; "
                               "the adapter was trained on another base model")


class AdaptedCheckpoint(Checkpoint):
    """A checkpoint whose adapted tensors read as merged: each adapter folded in, in order."""

    def __init__(self, checkpoint: Checkpoint, adapters: list[PeftAdapter]):
        super().__init__(checkpoint.folder, checkpoint.tensors)
        self.adapters = adapters

    def read(self, name: str, mapped: bool = False) -> torch.Tensor:
        factors = [adapter.layers[name] for adapter in self.adapters if name in adapter.layers]
        if not factors:
            return super().read(name, mapped)
        weight = super().read(name).to(torch.float32)
        for layer in factors:
            weight = layer.merged(weight)
        return weight

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if any(name in adapter.layers for adapter in self.adapters):
            return self.read(name)[start:stop]
        return super().read_rows(name, start, stop)


def open_adapted(folder: Path, adapters: list[str]) -> Checkpoint:
    """The checkpoint in `folder` with `adapters` (folders, in order) merged into it."""
    checkpoint = Checkpoint.open(folder)
    if not adapters:
        return checkpoint
    return AdaptedCheckpoint(checkpoint, [read_peft_adapter(Path(a)) for a in adapters])


# -- swappable: an adapter as the LoRA inputs of a model built with export.lora_rank ----------------

_PROJECTIONS = {"q": "q", "k": "k", "v": "v", "o": "out"}  # LoRA target -> our attention parameter


def lora_sources(spec: ModelSpec, arch: Architecture, checkpoint: Checkpoint, build, targets: list[str]) -> dict[str, LoraSource]:
    """Where each LoRA target's weight comes from, so that an adapter trained on the checkpoint's
    names can be turned into the model's LoRA inputs later, with no spec at hand."""
    plan = plan_weights(spec, arch, checkpoint, build)
    if "q" in targets and arch.attention_output_gate:
        raise EdgeLLMError(f"spec {spec.name}: q's projection also gives the attention output gate, which LoRA inputs for q do not "
                           "cover; pass --lora-targets k,v,o (or merge adapters with --adapter)")
    first = next(i for i in range(arch.num_layers) if arch.is_attention(i))  # layers without attention have no projections
    sources = {}
    for target in targets:
        key = f"blocks.{{layer}}.attn.{_PROJECTIONS[target]}.weight"
        rule, load = spec.weights.get(key), plan.get(key.replace("{layer}", str(first)))
        if rule is None or load is None or load.transpose or (load.start is not None and load.axis != 0):
            raise EdgeLLMError(f"spec {spec.name}: the {target} projection's weight is not a plain or row-fused checkpoint tensor; "
                               "build without --lora-rank (merge adapters with --adapter)")
        source = checkpoint_name(spec, rule if isinstance(rule, str) else rule.source)
        sources[target] = LoraSource(tensor=source, rows=None if load.start is None else (load.start, load.stop))
    return sources


def swappable_weights(adapter: PeftAdapter, sources: dict[str, LoraSource], shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """The adapter as a model's LoRA inputs (layers/lora.py): A' = s A^T and B' = B^T per target and
    layer, zero-padded to the model's rank. Refuses, in one line, what those inputs cannot carry."""
    if adapter.method == "dora":
        raise EdgeLLMError(f"adapter {adapter.folder}: DoRA rescales whole weights, which LoRA inputs cannot carry; merge it with `edgellm build --adapter`")
    patterns = {target: re.compile(re.escape(source.tensor).replace(re.escape("{layer}"), r"(\d+)")) for target, source in sources.items()}
    weights: dict[str, torch.Tensor] = {}
    for tensor, factors in adapter.layers.items():
        found = [(target, m) for target, pattern in patterns.items() if (m := pattern.fullmatch(tensor))]
        if not found:
            raise EdgeLLMError(f"adapter {adapter.folder}: adapts {tensor}, which the model's LoRA inputs do not reach (they feed "
                               f"{', '.join(t for t in TARGETS if t in sources)} attention projections); merge it with `edgellm build --adapter`")
        for target, match in found:  # a fused tensor feeds several targets, each its rows of B
            layer = int(match[1])
            a_name, b_name = lora_input_name(target, "a", layer), lora_input_name(target, "b", layer)
            rows = sources[target].rows
            b = factors.b if rows is None else factors.b[rows[0]:rows[1]]
            if a_name not in shapes:
                raise EdgeLLMError(f"adapter {adapter.folder}: adapts layer {layer}, which the model does not have; "
                                   "the adapter was trained on another base model")
            (width, rank), (_, out) = shapes[a_name], shapes[b_name]
            if factors.a.shape[0] > rank:
                raise EdgeLLMError(f"adapter {adapter.folder}: rank {factors.a.shape[0]} is above the model's LoRA rank {rank}; "
                                   f"rebuild the model with --lora-rank {factors.a.shape[0]} or more")
            if (factors.a.shape[1], b.shape[0]) != (width, out):
                raise EdgeLLMError(f"adapter {adapter.folder}: {tensor} is [{b.shape[0]}, {factors.a.shape[1]}] but the model's {target} "
                                   f"projection is [{out}, {width}]; the adapter was trained on another base model")
            weights[a_name] = torch.zeros(width, rank)
            weights[a_name][:, : factors.a.shape[0]] = factors.scale * factors.a.T
            weights[b_name] = torch.zeros(rank, out)
            weights[b_name][: b.shape[1]] = b.T
    return weights
