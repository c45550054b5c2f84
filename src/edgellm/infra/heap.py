"""Memory: how this process's heap hands it back (large blocks get their own mappings), and what Linux reports of it."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_LARGE = 1 << 20


@functools.cache
def map_large_allocations() -> None:
    """Serve every allocation of 1 MB or more from its own mapping, unmapped when freed.

    glibc raises that threshold by itself, up to 32 MB, as large blocks are freed; a model load
    then reads and converts its tensors (a few MB each) in the heap, and the heap keeps the freed
    fragments: a Qwen2.5-1.5B load peaked 1.5 GB above its weights and kept that after it ended.
    Without glibc's mallopt (macOS) nothing changes."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _LARGE)
    except (OSError, AttributeError):
        pass


def proc_bytes(file: str, field: str) -> int | None:
    """A "<field>: N kB" line of a /proc file (/proc/meminfo, /proc/self/status) in bytes; None where there is none."""
    try:
        for line in Path(file).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
