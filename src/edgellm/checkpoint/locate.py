"""Fetch stage: locate a checkpoint folder, from the Hugging Face hub or a local path."""

from __future__ import annotations

import os
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.spec.schema import HubSource, ModelSpec


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_from_hub(hub: HubSource, token: str | None = None, offline: bool | None = None) -> Path:
    """snapshot_download the spec's repo at its revision; offline serves the local hub cache only."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline_requested() if offline is None else offline
    where = f"{hub.repo_id}@{hub.revision}"
    try:
        folder = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            allow_patterns=hub.allow_patterns,
            token=token,
            local_files_only=offline,
        )
    except GatedRepoError:
        raise EdgeLLMError(f"{where}: the repo is gated; accept its license on the hub and pass --token or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise EdgeLLMError(f"{where}: no such repo on the hub (or it is private); check source.hub.repo_id or pass --token") from None
    except RevisionNotFoundError:
        raise EdgeLLMError(f"{where}: no such revision; check source.hub.revision") from None
    except HFValidationError as exc:
        raise EdgeLLMError(f"{where}: invalid repo id ({exc}); fix source.hub.repo_id") from None
    except LocalEntryNotFoundError:
        hint = "it is not in the local hub cache" if offline else "the hub could not be reached and it is not in the local hub cache"
        raise EdgeLLMError(f"{where}: {hint}; download it once online, or pass --checkpoint DIR with a local copy") from None
    except OSError as exc:
        raise EdgeLLMError(f"{where}: download failed ({exc}); check the network or pass --checkpoint DIR") from None
    return Path(folder)


def locate_checkpoint(spec: ModelSpec, checkpoint: Path | None = None, token: str | None = None, offline: bool | None = None) -> Path:
    """The checkpoint folder for `spec`: `checkpoint` if given, else the spec's local path or hub repo."""
    if checkpoint is not None:
        folder, what = Path(checkpoint).resolve(), "--checkpoint"
    elif spec.source.path is not None:
        folder, what = spec.local_source(), f"source.path in spec {spec.name}"
    else:
        return download_from_hub(spec.source.hub, token=token, offline=offline)
    if not folder.is_dir():
        raise EdgeLLMError(f"checkpoint folder {folder} does not exist; fix {what}")
    return folder
