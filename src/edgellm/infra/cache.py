"""Content-addressed artifact store: a stage's output lives at <root>/<stage>/<key>/.

The key hashes everything the output depends on: the stage's inputs, edgellm's own source code
(so an edit to a layer re-converts instead of serving a stale model) and the versions of the
libraries that shape the artifact.
An artifact is built in a staging folder and renamed into place only when complete, so an
interrupted or failed stage never leaves a half artifact behind; a staging folder whose process
was killed (so could not clean up) is swept by the next run. Processes sharing a cache folder take
a file lock per artifact, so one builds it and the others wait and use it.

With a remote tier (infra/remote.py) a miss here looks there before building, and a build is
published there.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgellm import __version__
from edgellm.errors import EdgeLLMError
from edgellm.infra.files import write_json
from edgellm.infra.remote import MANIFEST_FILE, CorruptArtifact, RemoteCache, folder_manifest

STAGING_PREFIX = ".staging-"
LOCK_PREFIX = ".lock-"
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


class ArtifactCache:
    def __init__(self, root: Path | None = None, remote: RemoteCache | None = None):
        self.root, self.remote = root or cache_root(), remote

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        path = self.path(stage, key)
        return path if path.is_dir() else None

    def obtain(self, stage: str, key: str, build: Callable[[Path], None], shared: bool = True) -> str:
        """Make sure artifact (stage, key) is here: "cached" (it was), "fetched" (from the remote
        tier) or "ran" (`build` filled an empty folder; published when `shared`)."""
        if self.lookup(stage, key):
            return "cached"
        with self._locked(stage, key):
            if self.lookup(stage, key):  # another process built it while this one waited
                return "cached"
            remote = self.remote if shared else None
            while remote is not None:
                if self._fetch(remote, stage, key):
                    return "fetched"
                with remote.building(stage, key) as mine:
                    if mine:
                        with self.writing(stage, key) as folder:
                            build(folder)
                            files = self._seal(folder)
                            if (theirs := remote.publish(stage, key, folder, files)) is not None and theirs["files"] != files:
                                _adopt(remote, theirs, folder)
                                self._seal(folder, theirs["files"])
                        return "ran"
            with self.writing(stage, key) as folder:
                build(folder)
                self._seal(folder)
            return "ran"

    def _fetch(self, remote: RemoteCache, stage: str, key: str) -> bool:
        manifest = remote.manifest(stage, key)
        if manifest is None:
            return False
        try:
            with self.writing(stage, key) as folder:
                remote.download(manifest, folder)
                self._seal(folder, manifest["files"])  # each file was hashed against these on download
            return True
        except CorruptArtifact as exc:
            print(f"warning: {stage} {key[:12]} in {remote.url}: {exc}; dropping it and rebuilding", file=sys.stderr)
            remote.drop(stage, key, manifest)
            return False

    @staticmethod
    def _seal(folder: Path, files: dict[str, dict] | None = None) -> dict[str, dict]:
        """Write the artifact's manifest (its files' digests, hashed here unless already known); returns its files."""
        files = folder_manifest(folder) if files is None else files
        write_json(folder / MANIFEST_FILE, {"files": files})
        return files

    @contextmanager
    def _locked(self, stage: str, key: str) -> Iterator[None]:
        """An exclusive lock on one artifact among the processes sharing this folder (released by
        the kernel if the process dies). The holder removes the lock file, so a waiter that wakes
        on a removed file locks afresh: no lock file outlives its build."""
        path = self.root / f"{LOCK_PREFIX}{stage}-{key}"
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                handle = path.open("a")
            except OSError as exc:
                raise self._unwritable(exc) from None
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            handle.close()

    def _unwritable(self, exc: OSError) -> Exception:
        """A write that failed for want of room or permission is the user's to fix; anything else is a bug."""
        if exc.errno not in _WRITE_ERRORS:
            return exc
        return EdgeLLMError(f"cannot write to the cache {self.root} ({exc.strerror}); free some space there or set EDGELLM_CACHE_DIR to another folder")

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
            raise self._unwritable(exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def artifacts(self) -> Iterator[Path]:
        """Every committed artifact folder, <root>/<stage>/<key> (sealed with its manifest; the
        runtime's weight caches beside them are not artifacts)."""
        for stage in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if stage.is_dir() and not stage.name.startswith("."):
                yield from sorted(p for p in stage.iterdir() if (p / MANIFEST_FILE).is_file())

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


def _adopt(remote: RemoteCache, theirs: dict, folder: Path) -> None:
    """Another runner published this artifact first, with other bytes: use theirs, as every other runner will."""
    for path in sorted(folder.iterdir()):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    remote.download(theirs, folder)
