"""Reading spec files: shipped names or paths, `extends:` chains merged, errors as one line naming the file and field."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from edgellm.errors import EdgeLLMError
from edgellm.infra.resources import data_path
from edgellm.spec.schema import ModelSpec, describe_error

# The specs that ship with edgellm (family files and named models).
BUILTIN_SPECS = data_path("model_specs")


def find_spec(name_or_path: str | Path) -> Path:
    """A spec path as given, or a shipped spec by name (`NAME` -> model_specs/NAME.yaml)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path.resolve()
    return (BUILTIN_SPECS / f"{path.name}.yaml").resolve()


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
        raise EdgeLLMError(f"spec {path}: no such file; pass a YAML file or the name of one in {BUILTIN_SPECS}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise EdgeLLMError(f"spec {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise EdgeLLMError(f"spec {path}: the top level must be a mapping of keys, not {type(data).__name__}")
    source = data.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        # A relative path belongs to the file that states it, whichever spec extends that file.
        data["source"] = {**source, "path": str((path.parent / source["path"]).resolve())}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file() and (BUILTIN_SPECS / parent).is_file():
        parent_path = (BUILTIN_SPECS / parent).resolve()  # a family file that ships with edgellm
    merged = _deep_merge(_read_yaml(parent_path, seen + (path,)), data)
    if "source" in data:  # a source is one choice (hub or path), replaced whole, never mixed
        merged["source"] = data["source"]
    return merged


def load_spec(path: str | Path, family: bool = False) -> ModelSpec:
    """Read and validate a YAML model spec; every problem is one line naming the file and the field.

    `family`: the file is a family file (`_hf-llama.yaml`), a fragment that specs extend; what it
    does not state (name, source) is filled with placeholders so the rest is still checked.
    """
    path = find_spec(path)
    data = _read_yaml(path)
    if family:
        data = {"name": path.stem, "source": {"path": "."}, "weights": {}, **data}
    try:
        return ModelSpec.model_validate({**data, "base_dir": path.parent})
    except ValidationError as exc:
        raise EdgeLLMError(f"spec {path.name}: {describe_error(exc.errors()[0])}") from None


def is_family_file(path: str | Path) -> bool:
    return Path(path).name.startswith("_")
