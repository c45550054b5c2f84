"""Model kinds, one registry: what differs between a decoder-only LM, a sentence encoder and an
encoder-decoder, from the model that is built to the commands that run its `.tflite`.

The pipeline and the commands ask the kind (of a spec's architecture, or of a model file's
signatures) instead of testing its name. Adding a kind is one `ModelKind` subclass in a module of
its own here, listed in `KINDS`, plus its layers, signatures, verification and runtime.
"""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.kinds.decoder import DecoderKind
from edgellm.kinds.encoder import EncoderKind
from edgellm.kinds.kind import ModelKind
from edgellm.kinds.seq2seq import Seq2SeqKind
from edgellm.tflite.file import read_signatures

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (DecoderKind(), EncoderKind(), Seq2SeqKind())}


def kind_named(name: str) -> ModelKind:
    """The kind an Architecture's `kind` field names."""
    return KINDS[name]


def model_kind(path: Path, command: str) -> ModelKind:
    """The kind of the model file at `path` (from its signatures), or a one-line refusal when
    `edgellm command` does not handle that kind."""
    names = read_signatures(path)
    kind = next((k for k in KINDS.values() if any(k.marker.fullmatch(n) for n in names)), KINDS["decoder"])
    if command not in kind.commands:
        takers = [k.name for k in KINDS.values() if command in k.commands]
        raise EdgeLLMError(f"{path}: `edgellm {command.split()[0]}` does not handle {kind.name} models (it handles {', '.join(takers)}); "
                           f"use `edgellm {kind.commands[0]}` for this one")
    return kind
