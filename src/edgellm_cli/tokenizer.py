"""Tokenizers (SentencePiece `.model` or Hugging Face `tokenizer.json`) and special-token resolution."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.spec import ModelSpec, read_json


class Tokenizer:
    """encode/decode over either backend, with ids as plain ints."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".json":
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._hf = HFTokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises a bare Exception for a bad file
                raise EdgeLLMError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0]}); re-download it") from None
            self._sp = None
        else:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor()
            try:
                self._sp.Load(str(path))
            except (OSError, RuntimeError) as exc:
                raise EdgeLLMError(f"{path}: not a valid SentencePiece model ({exc}); re-download it") from None
        self._token_bytes: dict[int, bytes] = {}
        self._token_text: dict[int, str | None] = {}

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.EncodeAsIds(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.DecodeIds(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes `token_id` adds to text that is already under way.

        Past the start of a text, SentencePiece, Metaspace and byte-level BPE decoding is the
        concatenation of these bytes, so a stream can append them instead of decoding a window.
        Found by decoding the token after a plain anchor token; a token that holds part of a
        UTF-8 character (byte fallback `<0xE4>`, a byte-level piece) is read from its piece.
        """
        found = self._token_bytes.get(token_id)
        if found is None:
            found = self._token_bytes[token_id] = self._bytes_after_anchor(token_id)
        return found

    def token_text(self, token_id: int) -> str | None:
        """`token_bytes` as text, or None when they are not whole UTF-8 characters."""
        try:
            return self._token_text[token_id]
        except KeyError:
            try:
                text = self.token_bytes(token_id).decode()
            except UnicodeDecodeError:
                text = None
            self._token_text[token_id] = text
            return text

    @cached_property
    def _anchor(self) -> tuple[list[int], str]:
        """A plain token and its text, to decode other tokens after (past the start of a text)."""
        ids = self.encode("a")[-1:]
        return ids, self.decode(ids)

    def _bytes_after_anchor(self, token_id: int) -> bytes:
        from edgellm_cli.spm import BYTE_PIECE, byte_level_bytes

        anchor, anchor_text = self._anchor
        text = self.decode([*anchor, token_id])
        added = text[len(anchor_text) :] if text.startswith(anchor_text) else self.decode([token_id])
        if "\ufffd" not in added:
            return added.encode()
        piece = self._sp.IdToPiece(token_id) if self._sp is not None else self._hf.id_to_token(token_id)
        if match := BYTE_PIECE.match(piece):
            return bytes([int(match.group(1), 16)])
        if self._sp is None and type(self._hf.decoder).__name__ == "ByteLevel" and (raw := byte_level_bytes(piece)) is not None:
            return raw
        return added.encode()  # no bytes behind the replacement character: keep it, as decode does


def load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise EdgeLLMError(f"tokenizer {path} does not exist; pass --tokenizer with a tokenizer.model or tokenizer.json")
    return Tokenizer(path)


class TextStream:
    """Token ids in, text out, as it becomes final.

    Each token adds its bytes (`Tokenizer.token_bytes`): whole characters as cached text, so a
    step costs a dictionary lookup, and a character split over byte-fallback or byte-level tokens
    through an incremental UTF-8 decoder, so it comes out whole (invalid UTF-8 becomes U+FFFD, one
    per maximal invalid sequence, where a tokenizer's own decode may write one per byte). Only the
    first text is found by decoding: the token after its context (the prompt's tail, and any tokens
    that gave no text), because whether it keeps its leading space depends on what came before
    (SentencePiece drops it at the start of a text, keeps it after a prompt). Text is held back while it could begin a stop
    string; once a stop string appears, the text before it is released and `stopped` is set.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: list[str] = (), context: list[int] = ()):
        """`context`: the tokens before the stream (the prompt's tail), which decide its first spaces."""
        self.tokenizer, self.stop_strings = tokenizer, [s for s in stop_strings if s]
        self.stopped = False
        self._emitted: list[str] = []
        self._context: list[int] = list(context)[-4:]
        self._pending = ""
        self._utf8: codecs.IncrementalDecoder | None = None  # set once the first text is out
        self._mid_character = False  # the decoder holds the first bytes of a character

    def push(self, token_id: int) -> str:
        if self._utf8 is None:
            before = self.tokenizer.decode(self._context)
            self._context.append(token_id)
            text = self.tokenizer.decode(self._context)
            if not text.startswith(before) or "\ufffd" in text[len(before) :]:
                self._start_bytes()  # part of a character: its bytes, not its decoded text
            elif len(text) > len(before):
                self._pending += text[len(before) :]
                self._start_bytes()
                return self._release()
            else:
                return ""  # no text yet (a control token): it stays context
        # Whole characters come as cached text; the decoder only sees a character split over tokens.
        text = None if self._mid_character else self.tokenizer.token_text(token_id)
        if text is None:
            text = self._utf8.decode(self.tokenizer.token_bytes(token_id))
            self._mid_character = bool(self._utf8.getstate()[0])
        if not self.stop_strings:  # nothing is ever held back: the decode loop's common case
            self._emitted.append(text)
            return text
        self._pending += text
        return self._release()

    def _start_bytes(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def flush(self) -> str:
        """What is still held back once generation ends without a stop string."""
        if self.stopped:
            return ""
        if self._utf8 is not None:
            self._pending += self._utf8.decode(b"", final=True)
        return self._release(final=True)

    @property
    def emitted(self) -> str:
        """All text released so far."""
        return "".join(self._emitted)

    def _release(self, final: bool = False) -> str:
        hits = [i for stop in self.stop_strings if (i := self._pending.find(stop)) >= 0]
        if hits:
            self.stopped, cut = True, min(hits)
        elif final or not self.stop_strings:
            cut = len(self._pending)
        else:
            held = max((k for stop in self.stop_strings for k in range(1, len(stop)) if self._pending.endswith(stop[:k])), default=0)
            cut = len(self._pending) - held
        piece, self._pending = self._pending[:cut], self._pending[cut:]
        self._emitted.append(piece)
        return piece


def encode_with_specials(tokenizer: Tokenizer, text: str, specials: dict[str, int]) -> list[int]:
    """Encode text in which special tokens appear as strings (a rendered chat template).

    SentencePiece never maps control tokens such as `<bos>` from text, so they are cut out
    and placed as ids; the text between them is encoded normally.
    """
    if not specials:
        return tokenizer.encode(text)
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for part in re.split(pattern, text):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids.extend(tokenizer.encode(part))
    return ids


def render_chat(template: str, messages: list[dict], special_strings: dict[str, str], add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face chat template (Jinja) the way transformers does, ready for the reply."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise EdgeLLMError(f"chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **special_strings)
    except jinja2.TemplateError as exc:
        raise EdgeLLMError(f"chat template does not render ({exc}); fix it or pass --chat-template FILE") from None


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are made for a model: special tokens, stop conditions and the chat template."""

    bos_id: int | None
    add_bos: bool
    stop_ids: list[int]
    stop_strings: list[str]
    bos_token: str | None  # the special tokens as text, for chat templates
    eos_token: str | None
    chat_template: str | None
    prompt_prefix: str | None  # bundle overrides; None derives them from the chat template
    prompt_suffix: str | None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(checkpoint_dir: Path, tokenizer_config: dict) -> str | None:
    # transformers 5 saves the template beside the config; older checkpoints keep it inside,
    # sometimes as a list of named templates.
    if (checkpoint_dir / "chat_template.jinja").is_file():
        return (checkpoint_dir / "chat_template.jinja").read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template


def resolve_prompt_settings(spec: ModelSpec, checkpoint_dir: Path) -> PromptSettings:
    """The spec's settings where given, else the checkpoint's generation_config.json, config.json
    and tokenizer_config.json."""
    found: dict = {}
    for name in ("config.json", "generation_config.json"):  # later files win
        if (checkpoint_dir / name).is_file():
            found.update({k: v for k, v in read_json(checkpoint_dir / name).items() if v is not None})
    tokenizer_config = read_json(checkpoint_dir / "tokenizer_config.json") if (checkpoint_dir / "tokenizer_config.json").is_file() else {}
    section = spec.tokenizer
    bos = section.bos_id if section.bos_id is not None else found.get("bos_token_id")
    eos = section.eos_ids if section.eos_ids is not None else _ids(found.get("eos_token_id"))
    if section.add_bos and bos is None:
        raise EdgeLLMError(f"spec {spec.name}: tokenizer.add_bos is set but no BOS id is known; set tokenizer.bos_id")
    return PromptSettings(
        bos_id=bos,
        add_bos=section.add_bos,
        stop_ids=list(dict.fromkeys([*eos, *section.stop_ids])),
        stop_strings=section.stop_strings,
        bos_token=_token_text(tokenizer_config.get("bos_token")),
        eos_token=_token_text(tokenizer_config.get("eos_token")),
        chat_template=section.chat_template or _chat_template(checkpoint_dir, tokenizer_config),
        prompt_prefix=section.prompt_prefix,
        prompt_suffix=section.prompt_suffix,
    )
