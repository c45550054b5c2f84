"""`edgellm bench`: how fast a `.tflite` runs on this machine, through edgellm's pipeline and raw.

The raw numbers time the model call alone on inputs already in place; the pipeline numbers add
what `run` does around it (writing the token, reading logits, sampling, detokenising), so the
difference is edgellm's own overhead.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.measure.reports import BenchComparison, DecodeBench, EmbedBench
from edgellm.runtime.decoder import LiteRTModel
from edgellm.runtime.encoder import EmbeddingModel
from edgellm.runtime.generate import Session
from edgellm.runtime.sampler import Sampler
from edgellm.text.tokenizer import TextStream, Tokenizer


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("inf")


def _best_of(repeats: int, run) -> float:
    """Fastest of `repeats` timed runs: the least disturbed by the rest of the machine."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def benchmark(
    model_path: Path,
    tokenizer: Tokenizer | None,
    threads: int | None,
    prompt_tokens: int,
    decode_tokens: int,
    repeats: int = 3,
) -> DecodeBench:
    load_started = time.perf_counter()
    model = LiteRTModel(model_path, num_threads=threads)
    load_seconds = time.perf_counter() - load_started
    if prompt_tokens >= model.kv_cache_length:
        raise EdgeLLMError(f"--prompt-tokens {prompt_tokens} leaves no room to decode in the KV cache ({model.kv_cache_length} positions); lower it")
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.vocab_size, size=prompt_tokens).tolist()
    if prompt_tokens + decode_tokens > model.kv_cache_length:
        decode_tokens = model.kv_cache_length - prompt_tokens
    greedy = Sampler()

    prefill = {}
    for n, signature in model.prefill_signatures.items():
        model.run(signature, prompt[:n] + [0] * (n - len(prompt[:n])), 0)  # warm-up: first call sets up kernels
        seconds = _best_of(repeats, lambda signature=signature: model.invoke(signature))
        prefill[signature] = {"tokens": n, "ms": round(seconds * 1e3, 3), "tokens_per_second": round(_rate(n, seconds), 1)}

    def first_token() -> None:
        session = Session(model)
        session.feed(prompt)
        next(session.generate(1, greedy, stop_ids=[]))

    ttft = _best_of(repeats, first_token)

    def pipeline_decode() -> float:
        session = Session(model)
        session.feed(prompt)
        stream = TextStream(tokenizer, context=prompt) if tokenizer is not None else None
        started = time.perf_counter()
        for token in session.generate(decode_tokens + 1, greedy, stop_ids=[]):
            if stream is not None:
                stream.push(token)
        return time.perf_counter() - started

    def raw_decode() -> float:
        # The pipeline's start (its first decode after a prefill pays for weights the prefill pushed
        # out of the CPU caches), then the bare model call on the decode inputs the pipeline left.
        Session(model).feed(prompt)
        started = time.perf_counter()
        for _ in range(decode_tokens):
            model.invoke("decode")
        return time.perf_counter() - started

    # Each pipeline run is paired with a raw run right after it, under the same machine conditions;
    # the overhead is the median over pairs, which a slow spell of the machine does not move.
    pairs = [(pipeline_decode(), raw_decode()) for _ in range(repeats)]
    pipeline_seconds, raw_seconds = min(p for p, _ in pairs), min(r for _, r in pairs)
    overhead = float(np.median([1 - r / p for p, r in pairs]))
    pipeline_rate, raw_rate = _rate(decode_tokens, pipeline_seconds), _rate(decode_tokens, raw_seconds)
    return DecodeBench(model=str(model_path), threads=threads or 0, load_seconds=round(load_seconds, 3), prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, time_to_first_token_ms=round(ttft * 1e3, 3), prefill=prefill, decode_tokens_per_second=round(pipeline_rate, 2), raw_decode_tokens_per_second=round(raw_rate, 2), pipeline_overhead_percent=round(100 * overhead, 2), peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def compare_models(models: list[tuple[Path, Tokenizer | None]], threads: int | None, prompt_tokens: int, decode_tokens: int, rounds: int) -> BenchComparison:
    """Two models (two converters' outputs, say) timed in alternating rounds, one run of each per
    round, so a slow spell of the machine hits both; each number is the median over rounds, and
    `ratio` is the first model's speed over the second's."""
    runs: list[list[dict]] = [[], []]
    for _ in range(rounds):
        for side, (path, tokenizer) in enumerate(models):
            runs[side].append(benchmark(path, tokenizer, threads, prompt_tokens, decode_tokens, repeats=1))
    medians = [_speeds(side_runs) for side_runs in runs]
    shared = [name for name in medians[0] if name in medians[1]]
    return BenchComparison(models=[str(path) for path, _ in models], threads=threads or 0, rounds=rounds, prompt_tokens=prompt_tokens, decode_tokens=runs[0][0].decode_tokens, speeds=medians, ratio={name: round(medians[0][name] / medians[1][name], 3) for name in shared})


def _speeds(runs: list[DecodeBench]) -> dict[str, float]:
    """Tokens/s per measurement (time to first token as its inverse: higher is better), median over runs."""
    rows = {
        **{f"prefill ({name})": [r.prefill[name]["tokens_per_second"] for r in runs] for name in runs[0].prefill},
        "decode, raw invoke": [r.raw_decode_tokens_per_second for r in runs],
        "decode, pipeline": [r.decode_tokens_per_second for r in runs],
        "first tokens per second": [1e3 / r.time_to_first_token_ms for r in runs],
    }
    return {name: round(float(np.median(values)), 2) for name, values in rows.items()}


def embed_benchmark(model: EmbeddingModel, repeats: int) -> EmbedBench:
    """Milliseconds per call of each embed_N (the fastest of `repeats`), on a full-length input."""
    rows = {}
    for n in sorted(model.lengths):
        ids = [0] * n
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            started = time.perf_counter()
            model.embed_ids(ids)
            times.append(time.perf_counter() - started)
        ms = 1000 * min(times[1:])
        rows[model.lengths[n]] = {"ms": round(ms, 3), "tokens_per_second": round(n / ms * 1000, 1)}
    return EmbedBench(model=str(model.path), signatures=rows)
