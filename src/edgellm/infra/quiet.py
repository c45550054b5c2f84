"""Keep the terminal for edgellm's own output: silence the chatter of the libraries it drives."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path


def quiet_libraries() -> None:
    """Progress bars and import-time warnings of transformers, huggingface_hub, torch and torchao."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")  # ai-edge-quantizer's progress bars
    for name in ("torchao", "torch.utils._pytree", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def silence_native_stderr() -> None:
    """Point file descriptor 2 at /dev/null for the rest of the process, keeping Python's own
    `sys.stderr` on the terminal: native runtimes log to fd 2 at load, run and exit time.
    Set EDGELLM_DEBUG=1 to see their logs."""
    if os.environ.get("EDGELLM_DEBUG"):
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


@contextmanager
def native_output_to(log_path: Path | str = os.devnull) -> Iterator[None]:
    """Send what native code (absl, MLIR, LiteRT) and Python libraries (ai-edge-quantizer's
    progress bars, which ignore TQDM_DISABLE) print to a file instead of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "a", encoding="utf-8", errors="backslashreplace") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with redirect_stdout(log), redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
