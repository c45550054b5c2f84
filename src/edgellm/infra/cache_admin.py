"""`cache ls | verify | gc` on either tier: the local folder or a remote store (infra/remote.py).

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

    def as_json(self) -> dict:
        return {"stage": self.stage, "key": self.key, "size_bytes": self.size, "modified": self.modified.isoformat()}


def _local_modified(folder: Path) -> datetime:
    return datetime.fromtimestamp(max(f.stat().st_mtime for f in [folder, *folder.iterdir()]), UTC)


def entries(cache: ArtifactCache, remote: bool) -> list[Entry]:
    """Every artifact of one tier."""
    if not remote:
        return [Entry(f.parent.name, f.name, sum(p.stat().st_size for p in f.rglob("*") if p.is_file()), _local_modified(f)) for f in cache.artifacts()]
    found = []
    for obj in cache.remote.entries():
        parts = obj["path"].split("/")
        if parts[0] == "manifests" and len(parts) == 3:
            manifest = cache.remote.read_manifest(obj["path"])
            found.append(Entry(parts[1], parts[2].removesuffix(".json"), sum(f["size"] for f in manifest.get("files", {}).values()), obj["last_modified"]))
    return sorted(found, key=lambda e: (e.stage, e.key))


def verify(cache: ArtifactCache, remote: bool) -> list[str]:
    """One line per artifact whose files do not hash to its manifest (empty: all sound)."""
    problems = []
    for entry in entries(cache, remote):
        if remote:
            manifest = cache.remote.manifest(entry.stage, entry.key) or {"files": {}}
            bad = [name for name, f in manifest["files"].items() if not _blob_sound(cache.remote, f)]
        else:
            folder = cache.path(entry.stage, entry.key)
            files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
            bad = [name for name, f in files.items() if not (folder / name).is_file() or file_digest(folder / name) != f["sha256"]]
        problems += [f"{entry.stage} {entry.key}: {name} does not match its digest" for name in bad]
    return problems


def _blob_sound(remote: RemoteCache, entry: dict) -> bool:
    data = remote.blob(entry["sha256"])
    return data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]


def gc(cache: ArtifactCache, remote: bool, older_than: timedelta) -> tuple[int, int]:
    """Delete artifacts (and remote blobs, locks, probes) older than `older_than` that no kept
    record or manifest names; returns (artifacts deleted, bytes freed)."""
    cutoff = datetime.now(UTC) - older_than
    found = entries(cache, remote)
    kept_records = [e for e in found if e.stage == RECORD_STAGE and e.modified >= cutoff]
    named = {(stage, key) for record in kept_records for stage, key in _record(cache, record, remote).items()}
    doomed = [e for e in found if e.modified < cutoff and (e.stage, e.key) not in named]
    for entry in doomed:
        if remote:
            cache.remote.delete(f"manifests/{entry.stage}/{entry.key}.json")
        else:
            shutil.rmtree(cache.path(entry.stage, entry.key), ignore_errors=True)
    freed = sum(e.size for e in doomed)
    if remote:
        freed = _gc_blobs(cache.remote, cutoff)
    return len(doomed), freed


def _record(cache: ArtifactCache, record: Entry, remote: bool) -> dict[str, str]:
    if not remote:
        return json.loads((cache.path(record.stage, record.key) / RECORD_FILE).read_text())["stages"]
    manifest = cache.remote.manifest(record.stage, record.key)
    report = cache.remote.blob(manifest["files"][RECORD_FILE]["sha256"]) if manifest else None
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
