"""XNNPack's weight cache: a model's weights packed once for all its signatures.

Without it, LiteRT's CPU path packs the weights again for every signature (prefill_N, decode) on
top of the mapped file: a process holds them four to five times. With it, the packed weights live
in one file that every signature shares, and a later load maps that file instead of packing
again (SmolLM2-135M float: peak RSS 4.5x the model file down to 1.3x, load 0.13 s once built).

XNNPack identifies weights by their buffer index in the model, not by their values, so a cache
file is only ever used for the exact model it was built from: the key is the model's SHA-256 (with
the runtime's version and the CPU's flags, which decide the packed layout). The digest is
remembered by file identity and times, so a second load does not read the whole model again.
A cache is built under a private name and renamed once the model loaded, so no reader sees a
partial file. XNNPack ends the process if a file write fails, so a file cache is only built where
the disk has ample room; elsewhere the packed weights stay in memory (still shared).
EDGELLM_WEIGHT_CACHE=memory or =off chooses the same by hand.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import resource
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgellm.infra.cache import cache_root
from edgellm.infra.files import file_digest

FOLDER = "xnnpack"  # <cache root>/xnnpack/<key>.xnnpack
IN_MEMORY = ":memory"  # XNNPack's own name for a cache in anonymous memory
# XNNPack's file header (tflite/delegates/xnnpack/weight_cache.h, XNNPackCacheHeader): version,
# offset and size of the buffer list (which ends the file), then the stale flag.
_HEADER = struct.Struct("<QQQB")
# Packed weights are about the file's size, or several times it when weights are stored narrower
# than computed (fp16, int8-weight-only: packed as float32); XNNPack aborts on a full disk, so a
# file is built only with this much room to spare.
_ROOM_FACTOR, _NARROW_ROOM_FACTOR, _ROOM_MARGIN = 1.5, 4, 256 << 20
_BUILDING = ".building-"
_ABANDONED_AFTER_S = 24 * 3600


def is_complete(path: Path) -> bool:
    """Whether `path` holds a finished cache not marked stale, as far as its header tells (XNNPack
    rebuilds a file it rejects in place, so it is only ever handed files that pass this)."""
    try:
        with path.open("rb") as f:
            header, size = f.read(_HEADER.size), os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(header) < _HEADER.size:
        return False
    version, list_offset, list_size, stale = _HEADER.unpack(header)
    return version != 0 and not stale and _HEADER.size <= list_offset < size and list_offset + list_size == size


@functools.cache
def _packing_identity() -> str:
    """What the packed layout depends on besides the model: the runtime's version and the CPU."""
    try:
        runtime = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        runtime = "unknown"
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{runtime}\0{cpu}"


def _model_digest(model: Path, folder: Path) -> tuple[str, Path | None]:
    """The model's SHA-256, and where to remember it (None when it was remembered already)."""
    info = model.stat()
    identity = f"{model.resolve()}\0{info.st_dev}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}"
    memo = folder / "digests" / hashlib.sha256(identity.encode()).hexdigest()[:32]
    try:
        digest = memo.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", digest):
            return digest, None
    except OSError:
        pass
    return file_digest(model), memo


@dataclass
class WeightCache:
    """Where XNNPack keeps one load's packed weights: a finished file it maps, a new file it fills
    (renamed to `final` once the model loaded), or memory."""

    path: str
    building: Path | None = None
    final: Path | None = None
    digest: str = ""
    memo: Path | None = None  # where to remember the model's digest, if not there yet

    def commit(self) -> None:
        """The model loaded: keep what XNNPack wrote, and the digest."""
        try:
            if self.memo is not None:
                self.memo.parent.mkdir(exist_ok=True)
                partial = self.memo.with_name(f"{self.memo.name}.{uuid.uuid4().hex[:8]}")
                partial.write_text(self.digest)
                os.replace(partial, self.memo)
            if self.building is not None and is_complete(self.building):
                os.replace(self.building, self.final)
        except OSError:
            pass  # a read-only or full cache: the next load packs again
        self.discard()

    def discard(self) -> None:
        """Remove a file XNNPack did not finish (nothing once committed)."""
        if self.building is not None:
            self.building.unlink(missing_ok=True)
            self.building = None


def _room(model: Path) -> int:
    """Bytes a cache file for `model` may take (reading the model's tensor types: only when it is needed)."""
    from edgellm.tflite.file import stores_weights_narrower_than_computed

    factor = _NARROW_ROOM_FACTOR if stores_weights_narrower_than_computed(model) else _ROOM_FACTOR
    return int(factor * model.stat().st_size) + _ROOM_MARGIN


def weight_cache(model: Path) -> WeightCache | None:
    """The weight cache to load `model` with; None for none at all."""
    mode = os.environ.get("EDGELLM_WEIGHT_CACHE", "").strip().lower()
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if mode in ("off", "0", "no", "false") or limit != resource.RLIM_INFINITY and limit < _room(model):
        return None  # XNNPack aborts at a file size limit, even for the in-memory cache
    if mode == "memory":
        return WeightCache(IN_MEMORY)
    folder = cache_root() / FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        digest, memo = _model_digest(model, folder)
    except OSError:
        return WeightCache(IN_MEMORY)
    key = hashlib.sha256(f"{digest}\0{_packing_identity()}".encode()).hexdigest()[:32]
    final = folder / f"{key}.xnnpack"
    if is_complete(final):
        return WeightCache(str(final), digest=digest, memo=memo)
    for abandoned in folder.glob(f"{_BUILDING}*"):  # left by a process that died mid-build
        try:
            if time.time() - abandoned.stat().st_mtime > _ABANDONED_AFTER_S:
                abandoned.unlink()
        except OSError:
            pass
    try:
        if shutil.disk_usage(folder).free < _room(model):
            return WeightCache(IN_MEMORY, digest=digest, memo=memo)
        building = folder / f"{_BUILDING}{key}-{uuid.uuid4().hex[:8]}"
        os.close(os.open(building, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except OSError:  # a read-only cache
        return WeightCache(IN_MEMORY)
    return WeightCache(str(building), building, final, digest, memo)
