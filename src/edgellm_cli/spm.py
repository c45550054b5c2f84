"""Hugging Face tokenizers to SentencePiece `tokenizer.model`, and how faithful the result is.

`to_sentencepiece` writes a SentencePiece `ModelProto`; `check` measures a candidate `.model`
against the reference tokenizer three ways: litert-torch's random token pairs (strict and loose
mismatch), llama.cpp's test vectors, and a text corpus line by line. See docs/tokenizer-to-spm.md.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgellm_cli.errors import EdgeLLMError

SPACE = "\u2581"  # SentencePiece's whitespace symbol ▁
VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"
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


# -- reading tokenizers -------------------------------------------------------------------------


@dataclass
class Source:
    """Where a tokenizer lives: exactly one of `spm_model`, `tokenizer_json`, `vocab_merges` is set."""

    path: Path
    spm_model: Path | None = None
    tokenizer_json: Path | None = None
    vocab_merges: tuple[Path, Path] | None = None

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent


def locate(path: Path, prefer_spm: bool) -> Source:
    """Find the tokenizer files SOURCE names; `prefer_spm` picks `tokenizer.model` over `tokenizer.json`."""
    if not path.exists():
        raise EdgeLLMError(f"{path} does not exist; pass a tokenizer.json, a folder holding one, or a vocab.json beside merges.txt")
    if path.is_file():
        if path.name == "vocab.json" or path.name == "merges.txt":
            return _vocab_merges(path.parent, path)
        if path.suffix == ".model":
            return Source(path, spm_model=path)
        if path.suffix == ".json":
            return Source(path, tokenizer_json=path)
        raise EdgeLLMError(f"{path}: not a tokenizer file; pass a tokenizer.json, tokenizer.model, or a vocab.json beside merges.txt")
    candidates = [path / "tokenizer.model", path / "tokenizer.json"]
    for found in candidates if prefer_spm else reversed(candidates):
        if found.is_file():
            return Source(path, **{"spm_model" if found.suffix == ".model" else "tokenizer_json": found})
    if (path / "vocab.json").is_file():
        return _vocab_merges(path, path)
    raise EdgeLLMError(f"{path} holds no tokenizer.json, tokenizer.model or vocab.json + merges.txt; point at the tokenizer's folder")


def _vocab_merges(folder: Path, named: Path) -> Source:
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    for needed in (vocab, merges):
        if not needed.is_file():
            raise EdgeLLMError(f"{named}: {needed.name} is missing beside it; a byte-level BPE tokenizer needs both vocab.json and merges.txt")
    return Source(named, vocab_merges=(vocab, merges))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeLLMError(f"{path}: unreadable JSON ({str(exc).splitlines()[0]}); re-download it") from None
    if not isinstance(data, dict):
        raise EdgeLLMError(f"{path}: expected a JSON object; re-download it")
    return data


def _config(folder: Path) -> dict:
    return _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _hf_tokenizer(source: Source):
    """A `tokenizers.Tokenizer` for a tokenizer.json or a vocab.json + merges.txt pair."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if source.tokenizer_json is not None:
        _read_json(source.tokenizer_json)  # a clear message for broken JSON before `tokenizers` sees it
        try:
            return Tokenizer.from_file(str(source.tokenizer_json))
        except Exception as exc:  # tokenizers raises a bare Exception for an invalid file
            raise EdgeLLMError(f"{source.tokenizer_json}: not a valid tokenizer.json ({str(exc).splitlines()[0]}); re-download it") from None
    vocab, merges = source.vocab_merges
    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:
        raise EdgeLLMError(f"{vocab.parent}: vocab.json + merges.txt do not load ({str(exc).splitlines()[0]}); re-download them") from None
    tok = Tokenizer(model)
    config = _config(source.folder)
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


class Reference:
    """The tokenizer being converted, encoding without added BOS/EOS like llama.cpp's vectors."""

    def __init__(self, source: Source):
        self.source = source
        if source.spm_model is not None:
            self._sp, self._hf = load_spm(source.spm_model), None
            self.vocab_size = self._sp.GetPieceSize()
        else:
            self._sp, self._hf = None, _hf_tokenizer(source)
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)

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


def load_spm(path: Path):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise EdgeLLMError(f"{path}: not a valid SentencePiece model ({str(exc).splitlines()[0]}); re-download or re-convert it") from None
    return sp


# -- conversion ---------------------------------------------------------------------------------


def to_sentencepiece(source: Path, out: Path, pairs: int = 1000, seed: int = 0) -> dict:
    """Write SOURCE as a SentencePiece model at `out`; report how, and (a)'s mismatch rates when `pairs`."""
    found = locate(source, prefer_spm=True)
    if found.spm_model is not None:
        # Already SentencePiece: copying is the only lossless conversion.
        load_spm(found.spm_model)
        data, kind, notes = found.spm_model.read_bytes(), "sentencepiece", ["copied tokenizer.model unchanged"]
    else:
        tok = _hf_tokenizer(found)
        spec = json.loads(tok.to_str())
        kind = _kind(spec, found)
        if kind == "sentencepiece-bpe":
            proto, notes = _from_sentencepiece_bpe(spec, _config(found.folder))
        else:
            proto, notes = _from_byte_level_bpe(spec, _config(found.folder), tok.pre_tokenizer)
        data = _validated(proto, found.path)
    _write_atomically(out, data)
    report = {"source": str(found.path), "kind": kind, "output": str(out), "pieces": _piece_counts(data), "notes": notes}
    if pairs:
        report["check"] = check(source, out, pairs=pairs, seed=seed)
    return report


