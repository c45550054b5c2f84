"""Bundle stage: package a model for the runtimes apps use, as a registry of formats.

`.litertlm` (LiteRT-LM) is written with litert-lm-builder; MediaPipe's `.task` is written here
(its bundler only exists in an old mediapipe that cannot share our environment). Both take the
start token (only when the model's input really starts with BOS), the stop tokens, the prompt
prefix/suffix and the chat template from the model's `edgellm.json`. Adding a format is one
writer function and one `BundleFormat` entry in `FORMATS`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel

from edgellm_cli.chat_template import prompt_affixes
from edgellm_cli.deploy_check import ChatPlan, model_type, preflight
from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.files import temporary_sibling
from edgellm_cli.metadata import ModelMetadata
from edgellm_cli.tflite_file import check_generative
from edgellm_cli.tokenizer import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class BundleInputs:
    model: Path
    tokenizer: Path
    metadata: ModelMetadata
    chat: ChatPlan | None = None  # the template and start token adapted for LiteRT-LM (set by the pre-flight)

    @property
    def start_id(self) -> int | None:
        return self.chat.start_id if self.chat is not None else self.metadata.start_id


class BundleReport(BaseModel):
    """What every writer reports: the special tokens as ids and as text, and the prompt affixes."""

    format: str
    start_id: int | None
    start_token: str | None
    stop_ids: list[int]
    stop_tokens: list[str]
    prompt_prefix: str
    prompt_suffix: str


def _report(fmt: str, inputs: BundleInputs, tokenizer: Tokenizer) -> BundleReport:
    stops = [i for i in inputs.metadata.stop_ids if 0 <= i < tokenizer.vocab_size]
    prefix, suffix = prompt_affixes(inputs.metadata)
    return BundleReport(
        format=fmt,
        start_id=inputs.start_id,
        start_token=tokenizer.piece(inputs.start_id) if inputs.start_id is not None else None,
        stop_ids=stops,
        stop_tokens=[tokenizer.piece(i) for i in stops],
        prompt_prefix=prefix,
        prompt_suffix=suffix,
    )


# -- .litertlm ------------------------------------------------------------------------------


def write_litertlm(inputs: BundleInputs, out: Path) -> BundleReport:
    """A `.litertlm` LiteRT-LM runs: model, tokenizer, LLM metadata and the KV-cache layout."""
    from litert_lm_builder import litertlm_builder as lb
    from litert_lm_builder import litertlm_core
    from litert_lm_builder.runtime.proto import executor_metadata_pb2, llm_metadata_pb2, sampler_params_pb2

    report = _report("litertlm", inputs, load_tokenizer(inputs.tokenizer))
    meta = inputs.metadata
    llm = llm_metadata_pb2.LlmMetadata()
    if inputs.start_id is not None:
        llm.start_token.token_ids.ids.append(inputs.start_id)
    for stop in report.stop_ids:
        llm.stop_tokens.add().token_ids.ids.append(stop)
    llm.prompt_templates.user.prefix, llm.prompt_templates.user.suffix = report.prompt_prefix, report.prompt_suffix
    if inputs.chat is not None:  # what LiteRT-LM's conversation mode renders (list-of-parts content)
        llm.jinja_prompt_template = inputs.chat.template
    # Greedy. LiteRT-LM 0.18 runs only TOP_P samplers on CPU; k=1 makes it greedy.
    llm.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P
    llm.sampler_params.k, llm.sampler_params.p, llm.sampler_params.temperature = 1, 1.0, 1.0
    caches = [name for name in check_generative(inputs.model)["decode"].inputs if name.startswith("kv_cache_")]
    if meta.kv_cache_length is None:
        raise EdgeLLMError(f"{inputs.model}: its edgellm.json gives no kv_cache_length; bundle a model that `edgellm build` wrote")
    llm.max_num_tokens = meta.kv_cache_length
    getattr(llm.llm_model_type, model_type(meta.name)).SetInParent()

    # K is [1, heads, T, dim] and V [1, heads, dim, T]: the runtime needs each one's sequence axis.
    executor = executor_metadata_pb2.ExecutorMetadata()
    layout = executor.llm_executor_metadata
    for name in caches:
        buffer = layout.state_buffers.add()
        buffer.prefill_input_name = buffer.prefill_output_name = buffer.decode_input_name = buffer.decode_output_name = name
        key = name.startswith("kv_cache_k_")
        buffer.type = executor_metadata_pb2.StateBuffer.Type.Value("TYPE_GLOBAL_KEY_CACHE" if key else "TYPE_GLOBAL_VALUE_CACHE")
        buffer.sequence_axis = 2 if key else 3
    layout.attention_mask_settings.attention_mask_type = executor_metadata_pb2.ATTENTION_MASK_TYPE_CAUSAL

    with tempfile.TemporaryDirectory() as tmp:
        llm_path, executor_path = Path(tmp) / "llm_metadata.pb", Path(tmp) / "executor_metadata.pb"
        llm_path.write_bytes(llm.SerializeToString())
        executor_path.write_bytes(executor.SerializeToString())
        builder = lb.LitertLmFileBuilder()
        builder.add_system_metadata(lb.Metadata(key="Authors", value="edgellm", dtype=lb.DType.STRING))
        builder.add_llm_metadata(str(llm_path), supports_thinking=False, supports_function_calling=False)
        builder.add_executor_metadata(str(executor_path))
        if inputs.tokenizer.suffix == ".json":
            builder.add_hf_tokenizer(str(inputs.tokenizer))
        else:
            builder.add_sentencepiece_tokenizer(str(inputs.tokenizer))
        builder.add_tflite_model(str(inputs.model), lb.TfLiteModelType.PREFILL_DECODE)
        with litertlm_core.open_file(str(out), "wb") as f:
            builder.build(f, validate_metadata=True)
    return report


# -- MediaPipe .task ------------------------------------------------------------------------
# A zip of stored entries, each entry's data 4-byte aligned: TF_LITE_PREFILL_DECODE (the model),
# TOKENIZER_MODEL (SentencePiece) and METADATA (odml.infra.proto.LlmParameters). Start and stop
# tokens are stored as token strings; the runtime maps them to ids with the tokenizer.

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
    report = _report("task", inputs, load_tokenizer(inputs.tokenizer))
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


# -- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFormat:
    name: str  # what --bundle / --format take; also the file extension
    runtime: str
    write: Callable[[BundleInputs, Path], BundleReport]


FORMATS: dict[str, BundleFormat] = {
    f.name: f
    for f in (
        BundleFormat("litertlm", "LiteRT-LM", write_litertlm),
        BundleFormat("task", "MediaPipe LLM Inference", write_task),
    )
}


def bundle_format(name: str) -> BundleFormat:
    if name not in FORMATS:
        raise EdgeLLMError(f"unknown bundle format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def write_bundle(inputs: BundleInputs, fmt: str, out: Path) -> BundleReport:
    """Check that the bundle will work in its runtime (a one-line error if not, before anything is
    written), then write it under a temporary name and rename it, so a failure leaves no half file."""
    writer = bundle_format(fmt).write
    inputs = replace(inputs, chat=preflight(inputs.metadata, load_tokenizer(inputs.tokenizer), fmt))
    staging = temporary_sibling(out)
    try:
        report = writer(inputs, staging)
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return report
