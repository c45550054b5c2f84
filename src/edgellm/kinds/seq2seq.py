"""Encoder-decoders (T5): encode_{N} and decode signatures, the input encoded once and the answer
decoded token by token; verified on teacher-forced logits; run takes them."""

from __future__ import annotations

import re

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.kinds.encoder import PaddedInputsKind
from edgellm.verify.report import reauthored_report, tflite_report

REFERENCES = ("reference_logits.npy", "reauthored_logits.npy")


class Seq2SeqKind(PaddedInputsKind):
    name = "encoder-decoder"
    marker = re.compile(r"encode_\d+")
    commands = ("run",)

    def build(self, arch):
        from edgellm.layers.t5 import EncoderDecoder

        return EncoderDecoder(arch)

    def verify(self, spec, arch, prompt, checkpoint_dir, load, out, adapters):
        from edgellm.verify.logits import compare
        from edgellm.verify.seq2seq import reauthored_logits, reference_logits, verification_pair

        export = spec.export
        if prompt.decoder_start_id is None:
            raise EdgeLLMError(f"spec {spec.name}: the checkpoint's config.json has no decoder_start_token_id; an encoder-decoder needs one")
        encoder_ids, decoder_ids = verification_pair(arch.vocab_size, spec.verify.num_tokens, max(export.sequence_lengths), export.kv_cache_length,
                                                     prompt.decoder_start_id)
        reference = reference_logits(checkpoint_dir, encoder_ids, decoder_ids)
        ours = reauthored_logits(load(), encoder_ids, decoder_ids, export.sequence_lengths, export.kv_cache_length)
        return reauthored_report(spec.verify, out, REFERENCES, reference, ours, compare, encoder_tokens=encoder_ids, tokens=decoder_ids)

    def signatures(self, model, export):
        from edgellm.layers.t5 import seq2seq_signatures

        return seq2seq_signatures(model, export.sequence_lengths, export.kv_cache_length)

    def verify_tflite(self, spec, verified, references, model_file):
        from edgellm.runtime.seq2seq import Seq2SeqModel
        from edgellm.verify.logits import compare

        model = Seq2SeqModel(model_file)
        state = model.encode(verified.encoder_tokens)
        logits = np.stack([model.decode(token, i, state).copy() for i, token in enumerate(verified.tokens)])
        return tflite_report(spec.verify, references, REFERENCES, logits, compare, encoder_tokens=verified.encoder_tokens, tokens=verified.tokens)

    def generator(self, model, tokenizer, sampler, stop_ids, stop_strings, threads, max_prefill):
        from edgellm.runtime.seq2seq import Seq2SeqGenerator

        return Seq2SeqGenerator(model, tokenizer, sampler, stop_ids, stop_strings, threads)
