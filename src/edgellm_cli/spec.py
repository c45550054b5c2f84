"""YAML model specs: where a checkpoint comes from, its architecture, and how its tensors map.

A spec is data, not code. Adding a model means writing a YAML file in `model_specs/`
(often a few lines that `extends:` a family file such as `_hf-llama.yaml`).
Every field is validated here, so a typo'd key or a wrong type is one line that names
the file and the field, long before any weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgellm_cli.errors import EdgeLLMError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSource(_Strict):
    repo_id: str
    revision: str = "main"
    allow_patterns: list[str] = ["*.json", "*.safetensors", "*.bin", "tokenizer.model"]


class Source(_Strict):
    """Exactly one of `hub` (a Hugging Face repo) or `path` (a local folder, relative to the spec)."""

    hub: HubSource | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.hub is None) == (self.path is None):
            raise ValueError("give exactly one of `hub` or `path`")
        return self


class RopeScaling(_Strict):
    """Llama 3's frequency-dependent stretch of the rotary frequencies."""

    type: Literal["llama3"]
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


class Architecture(_Strict):
    """The hyper-parameters of a decoder-only transformer; every knob has one name and one default."""

    # Size
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    # Attention: num_heads query heads share num_kv_heads key/value heads (GQA; MQA when 1)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    # Rotary position embedding
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = Field(gt=0)
    # Norms and MLP
    norm_eps: float = 1e-5
    activation: Literal["silu"] = "silu"
    # Output head shares the embedding matrix
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> Architecture:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self


class ArchitectureSection(_Strict):
    """`from_config: true` reads the checkpoint's config.json; any field given here overrides it."""

    from_config: bool = True
    overrides: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _split_overrides(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - set(Architecture.model_fields) - {"from_config"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(Architecture.model_fields)})")
        return {
            "from_config": data.get("from_config", True),
            "overrides": {k: v for k, v in data.items() if k != "from_config"},
        }


class TokenizerSection(_Strict):
    """Tokenizer file (relative to the checkpoint folder) and special tokens; unset ids come from the checkpoint."""

    file: str = "tokenizer.model"
    add_bos: bool = True
    bos_id: int | None = None
    eos_ids: list[int] | None = None
    stop_ids: list[int] = []


class ExportSection(_Strict):
    prefill_lengths: list[int] = Field(default=[32], min_length=1)
    kv_cache_length: int = Field(default=512, gt=0)

    @model_validator(mode="after")
    def _prefill_fits(self) -> ExportSection:
        if any(n <= 0 or n > self.kv_cache_length for n in self.prefill_lengths):
            raise ValueError(f"prefill_lengths must each be in 1..kv_cache_length ({self.kv_cache_length})")
        if len(set(self.prefill_lengths)) != len(self.prefill_lengths):
            raise ValueError("prefill_lengths must not repeat")
        return self


class VerifySection(_Strict):
    num_tokens: int = Field(default=32, gt=0)
    max_abs_logit_diff: float = Field(default=1e-3, gt=0)
    min_top1_agreement: float = Field(default=1.0, ge=0, le=1)


class ModelSpec(_Strict):
    name: str
    source: Source
    architecture: ArchitectureSection = ArchitectureSection()
    # Our parameter name -> checkpoint tensor name; `{layer}` stands for the block index.
    weights: dict[str, str]
    # Checkpoint tensors that are deliberately not loaded (regular expressions).
    ignore_tensors: list[str] = []
    tokenizer: TokenizerSection = TokenizerSection()
    export: ExportSection = ExportSection()
    verify: VerifySection = VerifySection()
    # Folder of the spec file, for resolving relative paths; not part of the YAML.
    base_dir: Path = Field(default=Path("."), exclude=True)

    def local_source(self) -> Path | None:
        return None if self.source.path is None else (self.base_dir / self.source.path).resolve()


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a spec file, following `extends:` (a path relative to the file) with a deep merge."""
    if path in seen:
        raise EdgeLLMError(f"spec {path}: `extends` forms a cycle; remove one of the links")
    if not path.is_file():
        raise EdgeLLMError(f"spec {path}: no such file; pass the path of a YAML file in model_specs/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise EdgeLLMError(f"spec {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise EdgeLLMError(f"spec {path}: the top level must be a mapping of keys, not {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    merged = _deep_merge(_read_yaml((path.parent / parent).resolve(), seen + (path,)), data)
    if "source" in data:  # a source is one choice (hub or path), replaced whole, never mixed
        merged["source"] = data["source"]
    return merged


def _describe(error: dict) -> str:
    field = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown key; check its spelling against docs in spec.py"
    if error["type"] == "missing":
        return f"{field}: required field is missing; add it"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a YAML model spec; every problem is one line naming the file and the field."""
    path = Path(path).resolve()
    data = _read_yaml(path)
    try:
        return ModelSpec.model_validate({**data, "base_dir": path.parent})
    except ValidationError as exc:
        raise EdgeLLMError(f"spec {path.name}: {_describe(exc.errors()[0])}") from None


# ---------------------------------------------------------------------------
# Architecture from a Hugging Face config.json. The names HF uses are shared by the
# decoder-only families; a spec overrides any of them explicitly.

_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "intermediate_size": "intermediate_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "max_position_embeddings": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "activation": "hidden_act",
    "tie_word_embeddings": "tie_word_embeddings",
}


def _rope_from_hf(config: dict) -> dict:
    # transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` and `rope_scaling`.
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = params.pop("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        return {"rope_theta": theta}
    params = {k: params[k] for k in RopeScaling.model_fields if k in params}
    return {"rope_theta": theta, "rope_scaling": {"type": kind, **params}}


def architecture_from_hf_config(config: dict) -> dict:
    """Translate a Hugging Face config.json into our architecture field names."""
    arch = {ours: config[theirs] for ours, theirs in _HF_KEYS.items() if config.get(theirs) is not None}
    if "hidden_size" in arch and "num_heads" in arch:
        arch.setdefault("head_dim", arch["hidden_size"] // arch["num_heads"])
    if "num_heads" in arch:
        arch.setdefault("num_kv_heads", arch["num_heads"])
    return {**arch, **_rope_from_hf(config)}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeLLMError(f"{path}: file is missing from the checkpoint folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"{path}: not valid JSON ({exc}); re-download the checkpoint") from None


def resolve_architecture(spec: ModelSpec, checkpoint_dir: Path) -> Architecture:
    """The spec's architecture, filled in from the checkpoint's config.json where it says so."""
    fields = architecture_from_hf_config(read_json(checkpoint_dir / "config.json")) if spec.architecture.from_config else {}
    fields.update(spec.architecture.overrides)
    try:
        return Architecture.model_validate(fields)
    except ValidationError as exc:
        raise EdgeLLMError(f"spec {spec.name}: architecture.{_describe(exc.errors()[0])}") from None
