"""Hugging Face tokenizers (`tokenizer.json`, or `vocab.json` + `merges.txt`) to a SentencePiece
`tokenizer.model`, the tokenizer format MediaPipe's `.task` bundles need. How faithful the result
is: `tokenizer_check.py`. See docs/tokenizer-to-spm.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import write_bytes_atomically
from edgellm.text.tokenizer import (
    BYTE_PIECE,
    TokenizerFiles,
    byte_level_bytes,
    hf_tokenizer,
    load_spm,
    locate,
    token_text,
    tokenizer_config,
)

SPACE = "\u2581"  # SentencePiece's whitespace symbol ▁


# -- conversion ---------------------------------------------------------------------------------


def to_sentencepiece(source: Path, out: Path, pairs: int = 1000, seed: int = 0) -> dict:
    """Write SOURCE as a SentencePiece model at `out`; report how, and its fidelity when `pairs`."""
    from edgellm.text.tokenizer_check import check

    found = locate(source, prefer_spm=True)
    if found.spm_model is not None:
        # Already SentencePiece: copying is the only lossless conversion.
        load_spm(found.spm_model)
        data, tokenizer_type, notes = found.spm_model.read_bytes(), "sentencepiece", ["copied tokenizer.model unchanged"]
    else:
        tok = hf_tokenizer(found)
        spec = json.loads(tok.to_str())
        tokenizer_type = _tokenizer_type(spec, found)
        if tokenizer_type == "sentencepiece-bpe":
            proto, notes = _from_sentencepiece_bpe(spec, tokenizer_config(found.folder))
        else:
            proto, notes = _from_byte_level_bpe(spec, tokenizer_config(found.folder), tok.pre_tokenizer)
        data = _validated(proto, found.path)
    write_bytes_atomically(out, data)
    report = {"source": str(found.path), "kind": tokenizer_type, "output": str(out), "pieces": _piece_counts(data), "notes": notes}
    if pairs:
        report["check"] = check(source, out, pairs=pairs, seed=seed)
    return report


def _tokenizer_type(spec: dict, source: TokenizerFiles) -> str:
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise EdgeLLMError(f"{source.path}: a {model.get('type')} tokenizer; to-spm converts BPE tokenizers only (byte-level or SentencePiece-style)")
    if "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        return "byte-level-bpe"
    if model.get("byte_fallback") or SPACE in json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")], ensure_ascii=False):
        return "sentencepiece-bpe"
    raise EdgeLLMError(f"{source.path}: a BPE tokenizer that is neither byte-level nor SentencePiece-style (▁ for spaces); it cannot be converted")


def _merge_ranks(merges: list) -> dict[str, int]:
    """The rank of the first merge that makes each piece: BPE applies lower ranks first."""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    return ranks


def _new_proto(vocab_size: int):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = vocab_size
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, -1, -1, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.remove_extra_whitespaces = False
    return proto, pb.ModelProto.SentencePiece


def _set_roles(proto, config: dict, ids: dict[str, int]) -> None:
    """bos/eos/pad ids from tokenizer_config.json, so runtimes that read them find the checkpoint's."""
    trainer = proto.trainer_spec
    for role in ("bos", "eos", "pad"):
        text = token_text(config.get(f"{role}_token"))
        if text in ids:
            setattr(trainer, f"{role}_id", ids[text])
            setattr(trainer, f"{role}_piece", text)


