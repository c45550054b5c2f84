"""The shared tier of the artifact cache: an object store (S3, GCS, a folder) that many runners
read first on a miss and publish to after a build.

Layout under the URL, in the style of build caches:
    blobs/<sha256>                  every file of every artifact, by content, uploaded first
    manifests/<stage>/<key>.json    which blobs make up an artifact, written create-only last
    locks/<stage>/<key>.json        a runner building that artifact now (create-only, kept fresh)
A manifest is written with a create-only put (S3's `If-None-Match: *`), so of two runners that
finish the same artifact one wins and the other adopts the winner's manifest; the lock makes the
second wait instead of building it again. Every blob is hashed on download: a corrupt artifact is
named in a warning, dropped from the store and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import file_digest

MANIFEST_FILE = "manifest.json"  # in every local artifact too: its files' digests, for `cache verify`
LOCK_REFRESH_SECONDS = 20.0
POLL_SECONDS = 1.0


def lock_stale_seconds() -> float:
    """A lock not refreshed for this long belongs to a runner that died: take it over."""
    return float(os.environ.get("EDGELLM_CACHE_LOCK_STALE", "300"))


class CorruptArtifact(Exception):
    """A remote artifact whose bytes do not hash to its manifest."""


def folder_manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {sha256, size}} of every file in an artifact folder but the manifest itself."""
    return {f.relative_to(folder).as_posix(): {"sha256": file_digest(f), "size": f.stat().st_size}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST_FILE}


def _one_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def open_store(url: str):
    """An obstore store for `s3://bucket/prefix`, `gs://bucket/prefix`, `file:///path` or a plain folder."""
    from obstore.exceptions import BaseError
    from obstore.store import LocalStore, from_url

    scheme = urlparse(url).scheme
    try:
        if scheme in ("", "file"):
            folder = Path(urlparse(url).path if scheme else url).expanduser().absolute()
            return LocalStore(folder, mkdir=True)
        if scheme == "s3":
            # A plain-HTTP endpoint (a local S3 server) must be allowed explicitly in obstore.
            plain_http = os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
            return from_url(url, client_options={"allow_http": True} if plain_http else None)
        if scheme == "gs":
            return from_url(url)
    except (BaseError, OSError, ValueError) as exc:  # bad credentials, a malformed URL
        raise EdgeLLMError(f"cannot open the cache at {url} ({_one_line(exc)}); check the URL and the store's credentials") from None
    raise EdgeLLMError(f"cache URL {url}: unsupported scheme {scheme!r}; use s3://, gs://, file:// or a folder")


