"""`edgellm eval`: perplexity of `.tflite` models over a text corpus, and how far a quantized model
strays from its reference (perplexity ratio, top-1 agreement, KL divergence, where greedy
generation first diverges), through the models' own signatures, so it measures exactly what ships.
The reference is the first model, or `transformers` run on the original checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.progress import advance
from edgellm.measure.reports import EmbeddingAgreement, PerplexityReport
from edgellm.runtime.decoder import LiteRTModel
from edgellm.runtime.encoder import EmbeddingModel
from edgellm.runtime.generate import generate
from edgellm.runtime.sampler import Sampler
from edgellm.text.tokenizer import Tokenizer
from edgellm.tflite.metadata import model_metadata

GREEDY_PROMPT = 16  # corpus tokens that open the greedy comparison
GREEDY_TOKENS = 64  # tokens each model writes after them


def corpus_windows(tokens: list[int], window: int, bos_id: int | None) -> list[list[int]]:
    """Consecutive windows of the corpus, each opened by BOS when the model has one."""
    body = window - (bos_id is not None)
    return [([bos_id] if bos_id is not None else []) + tokens[i : i + body] for i in range(0, len(tokens) - 1, body) if len(tokens[i : i + body]) > 1]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class TransformersReference:
    """The original checkpoint in `transformers`, float32: logits for a window, greedy continuations."""

    def __init__(self, checkpoint: Path):
        import torch
        from transformers import AutoModelForCausalLM

        try:
            self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            raise EdgeLLMError(f"--transformers {checkpoint}: transformers cannot load it ({str(exc).splitlines()[0]})") from None

    def logits(self, window: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([window])).logits[0].numpy()

    def greedy(self, prompt: list[int], count: int) -> list[int]:
        import torch

        with torch.no_grad():
            out = self.model.generate(torch.tensor([prompt]), max_new_tokens=count, min_new_tokens=count, do_sample=False)
        return out[0, len(prompt) :].tolist()


def _first_divergence(ours: list[int], reference: list[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ours, reference, strict=False)) if a != b), None)


def evaluate(models: list[Path], tokenizer: Tokenizer, corpus: Path, bos_id: int | None, max_tokens: int, window: int | None = None,
             transformers: Path | None = None) -> PerplexityReport:
    """Per model: perplexity; against the reference (the first model, or `transformers` on a
    checkpoint): perplexity ratio, top-1 agreement, mean KL and the first greedy token that differs."""
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
    reference = TransformersReference(transformers) if transformers is not None else None
    compared = runners if reference is not None else runners[1:]
    nll, agree, kl = ([[] for _ in runners] for _ in range(3))
    kl_at = np.zeros((len(runners), window))  # summed over windows, by position: does error grow with context?
    windows_at = np.zeros(window)
    reference_nll = []
    pieces = corpus_windows(tokens, window, bos_id)
    for done, piece in enumerate(pieces):
        advance(done, len(pieces))
        targets = np.arange(len(piece) - 1), np.array(piece[1:])
        windows_at[: len(piece) - 1] += 1
        expected = log_softmax(reference.logits(piece)[:-1].astype(np.float64)) if reference is not None else None
        if expected is not None:
            reference_nll.extend(-expected[targets])
        for i, runner in enumerate(runners):
            runner.reset()
            logp = log_softmax(runner.prefill(piece, 0)[:-1].astype(np.float64))
            nll[i].extend(-logp[targets])
            if expected is None:
                expected = logp
                continue
            agree[i].extend(logp.argmax(-1) == expected.argmax(-1))
            divergence = (np.exp(expected) * (expected - logp)).sum(-1)
            kl[i].extend(divergence)
            kl_at[i, : len(divergence)] += divergence
    prompt = ([bos_id] if bos_id is not None else []) + tokens[:GREEDY_PROMPT]
    greedy = [list(generate(r, prompt, GREEDY_TOKENS, Sampler(), stop_ids=[])) for r in runners]
    reference_greedy = reference.greedy(prompt, GREEDY_TOKENS) if reference is not None else greedy[0]
    base_perplexity = float(np.exp(np.mean(reference_nll if reference is not None else nll[0])))
    results = []
    for i, path in enumerate(models):
        perplexity = float(np.exp(np.mean(nll[i])))
        row = {"model": str(path), "size_bytes": path.stat().st_size, "perplexity": perplexity}
        if runners[i] in compared:
            row |= {"perplexity_ratio": perplexity / base_perplexity, "top1_agreement": float(np.mean(agree[i])), "mean_kl": float(np.mean(kl[i])),
                    "greedy_divergence": _first_divergence(greedy[i], reference_greedy),
                    "kl_by_position": [float(v) for v in kl_at[i][windows_at > 0] / windows_at[windows_at > 0]]}
        results.append(row)
    report = PerplexityReport(corpus=str(corpus), tokens=len(nll[0]), window=window, greedy_tokens=GREEDY_TOKENS, models=results)
    if reference is not None:
        report.reference = {"transformers": str(transformers), "perplexity": base_perplexity}
    return report


def embedding_agreement(models: list[Path], texts: list[str], tokenizer: Path | None = None) -> EmbeddingAgreement:
    """Each model's embeddings of `texts` against the first model's: mean and lowest cosine."""
    tokenizer = model_metadata(models[0], tokenizer)[1]
    reference, rows = None, []
    for path in models:
        vectors = np.stack([e.vector for e in EmbeddingModel(path, tokenizer).embed(texts)])
        row = {"model": str(path), "size_bytes": path.stat().st_size}
        if reference is None:
            reference = vectors
        else:
            cosine = (vectors * reference).sum(-1) / (np.linalg.norm(vectors, axis=-1) * np.linalg.norm(reference, axis=-1))
            row |= {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}
        rows.append(row)
    return EmbeddingAgreement(texts=len(texts), models=rows)
