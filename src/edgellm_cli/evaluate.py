"""`edgellm eval`: perplexity of `.tflite` models over a text corpus, and how far a quantized model
strays from its float original (top-1 agreement, KL divergence), through the models' own
prefill signatures, so it measures exactly what ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.runtime import LiteRTModel
from edgellm_cli.tokenizer import Tokenizer


def corpus_windows(tokens: list[int], window: int, bos_id: int | None) -> list[list[int]]:
    """Consecutive windows of the corpus, each opened by BOS when the model has one."""
    body = window - (bos_id is not None)
    return [([bos_id] if bos_id is not None else []) + tokens[i : i + body] for i in range(0, len(tokens) - 1, body) if len(tokens[i : i + body]) > 1]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def evaluate(models: list[Path], tokenizer: Tokenizer, corpus: Path, bos_id: int | None, max_tokens: int, window: int | None = None) -> dict:
    """Per model: perplexity; per model after the first (the reference): top-1 agreement and mean KL against it."""
    try:
        text = corpus.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"corpus {corpus}: unreadable as UTF-8 text ({exc})") from None
    tokens = tokenizer.encode(text)[:max_tokens]
    if len(tokens) < 2:
        raise EdgeLLMError(f"corpus {corpus}: fewer than 2 tokens; give a longer text")
    runners = [LiteRTModel(path) for path in models]
    window = window or min(256, *(r.kv_cache_length for r in runners))
    if any(window > r.kv_cache_length for r in runners):
        raise EdgeLLMError(f"--window {window} exceeds a model's KV cache ({min(r.kv_cache_length for r in runners)})")
    nll = [[] for _ in runners]
    agree = [[] for _ in runners]
    kl = [[] for _ in runners]
    for piece in corpus_windows(tokens, window, bos_id):
        targets = np.array(piece[1:])
        reference = None
        for i, runner in enumerate(runners):
            runner.reset()
            logp = _log_softmax(runner.prefill(piece, 0)[:-1].astype(np.float64))
            nll[i].extend(-logp[np.arange(len(targets)), targets])
            if reference is None:
                reference = logp
                continue
            agree[i].extend(logp.argmax(-1) == reference.argmax(-1))
            kl[i].extend((np.exp(reference) * (reference - logp)).sum(-1))
    results = []
    for i, path in enumerate(models):
        row = {"model": str(path), "size_bytes": path.stat().st_size, "perplexity": float(np.exp(np.mean(nll[i])))}
        if i:
            row |= {"top1_agreement": float(np.mean(agree[i])), "mean_kl": float(np.mean(kl[i]))}
        results.append(row)
    return {"corpus": str(corpus), "tokens": int(sum(len(n) for n in nll[:1])), "window": window, "models": results}
