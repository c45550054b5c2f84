"""Will a bundle work in its runtime? The pre-flight `bundle` runs before writing, and `edgellm check`.

The checks follow what LiteRT-LM 0.18 does with a `.litertlm` (see litert_template.py): it renders
the carried template with minijinja on list-of-parts content, with `bos_token` and `eos_token`
empty, adds the start token itself, prefills each turn as the difference of two renderings, and
stops at the metadata's stop tokens.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from edgellm_cli.chat_template import encode_with_specials, render_chat
from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.litert_template import PROBE_CONVERSATIONS, adapt_for_litert_lm, as_parts, render_litert_lm, turn_tail
from edgellm_cli.metadata import PromptSettings
from edgellm_cli.tokenizer import Tokenizer, load_tokenizer

# LiteRT-LM LlmModelType (llm_model_type.proto) by checkpoint family. Qwen 2.5 and Qwen 3 have their
# own data processors (tool-call syntax in replies); other families run as generic models, whose
# processor only turns the rendered prompt into text input. Gemma 3's processor is left out until
# a test runs it.
MODEL_TYPES = {"qwen2": "qwen2p5", "qwen3": "qwen3"}


def model_type(name: str | None) -> str:
    """The LlmModelType field for a build, from the spec's name."""
    name = (name or "").lower().replace(".", "").replace("-", "")
    return next((kind for family, kind in MODEL_TYPES.items() if name.startswith(family)), "generic_model")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _piece(tokenizer: Tokenizer, token_id: int) -> str | None:
    return tokenizer.piece(token_id) if 0 <= token_id < tokenizer.vocab_size else None


def token_check(tokenizer: Tokenizer, start_id: int | None, stop_ids: list[int]) -> Check:
    """The start and stop tokens are ids the tokenizer has, and there is a stop token."""
    missing = [i for i in ([start_id] if start_id is not None else []) + list(stop_ids) if _piece(tokenizer, i) is None]
    if missing:
        return Check("tokens", False, f"token ids {missing} are not in the tokenizer ({tokenizer.vocab_size} tokens); "
                                      "fix tokenizer.bos_id / stop_ids in the spec")
    if not stop_ids:
        return Check("tokens", False, "no stop token: generation would run to the token limit; set tokenizer.stop_ids in the spec")
    start = f"start {start_id} {_piece(tokenizer, start_id)!r}" if start_id is not None else "no start token"
    return Check("tokens", True, f"{start}; stop " + ", ".join(f"{i} {_piece(tokenizer, i)!r}" for i in stop_ids))


@dataclass
class ChatPlan:
    """What a `.litertlm` carries for chat: the adapted template and the start token LiteRT-LM adds."""

    template: str
    start_id: int | None
    problems: list[str] = field(default_factory=list)


def plan_chat(metadata: PromptSettings, tokenizer: Tokenizer) -> ChatPlan:
    """Adapt the chat template for LiteRT-LM and check that every probe conversation, as LiteRT-LM
    sends it, becomes the token ids `edgellm chat` feeds for it (whole and turn by turn)."""
    template, strings, specials = metadata.chat_template, metadata.template_strings, metadata.specials
    stop_texts = [p for i in metadata.stop_ids if (p := _piece(tokenizer, i))]
    try:
        adapted = adapt_for_litert_lm(template, turn_tail(template, stop_texts))
    except EdgeLLMError:
        adapted = adapt_for_litert_lm(template)
    # `edgellm chat` gets BOS from the template's bos_token text; LiteRT-LM renders that empty and
    # adds the start token instead, so the bundle has one exactly when the chat prompt starts with it.
    probe = PROBE_CONVERSATIONS["one user message"]
    bos = metadata.bos_id
    try:
        ours = encode_with_specials(tokenizer, render_chat(template, probe, strings), specials)
        theirs = tokenizer.encode(render_litert_lm(adapted, as_parts(probe)))
        start = bos if bos is not None and ours[:1] == [bos] and theirs[:1] != [bos] else None
    except EdgeLLMError:
        start = None  # the loop below reports it
    plan = ChatPlan(adapted, start)
    for name, conversation in PROBE_CONVERSATIONS.items():
        try:
            ours = encode_with_specials(tokenizer, render_chat(template, conversation, strings), specials)
            theirs = ([start] if start is not None else []) + tokenizer.encode(render_litert_lm(adapted, as_parts(conversation)))
        except EdgeLLMError as exc:
            plan.problems.append(f"{name}: {exc}")
            break
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            plan.problems.append(f"{name}: LiteRT-LM's prompt differs from edgellm chat's at token {at} "
                                 f"({tokenizer.decode(theirs[at:at + 6])!r} instead of {tokenizer.decode(ours[at:at + 6])!r})")
    plan.problems.extend(turn_problems(adapted))
    return plan


def turn_problems(template: str) -> list[str]:
    """LiteRT-LM prefills a turn as new rendering minus the previous one, which must be its prefix."""
    conversation = as_parts(PROBE_CONVERSATIONS["several turns"])
    problems = []
    for k, message in enumerate(conversation):
        if k == 0 or message["role"] != "user":
            continue
        try:
            old = render_litert_lm(template, conversation[:k], add_generation_prompt=False)
            new = render_litert_lm(template, conversation[: k + 1])
        except EdgeLLMError as exc:
            return [str(exc)]
        if not new.startswith(old):
            problems.append(f"turn {k // 2 + 1}: the rendering of the history is not a prefix of the next turn's, "
                            "so LiteRT-LM refuses the turn")
            break
    return problems


