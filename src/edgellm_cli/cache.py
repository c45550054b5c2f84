"""Content-addressed artifact store: a stage's output lives at <root>/<stage>/<key>/.

The key hashes everything the output depends on (inputs, parameters, edgellm version).
An artifact is built in a temporary folder and renamed into place only when complete,
so an interrupted or failed stage never leaves a half artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgellm_cli import __version__


def cache_root() -> Path:
    configured = os.environ.get("EDGELLM_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "edgellm"


def artifact_key(stage: str, inputs: dict) -> str:
    """Hash of the stage name, the edgellm version and the stage's inputs (any JSON-able data)."""
    payload = json.dumps({"stage": stage, "version": __version__, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    def __init__(self, root: Path | None = None):
        self.root = root or cache_root()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        path = self.path(stage, key)
        return path if path.is_dir() else None

    @contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path]:
        """Yield an empty folder to fill; it becomes the artifact only if the block succeeds."""
        staging = self.root / f".staging-{stage}-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            yield staging
            final = self.path(stage, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # a concurrent run committed the same key first: keep theirs
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def clear(self) -> int:
        """Remove every artifact; returns the number of bytes freed."""
        if not self.root.exists():
            return 0
        freed = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        shutil.rmtree(self.root)
        return freed
