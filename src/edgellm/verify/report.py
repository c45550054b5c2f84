"""What verify and verify-tflite report: each comparison of our model or `.tflite` against a reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgellm.errors import VerificationFailed
from edgellm.infra.reports import StageReport
from edgellm.spec.schema import VerifySection


class LogitComparison(BaseModel):
    """A decoder's logits against the reference's, position by position."""

    max_abs_logit_diff: float
    top1_agreement: float
    positions: int

    def problem(self, limits: VerifySection) -> str | None:
        if self.max_abs_logit_diff <= limits.max_abs_logit_diff and self.top1_agreement >= limits.min_top1_agreement:
            return None
        return (f"max |Δlogit| {self.max_abs_logit_diff:.3g} (limit {limits.max_abs_logit_diff:g}), "
                f"top-1 agreement {self.top1_agreement:.1%} (limit {limits.min_top1_agreement:.0%}); "
                "the spec's architecture or weight mapping does not match the checkpoint")

    def summary(self) -> str:
        return f"max |Δlogit| {self.max_abs_logit_diff:.2e}, top-1 {self.top1_agreement:.1%}"

    def row(self) -> tuple[str, str, str]:
        return f"{self.max_abs_logit_diff:.3e}", f"{self.top1_agreement:.1%}", str(self.positions)


class EmbeddingComparison(BaseModel):
    """An encoder's pooled embeddings against the reference's, input by input."""

    min_cosine: float
    max_abs_diff: float
    inputs: int

    def problem(self, limits: VerifySection) -> str | None:
        if self.min_cosine >= limits.min_cosine:
            return None
        return (f"cosine {self.min_cosine:.6f} (limit {limits.min_cosine}), max |Δ| {self.max_abs_diff:.3g}; "
                "the spec's architecture (pooling, norms) or weight mapping does not match the checkpoint")

    def summary(self) -> str:
        return f"embedding cosine {self.min_cosine:.6f}, max |Δ| {self.max_abs_diff:.2e}"

    def row(self) -> tuple[str, str, str]:
        return f"{self.min_cosine:.6f}", f"{self.max_abs_diff:.3e}", str(self.inputs)


Comparison = LogitComparison | EmbeddingComparison
COLUMNS = {LogitComparison: ("max |Δlogit|", "top-1 agreement", "positions"), EmbeddingComparison: ("lowest cosine", "max |Δ|", "inputs")}


class VerifyReport(StageReport):
    tokens: list[int] | None = None  # a decoder's verification tokens (an encoder-decoder's decoder target)
    encoder_tokens: list[int] | None = None  # an encoder-decoder's encoder input
    inputs: list[list[int]] | None = None  # an encoder's verification texts, as ids
    comparisons: dict[str, Comparison]

    def check(self, limits: VerifySection) -> None:
        """Raise VerificationFailed naming the first comparison beyond tolerance."""
        for name, comparison in self.comparisons.items():
            if problem := comparison.problem(limits):
                raise VerificationFailed(f"{name}: {problem}")

    def summary(self) -> str:
        worst = max(self.comparisons.values(), key=lambda c: c.max_abs_logit_diff if isinstance(c, LogitComparison) else -c.min_cosine)
        return worst.summary()


def reauthored_report(limits: VerifySection, out: Path, names: tuple[str, str], reference: np.ndarray, ours: np.ndarray,
                      compare: Callable[[np.ndarray, np.ndarray], Comparison], **fields) -> VerifyReport:
    """verify: our model's outputs against the reference's, both saved in `out` (as `names`) for verify-tflite."""
    for name, array in zip(names, (reference, ours)):
        np.save(out / name, array)
    report = VerifyReport(**fields, comparisons={"reauthored_vs_transformers": compare(ours, reference)})
    report.check(limits)
    return report


def tflite_report(limits: VerifySection, references: Path, names: tuple[str, str], ours: np.ndarray,
                  compare: Callable[[np.ndarray, np.ndarray], Comparison], **fields) -> VerifyReport:
    """verify-tflite: the `.tflite`'s outputs against the reference's and our model's, saved by verify."""
    reference, reauthored = (np.load(references / name) for name in names)
    report = VerifyReport(**fields, comparisons={"tflite_vs_transformers": compare(ours, reference), "tflite_vs_reauthored": compare(ours, reauthored)})
    report.check(limits)
    return report