class RemoteCache:
    """Artifacts shared through an object store; see the module's docstring for the layout."""

    def __init__(self, url: str):
        self.url, self.store = url, open_store(url)
        self._can_publish: bool | None = None

    # -- reading ------------------------------------------------------------------------------
    def _get(self, path: str) -> bytes | None:
        import obstore
        from obstore.exceptions import BaseError

        try:
            return bytes(obstore.get(self.store, path).bytes())
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise EdgeLLMError(f"cannot read {path} from the cache at {self.url} ({_one_line(exc)}); check the store and its credentials") from None

    def blob(self, sha256: str) -> bytes | None:
        return self._get(f"blobs/{sha256}")

    def manifest(self, stage: str, key: str) -> dict | None:
        data = self._get(f"manifests/{stage}/{key}.json")
        return json.loads(data) if data is not None else None

    def download(self, manifest: dict, folder: Path) -> None:
        """Every file of `manifest` into `folder`, each checked against its hash."""
        for name, entry in manifest["files"].items():
            data = self.blob(entry["sha256"])
            if data is None or len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CorruptArtifact(f"{name} (blob {entry['sha256'][:12]}…) is {'missing' if data is None else 'corrupt'}")
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def drop(self, stage: str, key: str, manifest: dict) -> None:
        """Remove a corrupt artifact's manifest and blobs, so the rebuild publishes it afresh."""
        import obstore

        paths = [f"manifests/{stage}/{key}.json", *(f"blobs/{e['sha256']}" for e in manifest["files"].values())]
        for path in paths:
            try:
                obstore.delete(self.store, path)
            except FileNotFoundError:
                pass

    # -- publishing ---------------------------------------------------------------------------
    def check_create_only(self) -> None:
        """Probe once whether the store refuses a second create of one object; without that no
        write could be atomic, so edgellm refuses to publish there."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, BaseError, NotSupportedError

        if self._can_publish is None:
            probe = f"probes/{uuid.uuid4().hex}"
            try:
                obstore.put(self.store, probe, b"1", mode="create")
                try:
                    obstore.put(self.store, probe, b"2", mode="create")
                    self._can_publish = False
                except AlreadyExistsError:
                    self._can_publish = True
                obstore.delete(self.store, probe)
            except NotSupportedError:
                self._can_publish = False
            except (BaseError, OSError) as exc:
                raise EdgeLLMError(f"cannot write to the cache at {self.url} ({_one_line(exc)}); check the store's permissions") from None
        if not self._can_publish:
            raise EdgeLLMError(f"the cache at {self.url} does not support create-only writes, so two runners could overwrite each other; "
                               "edgellm will not publish to it: use a store with conditional puts (S3, GCS, a local folder)")

    def publish(self, stage: str, key: str, folder: Path, files: dict[str, dict]) -> dict | None:
        """Upload `folder`'s blobs (`files`: its manifest's file digests), then its manifest
        create-only. Returns None when this one was published, or the manifest another runner
        published first (to adopt)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        self.check_create_only()
        for name, entry in files.items():
            blob = f"blobs/{entry['sha256']}"
            try:
                if obstore.head(self.store, blob)["size"] == entry["size"]:
                    continue  # content-addressed: already there from another artifact
            except FileNotFoundError:
                pass
            obstore.put(self.store, blob, folder / name)
        manifest = {"stage": stage, "key": key, "files": files, "created": datetime.now(UTC).isoformat(), "by": _owner()}
        try:
            obstore.put(self.store, f"manifests/{stage}/{key}.json", json.dumps(manifest, indent=1).encode(), mode="create")
            return None
        except AlreadyExistsError:
            return self.manifest(stage, key)

    # -- who builds ---------------------------------------------------------------------------
    @contextmanager
    def building(self, stage: str, key: str) -> Iterator[bool]:
        """Yield True while this runner holds the artifact's lock (and should build it), or False
        after waiting for another runner that held it (look for its manifest again)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        self.check_create_only()
        lock = f"locks/{stage}/{key}.json"
        body = json.dumps({"by": _owner()}).encode()
        try:
            obstore.put(self.store, lock, body, mode="create")
        except AlreadyExistsError:
            self._wait_for(stage, key, lock)
            yield False
            return
        stop = threading.Event()
        refresher = threading.Thread(target=self._refresh, args=(lock, body, stop), daemon=True)
        refresher.start()
        try:
            yield True
        finally:
            stop.set()
            refresher.join()
            try:
                obstore.delete(self.store, lock)
            except FileNotFoundError:
                pass

    def _refresh(self, lock: str, body: bytes, stop: threading.Event) -> None:
        import obstore
        from obstore.exceptions import BaseError

        while not stop.wait(LOCK_REFRESH_SECONDS):
            # A fresh last-modified says this runner is alive; a failed refresh is retried by the
            # next, and a lock that goes stale is taken over: a wasted build, never a corrupt one.
            with suppress(BaseError, OSError):
                obstore.put(self.store, lock, body)

    def _wait_for(self, stage: str, key: str, lock: str) -> None:
        """Until the lock's holder publishes, gives up (removes its lock) or goes stale."""
        import obstore

        while self.manifest(stage, key) is None:
            try:
                modified = obstore.head(self.store, lock)["last_modified"]
            except FileNotFoundError:
                return
            if datetime.now(UTC) - modified > timedelta(seconds=lock_stale_seconds()):
                print(f"warning: the runner building {stage} {key[:12]} in {self.url} stopped refreshing its lock; taking over", file=sys.stderr)
                try:
                    obstore.delete(self.store, lock)
                except FileNotFoundError:
                    pass
                return
            time.sleep(POLL_SECONDS)

    # -- administration -----------------------------------------------------------------------
    def entries(self) -> Iterator[dict]:
        """Every object under the store, as obstore's metadata dicts."""
        import obstore

        for batch in obstore.list(self.store):
            yield from batch

    def delete(self, path: str) -> None:
        import obstore

        obstore.delete(self.store, path)

    def read_manifest(self, path: str) -> dict:
        return json.loads(self._get(path) or b"{}")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
