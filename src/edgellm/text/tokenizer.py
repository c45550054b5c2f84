"""Tokenizers as edgellm reads them: a SentencePiece `tokenizer.model`, a Hugging Face
`tokenizer.json`, or a byte-level BPE `vocab.json` + `merges.txt`; one `Tokenizer` over all of
them (the runtime, the SentencePiece converter and its fidelity check share it), and `TextStream`,
which turns generated ids into text as it becomes final."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import read_json

# Qwen2Tokenizer's pre-tokenizer: like GPT-2's, but digits one by one and newlines kept apart.
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, the alphabet byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_bytes(token: str) -> bytes | None:
    """The bytes a byte-level BPE token spells in that alphabet; None if it holds another character."""
    to_byte = _unicode_to_bytes()
    return bytes(to_byte[c] for c in token) if all(c in to_byte for c in token) else None


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


# -- where a tokenizer lives ----------------------------------------------------------------------


@dataclass
class TokenizerFiles:
    """Where a tokenizer lives: exactly one of `spm_model`, `tokenizer_json`, `vocab_merges` is set."""

    path: Path
    spm_model: Path | None = None
    tokenizer_json: Path | None = None
    vocab_merges: tuple[Path, Path] | None = None

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent


def locate(path: Path, prefer_spm: bool = True) -> TokenizerFiles:
    """The tokenizer files `path` names (a file or a folder); `prefer_spm` picks `tokenizer.model` over `tokenizer.json`."""
    if not path.exists():
        raise EdgeLLMError(f"tokenizer {path} does not exist; pass a tokenizer.model, a tokenizer.json, a folder holding one, or a vocab.json beside merges.txt")
    if path.is_file():
        if path.name in ("vocab.json", "merges.txt"):
            return _vocab_merges(path.parent, path)
        if path.suffix == ".model":
            return TokenizerFiles(path, spm_model=path)
        if path.suffix == ".json":
            return TokenizerFiles(path, tokenizer_json=path)
        raise EdgeLLMError(f"{path}: not a tokenizer file; pass a tokenizer.json, tokenizer.model, or a vocab.json beside merges.txt")
    candidates = [path / "tokenizer.model", path / "tokenizer.json"]
    for found in candidates if prefer_spm else reversed(candidates):
        if found.is_file():
            return TokenizerFiles(path, **{"spm_model" if found.suffix == ".model" else "tokenizer_json": found})
    if (path / "vocab.json").is_file():
        return _vocab_merges(path, path)
    raise EdgeLLMError(f"{path} holds no tokenizer.json, tokenizer.model or vocab.json + merges.txt; point at the tokenizer's folder")


def _vocab_merges(folder: Path, named: Path) -> TokenizerFiles:
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    for needed in (vocab, merges):
        if not needed.is_file():
            raise EdgeLLMError(f"{named}: {needed.name} is missing beside it; a byte-level BPE tokenizer needs both vocab.json and merges.txt")
    return TokenizerFiles(named, vocab_merges=(vocab, merges))


def tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return read_json(path, "tokenizer_config.json") if path.is_file() else {}


def token_text(value) -> str | None:
    """A special token as text, from a config that gives it as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def load_spm(path: Path):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise EdgeLLMError(f"{path}: not a valid SentencePiece model ({str(exc).splitlines()[0]}); re-download or re-convert it") from None
    return sp


