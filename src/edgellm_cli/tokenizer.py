"""Tokenizers (SentencePiece `.model` or Hugging Face `tokenizer.json`) and special-token resolution."""

from __future__ import annotations

from dataclasses import dataclass
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

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.EncodeAsIds(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.DecodeIds(ids)
        return self._hf.decode(ids, skip_special_tokens=False)


def load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise EdgeLLMError(f"tokenizer {path} does not exist; pass --tokenizer with a tokenizer.model or tokenizer.json")
    return Tokenizer(path)


class StreamDecoder:
    """Turns a stream of ids into text pieces, holding back bytes of an unfinished UTF-8 character.

    Decoding the whole sequence each time keeps SentencePiece's leading-space rules and
    byte-fallback pieces right across token boundaries.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece


@dataclass(frozen=True)
class SpecialTokens:
    bos_id: int | None
    add_bos: bool
    stop_ids: list[int]


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def resolve_special_tokens(spec: ModelSpec, checkpoint_dir: Path) -> SpecialTokens:
    """The spec's ids where given, else the checkpoint's generation_config.json, then config.json."""
    found: dict = {}
    for name in ("config.json", "generation_config.json"):  # later files win
        if (checkpoint_dir / name).is_file():
            found.update({k: v for k, v in read_json(checkpoint_dir / name).items() if v is not None})
    section = spec.tokenizer
    bos = section.bos_id if section.bos_id is not None else found.get("bos_token_id")
    eos = section.eos_ids if section.eos_ids is not None else _ids(found.get("eos_token_id"))
    stops = list(dict.fromkeys([*eos, *section.stop_ids]))
    if section.add_bos and bos is None:
        raise EdgeLLMError(f"spec {spec.name}: tokenizer.add_bos is set but no BOS id is known; set tokenizer.bos_id")
    return SpecialTokens(bos_id=bos, add_bos=section.add_bos, stop_ids=stops)
