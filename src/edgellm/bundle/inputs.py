"""What every bundle format is written from (the model, its tokenizer and edgellm.json) and what it reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgellm.bundle.preflight import ChatPlan
from edgellm.infra.reports import StageReport
from edgellm.text.chat_template import prompt_affixes
from edgellm.text.tokenizer import Tokenizer
from edgellm.tflite.metadata import ModelMetadata


@dataclass(frozen=True)
class BundleInputs:
    model: Path
    tokenizer: Path
    metadata: ModelMetadata
    chat: ChatPlan | None = None  # the template and start token adapted for LiteRT-LM (set by the pre-flight)

    @property
    def start_id(self) -> int | None:
        return self.chat.start_id if self.chat is not None else self.metadata.start_id


class BundleReport(StageReport):
    """What every writer reports: the special tokens as ids and as text, and the prompt affixes (and,
    as a stage's report, the bundle's file and size)."""

    file: str | None = None
    size_bytes: int | None = None
    format: str
    start_id: int | None = None  # None: the model's input does not start with BOS
    start_token: str | None = None
    stop_ids: list[int]
    stop_tokens: list[str]
    prompt_prefix: str
    prompt_suffix: str

    def summary(self) -> str:
        return f"{(self.size_bytes or 0) / 1e6:.2f} MB, start {self.start_token!r}, stop {self.stop_tokens}"


def writer_report(fmt: str, inputs: BundleInputs, tokenizer: Tokenizer) -> BundleReport:
    stops = [i for i in inputs.metadata.stop_ids if 0 <= i < tokenizer.vocab_size]
    prefix, suffix = prompt_affixes(inputs.metadata)
    return BundleReport(
        format=fmt,
        start_id=inputs.start_id,
        start_token=tokenizer.piece(inputs.start_id) if inputs.start_id is not None else None,
        stop_ids=stops,
        stop_tokens=[tokenizer.piece(i) for i in stops],
        prompt_prefix=prefix,
        prompt_suffix=suffix,
    )
