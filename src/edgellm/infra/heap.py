"""How this process's heap hands memory back: large blocks get their own mappings."""

from __future__ import annotations

import ctypes
import functools

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
