"""Text generation from a `.tflite` on the LiteRT interpreter: prefill, decode loop, sampler."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.quiet import native_output_to

METADATA_FILE = "edgellm.json"


class LiteRTModel:
    """A `.tflite` that follows the prefill_{N} / decode signature convention."""

    def __init__(self, path: Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if not path.is_file():
            raise EdgeLLMError(f"model {path} does not exist; pass the path of a .tflite file")
        try:
            with native_output_to():  # LiteRT logs each delegate it creates
                self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
                signatures = self._interpreter.get_signature_list()
                self._runners = {name: self._interpreter.get_signature_runner(name) for name in signatures}
        except (ValueError, RuntimeError) as exc:
            raise EdgeLLMError(f"{path}: not a loadable .tflite model ({str(exc).splitlines()[0]})") from None
        prefill = {int(m.group(1)): name for name in signatures if (m := re.fullmatch(r"prefill_(\d+)", name))}
        if "decode" not in signatures or not prefill:
            raise EdgeLLMError(f"{path}: expected signatures prefill_<N> and decode, found {sorted(signatures)}; convert it with edgellm")
        self.prefill_signatures = dict(sorted(prefill.items()))
        inputs = self._runners["decode"].get_input_details()
        self.cache_specs = {name: (tuple(d["shape"]), d["dtype"]) for name, d in inputs.items() if name.startswith("kv_cache_")}
        self.kv_cache_length = int(next(iter(self.cache_specs.values()))[0][1])
        self._delegate_ready = False

    def empty_cache(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in self.cache_specs.items()}

    def _run(self, signature: str, tokens: list[int], start: int, cache: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {"tokens": np.array([tokens], dtype=np.int32), "input_pos": np.arange(start, start + len(tokens), dtype=np.int32)}
        if self._delegate_ready:
            outputs = self._runners[signature](**inputs, **cache)
        else:
            with native_output_to():  # the first invoke creates the XNNPACK delegate, which LiteRT announces
                outputs = self._runners[signature](**inputs, **cache)
            self._delegate_ready = True
        cache.update({name: outputs[name] for name in self.cache_specs})
        return outputs["logits"][0]

    def _prefill_plan(self, count: int, start: int) -> tuple[str, int]:
        """The signature to use and how many real tokens it takes: the smallest N that holds all
        `count` tokens, else the largest that fits in the cache (a chunk), else decode one."""
        room = self.kv_cache_length - start
        fitting = {n: name for n, name in self.prefill_signatures.items() if n <= room}
        holding = [n for n in fitting if n >= count]
        if holding:
            return fitting[min(holding)], count
        if fitting:
            n = max(fitting)
            return fitting[n], min(n, count)
        return "decode", 1

    def prefill(self, tokens: list[int], start: int, cache: dict[str, np.ndarray]) -> np.ndarray:
        """Feed `tokens` at positions start.. (in chunks if needed); logits [len(tokens), vocab]."""
        rows = []
        while tokens:
            signature, take = self._prefill_plan(len(tokens), start)
            width = 1 if signature == "decode" else int(signature.removeprefix("prefill_"))
            # Padding writes throwaway cache rows past the real tokens; the causal mask hides them
            # and later positions overwrite them.
            chunk = tokens[:take] + [0] * (width - take)
            rows.append(self._run(signature, chunk, start, cache)[:take])
            tokens, start = tokens[take:], start + take
        return np.concatenate(rows)

    def decode(self, token: int, position: int, cache: dict[str, np.ndarray]) -> np.ndarray:
        return self._run("decode", [token], position, cache)[0]


@dataclass(frozen=True)
class Sampler:
    """Greedy when temperature is 0; otherwise temperature, then top-k, then top-p (nucleus)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        order = np.argsort(-scaled)
        if self.top_k > 0:
            order = order[: self.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(self._rng.choice(order, p=probs))


def generate(
    model: LiteRTModel, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler, stop_ids: list[int]
) -> Iterator[int]:
    """Yield new token ids until a stop id (not yielded) or `max_new_tokens`."""
    if not prompt_ids:
        raise EdgeLLMError("the prompt is empty and no BOS token is added; give --prompt text or a model that adds BOS")
    if len(prompt_ids) + max_new_tokens - 1 > model.kv_cache_length:
        raise EdgeLLMError(
            f"prompt ({len(prompt_ids)} tokens) + --max-tokens ({max_new_tokens}) exceeds the KV cache "
            f"({model.kv_cache_length} positions); lower --max-tokens or rebuild with a larger export.kv_cache_length"
        )
    cache = model.empty_cache()
    logits = model.prefill(prompt_ids, 0, cache)[-1]
    position = len(prompt_ids)
    for produced in range(max_new_tokens):
        token = sampler(logits)
        if token in stop_ids:
            return
        yield token
        if produced + 1 < max_new_tokens:
            logits = model.decode(token, position, cache)
            position += 1


def read_metadata(model_path: Path) -> dict:
    """The `edgellm.json` written beside a model by `edgellm convert`, or {} for other tools' models."""
    path = model_path.parent / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeLLMError(f"{path}: not valid JSON ({exc}); re-run edgellm convert or delete it") from None
