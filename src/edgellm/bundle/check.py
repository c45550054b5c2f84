"""`edgellm check`: any tool's `.litertlm` or `.task` checked the way its runtime will use it (a deploy gate):
signatures, KV length, start/stop tokens, the chat template as LiteRT-LM renders it, the tokenizer,
and a short greedy reply through LiteRT-LM's engine."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from edgellm.bundle.preflight import Check, token_check, turn_problems
from edgellm.errors import EdgeLLMError
from edgellm.text.litert_template import PROBE_CONVERSATIONS, as_parts, render_litert_lm
from edgellm.text.tokenizer import load_tokenizer


def read_litertlm(path: Path) -> dict:
    """Sections of a `.litertlm`: LlmMetadata (parsed), the tokenizer (bytes, kind) and the model (bytes)."""
    from litert_lm_builder import litertlm_peek
    from litert_lm_builder.litertlm_header_schema_py_generated import AnySectionDataType as Kind
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    try:
        header = litertlm_peek.read_litertlm_header(str(path), io.StringIO())
    except Exception as exc:  # noqa: BLE001 - the reader raises whatever its flatbuffer parser hits
        raise EdgeLLMError(f"{path}: unreadable .litertlm ({type(exc).__name__}: {exc})") from None
    found: dict = {}
    sections = header.SectionMetadata()
    with path.open("rb") as f:
        for i in range(sections.ObjectsLength() if sections else 0):
            section = sections.Objects(i)
            f.seek(section.BeginOffset())
            data = f.read(section.EndOffset() - section.BeginOffset())
            data_type = section.DataType()
            if data_type == Kind.LlmMetadataProto:
                found["llm"] = llm_metadata_pb2.LlmMetadata.FromString(data)
            elif data_type == Kind.SP_Tokenizer:
                found["tokenizer"] = ("sentencepiece", data)
            elif data_type == Kind.HF_Tokenizer_Zlib:
                size = struct.unpack("<Q", data[:8])[0]
                found["tokenizer"] = ("hf-tokenizer-json", zlib.decompress(data[8:])[:size])
            elif data_type == Kind.TFLiteModel and "model" not in found:
                found["model"] = data
    return found


def section_tokenizer(section: tuple[str, bytes]):
    """The tokenizer a bundle's tokenizer section holds (read_litertlm's (type, bytes))."""
    tokenizer_type, data = section
    with tempfile.NamedTemporaryFile(suffix=".model" if tokenizer_type == "sentencepiece" else ".json") as f:
        f.write(data)
        f.flush()
        return load_tokenizer(Path(f.name))


def _token_ids(union) -> list[int]:
    return list(union.token_ids.ids)


def _signature_check(model: bytes) -> tuple[list[Check], dict[str, tuple[int, ...]]]:
    """Signatures and KV cache as LiteRT-LM needs them, read from the flatbuffer (no runtime started),
    and the shapes of the model's LoRA inputs (empty without)."""
    from edgellm.runtime.decoder import cache_length, recurrent_states
    from edgellm.tflite.file import check_generative
    from edgellm.tflite.lora_file import lora_input_shapes, lora_rank

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.tflite").write_bytes(model)
        try:
            signatures = check_generative(Path(tmp) / "model.tflite")
        except EdgeLLMError as exc:
            detail = str(exc).replace(f"{tmp}/", "")
            return [Check("signatures", False, detail), Check("kv cache", False, "no decode signature to read it from")], {}
    decode = signatures["decode"]
    caches = [name for name in decode.inputs if name.startswith("kv_cache_")]
    prefill = sorted((name for name in signatures if name.startswith("prefill_")), key=lambda n: int(n.removeprefix("prefill_")))
    length = cache_length({name: decode.shapes[name] for name in caches})
    layers = sum(name.startswith("kv_cache_k_") for name in caches)
    others = len(recurrent_states(caches))
    layers_text = f"{layers} attention layer{'s' * (layers != 1)}" + (f", {others} recurrent state{'s' * (others != 1)}" if others else "")
    lora = lora_input_shapes(decode)
    inputs = f"; rank-{lora_rank(lora)} LoRA inputs (load an adapter, or the zero one, per conversation)" if lora else ""
    return [Check("signatures", True, ", ".join([*prefill, "decode"]) + inputs), Check("kv cache", True, f"{length} positions, {layers_text}")], lora


ENGINE = """
import json, sys, litert_lm as lm
lm.set_min_log_severity(lm.LogSeverity.ERROR)
engine = lm.Engine(sys.argv[1], backend=lm.Backend.CPU(), cache_dir=sys.argv[2])
lora = lm.LoraConfig(lora_path=sys.argv[5]) if len(sys.argv) > 5 else None
conversation = engine.create_conversation(sampler_config=lm.SamplerConfig(top_k=1), max_output_tokens=int(sys.argv[3]), lora_config=lora)
reply = conversation.send_message(sys.argv[4]).to_json()
content = reply.get("content", "")
print(json.dumps(content if isinstance(content, str) else "".join(p.get("text", "") for p in content)))
"""


def engine_error(stderr: str) -> str:
    """Why a LiteRT-LM engine process failed: the last line of its stderr that says so."""
    errors = [line for line in stderr.splitlines() if "Failed" in line or "Error" in line] or stderr.strip().splitlines()
    return (errors or ["no output"])[-1][:300]


