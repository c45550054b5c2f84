"""MediaPipe LLM Inference's `.task`, written here (its bundler only exists in an old mediapipe that
cannot share our environment): a zip of the model, the SentencePiece tokenizer and a metadata proto."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from edgellm.bundle.inputs import BundleInputs, BundleReport, writer_report
from edgellm.errors import EdgeLLMError
from edgellm.text.tokenizer import load_tokenizer
from edgellm.tflite.file import check_generative

TASK_ENTRIES = ("TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA")


_LLM_PARAMETERS = {5: "stop_tokens", 6: "start_token", 8: "prompt_template"}


_PROMPT_TEMPLATE = {1: "session_prefix", 2: "prompt_prefix", 3: "prompt_suffix"}


_ALIGNMENT_EXTRA = 0xD935  # Android zipalign's extra field: u16 alignment, then padding


_LOCAL_HEADER = 30  # bytes of a zip local file header before its name
_ZIP64_EXTRA = 20  # what zipfile adds to a local header for an entry over the zip64 limit


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings and sub-messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def task_metadata(start_token: str | None, stop_tokens: list[str], prefix: str, suffix: str) -> bytes:
    """LlmParameters, fields in number order as protobuf serialises them."""
    data = b"".join(_field(5, s.encode()) for s in stop_tokens)
    if start_token:
        data += _field(6, start_token.encode())
    template = (_field(2, prefix.encode()) if prefix else b"") + (_field(3, suffix.encode()) if suffix else b"")
    return data + (_field(8, template) if template else b"")


def decode_message(data: bytes, names: dict[int, str]) -> dict:
    """A flat protobuf message of strings/sub-messages (and varints) into {name: value or [values]}."""
    fields, i = {}, 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            length = varint()
            value, i = data[i : i + length], i + length
        else:
            raise EdgeLLMError(f"METADATA: unexpected protobuf wire type {wire}; not a MediaPipe LLM bundle")
        name = names.get(number, f"field_{number}")
        if name == "prompt_template":
            value = decode_message(value, _PROMPT_TEMPLATE)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        fields.setdefault(name, []).append(value)
    return {name: values if name == "stop_tokens" else values[-1] for name, values in fields.items()}


def _aligned_extra(data_start_without_extra: int, alignment: int = 4) -> bytes:
    """An extra field that moves the entry's data to the next multiple of `alignment`."""
    padding = -(data_start_without_extra + 6) % alignment
    return _ALIGNMENT_EXTRA.to_bytes(2, "little") + (2 + padding).to_bytes(2, "little") + alignment.to_bytes(2, "little") + b"\0" * padding


def write_task(inputs: BundleInputs, out: Path) -> BundleReport:
    """A MediaPipe LLM Inference `.task` bundle; the model is streamed in, never held in memory."""
    if inputs.tokenizer.suffix != ".model":
        raise EdgeLLMError(f"a .task bundle needs a SentencePiece tokenizer.model; {inputs.tokenizer.name} is not one (see `edgellm tokenizer to-spm`)")
    check_generative(inputs.model)  # MediaPipe maps it as it is: a damaged model would crash the app
    report = writer_report("task", inputs, load_tokenizer(inputs.tokenizer))
    if not report.stop_tokens:
        raise EdgeLLMError("a .task bundle needs at least one stop token; set tokenizer.stop_ids or eos_ids in the spec")
    metadata = task_metadata(report.start_token, report.stop_tokens, report.prompt_prefix, report.prompt_suffix)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "METADATA").write_bytes(metadata)
        sources = [inputs.model, inputs.tokenizer, Path(tmp) / "METADATA"]
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            offset = 0  # where the next entry's local header starts
            for name, source in zip(TASK_ENTRIES, sources):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr, info.file_size = 0o600 << 16, source.stat().st_size
                zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a zip64 local header
                # The runtime maps the model in place, so its data must start on a 4-byte boundary.
                header = _LOCAL_HEADER + len(name.encode()) + (_ZIP64_EXTRA if zip64 else 0)
                info.extra = _aligned_extra(offset + header)
                with source.open("rb") as src, archive.open(info, "w", force_zip64=zip64) as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                offset += header + len(info.extra) + info.file_size
    return report


def data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where an entry's data starts, read from its local header (its extra field may differ from the central directory's)."""
    with path.open("rb") as f:
        f.seek(info.header_offset + 26)
        lengths = f.read(4)
    return info.header_offset + _LOCAL_HEADER + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little")


def read_task(path: Path) -> dict:
    """Entries (name, size, data offset) and the decoded METADATA of a `.task` bundle."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            metadata = archive.read("METADATA") if "METADATA" in archive.namelist() else None
        entries = [{"name": i.filename, "size": i.file_size, "data_offset": data_offset(path, i)} for i in infos]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise EdgeLLMError(f"{path}: not a readable zip file ({exc}), so not a .task bundle") from None
    if metadata is None:
        raise EdgeLLMError(f"{path}: a zip without a METADATA entry is not a MediaPipe LLM bundle")
    return {"entries": entries, "metadata": decode_message(metadata, _LLM_PARAMETERS)}
