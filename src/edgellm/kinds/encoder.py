"""Sentence encoders (BERT family): embed_{N} signatures giving one pooled embedding per text;
verified on embeddings; embed, bench and eval take them."""

from __future__ import annotations

import re

from edgellm.errors import EdgeLLMError
from edgellm.kinds.kind import ModelKind
from edgellm.verify.report import reauthored_report, tflite_report

REFERENCES = ("reference_embeddings.npy", "reauthored_embeddings.npy")


class PaddedInputsKind(ModelKind):
    """A kind whose inputs are padded to fixed signature lengths (export.sequence_lengths)."""

    def check_export(self, spec, arch):
        if arch.position_embedding == "learned" and max(spec.export.sequence_lengths) > arch.max_position_embeddings:
            raise EdgeLLMError(f"spec {spec.name}: export.sequence_lengths {max(spec.export.sequence_lengths)} exceeds the model's "
                               f"{arch.max_position_embeddings} positions; lower it")

    def verify_key(self, spec):
        return {"sequence_lengths": spec.export.sequence_lengths}  # verification pads its inputs to these


class EncoderKind(PaddedInputsKind):
    name = "encoder"
    marker = re.compile(r"embed_\d+")
    commands = ("embed", "bench", "eval")

    def build(self, arch):
        from edgellm.layers.encoder import TextEncoder

        return TextEncoder(arch)

    def verify(self, spec, arch, prompt, checkpoint_dir, load, out, adapters):
        from edgellm.verify.embeddings import compare_embeddings, reauthored_embeddings, reference_embeddings, verification_inputs

        lengths = spec.export.sequence_lengths
        inputs = verification_inputs(arch.vocab_size, spec.verify.num_tokens, max(lengths))
        reference = reference_embeddings(checkpoint_dir, arch, inputs)
        ours = reauthored_embeddings(load(), inputs, lengths)
        return reauthored_report(spec.verify, out, REFERENCES, reference, ours, compare_embeddings, inputs=inputs)

    def signatures(self, model, export):
        from edgellm.convert.encoder import encoder_signatures

        return encoder_signatures(model, export.sequence_lengths)

    def verify_tflite(self, spec, verified, references, model_file):
        from edgellm.verify.embeddings import compare_embeddings, tflite_embeddings

        ours = tflite_embeddings(model_file, verified.inputs)
        return tflite_report(spec.verify, references, REFERENCES, ours, compare_embeddings, inputs=verified.inputs)

    def evaluate(self, models, corpus, tokenizer, max_tokens, window, checkpoint):
        from edgellm.infra.files import read_text
        from edgellm.measure.evaluate import embedding_agreement

        lines = [line for line in read_text(corpus, "corpus").splitlines() if line.strip()]
        return embedding_agreement(models, lines, tokenizer)

    def benchmark(self, model, tokenizer, threads, prompt_tokens, decode_tokens, repeats, compare=None):
        from edgellm.measure.benchmark import embed_benchmark
        from edgellm.runtime.encoder import EmbeddingModel

        return embed_benchmark(EmbeddingModel(model, threads=threads), repeats)
