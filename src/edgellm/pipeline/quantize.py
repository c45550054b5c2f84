"""The stages that shrink a model: calibrate (GPTQ's Hessians on text), sensitivity and search (the
smallest int4/int8 mix within a perplexity budget) and quantize. Each is a plain function from
typed inputs to its typed report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from edgellm.infra.reports import StageReport
from edgellm.quantize.recipes import Recipe
from edgellm.tflite.metadata import MODEL_FILE


@dataclass(frozen=True)
class CalibrationText:
    """What calibration runs: the float model, its tokenizer and the text."""

    model: Path
    tokenizer: Path
    text: Path

    def held_out(self) -> tuple[list[list[int]], str]:
        """Windows of the text that calibration did not use, and the prefill that runs them."""
        from edgellm.quantize.calibration import held_out_windows, read_calibration_text, widest_prefill
        from edgellm.text.tokenizer import load_tokenizer

        width = widest_prefill(self.model)
        tokens = load_tokenizer(self.tokenizer).encode(read_calibration_text(self.text))
        return held_out_windows(tokens, width), f"prefill_{width}"


class CalibrationReport(StageReport):
    file: str
    windows: int
    tokens: int
    weights: int

    def summary(self) -> str:
        return f"{self.windows} windows, {self.tokens} tokens, Hessians of {self.weights} weights"


class SensitivityReport(StageReport):
    groups: list[dict]
    windows: int
    int8_cost: float
    int4_costs: dict[str, float]

    def summary(self) -> str:
        costs = self.int4_costs.values()
        return f"{len(self.groups)} layer groups, int4 costs KL {min(costs):.4f}..{max(costs):.4f} per token"


class SearchReport(StageReport):
    max_ppl_ratio: float
    frontier: list[dict]
    chosen: dict
    checked: int

    def summary(self) -> str:
        return (f"{len(self.chosen['int4_groups'])} of {len(self.frontier) - 1} groups int4, exp(KL) {self.chosen['measured_kl_bound']:.4f} "
                f"(weights only, budget {self.max_ppl_ratio:g})")


class QuantizeReport(StageReport):
    file: str
    recipe: str
    size_before: int
    size_after: int
    ratio: float
    block_fallbacks: list[str]
    zero_scales_repaired: int
    gptq_weights: int
    worker_peak_rss_bytes: int
    top1_agreement_with_float: float | None = None  # a generative model's, on text the float model writes
    agreement_tokens: int | None = None
    held_out_ppl_ratio: float | None = None  # a calibrated recipe's, on calibration text it did not see
    held_out_mean_kl: float | None = None
    held_out_tokens: int | None = None

    def summary(self) -> str:
        fallback = f", {len(self.block_fallbacks)} weights per channel (not divisible into blocks)" if self.block_fallbacks else ""
        agreement = f", top-1 {self.top1_agreement_with_float:.0%} of float's" if self.top1_agreement_with_float is not None else ""
        gptq = f", GPTQ on {self.gptq_weights} weights" if self.gptq_weights else ""
        if self.held_out_ppl_ratio is not None:
            gptq += f", perplexity ratio {self.held_out_ppl_ratio:.4f} (KL {self.held_out_mean_kl:.4f}) on held-out calibration text"
        return f"{self.recipe}: {self.size_before / 1e6:.2f} MB -> {self.size_after / 1e6:.2f} MB ({self.ratio:.1%}){agreement}{gptq}{fallback}"


def calibrate(text: CalibrationText, out: Path) -> CalibrationReport:
    from edgellm.quantize.calibration import calibrate as capture
    from edgellm.quantize.calibration import read_calibration_text
    from edgellm.text.tokenizer import load_tokenizer

    return CalibrationReport(**capture(text.model, load_tokenizer(text.tokenizer), read_calibration_text(text.text), out))


def _weight_probe(text: CalibrationText, calibration: Path):
    """The float model and calibration Hessians, scored on the held-out windows."""
    from edgellm.quantize.calibration import load_hessians
    from edgellm.quantize.search import WeightProbe

    return WeightProbe(text.model, load_hessians(calibration), *text.held_out())


def sensitivity(text: CalibrationText, calibration: Path) -> SensitivityReport:
    from edgellm.quantize.apply import model_ops
    from edgellm.quantize.calibration import weight_readers
    from edgellm.quantize.search import layer_groups, measure_sensitivity

    groups = layer_groups(model_ops(text.model), weight_readers(text.model)[0])
    probe = _weight_probe(text, calibration)
    return SensitivityReport(groups=[asdict(g) for g in groups], windows=len(probe.windows), **measure_sensitivity(probe, groups))


def search(text: CalibrationText, calibration: Path, measured: SensitivityReport, max_ppl_ratio: float) -> SearchReport:
    from edgellm.quantize.search import Group, choose, frontier

    groups = [Group(**g) for g in measured.groups]
    points = frontier(groups, measured.model_dump())
    chosen, checked = choose(_weight_probe(text, calibration), groups, points, max_ppl_ratio)
    return SearchReport(max_ppl_ratio=max_ppl_ratio, frontier=points, chosen=chosen, checked=len(checked))


def quantize(model: Path, recipe: Recipe, out: Path, calibrated: tuple[CalibrationText, Path] | None = None) -> QuantizeReport:
    """`model` quantized by `recipe`; a calibrated recipe (its text and calibration folder given) is
    also scored on held-out text against the float model."""
    from edgellm.quantize.apply import quantize_tflite

    if calibrated is None:
        return QuantizeReport(file=MODEL_FILE, **quantize_tflite(model, recipe, out / MODEL_FILE))
    from edgellm.quantize.search import score_windows

    text, calibration = calibrated
    report = quantize_tflite(model, recipe, out / MODEL_FILE, calibration)
    windows, signature = text.held_out()
    float_nll, _, float_logp = score_windows(model, windows, signature)
    nll, kl, _ = score_windows(out / MODEL_FILE, windows, signature, float_logp)
    return QuantizeReport(file=MODEL_FILE, **report, held_out_ppl_ratio=round(math.exp(nll - float_nll), 4), held_out_mean_kl=round(kl, 5),
                          held_out_tokens=sum(len(w) - 1 for w in windows))