def _kind(spec: dict, source: Source) -> str:
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
        text = _token_text(config.get(f"{role}_token"))
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
    for i, (text, score, kind) in enumerate(entries):
        item = proto.pieces.add()
        # Placeholder names for ids SentencePiece cannot spell; they never collide with text.
        item.piece, item.score, item.type = text if text is not None else _fresh(f"<unused{i}>", taken), score, kind
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
    unused = sum(kind == Piece.UNUSED for _, _, kind in entries)
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
    quote = next((score for text, score, kind in entries if text == " '" and kind == normal), None)
    if quote is None:
        return
    for i, (text, score, kind) in enumerate(entries):
        if kind == normal and text and re.fullmatch(r"(?i)'(s|t|re|ve|m|ll|d)", text):
            entries[i] = (text, min(score, quote - 0.5), kind)


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


def _write_atomically(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, out)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise EdgeLLMError(f"cannot write {out} ({exc.strerror}); choose a writable -o path") from None


# -- checking -----------------------------------------------------------------------------------


class Candidate:
    """A SentencePiece model encoding text the way edgellm's runtime does.

    SentencePiece never matches CONTROL pieces in text, so their strings are cut out and placed
    as ids (as `encode_with_specials` does for chat templates); the text between is encoded.
    """

    def __init__(self, path: Path):
        self.sp = load_spm(path)
        specials = [i for i in range(self.sp.GetPieceSize()) if self.sp.IsControl(i) or self.sp.IsUnknown(i)]
        self.specials = {self.sp.IdToPiece(i): i for i in specials if self.sp.IdToPiece(i)}
        names = sorted(self.specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return self.sp.EncodeAsIds(text)
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self.specials:
                ids.append(self.specials[part])
            elif part:
                ids.extend(self.sp.EncodeAsIds(part))
        return ids


def check(reference: Path, candidate: Path, pairs: int = 1000, seed: int = 0, vectors: Path | None = None, corpus: Path | None = None, corpus_lines: int | None = None) -> dict:
    """Measure `candidate` (a SentencePiece .model) against `reference` (the original tokenizer)."""
    ref = Reference(locate(reference, prefer_spm=False))
    if not candidate.is_file():
        raise EdgeLLMError(f"candidate {candidate} does not exist; pass the tokenizer.model that to-spm wrote")
    cand = Candidate(candidate)
    report: dict = {"reference": str(ref.source.path), "candidate": str(candidate)}
    if pairs:
        report["pairs"] = random_pairs(ref, cand, pairs, seed)
    if vectors is not None:
        report["vectors"] = vector_match(ref, cand, vectors)
    if corpus is not None:
        report["corpus"] = corpus_match(ref, cand, corpus, corpus_lines)
    return report


def random_pairs(ref: Reference, cand: Candidate, pairs: int, seed: int) -> dict:
    """litert-torch's measure: decode 2 random ids with the reference, re-encode with both.

    strict: SentencePiece's ids differ from the reference's re-encoding. loose: a strict mismatch
    where the reference's re-encoding gives back the pair itself. Unlike litert-torch, neither side
    adds a BOS, so a dropped first id cannot pass for a match.
    """
    rng = random.Random(seed)
    strict = loose = 0
    examples = []
    for _ in range(pairs):
        pair = rng.sample(range(ref.vocab_size), 2)
        text = ref.decode(pair)
        expected, got = ref.encode(text), cand.encode(text)
        if got != expected:
            strict += 1
            loose += expected == pair
            if len(examples) < 5:
                examples.append({"text": text, "reference": expected, "candidate": got})
    return {
        "pairs": pairs,
        "seed": seed,
        "strict_mismatches": strict,
        "loose_mismatches": loose,
        "strict_rate": strict / pairs,
        "loose_rate": loose / pairs,
        "examples": examples,
    }


def read_vectors(path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's `X.gguf.inp` / `X.gguf.out` (either may be named, or the `X.gguf` stem)."""
    stem = path.with_suffix("") if path.suffix in (".inp", ".out") else path
    inp, out = stem.with_name(stem.name + ".inp"), stem.with_name(stem.name + ".out")
    if not inp.is_file() or not out.is_file():
        raise EdgeLLMError(f"{stem}: llama.cpp test vectors need both {inp.name} and {out.name}; pass --vectors with one of them")
    # Both files end with their separator, so each splits into 47 parts, the last an empty
    # input with empty ids: llama.cpp counts it, and so do we (47/47).
    texts = inp.read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    expected = [[int(x) for x in line.split()] for line in out.read_text(encoding="utf-8").split("\n")]
    if len(expected) != len(texts):
        raise EdgeLLMError(f"{out}: {len(expected)} expected id lines for {len(texts)} inputs; re-download the vectors")
    return list(zip(texts, expected))


def vector_match(ref: Reference, cand: Candidate, path: Path) -> dict:
    cases = read_vectors(path)
    failed = [text for text, ids in cases if cand.encode(text) != ids]
    return {
        "file": str(path),
        "total": len(cases),
        "passed": len(cases) - len(failed),
        "reference_passed": sum(ref.encode(text) == ids for text, ids in cases),
        "failed_inputs": failed[:10],
    }


def corpus_match(ref: Reference, cand: Candidate, path: Path, max_lines: int | None = None) -> dict:
    """Each non-empty line (without its line ending) encoded by both; the exact-match rate."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"corpus {path} is unreadable ({exc}); pass a UTF-8 text file") from None
    lines = lines[:max_lines] if max_lines else lines
    expected = ref.encode_batch(lines)
    mismatched = [line for line, ids in zip(lines, expected) if cand.encode(line) != ids]
    return {
        "file": str(path),
        "lines": len(lines),
        "exact": len(lines) - len(mismatched),
        "exact_rate": (len(lines) - len(mismatched)) / len(lines) if lines else 1.0,
        "mismatched_examples": mismatched[:3],
    }
