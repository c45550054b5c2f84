"""Keep the terminal for edgellm's own output: silence the chatter of the libraries it drives."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def quiet_libraries() -> None:
    """Progress bars and import-time warnings of transformers, huggingface_hub, torch and torchao."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("torchao", "torch.utils._pytree", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def native_output_to(log_path: Path | str = os.devnull) -> Iterator[None]:
    """Send what native code prints on stdout/stderr (absl, MLIR, LiteRT) to a file instead of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
