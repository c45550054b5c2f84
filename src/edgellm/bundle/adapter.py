"""Swappable adapters: a PEFT LoRA adapter as the LoRA file LiteRT-LM loads per conversation, and the
checks that it takes effect (`edgellm check BUNDLE --adapter`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgellm.bundle.check import engine_error, read_litertlm, section_tokenizer
from edgellm.bundle.preflight import Check
from edgellm.errors import EdgeLLMError
from edgellm.tflite.file import read_signatures
from edgellm.tflite.lora_file import lora_input_shapes
from edgellm.tflite.metadata import MODEL_FILE, ModelMetadata, read_metadata


class AdapterReport(BaseModel):
    path: str
    method: str
    rank: int  # the adapter's own
    model_rank: int  # the model's LoRA rank, which the file is padded to
    adapted_weights: int  # the checkpoint weight matrices the adapter changes (a projection in a layer each)
    tensors: int
    size_bytes: int


def _model_file(base: Path, scratch: Path) -> Path:
    """The `.tflite` of `base`: itself, or a `.litertlm`'s model section written to `scratch`."""
    with base.open("rb") as f:
        if f.read(8) != b"LITERTLM":
            return base
    model = read_litertlm(base).get("model")
    if model is None:
        raise EdgeLLMError(f"{base}: the bundle holds no TFLite model")
    (scratch / MODEL_FILE).write_bytes(model)
    return scratch / MODEL_FILE


def lora_layout(base: Path) -> tuple[ModelMetadata, dict[str, tuple[int, ...]]]:
    """The edgellm.json beside `base` (a model or bundle edgellm built with --lora-rank) and its LoRA inputs' shapes."""
    if not base.is_file():
        raise EdgeLLMError(f"base model {base} does not exist; pass the model.tflite or .litertlm edgellm built with --lora-rank")
    metadata = read_metadata(base)
    if metadata is None or metadata.lora is None:
        raise EdgeLLMError(f"{base} was not built for swappable adapters (no LoRA layout in the edgellm.json beside it); "
                           "rebuild it with `edgellm build ... --lora-rank 16`")
    with tempfile.TemporaryDirectory() as scratch:
        decode = read_signatures(_model_file(base, Path(scratch)))["decode"]
    return metadata, lora_input_shapes(decode)


def write_adapter(peft_dir: Path | None, base: Path, out: Path) -> AdapterReport:
    """`peft_dir` as a LoRA file for `base`, zero-padded to its rank (None: the all-zero file, the base
    model itself); nothing is written on a refusal."""
    from edgellm.checkpoint.adapter import read_peft_adapter, swappable_weights
    from edgellm.tflite.lora_file import write_lora_file, zero_weights

    metadata, shapes = lora_layout(base)
    if peft_dir is None:
        weights, method, rank, adapted = zero_weights(shapes), "zero", 0, 0  # the base model
    else:
        adapter = read_peft_adapter(peft_dir)
        weights = {name: t.numpy() for name, t in swappable_weights(adapter, metadata.lora.sources, shapes).items()}
        method, rank, adapted = adapter.method, adapter.rank, len(adapter.layers)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_lora_file(out, weights, metadata.lora.rank)
    return AdapterReport(path=str(out), method=method, rank=rank, model_rank=metadata.lora.rank, adapted_weights=adapted, tensors=len(weights),
                         size_bytes=out.stat().st_size)


# One process per engine: LiteRT-LM's native logs and crashes stay out of ours. Greedy text after the
# bundle's start token and a prompt, without a template, for no adapter ("-") and each LoRA file.
ENGINE = """
import json, sys, litert_lm as lm
lm.set_min_log_severity(lm.LogSeverity.ERROR)
engine = lm.Engine(sys.argv[1], backend=lm.Backend.CPU(), cache_dir=sys.argv[2])
texts = []
for lora in sys.argv[5:]:
    config = None if lora == "-" else lm.LoraConfig(lora_path=lora)
    session = engine.create_session(apply_prompt_template=False, sampler_config=lm.SamplerConfig(top_k=1),
                                    max_output_tokens=int(sys.argv[3]), lora_config=config)
    session.run_prefill([sys.argv[4]])
    texts.append("".join(r.texts[0] for r in session.run_decode_async()))
    session.close()
print(json.dumps(texts))
"""