def engine_generation(path: Path, lora_shapes: dict[str, tuple[int, ...]], prompt: str = "Hello!", max_tokens: int = 8, timeout: int = 300) -> Check:
    """A short greedy reply through LiteRT-LM's Conversation API (its own process: native logs, crashes).
    A model with LoRA inputs (`lora_shapes`) runs with the all-zero LoRA file: LiteRT-LM 0.18 binds nothing to them otherwise."""
    from edgellm.tflite.lora_file import write_zero_lora_file

    try:
        import litert_lm  # noqa: F401
    except ImportError:
        return Check("generation", True, "skipped: install litert-lm-api to run LiteRT-LM's engine")
    with tempfile.TemporaryDirectory() as cache:
        lora = []
        if lora_shapes:
            lora = [str(Path(cache) / "zero-lora.tflite")]
            write_zero_lora_file(Path(lora[0]), lora_shapes)
        done = subprocess.run([sys.executable, "-c", ENGINE, str(path), cache, str(max_tokens), prompt, *lora],
                              check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return Check("generation", False, engine_error(done.stderr))
    text = json.loads(done.stdout.strip().splitlines()[-1])
    return Check("generation", bool(text.strip()), f"{max_tokens} greedy tokens: {text!r}" if text.strip() else "empty reply")


def check_litertlm(path: Path, generate: bool = True) -> dict:
    sections = read_litertlm(path)
    checks: list[Check] = []
    llm = sections.get("llm")
    lora_shapes = {}
    if "model" in sections:
        found, lora_shapes = _signature_check(sections["model"])
        checks.extend(found)
    else:
        checks.append(Check("signatures", False, "no TFLite model section"))
    tokenizer_type = sections.get("tokenizer", (None, None))[0]
    tokenizer = None
    if tokenizer_type:
        tokenizer = section_tokenizer(sections["tokenizer"])
        checks.append(Check("tokenizer", True, f"{tokenizer_type}, {tokenizer.vocab_size} tokens"))
    else:
        checks.append(Check("tokenizer", False, "no tokenizer section"))
    if llm is None:
        checks.append(Check("metadata", False, "no LlmMetadata section; LiteRT-LM cannot start a conversation"))
    else:
        start = _token_ids(llm.start_token) or [None]
        stops = [i for s in llm.stop_tokens for i in _token_ids(s)]
        if tokenizer:
            checks.append(token_check(tokenizer, start[0], stops))
        checks.append(Check("model type", True, llm.llm_model_type.WhichOneof("model_type") or "unset (generic)"))
        checks.append(_template_check(llm.jinja_prompt_template))
    if generate and all(c.ok for c in checks):
        checks.append(engine_generation(path, lora_shapes))
    return {"format": "litertlm", "path": str(path), "checks": [c.as_json() for c in checks], "ok": all(c.ok for c in checks)}


def _template_check(template: str) -> Check:
    if not template:
        return Check("template", True, "none: LiteRT-LM builds one from the prompt prefix/suffix")
    problems = []
    for name, conversation in PROBE_CONVERSATIONS.items():
        try:
            render_litert_lm(template, as_parts(conversation))
        except EdgeLLMError as exc:
            problems.append(f"{name}: {str(exc).partition(' (')[2].rpartition(');')[0] or exc}")
            break
    problems = problems or turn_problems(template)
    if problems:
        return Check("template", False, f"{problems[0]}; bundle the model again with `edgellm bundle MODEL.tflite --format litertlm` "
                                        "(--tokenizer, --stop-id and --chat-template FILE for another tool's model)")
    return Check("template", True, f"renders {len(PROBE_CONVERSATIONS)} conversations with list-of-parts content, turn by turn")


def check_task(path: Path) -> dict:
    from edgellm.bundle.task import read_task

    found = read_task(path)
    checks: list[Check] = []
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        model = archive.read("TF_LITE_PREFILL_DECODE") if "TF_LITE_PREFILL_DECODE" in names else None
        spm = archive.read("TOKENIZER_MODEL") if "TOKENIZER_MODEL" in names else None
    checks.extend(_signature_check(model)[0] if model else [Check("signatures", False, "no TF_LITE_PREFILL_DECODE entry")])
    if spm is None:
        checks.append(Check("tokenizer", False, "no TOKENIZER_MODEL entry"))
    else:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_proto=spm)
        checks.append(Check("tokenizer", True, f"sentencepiece, {sp.get_piece_size()} tokens"))
        meta = found["metadata"]
        stops = meta.get("stop_tokens", [])
        unknown = [s for s in [meta.get("start_token"), *stops] if s and sp.piece_to_id(s) == sp.unk_id() and s != sp.id_to_piece(sp.unk_id())]
        ok = bool(stops) and not unknown
        checks.append(Check("tokens", ok, f"start {meta.get('start_token')!r}, stop {stops}" if ok else
                            f"stop tokens {stops}, unknown to the tokenizer: {unknown}; rebuild with `edgellm bundle --format task`"))
        template = meta.get("prompt_template", {})
        checks.append(Check("template", True, f"prefix {template.get('prompt_prefix', '')!r}, suffix {template.get('prompt_suffix', '')!r}"))
    return {"format": "task", "path": str(path), "checks": [c.as_json() for c in checks], "ok": all(c.ok for c in checks)}


def check_bundle(path: Path, generate: bool = True) -> dict:
    if not path.is_file():
        raise EdgeLLMError(f"{path} does not exist; pass a .litertlm or .task file")
    with path.open("rb") as f:
        head = f.read(8)
    if head == b"LITERTLM":
        return check_litertlm(path, generate)
    import zipfile

    if zipfile.is_zipfile(path):
        return check_task(path)
    raise EdgeLLMError(f"{path}: not a .litertlm or .task bundle (header {head!r}); check takes what `edgellm bundle` writes")
