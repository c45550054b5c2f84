"""Picking the next token from logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sampler:
    """Repetition penalty, then greedy (temperature 0) or temperature -> top-k -> top-p -> min-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)
    plain_greedy: bool = field(init=False, repr=False, compare=False)  # the arg-max, nothing else

    def __post_init__(self):
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))
        object.__setattr__(self, "plain_greedy", self.temperature <= 0 and self.repetition_penalty == 1.0)

    def __call__(self, logits: np.ndarray, history: list[int] = ()) -> int:
        if self.plain_greedy:
            return int(logits.argmax())
        if self.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history))
            logits = logits.copy()
            # The CTRL / transformers rule: shrink positive logits, push negative ones further down.
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / self.repetition_penalty, logits[seen] * self.repetition_penalty)
        if self.temperature <= 0:
            return int(logits.argmax())
        scaled = logits.astype(np.float64) / self.temperature
        order = np.argsort(-scaled, kind="stable")
        if self.top_k > 0:
            order = order[: self.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        keep = len(order)
        if self.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1)
        if self.min_p > 0.0:
            keep = min(keep, max(1, int((probs >= self.min_p * probs[0]).sum())))
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(self._rng.choice(order, p=probs))
