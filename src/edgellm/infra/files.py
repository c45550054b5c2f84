"""Reading and publishing files: JSON with one-line errors, and writes that are all or nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from edgellm.errors import EdgeLLMError


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object from `path`; a missing, unreadable or non-object file is one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeLLMError(f"{path}: {what} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeLLMError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); re-download or rewrite the {what}") from None
    if not isinstance(data, dict):
        raise EdgeLLMError(f"{path}: expected a JSON object, found {type(data).__name__}; re-download or rewrite the {what}")
    return data


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # one reused buffer, not a new block per read


def inside(folder: Path, name: str, what: str) -> Path:
    """`folder / name`, refused when it leaves `folder` (`..`, an absolute path, or a symlink out)."""
    path = folder / name
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise EdgeLLMError(f"{what} {name!r} points outside {folder} (through .., an absolute path or a symlink); files a model names must live in its folder")
    return path


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside `path` (same filesystem, so a rename publishes it in one step)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def publish(source: Path, destination: Path) -> Path:
    """Copy `source` to `destination` through a temporary name: readers see the old file or the whole new one."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(destination)
    try:
        shutil.copyfile(source, staging)
        os.replace(staging, destination)
    except OSError as exc:
        raise EdgeLLMError(f"cannot write {destination} ({exc.strerror or exc}); free some space or choose another output path") from None
    finally:
        staging.unlink(missing_ok=True)
    return destination


def write_bytes_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(path)
    try:
        staging.write_bytes(data)
        os.replace(staging, path)
    except OSError as exc:
        raise EdgeLLMError(f"cannot write {path} ({exc.strerror or exc}); free some space or choose another output path") from None
    finally:
        staging.unlink(missing_ok=True)


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file the user named, or a one-line error naming `what` it was for."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"{what} {path} is unreadable ({exc}); pass a UTF-8 text file") from None
