"""What eval and bench report, by what they measured: the CLI prints each type its own way, `--json`
gives every field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MeasureReport(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields the printed table does not use still go to --json

    def as_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)


class PerplexityReport(MeasureReport):
    """A decoder's perplexity over a corpus; against a reference, agreement per model."""

    corpus: str
    tokens: int
    greedy_tokens: int
    models: list[dict]
    reference: dict | None = None


class EmbeddingAgreement(MeasureReport):
    """An encoder's embeddings of corpus lines against the first model's."""

    texts: int
    models: list[dict]


class DecodeBench(MeasureReport):
    """A decoder's time to first token, prefill and decode speed."""

    threads: int
    time_to_first_token_ms: float
    prompt_tokens: int
    prefill: dict[str, dict]
    decode_tokens: int
    decode_tokens_per_second: float
    raw_decode_tokens_per_second: float
    pipeline_overhead_percent: float
    peak_rss_mb: float


class BenchComparison(MeasureReport):
    """Two decoders timed in alternating rounds."""

    models: list[str]
    threads: int
    rounds: int
    speeds: list[dict[str, float]]
    ratio: dict[str, float]


class EmbedBench(MeasureReport):
    """An encoder's time per call of each embed_N."""

    model: str
    signatures: dict[str, dict]
