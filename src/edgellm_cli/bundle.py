"""Bundle stage: package a converted model for the runtimes apps use.

`.litertlm` (LiteRT-LM) is written with litert-lm-builder; MediaPipe's `.task` is written here
(its bundler only exists in an old mediapipe that cannot share our environment). Both take the
start token (only when the model's input really starts with BOS), the stop tokens, the prompt
prefix/suffix and the chat template from the `edgellm.json` that `build` writes beside the model.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.runtime import read_metadata, start_id, template_strings

FORMATS = ("litertlm", "task")
_PROBE = "\x00edgellm-probe\x00"


@dataclass(frozen=True)
class BundleInputs:
    model: Path
    tokenizer: Path
    metadata: dict  # edgellm.json: bos_id, add_bos, stop_ids, chat_template, prompt affixes, kv length
    chat: object | None = None  # deploy_check.ChatPlan: the template and start token adapted for LiteRT-LM

    @property
    def start_id(self) -> int | None:
        return self.chat.start_id if self.chat is not None else start_id(self.metadata)


def read_inputs(model: Path, tokenizer: Path | None = None) -> BundleInputs:
    if not model.is_file():
        raise EdgeLLMError(f"model {model} does not exist; pass the model.tflite that `edgellm build` wrote")
    metadata = read_metadata(model)
    if not metadata:
        raise EdgeLLMError(f"no edgellm.json beside {model}; bundle the output folder of `edgellm build` (it holds the tokens and template)")
    tokenizer = tokenizer or model.parent / metadata["tokenizer"]
    if not tokenizer.is_file():
        raise EdgeLLMError(f"tokenizer {tokenizer} does not exist; pass --tokenizer")
    return BundleInputs(model, tokenizer, metadata)


def prompt_affixes(metadata: dict) -> tuple[str, str]:
    """(prefix, suffix) around one user message, as the chat template renders it; spec overrides win.

    The template is rendered on a single probe message: what precedes the probe is the prefix,
    what follows it (end of the user turn, start of the model's) is the suffix. The BOS text is
    left out: the runtime adds the start token itself.
    """
    prefix, suffix = metadata.get("prompt_prefix"), metadata.get("prompt_suffix")
    template = metadata.get("chat_template")
    if template and (prefix is None or suffix is None):
        from edgellm_cli.tokenizer import render_chat

        rendered = render_chat(template, [{"role": "user", "content": _PROBE}], template_strings(metadata))
        before, _, after = rendered.partition(_PROBE)
        if metadata.get("bos_token") and before.startswith(metadata["bos_token"]):
            before = before[len(metadata["bos_token"]) :]
        prefix = before if prefix is None else prefix
        suffix = after if suffix is None else suffix
    return prefix or "", suffix or ""


# -- .litertlm ------------------------------------------------------------------------------


def write_litertlm(inputs: BundleInputs, out: Path) -> dict:
    """A `.litertlm` LiteRT-LM runs: model, tokenizer, LLM metadata and the KV-cache layout."""
    from litert_lm_builder import litertlm_builder as lb
    from litert_lm_builder import litertlm_core
    from litert_lm_builder.runtime.proto import executor_metadata_pb2, llm_metadata_pb2, sampler_params_pb2

    from edgellm_cli.deploy_check import model_type
    from edgellm_cli.runtime import LiteRTModel

    meta = inputs.metadata
    llm = llm_metadata_pb2.LlmMetadata()
    if inputs.start_id is not None:
        llm.start_token.token_ids.ids.append(inputs.start_id)
    for stop in meta.get("stop_ids", []):
        llm.stop_tokens.add().token_ids.ids.append(stop)
    prefix, suffix = prompt_affixes(meta)
    llm.prompt_templates.user.prefix, llm.prompt_templates.user.suffix = prefix, suffix
    if inputs.chat is not None:  # LiteRT-LM's conversation mode renders this (list-of-parts content)
        llm.jinja_prompt_template = inputs.chat.template
    elif meta.get("chat_template"):
        llm.jinja_prompt_template = meta["chat_template"]
    # Greedy. LiteRT-LM 0.18 runs only TOP_P samplers on CPU; k=1 makes it greedy.
    llm.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P
    llm.sampler_params.k, llm.sampler_params.p, llm.sampler_params.temperature = 1, 1.0, 1.0
    llm.max_num_tokens = meta["kv_cache_length"]
    getattr(llm.llm_model_type, model_type(meta)).SetInParent()

    # Our caches are [1, T, heads, dim]: without the sequence axis the runtime would guess axis 2.
    executor = executor_metadata_pb2.ExecutorMetadata()
    layout = executor.llm_executor_metadata
    for name in LiteRTModel(inputs.model).cache_names:
        buffer = layout.state_buffers.add()
        buffer.prefill_input_name = buffer.prefill_output_name = buffer.decode_input_name = buffer.decode_output_name = name
        kind = "TYPE_GLOBAL_KEY_CACHE" if name.startswith("kv_cache_k_") else "TYPE_GLOBAL_VALUE_CACHE"
        buffer.type = executor_metadata_pb2.StateBuffer.Type.Value(kind)
        buffer.sequence_axis = 1
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
    return {"format": "litertlm", "start_id": inputs.start_id, "stop_ids": meta.get("stop_ids", []), "prompt_prefix": prefix, "prompt_suffix": suffix}


# -- MediaPipe .task ------------------------------------------------------------------------
# A zip of stored entries, each entry's data 4-byte aligned: TF_LITE_PREFILL_DECODE (the model),
# TOKENIZER_MODEL (SentencePiece) and METADATA (odml.infra.proto.LlmParameters). Start and stop
# tokens are stored as token strings; the runtime maps them to ids with the tokenizer.

TASK_ENTRIES = ("TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA")
_LLM_PARAMETERS = {5: "stop_tokens", 6: "start_token", 8: "prompt_template"}
_PROMPT_TEMPLATE = {1: "session_prefix", 2: "prompt_prefix", 3: "prompt_suffix"}


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


def write_task(inputs: BundleInputs, out: Path) -> dict:
    """A MediaPipe LLM Inference `.task` bundle."""
    if inputs.tokenizer.suffix != ".model":
        raise EdgeLLMError(f"a .task bundle needs a SentencePiece tokenizer.model; {inputs.tokenizer.name} is not one")
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(inputs.tokenizer))
    start = sp.id_to_piece(inputs.start_id) if inputs.start_id is not None else None
    stops = [sp.id_to_piece(i) for i in inputs.metadata.get("stop_ids", []) if i < sp.get_piece_size()]
    if not stops:
        raise EdgeLLMError("a .task bundle needs at least one stop token; set tokenizer.stop_ids or eos_ids in the spec")
    prefix, suffix = prompt_affixes(inputs.metadata)
    contents = [inputs.model.read_bytes(), inputs.tokenizer.read_bytes(), task_metadata(start, stops, prefix, suffix)]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in zip(TASK_ENTRIES, contents):
            # The runtime maps the model in place, so its data must start on a 4-byte boundary.
            archive.fp.write(b"\0" * (-(archive.start_dir + 30 + len(name)) % 4))
            archive.start_dir = archive.fp.tell()  # zipfile writes the next header here
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            archive.writestr(info, data)
    return {"format": "task", "start_token": start, "stop_tokens": stops, "prompt_prefix": prefix, "prompt_suffix": suffix}


def read_task(path: Path) -> dict:
    """Entries (name, size, data offset) and the decoded METADATA of a `.task` bundle."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            entries = [{"name": i.filename, "size": i.file_size, "data_offset": i.header_offset + 30 + len(i.filename) + len(i.extra)} for i in infos]
            metadata = archive.read("METADATA") if "METADATA" in archive.namelist() else None
    except zipfile.BadZipFile:
        raise EdgeLLMError(f"{path}: not a zip file, so not a .task bundle") from None
    if metadata is None:
        raise EdgeLLMError(f"{path}: a zip without a METADATA entry is not a MediaPipe LLM bundle")
    return {"entries": entries, "metadata": decode_message(metadata, _LLM_PARAMETERS)}


def bundle(model: Path, fmt: str, out: Path, tokenizer: Path | None = None, chat_template: str | None = None) -> dict:
    """Write the bundle to a temporary name and rename it, so a failure leaves no half file."""
    from edgellm_cli.deploy_check import preflight

    inputs = read_inputs(model, tokenizer)
    if chat_template is not None:
        inputs = replace(inputs, metadata={**inputs.metadata, "chat_template": chat_template})
    inputs = replace(inputs, chat=preflight(inputs.metadata, inputs.tokenizer, fmt))  # raises before anything is written
    staging = out.with_name(f".{out.name}.partial")
    try:
        report = (write_litertlm if fmt == "litertlm" else write_task)(inputs, staging)
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    return {**report, "output": str(out), "size_bytes": out.stat().st_size}
