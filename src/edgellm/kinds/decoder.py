"""Decoder-only LMs: prefill_{N} / head_{N} / decode signatures with a KV cache; verified on logits;
run, chat, bench and eval take them."""

from __future__ import annotations

import re
from pathlib import Path

from edgellm.kinds.kind import ModelKind
from edgellm.verify.report import reauthored_report, tflite_report

REFERENCES = ("reference_logits.npy", "reauthored_logits.npy")


class DecoderKind(ModelKind):
    name = "decoder"
    marker = re.compile(r"prefill_\d+")
    commands = ("run", "chat", "bench", "bench --compare", "eval")
    takes_lora = True

    def build(self, arch):
        from edgellm.layers.decoder import Decoder

        return Decoder(arch)

    def verify(self, spec, arch, prompt, checkpoint_dir, load, out, adapters):
        from edgellm.verify.logits import compare, reauthored_logits, reference_logits, verification_tokens

        tokens = verification_tokens(arch.vocab_size, spec.verify.num_tokens, prompt.bos_id)
        reference = reference_logits(checkpoint_dir, tokens, adapters)  # freed before ours loads
        ours = reauthored_logits(load(), tokens)
        return reauthored_report(spec.verify, out, REFERENCES, reference, ours, compare, tokens=tokens)

    def signatures(self, model, export):
        from edgellm.convert.decoder import decoder_signatures

        return decoder_signatures(model, export)

    def prefill_lengths(self, export):
        return sorted(export.prefill_lengths)

    def verify_tflite(self, spec, verified, references, model_file):
        from edgellm.verify.logits import compare, tflite_logits

        logits = tflite_logits(model_file, verified.tokens)
        return tflite_report(spec.verify, references, REFERENCES, logits, compare, tokens=verified.tokens)

    def generator(self, model, tokenizer, sampler, stop_ids, stop_strings, threads, max_prefill):
        from edgellm.runtime.generate import Generator

        return Generator(model, tokenizer, sampler, stop_ids, stop_strings, threads, max_prefill)

    def evaluate(self, models, corpus, tokenizer, max_tokens, window, checkpoint):
        from edgellm.measure.evaluate import evaluate
        from edgellm.text.tokenizer import load_tokenizer
        from edgellm.tflite.metadata import model_metadata

        metadata, tokenizer = model_metadata(models[0], tokenizer)
        return evaluate(models, load_tokenizer(tokenizer), corpus, metadata.start_id, max_tokens, window, checkpoint)

    def benchmark(self, model, tokenizer, threads, prompt_tokens, decode_tokens, repeats, compare: Path | None = None):
        from edgellm.measure.benchmark import benchmark, compare_models
        from edgellm.text.tokenizer import load_tokenizer
        from edgellm.tflite.metadata import model_metadata, read_metadata

        def tokenizer_of(path: Path):
            return load_tokenizer(model_metadata(path, tokenizer)[1]) if tokenizer is not None or read_metadata(path) is not None else None

        if compare is not None:
            return compare_models([(model, tokenizer_of(model)), (compare, tokenizer_of(compare))], threads, prompt_tokens, decode_tokens, repeats)
        return benchmark(model, tokenizer_of(model), threads, prompt_tokens, decode_tokens, repeats)
