"""Bundle formats, a registry: package a model for the runtimes apps use.

`.litertlm` (LiteRT-LM) and MediaPipe's `.task` both take the start token (only when the model's input
really starts with BOS), the stop tokens, the prompt prefix/suffix and the chat template from the
model's `edgellm.json`. Adding a format is one writer module and one `BundleFormat` entry in `FORMATS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edgellm.bundle.inputs import BundleInputs, BundleReport
from edgellm.bundle.litertlm import write_litertlm
from edgellm.bundle.preflight import preflight
from edgellm.bundle.task import write_task
from edgellm.errors import EdgeLLMError
from edgellm.infra.files import temporary_sibling
from edgellm.text.tokenizer import load_tokenizer


@dataclass(frozen=True)
class BundleFormat:
    name: str  # what --bundle / --format take; also the file extension
    runtime: str
    write: Callable[[BundleInputs, Path], BundleReport]


FORMATS: dict[str, BundleFormat] = {
    f.name: f
    for f in (
        BundleFormat("litertlm", "LiteRT-LM", write_litertlm),
        BundleFormat("task", "MediaPipe LLM Inference", write_task),
    )
}


def bundle_format(name: str) -> BundleFormat:
    if name not in FORMATS:
        raise EdgeLLMError(f"unknown bundle format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def write_bundle(inputs: BundleInputs, fmt: str, out: Path) -> BundleReport:
    """Check that the bundle will work in its runtime (a one-line error if not, before anything is
    written), then write it under a temporary name and rename it, so a failure leaves no half file."""
    writer = bundle_format(fmt).write
    inputs = replace(inputs, chat=preflight(inputs.metadata, load_tokenizer(inputs.tokenizer), fmt))
    staging = temporary_sibling(out)
    try:
        report = writer(inputs, staging)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return report
