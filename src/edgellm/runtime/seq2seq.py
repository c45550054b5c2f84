"""Text generation from an encoder-decoder `.tflite` (signatures `encode_{N}` and `decode`, see
layers/t5.py) on the LiteRT runtime.

The input (with the EOS T5 tokenizers end every input with) goes once through the smallest
`encode_N` that holds it; its cross-attention K/V stay as they are for the whole generation.
The decoder starts from the checkpoint's decoder_start_token_id and runs one `decode` per new
token, its self-attention cache carried from step to step, until EOS or the token limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.runtime.generate import valid_text
from edgellm.runtime.litert import Signatures
from edgellm.runtime.padding import padded, smallest_length
from edgellm.runtime.sampler import Sampler
from edgellm.text.tokenizer import load_tokenizer, stream_text
from edgellm.tflite.file import read_signatures
from edgellm.tflite.metadata import model_metadata


@dataclass
class EncodedInput:
    """What decode needs besides its token: the encoder's padding mask, cross K/V and the self-attention caches."""

    mask: np.ndarray  # int32 [1, S]
    cross: dict[str, np.ndarray]
    caches: dict[str, np.ndarray]


class Seq2SeqModel:
    def __init__(self, path: Path, threads: int | None = None):
        signatures = read_signatures(path)
        self._encoders = {int(m.group(1)): name for name in signatures if (m := re.fullmatch(r"encode_(\d+)", name))}
        if not self._encoders or "decode" not in signatures:
            raise EdgeLLMError(f"{path}: expected signatures encode_<N> and decode, found {sorted(signatures)}; convert an encoder-decoder spec with edgellm")
        self._signatures = Signatures(path, threads)
        shapes = self._signatures.input_shapes("decode")
        self._cache_shapes = {name: shape for name, shape in shapes.items() if name.startswith("kv_cache_")}
        self.kv_cache_length = int(shapes["kv_cache_k_0"][1])
        self.cross_length = int(shapes["encoder_mask"][1])

    @property
    def longest_input(self) -> int:
        return max(self._encoders)

    def encode(self, ids: list[int]) -> EncodedInput:
        if len(ids) > self.longest_input:
            raise EdgeLLMError(f"the input has {len(ids)} tokens and the longest encode signature holds {self.longest_input}; "
                               "shorten it or rebuild with a larger export.sequence_lengths")
        n = smallest_length(len(ids), list(self._encoders))
        tokens, mask = padded(ids, n)
        cross = self._signatures(self._encoders[n], tokens=tokens, attention_mask=mask)
        _, encoder_mask = padded(ids, self.cross_length)
        return EncodedInput(encoder_mask, cross, {name: np.zeros(shape, np.float32) for name, shape in self._cache_shapes.items()})

    def decode(self, token: int, position: int, state: EncodedInput) -> np.ndarray:
        """Logits [vocab] after `token` at decoder position `position`; the self-attention caches advance."""
        out = self._signatures("decode", tokens=np.array([[token]], np.int32), input_pos=np.array([position], np.int32),
                            encoder_mask=state.mask, **state.cross, **state.caches)
        state.caches = {name: out[name] for name in state.caches}
        return out["logits"][0, -1]


def generate(model: Seq2SeqModel, input_ids: list[int], start_id: int, max_new_tokens: int, sampler: Sampler, stop_ids: list[int]) -> Iterator[int]:
    """New tokens after the decoder start token, until a stop id (not yielded) or `max_new_tokens`."""
    if max_new_tokens > model.kv_cache_length:
        raise EdgeLLMError(f"--max-tokens ({max_new_tokens}) exceeds the decoder's cache ({model.kv_cache_length} positions); "
                           "lower it or rebuild with a larger export.kv_cache_length")
    state = model.encode(input_ids)
    history = [start_id]
    logits = model.decode(start_id, 0, state)
    for produced in range(1, max_new_tokens + 1):
        token = sampler(logits, history)
        if token in stop_ids:
            return
        yield token
        if produced == max_new_tokens:
            return
        logits = model.decode(token, len(history), state)
        history.append(token)


class Seq2SeqGenerator:
    """An encoder-decoder ready to answer text with text: runtime, tokenizer, start and stop tokens, sampler."""

    def __init__(self, model: Path, tokenizer: Path | None = None, sampler: Sampler | None = None, stop_ids: list[int] = (),
                 stop_strings: list[str] = (), threads: int | None = None):
        self.metadata, tokenizer = model_metadata(model, tokenizer)
        self.tokenizer = load_tokenizer(tokenizer)
        self.model = Seq2SeqModel(model, threads)
        self.sampler = sampler or Sampler()
        self.stop_ids = list(stop_ids) or self.metadata.stop_ids
        self.stop_strings = list(stop_strings) or self.metadata.stop_strings
        self.start_id = self.metadata.decoder_start_id
        if self.start_id is None or not self.metadata.stop_ids:
            raise EdgeLLMError(f"{model}: its edgellm.json gives no decoder start or EOS id; rebuild it with edgellm build")

    def load_adapter(self, adapter: Path) -> None:
        raise EdgeLLMError(f"{adapter}: encoder-decoder models take no LoRA adapters; adapters are for decoder-only models")

    def prompt_ids(self, text: str) -> list[int]:
        """The encoder input: the text's ids, ended by EOS as T5 tokenizers end every input."""
        return self.tokenizer.encode(valid_text(text, "the prompt")) + [self.metadata.stop_ids[0]]

    def complete(self, prompt_ids: list[int], max_tokens: int, tokens: list[int]) -> Iterator[str]:
        """The answer to the encoded prompt as it becomes final; each id also goes to `tokens`."""
        ids = generate(self.model, prompt_ids, self.start_id, max_tokens, self.sampler, self.stop_ids)
        yield from stream_text(self.tokenizer, ids, self.stop_strings, seen=tokens)