def _from_sentencepiece_bpe(spec: dict, config: dict):
    """A tokenizer.json that is SentencePiece BPE (▁ for spaces, <0xNN> byte fallback): lossless."""
    model = spec["model"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    pieces = {i: p for p, i in model["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    size = max(pieces) + 1
    proto, Piece = _new_proto(size)
    ranks = _merge_ranks(model.get("merges", []))
    lowest = -float(len(ranks) + 1)
    unk = model.get("unk_token")
    byte_count = 0
    for i in range(size):
        text = pieces.get(i)
        item = proto.pieces.add()
        item.piece, item.score, item.type = text if text is not None else f"<unused{i}>", 0.0, Piece.NORMAL
        if text is None:
            item.type = Piece.UNUSED
        elif text == unk:
            item.type = Piece.UNKNOWN
            proto.trainer_spec.unk_id, proto.trainer_spec.unk_piece = i, text
        elif i in added and added[i].get("special"):
            item.type = Piece.CONTROL
        elif i in added:
            item.type = Piece.USER_DEFINED
        elif BYTE_PIECE.match(text) and model.get("byte_fallback"):
            item.type = Piece.BYTE
            byte_count += 1
        elif len(text) > 1:
            # Pieces no merge makes rank last, so they lose every contest for a merge.
            item.score = -float(ranks[text]) if text in ranks else lowest
    if byte_count != 256:
        proto.trainer_spec.byte_fallback = False
    if not any(p.type == Piece.UNKNOWN for p in proto.pieces):
        raise EdgeLLMError("the tokenizer has no unk_token; SentencePiece needs one, so this tokenizer.json cannot be converted")
    normalizer = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")], ensure_ascii=False)
    proto.normalizer_spec.add_dummy_prefix = '"Prepend"' in normalizer or ('"Metaspace"' in normalizer and '"never"' not in normalizer)
    proto.normalizer_spec.escape_whitespaces = True
    proto.denormalizer_spec.name = "identity"
    _set_roles(proto, config, {p.piece: i for i, p in enumerate(proto.pieces)})
    notes = ["built from tokenizer.json: SentencePiece BPE, scores from merge ranks, <0xNN> byte fallback"]
    return proto, notes


def _from_byte_level_bpe(spec: dict, config: dict, pre_tokenizer):
    """Byte-level BPE (GPT-2 style) as real-text pieces with <0xNN> byte fallback.

    Each vocabulary token becomes the text its bytes spell, so SentencePiece reads ordinary text
    and decodes to it. What SentencePiece cannot hold is kept at its id as UNUSED (never produced):
    tokens that are a fragment of a UTF-8 character, and later tokens whose text repeats an
    earlier one. Single bytes that are not text on their own become BYTE pieces at their own id,
    so byte fallback yields the same ids as the byte-level vocabulary.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    Piece = pb.ModelProto.SentencePiece
    model = spec["model"]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    vocab = {i: p for p, i in model["vocab"].items()}
    size = max([*vocab, *added]) + 1
    ranks = _merge_ranks(model.get("merges", []))
    lowest = -float(len(ranks) + 1)
    byte_ids: set[int] = set()
    taken = {t["content"] for t in added.values()}
    entries: list[tuple[str | None, float, int]] = []
    for i in range(size):
        if i in added:
            entries.append((added[i]["content"], 0.0, Piece.CONTROL if added[i].get("special") else Piece.USER_DEFINED))
            continue
        token = vocab.get(i)
        raw = byte_level_bytes(token) if token is not None else None
        text = _utf8(raw) if raw else None
        score = -float(ranks[token]) if token in ranks else 0.0
        if raw is not None and len(raw) == 1 and (text is None or text == "\x00"):
            byte_ids.add(raw[0])
            entries.append((f"<0x{raw[0]:02X}>", 0.0, Piece.BYTE))
        elif text is None or text in taken or "\x00" in text:
            entries.append((None, 0.0, Piece.UNUSED))
        elif len(text) > 1 and len(pre_tokenizer.pre_tokenize_str(text)) > 1:
            # The reference's pre-tokenizer cuts this text apart, so it never yields this token
            # (e.g. Thai letter + vowel mark in Qwen2); SentencePiece must not merge into it.
            entries.append((text, score, Piece.UNUSED))
            taken.add(text)
        elif text.isspace() and len(text) > 1:
            # Pre-tokenizers give a run of spaces before a word its last space (" word"): merging
            # whitespace after every other merge does the same.
            entries.append((text, lowest + score / (len(ranks) + 1), Piece.NORMAL))
            taken.add(text)
        else:
            entries.append((text, score, Piece.NORMAL))
            taken.add(text)
    _after_space_punctuation(entries, Piece.NORMAL)
    proto, _ = _new_proto(size)
    for i, (text, score, piece_type) in enumerate(entries):
        item = proto.pieces.add()
        # Placeholder names for ids SentencePiece cannot spell; they never collide with text.
        item.piece, item.score, item.type = text if text is not None else _fresh(f"<unused{i}>", taken), score, piece_type
    # SentencePiece needs all 256 byte pieces; bytes that are also text pieces (ASCII) get theirs
    # after the vocabulary, where byte fallback never reaches (their characters are pieces).
    for b in sorted(set(range(256)) - byte_ids):
        item = proto.pieces.add()
        item.piece, item.score, item.type = f"<0x{b:02X}>", 0.0, Piece.BYTE
    unk = proto.pieces.add()
    unk.piece, unk.type = _fresh("<unk>", taken), Piece.UNKNOWN  # never produced: byte fallback covers every character
    proto.trainer_spec.unk_id, proto.trainer_spec.unk_piece = len(proto.pieces) - 1, unk.piece
    proto.trainer_spec.vocab_size = len(proto.pieces)
    # Spaces stay spaces (no ▁, no dummy prefix): byte-level BPE treats them as ordinary bytes.
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.escape_whitespaces = False
    proto.denormalizer_spec.CopyFrom(proto.normalizer_spec)
    _set_roles(proto, config, {p.piece: i for i, p in enumerate(proto.pieces) if i < size})
    unused = sum(piece_type == Piece.UNUSED for _, _, piece_type in entries)
    notes = [
        "built from byte-level BPE: pieces are the text each token spells, scores from merge ranks, <0xNN> byte fallback",
        f"{unused} ids kept as UNUSED (UTF-8 fragments, repeated text, text the pre-tokenizer splits): never produced by encoding",
        f"{len(proto.pieces) - size} pieces after id {size - 1} (byte pieces for ASCII, <unk>): never produced",
    ]
    return proto, notes


def _after_space_punctuation(entries: list, normal: int) -> None:
    """Rank contractions ('s, 't, ...) just below " '": GPT-2-style pre-tokenizers split " 's" as
    " '" + "s" (the contraction rule only applies without a space), while merge ranks alone
    would join "'s" first."""
    quote = next((score for text, score, piece_type in entries if text == " '" and piece_type == normal), None)
    if quote is None:
        return
    for i, (text, score, piece_type) in enumerate(entries):
        if piece_type == normal and text and re.fullmatch(r"(?i)'(s|t|re|ve|m|ll|d)", text):
            entries[i] = (text, min(score, quote - 0.5), piece_type)


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"<{name}>"
    taken.add(name)
    return name


def _validated(proto, source: Path) -> bytes:
    """Serialize and load it back, so a model SentencePiece refuses is never written."""
    import sentencepiece

    data = proto.SerializeToString()
    try:
        sentencepiece.SentencePieceProcessor().LoadFromSerializedProto(data)
    except RuntimeError as exc:
        raise EdgeLLMError(f"{source}: SentencePiece refuses the converted model ({str(exc).splitlines()[0]}); this tokenizer cannot be converted") from None
    return data


def _piece_counts(data: bytes) -> dict[str, int]:
    from sentencepiece import sentencepiece_model_pb2 as pb

    counts: dict[str, int] = {}
    for p in pb.ModelProto.FromString(data).pieces:
        name = pb.ModelProto.SentencePiece.Type.Name(p.type)
        counts[name] = counts.get(name, 0) + 1
    return counts