def engine_texts(bundle: Path, adapters: list[Path | None], prompt: str, max_tokens: int, timeout: int = 600) -> list[str]:
    """LiteRT-LM's greedy text after the bundle's start token and `prompt`, with each adapter (None: none)."""
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run([sys.executable, "-c", ENGINE, str(bundle), cache, str(max_tokens), prompt, *(str(a or "-") for a in adapters)],
                              check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise EdgeLLMError(f"LiteRT-LM's engine failed on {bundle} with the adapter: {engine_error(done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reaching(model, weights: dict[str, np.ndarray], tokens: list[int]) -> list[str]:
    """The LoRA inputs (target and layer) whose weights do not move the logits when perturbed."""
    rng = np.random.default_rng(0)

    def logits() -> np.ndarray:
        model.reset()
        return model.prefill(tokens, 0)

    model.set_lora(weights)
    reference = logits()
    dead = []
    for a_name in [n for n in model.lora_shapes if "_a_prime_" in n]:
        b_name = a_name.replace("_a_prime_", "_b_prime_")
        nudged = {**weights, **{n: rng.standard_normal(model.lora_shapes[n]).astype(np.float32) for n in (a_name, b_name)}}
        model.set_lora(nudged)
        if np.array_equal(logits(), reference):
            dead.append(a_name.removeprefix("lora_atten_").replace("_a_prime_weight_", " layer "))
    model.set_lora(weights)
    return dead


def adapter_checks(bundle: Path, adapter: Path, prompt: str = "Once upon a time", max_tokens: int = 32) -> list[Check]:
    """That the adapter fits the bundle, reaches its output and takes effect in LiteRT-LM as in edgellm's runtime."""
    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.runtime.generate import generate
    from edgellm.runtime.sampler import Sampler
    from edgellm.tflite.lora_file import lora_rank, write_zero_lora_file

    sections = read_litertlm(bundle)
    tokenizer = section_tokenizer(sections["tokenizer"])
    start = list(sections["llm"].start_token.token_ids.ids)
    stops = [i for s in sections["llm"].stop_tokens for i in s.token_ids.ids]
    prompt_ids = start + tokenizer.encode(prompt)
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(scratch) / MODEL_FILE
        model_path.write_bytes(sections["model"])
        model = LiteRTModel(model_path)
        try:
            weights = model.load_adapter(adapter)
        except EdgeLLMError as exc:
            return [Check("adapter", False, str(exc))]
        rank = lora_rank(model.lora_shapes)
        checks = [Check("adapter", True, f"rank {rank}, {len(weights)} LoRA tensors of the model's {len(model.lora_shapes)}")]
        dead = _reaching(model, weights, prompt_ids)
        checks.append(Check("lora inputs", not dead, f"all {len(model.lora_shapes) // 2} (target, layer) pairs move the logits" if not dead
                            else f"{len(dead)} do not reach the output, first {dead[0]}; rebuild the model"))

        def ours(lora: dict) -> list[int]:
            model.set_lora(lora)
            return list(generate(model, prompt_ids, max_tokens, Sampler(), stops))

        zero = Path(scratch) / "zero.tflite"
        write_zero_lora_file(zero, model.lora_shapes)
        base_ids, adapted_ids = ours({}), ours(weights)
        # Zero first: LiteRT-LM 0.18 binds nothing to LoRA inputs in a conversation that loads no LoRA file.
        texts = engine_texts(bundle, [zero, adapter, zero], prompt, max_tokens)
    base, adapted = (_text(tokenizer, ids, prompt_ids) for ids in (base_ids, adapted_ids))
    zero_ok = texts[0] == texts[2] == base
    checks.append(Check("zero adapter", zero_ok, "LiteRT-LM with the all-zero LoRA file gives the base model's text, before and after the adapter"
                        if zero_ok else f"LiteRT-LM: {texts[0][:60]!r} before the adapter, {texts[2][:60]!r} after, edgellm {base[:60]!r}"))
    same = texts[1] == adapted
    effect = "changes the text" if adapted != base else "leaves this greedy text as the base's"
    checks.append(Check("in LiteRT-LM", same, f"same {max_tokens}-token greedy text as edgellm's runtime with the adapter ({effect})" if same
                        else f"LiteRT-LM {texts[1][:60]!r} but edgellm {adapted[:60]!r}: the engine does not apply the adapter as built"))
    return checks


def _text(tokenizer, ids: list[int], context: list[int]) -> str:
    """Generated ids as text, as `edgellm run` streams it after `context`."""
    from edgellm.text.tokenizer import stream_text

    return "".join(stream_text(tokenizer, iter(ids), [], list(context), None))