def preflight(metadata: PromptSettings, tokenizer: Tokenizer, fmt: str) -> ChatPlan | None:
    """Raise a one-line EdgeLLMError naming what would break in the runtime; the chat plan for a `.litertlm`."""
    plan = plan_chat(metadata, tokenizer) if metadata.chat_template and fmt == "litertlm" else None
    start = plan.start_id if plan else metadata.start_id
    tokens = token_check(tokenizer, start, metadata.stop_ids)
    if not tokens.ok:
        raise EdgeLLMError(f"bundle pre-flight: {tokens.detail}")
    if plan and plan.problems:
        raise EdgeLLMError(f"bundle pre-flight: the chat template would break in LiteRT-LM ({plan.problems[0]}); "
                           "pass a template that renders there with --chat-template FILE")
    return plan


# -- edgellm check ----------------------------------------------------------------------------


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
            kind = section.DataType()
            if kind == Kind.LlmMetadataProto:
                found["llm"] = llm_metadata_pb2.LlmMetadata.FromString(data)
            elif kind == Kind.SP_Tokenizer:
                found["tokenizer"] = ("sentencepiece", data)
            elif kind == Kind.HF_Tokenizer_Zlib:
                size = struct.unpack("<Q", data[:8])[0]
                found["tokenizer"] = ("hf-tokenizer-json", zlib.decompress(data[8:])[:size])
            elif kind == Kind.TFLiteModel and "model" not in found:
                found["model"] = data
    return found


def _token_ids(union) -> list[int]:
    return list(union.token_ids.ids)


def _signature_check(model: bytes) -> tuple[Check, Check]:
    """Signatures and KV cache as LiteRT-LM needs them, read from the flatbuffer (no runtime started)."""
    from edgellm_cli.runtime import cache_length
    from edgellm_cli.tflite_file import check_generative

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.tflite").write_bytes(model)
        try:
            signatures = check_generative(Path(tmp) / "model.tflite")
        except EdgeLLMError as exc:
            detail = str(exc).replace(f"{tmp}/", "")
            return Check("signatures", False, detail), Check("kv cache", False, "no decode signature to read it from")
    decode = signatures["decode"]
    caches = [name for name in decode.inputs if name.startswith("kv_cache_")]
    prefill = sorted((name for name in signatures if name.startswith("prefill_")), key=lambda n: int(n.removeprefix("prefill_")))
    length = cache_length(decode.shapes[caches[0]])
    return (Check("signatures", True, ", ".join([*prefill, "decode"])), Check("kv cache", True, f"{length} positions, {len(caches) // 2} layers"))


ENGINE = """
import json, sys, litert_lm as lm
lm.set_min_log_severity(lm.LogSeverity.ERROR)
engine = lm.Engine(sys.argv[1], backend=lm.Backend.CPU(), cache_dir=sys.argv[2])
conversation = engine.create_conversation(sampler_config=lm.SamplerConfig(top_k=1), max_output_tokens=int(sys.argv[3]))
reply = conversation.send_message(sys.argv[4]).to_json()
content = reply.get("content", "")
print(json.dumps(content if isinstance(content, str) else "".join(p.get("text", "") for p in content)))
"""


def engine_generation(path: Path, prompt: str = "Hello!", max_tokens: int = 8, timeout: int = 300) -> Check:
    """A short greedy reply through LiteRT-LM's Conversation API (its own process: native logs, crashes)."""
    try:
        import litert_lm  # noqa: F401
    except ImportError:
        return Check("generation", True, "skipped: install litert-lm-api to run LiteRT-LM's engine")
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run([sys.executable, "-c", ENGINE, str(path), cache, str(max_tokens), prompt],
                              check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "Failed" in line or "Error" in line]
        return Check("generation", False, (errors or done.stderr.strip().splitlines() or ["no output"])[-1][:300])
    text = json.loads(done.stdout.strip().splitlines()[-1])
    return Check("generation", bool(text.strip()), f"{max_tokens} greedy tokens: {text!r}" if text.strip() else "empty reply")


def check_litertlm(path: Path, generate: bool = True) -> dict:
    sections = read_litertlm(path)
    checks: list[Check] = []
    llm = sections.get("llm")
    if "model" in sections:
        checks.extend(_signature_check(sections["model"]))
    else:
        checks.append(Check("signatures", False, "no TFLite model section"))
    kind, data = sections.get("tokenizer", (None, None))
    tokenizer = None
    if kind:
        suffix = ".model" if kind == "sentencepiece" else ".json"
        with tempfile.NamedTemporaryFile(suffix=suffix) as f:
            f.write(data)
            f.flush()
            tokenizer = load_tokenizer(Path(f.name))
        checks.append(Check("tokenizer", True, f"{kind}, {tokenizer.vocab_size} tokens"))
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
        checks.append(engine_generation(path))
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
    from edgellm_cli.bundle import read_task

    found = read_task(path)
    checks: list[Check] = []
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        model = archive.read("TF_LITE_PREFILL_DECODE") if "TF_LITE_PREFILL_DECODE" in names else None
        spm = archive.read("TOKENIZER_MODEL") if "TOKENIZER_MODEL" in names else None
    checks.extend(_signature_check(model) if model else [Check("signatures", False, "no TF_LITE_PREFILL_DECODE entry")])
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
