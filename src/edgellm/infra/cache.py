"""Content-addressed artifact store: a stage's output lives at <root>/<stage>/<key>/.

The key hashes everything the output depends on: the stage's inputs, edgellm's own source code
(so an edit to a layer re-converts instead of serving a stale model) and the versions of the
libraries that shape the artifact.
An artifact is built in a staging folder and renamed into place only when complete, so an
interrupted or failed stage never leaves a half artifact behind; a staging folder whose process
was killed (so could not clean up) is swept by the next run.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgellm import __version__
from edgellm.errors import EdgeLLMError

STAGING_PREFIX = ".staging-"
# Where writing fails for want of room or permission: the user's to fix, not a bug.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def cache_root() -> Path:
    configured = os.environ.get("EDGELLM_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "edgellm"


PACKAGE = Path(__file__).resolve().parents[1]  # edgellm/, every subpackage


def package_digest(package: Path) -> str:
    """A digest of every Python source file under `package`, with its path."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """edgellm's own code: any edit moves every key."""
    return package_digest(PACKAGE)


def library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of these distributions (None when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def artifact_key(stage: str, inputs: dict, libraries: tuple[str, ...] = ()) -> str:
    """Hash of the stage name, the stage's inputs (any JSON-able data), edgellm's code and the
    versions of `libraries`."""
    payload = {"stage": stage, "version": __version__, "code": code_digest(), "libraries": library_versions(libraries), "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # one reused buffer, not a new block per read


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
        self.sweep()
        staging = self.root / f"{STAGING_PREFIX}{stage}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir(parents=True)
            yield staging
            final = self.path(stage, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # a concurrent run committed the same key first: keep theirs
                    raise
        except OSError as exc:
            if exc.errno not in _WRITE_ERRORS:
                raise
            raise EdgeLLMError(f"cannot write to the cache {self.root} ({exc.strerror}); free some space there or set EDGELLM_CACHE_DIR to another folder") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def sweep(self) -> None:
        """Remove staging folders whose process is gone (killed before it could clean up)."""
        for staging in self.root.glob(f"{STAGING_PREFIX}*") if self.root.is_dir() else []:
            owner = staging.name.rsplit("-", 2)[-2]
            if owner.isdigit() and not _alive(int(owner)):
                shutil.rmtree(staging, ignore_errors=True)

    def clear(self) -> int:
        """Remove every artifact; returns the number of bytes freed."""
        if not self.root.exists():
            return 0
        freed = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        shutil.rmtree(self.root)
        return freed
