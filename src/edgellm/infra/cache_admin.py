"""`cache ls | verify | gc` on either tier: the local folder, or the remote store (infra/remote.py)
of a cache that has one.

Both tiers hold artifacts under (stage, key) with the digests of their files (a local artifact's
manifest.json, a remote one's manifest). A cell record (pipeline/matrix.py) names the artifacts of
a finished matrix cell; gc never deletes an artifact that a kept record names, nor a remote blob
that a kept manifest names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgellm.infra.cache import ArtifactCache
from edgellm.infra.files import file_digest
from edgellm.infra.remote import MANIFEST_FILE, RemoteCache, lock_stale_seconds

RECORD_STAGE = "cell"  # a record naming other artifacts: {"stages": {stage: key}} in its report.json
RECORD_FILE = "report.json"


@dataclass
class Entry:
    stage: str
    key: str
    size: int
    modified: datetime
    files: dict[str, dict]  # its manifest: relative path -> {sha256, size}

    def as_json(self) -> dict:
        return {"stage": self.stage, "key": self.key, "size_bytes": self.size, "modified": self.modified.isoformat()}


def _local_modified(folder: Path) -> datetime:
    return datetime.fromtimestamp(max(f.stat().st_mtime for f in [folder, *folder.iterdir()]), UTC)


def entries(cache: ArtifactCache) -> list[Entry]:
    """Every artifact of the tier the cache names: its remote one when it has one, else the local folder."""
    if cache.remote is None:
        return [Entry(f.parent.name, f.name, sum(p.stat().st_size for p in f.rglob("*") if p.is_file()), _local_modified(f),
                      json.loads((f / MANIFEST_FILE).read_text())["files"]) for f in cache.artifacts()]
    found = []
    for obj in cache.remote.entries():
        parts = obj["path"].split("/")
        if parts[0] == "manifests" and len(parts) == 3:
            files = cache.remote.read_manifest(obj["path"]).get("files", {})
            found.append(Entry(parts[1], parts[2].removesuffix(".json"), sum(f["size"] for f in files.values()), obj["last_modified"], files))
    return sorted(found, key=lambda e: (e.stage, e.key))


def verify(cache: ArtifactCache) -> list[str]:
    """One line per artifact whose files do not hash to its manifest (empty: all sound)."""
    problems = []
    for entry in entries(cache):
        if cache.remote is not None:
            bad = [name for name, f in entry.files.items() if not _blob_sound(cache.remote, f)]
        else:
            folder = cache.path(entry.stage, entry.key)
            bad = [name for name, f in entry.files.items() if not (folder / name).is_file() or file_digest(folder / name) != f["sha256"]]
        problems += [f"{entry.stage} {entry.key}: {name} does not match its digest" for name in bad]
    return problems


def _blob_sound(remote: RemoteCache, entry: dict) -> bool:
    data = remote.blob(entry["sha256"])
    return data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]


def gc(cache: ArtifactCache, older_than: timedelta) -> tuple[int, int]:
    """Delete artifacts (and remote blobs, locks, probes) older than `older_than` that no kept
    record or manifest names; returns (artifacts deleted, bytes freed)."""
    cutoff = datetime.now(UTC) - older_than
    found = entries(cache)
    kept_records = [e for e in found if e.stage == RECORD_STAGE and e.modified >= cutoff]
    named = {(stage, key) for record in kept_records for stage, key in _record(cache, record).items()}
    doomed = [e for e in found if e.modified < cutoff and (e.stage, e.key) not in named]
    for entry in doomed:
        if cache.remote is not None:
            cache.remote.delete(f"manifests/{entry.stage}/{entry.key}.json")
        else:
            shutil.rmtree(cache.path(entry.stage, entry.key), ignore_errors=True)
    # Remotely the bytes are freed by the blobs that no manifest names any more (listed afresh:
    # a manifest published meanwhile keeps its blobs).
    freed = _gc_blobs(cache.remote, cutoff) if cache.remote is not None else sum(e.size for e in doomed)
    return len(doomed), freed


def _record(cache: ArtifactCache, record: Entry) -> dict[str, str]:
    if cache.remote is None:
        return json.loads((cache.path(record.stage, record.key) / RECORD_FILE).read_text())["stages"]
    report = cache.remote.blob(record.files[RECORD_FILE]["sha256"]) if RECORD_FILE in record.files else None
    return json.loads(report)["stages"] if report else {}


def _gc_blobs(remote: RemoteCache, cutoff: datetime) -> int:
    """Blobs no manifest names any more, and leftover locks and probes, older than `cutoff`; bytes freed."""
    objects = list(remote.entries())
    named = {f["sha256"] for obj in objects if obj["path"].startswith("manifests/")
             for f in remote.read_manifest(obj["path"]).get("files", {}).values()}
    lock_cutoff = min(cutoff, datetime.now(UTC) - timedelta(seconds=lock_stale_seconds()))  # a live lock is refreshed: never older
    freed = 0
    for obj in objects:
        top, _, name = obj["path"].partition("/")
        unnamed_blob = top == "blobs" and name not in named
        if (unnamed_blob and obj["last_modified"] < cutoff) or (top in ("locks", "probes") and obj["last_modified"] < lock_cutoff):
            remote.delete(obj["path"])
            freed += obj["size"] if unnamed_blob else 0
    return freed