def hf_tokenizer(source: TokenizerFiles):
    """A `tokenizers.Tokenizer` for a tokenizer.json or a vocab.json + merges.txt pair."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if source.tokenizer_json is not None:
        read_json(source.tokenizer_json, "tokenizer.json")  # a clear message for broken JSON before `tokenizers` sees it
        try:
            return Tokenizer.from_file(str(source.tokenizer_json))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for an invalid file
            raise EdgeLLMError(f"{source.tokenizer_json}: not a valid tokenizer.json ({str(exc).splitlines()[0]}); re-download it") from None
    vocab, merges = source.vocab_merges
    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # noqa: BLE001 - likewise
        raise EdgeLLMError(f"{vocab.parent}: vocab.json + merges.txt do not load ({str(exc).splitlines()[0]}); re-download them") from None
    tok = Tokenizer(model)
    config = tokenizer_config(source.folder)
    if config.get("tokenizer_class", "").startswith("Qwen2"):
        tok.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
    added = sorted(((int(i), t) for i, t in config.get("added_tokens_decoder", {}).items()), key=lambda x: x[0])
    for token_id, token in added:
        if token_id != tok.get_vocab_size():
            raise EdgeLLMError(f"{source.folder}: added token {token.get('content')!r} has id {token_id}, not the next free id; fix tokenizer_config.json")
        tok.add_tokens([AddedToken(token["content"], special=token.get("special", False), normalized=token.get("normalized", False))])
    return tok


# -- encoding and decoding --------------------------------------------------------------------------


class Tokenizer:
    """encode/decode over either backend, ids as plain ints, no BOS/EOS added (callers place them)."""

    def __init__(self, files: TokenizerFiles):
        self.files = files
        if files.spm_model is not None:
            self._sp, self._hf = load_spm(files.spm_model), None
            self.vocab_size = self._sp.GetPieceSize()
        else:
            self._sp, self._hf = None, hf_tokenizer(files)
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self._token_bytes: dict[int, bytes] = {}
        self._token_text: dict[int, str | None] = {}

    @cached_property
    def ordinary_size(self) -> int:
        """How many ids ordinary text encodes to: the tokenizer model's vocabulary and any added token
        that is not special. Special added tokens may lie past a model's embedding (a multimodal
        placeholder a text-only checkpoint never sees), which transformers accepts."""
        if self._sp is not None:
            return self.vocab_size
        plain = [token_id + 1 for token_id, token in self._hf.get_added_tokens_decoder().items() if not token.special]
        return max([self._hf.get_vocab_size(with_added_tokens=False), *plain])

    @property
    def path(self) -> Path:
        return self.files.path

    @property
    def sentencepiece(self):
        """The SentencePiece processor, or None for a Hugging Face tokenizer."""
        return self._sp

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.EncodeAsIds(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._sp is not None:
            return [self._sp.EncodeAsIds(t) for t in texts]
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.DecodeIds(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    def piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(token_id) if self._sp is not None else self._hf.id_to_token(token_id)

    def token_id(self, text: str) -> int | None:
        """The id of a special or ordinary token spelled exactly `text`, if the vocabulary has one."""
        if self._sp is not None:
            found = self._sp.PieceToId(text)
            return found if found != self._sp.unk_id() or text == self._sp.IdToPiece(found) else None
        return self._hf.token_to_id(text)

    @cached_property
    def bos_id(self) -> int | None:
        """The BOS the tokenizer itself defines (SentencePiece's bos_id, or what tokenizer.json's
        post-processor puts first), for models whose edgellm.json does not say."""
        if self._sp is not None:
            return self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        added = self._hf.encode("", add_special_tokens=True).ids
        return added[0] if added else None

    @cached_property
    def eos_id(self) -> int | None:
        if self._sp is not None:
            return self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        return None

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
        anchor, anchor_text = self._anchor
        text = self.decode([*anchor, token_id])
        added = text[len(anchor_text) :] if text.startswith(anchor_text) else self.decode([token_id])
        if "\ufffd" not in added:
            return added.encode()
        piece = self.piece(token_id)
        if match := BYTE_PIECE.match(piece):
            return bytes([int(match.group(1), 16)])
        if self._sp is None and type(self._hf.decoder).__name__ == "ByteLevel" and (raw := byte_level_bytes(piece)) is not None:
            return raw
        return added.encode()  # no bytes behind the replacement character: keep it, as decode does


def load_tokenizer(path: Path, prefer_spm: bool = True) -> Tokenizer:
    return Tokenizer(locate(path, prefer_spm))


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


def stream_text(tokenizer: Tokenizer, ids: Iterable[int], stop_strings: list[str] = (), context: list[int] = (), seen: list[int] | None = None) -> Iterator[str]:
    """The text of generated `ids` as it becomes final, up to a stop string; each id also goes to `seen`."""
    stream = TextStream(tokenizer, stop_strings, context)
    for token in ids:
        if seen is not None:
            seen.append(token)
        if piece := stream.push(token):
            yield piece
        if stream.stopped:
            return
    if tail := stream.flush():
        yield tail
