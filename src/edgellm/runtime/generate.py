"""Text generation on a decoder: a Session over the KV cache, and the Generator and Chat that
`run` and `chat` drive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.runtime.decoder import LiteRTModel
from edgellm.runtime.sampler import Sampler
from edgellm.text.chat_template import encode_with_specials, render_chat
from edgellm.text.tokenizer import load_tokenizer, stream_text
from edgellm.tflite.metadata import model_metadata


class Session:
    """A conversation with the model: the KV cache holds `history`, and new input extends it.

    Feeding a sequence that shares a prefix with the history reuses those cache rows and
    computes only the rest, so a chat turn costs its own tokens, not the whole transcript.
    """

    def __init__(self, model: LiteRTModel):
        self.model = model
        self.history: list[int] = []
        self.computed = 0  # tokens the last `feed` had to compute (the rest came from the cache)
        self._logits: np.ndarray | None = None
        model.reset()

    def feed(self, tokens: list[int]) -> None:
        """Make the history equal `tokens`, computing only what differs from the cached prefix."""
        if len(tokens) > self.model.kv_cache_length:
            raise EdgeLLMError(
                f"the conversation ({len(tokens)} tokens) exceeds the KV cache ({self.model.kv_cache_length} positions); "
                "start a new one or rebuild with a larger export.kv_cache_length"
            )
        if outside := [t for t in tokens if not 0 <= t < self.model.vocab_size]:  # would index past the embedding
            raise EdgeLLMError(f"the input has token id {outside[0]}, outside the model's {self.model.vocab_size} tokens; "
                               "remove the special token that gives it, or pass this model's tokenizer")
        common = 0
        for ours, theirs in zip(self.history, tokens):
            if ours != theirs:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # recompute at least the last token: its logits are needed
        if self.model.recurrent and common < len(self.history):  # a conv state cannot be rewound: start over
            self.model.reset()
            common = 0
        # Rows past `common` are stale; the causal mask hides them until new positions overwrite them.
        self._logits = self.model.prefill(tokens[common:], common, last_only=True)[-1]
        self.history, self.computed = list(tokens), len(tokens) - common

    def generate(self, max_new_tokens: int, sampler: Sampler, stop_ids: list[int]) -> Iterator[int]:
        """Yield new tokens after the history until a stop id (not yielded) or `max_new_tokens`.

        The history keeps what is in the cache: every yielded token but the last, which only a
        further step would need (the next `feed` computes it if the transcript keeps it).
        """
        if self._logits is None:
            raise EdgeLLMError("nothing to continue from: the prompt is empty and the model adds no BOS; give --prompt text")
        if len(self.history) + max_new_tokens - 1 > self.model.kv_cache_length:
            raise EdgeLLMError(
                f"prompt ({len(self.history)} tokens) + --max-tokens ({max_new_tokens}) exceeds the KV cache "
                f"({self.model.kv_cache_length} positions); lower --max-tokens or rebuild with a larger export.kv_cache_length"
            )
        picked = self.model.greedy_pick if sampler.plain_greedy else None
        token = sampler(self._logits, self.history)
        for produced in range(1, max_new_tokens + 1):
            if token in stop_ids:
                return
            yield token
            if produced == max_new_tokens:
                return
            self._logits = self.model.decode(token, len(self.history))
            self.history.append(token)
            token = picked[0] if picked is not None else sampler(self._logits, self.history)


def generate(model: LiteRTModel, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler, stop_ids: list[int]) -> Iterator[int]:
    """One-shot generation from a fresh cache."""
    yield from prompted_session(model, prompt_ids).generate(max_new_tokens, sampler, stop_ids)


def prompted_session(model: LiteRTModel, prompt_ids: list[int]) -> Session:
    """A fresh session holding `prompt_ids` (an empty prompt leaves nothing to continue from)."""
    session = Session(model)
    if prompt_ids:
        session.feed(prompt_ids)
    return session


def valid_text(value: str, what: str) -> str:
    """`value` when it is text that encodes (command-line bytes that are not UTF-8 arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EdgeLLMError(f"{what} is not valid UTF-8 text; pass it in UTF-8") from None
    return value


class Generator:
    """A model ready to generate text: the runtime, its tokenizer and prompt settings, a sampler
    and the stop conditions (the model's own unless given)."""

    def __init__(
        self,
        model: Path,
        tokenizer: Path | None = None,
        sampler: Sampler | None = None,
        stop_ids: list[int] = (),
        stop_strings: list[str] = (),
        threads: int | None = None,
        max_prefill: int | None = None,
    ):
        self.metadata, tokenizer = model_metadata(model, tokenizer)
        self.tokenizer = load_tokenizer(tokenizer)
        self.litert = LiteRTModel(model, num_threads=threads, max_prefill=max_prefill)
        # Special added tokens past the model's vocabulary are allowed (transformers allows them); Session.feed refuses them.
        if self.tokenizer.ordinary_size > self.litert.vocab_size:
            raise EdgeLLMError(f"{tokenizer} has {self.tokenizer.ordinary_size} tokens but {model.name} only {self.litert.vocab_size}; "
                               "pass the tokenizer of this model with --tokenizer")
        self.sampler = sampler or Sampler()
        self.stop_ids = list(stop_ids) or self.metadata.stop_ids
        self.stop_strings = list(stop_strings) or self.metadata.stop_strings

    def load_adapter(self, adapter: Path) -> None:
        """Generate with a LoRA file's weights (the model's LoRA inputs; runtime/decoder.py)."""
        self.litert.load_adapter(adapter)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's ids, after the start token when the model uses one."""
        valid_text(prompt, "the prompt")
        start = self.metadata.start_id
        return ([start] if start is not None else []) + self.tokenizer.encode(prompt)

    def complete(self, prompt_ids: list[int], max_tokens: int, tokens: list[int]) -> Iterator[str]:
        """The continuation of the prompt from a fresh KV cache as it becomes final; each id also goes to `tokens`."""
        yield from self.stream(prompted_session(self.litert, prompt_ids), max_tokens, tokens)

    def stream(self, session: Session, max_tokens: int, tokens: list[int] | None = None) -> Iterator[str]:
        """Text generated after the session's history, as it becomes final; each id also goes to `tokens`."""
        ids = session.generate(max_tokens, self.sampler, self.stop_ids)
        yield from stream_text(self.tokenizer, ids, self.stop_strings, session.history, tokens)


class Chat:
    """A conversation: each turn renders the whole transcript with the chat template and computes
    only the tokens the KV cache does not already hold."""

    def __init__(self, generator: Generator, max_tokens: int, system: str | None = None, template: str | None = None):
        self.generator, self.max_tokens = generator, max_tokens
        self.template = template or generator.metadata.chat_template
        if not self.template:
            raise EdgeLLMError("the model has no chat template; pass --chat-template FILE (or use `edgellm run`)")
        self.opening = [{"role": "system", "content": system}] if system else []
        self.reset()

    def reset(self) -> None:
        self.messages, self.session, self.reused = list(self.opening), Session(self.generator.litert), 0

    def turn(self, text: str) -> Iterator[str]:
        """The model's reply to `text`, as it streams."""
        metadata, tokenizer = self.generator.metadata, self.generator.tokenizer
        self.messages.append({"role": "user", "content": valid_text(text, "the message")})
        prompt = render_chat(self.template, self.messages, metadata.template_strings)
        self.session.feed(encode_with_specials(tokenizer, prompt, metadata.specials))
        self.reused = len(self.session.history) - self.session.computed  # prompt tokens served from the KV cache
        reply = []
        for piece in self.generator.stream(self.session, self.max_tokens):
            reply.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply)})
