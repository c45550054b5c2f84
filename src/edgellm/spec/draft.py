"""`edgellm spec init`: draft a spec for a checkpoint from its config.json `architectures`.

This table is the one place that names model families: each Hugging Face architecture class
maps to the family spec file that knows its tensor names and the knobs config.json leaves out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import read_json, write_bytes_atomically
from edgellm.spec.hf_config import architecture_from_hf_config, read_hf_config
from edgellm.spec.load import load_spec

FAMILY_SPECS = {
    "LlamaForCausalLM": "_hf-llama.yaml",
    "MistralForCausalLM": "_hf-llama.yaml",
    "Qwen2ForCausalLM": "_hf-qwen2.yaml",
    "Qwen3ForCausalLM": "_hf-qwen3.yaml",
    "GemmaForCausalLM": "_hf-gemma.yaml",
    "Gemma2ForCausalLM": "_hf-gemma2.yaml",
    "Gemma3ForCausalLM": "_hf-gemma3.yaml",
    "PhiForCausalLM": "_hf-phi.yaml",
    "Phi3ForCausalLM": "_hf-phi3.yaml",
    "SmolLM3ForCausalLM": "_hf-smollm3.yaml",
    "Olmo2ForCausalLM": "_hf-olmo2.yaml",
    "Olmo3ForCausalLM": "_hf-olmo2.yaml",  # OLMo 2's blocks; its sliding-window layers come from config.json
    "GraniteForCausalLM": "_hf-granite.yaml",
    "Lfm2ForCausalLM": "_hf-lfm2.yaml",
    "Qwen3_5ForCausalLM": "_hf-qwen3_5.yaml",
    "Qwen3_5ForConditionalGeneration": "_hf-qwen3_5-vl.yaml",  # its text model; the vision tower is not read
    "BertModel": "_hf-bert.yaml",
    "T5ForConditionalGeneration": "_hf-t5.yaml",
}
# Classes that are not decoder-only LMs export other signatures (embed_N; encode_N and decode).
KINDS = {"BertModel": "encoder", "T5ForConditionalGeneration": "encoder-decoder"}


def _tokenizer_file(folder: Path) -> str:
    for name in ("tokenizer.model", "tokenizer.json", "spiece.model"):
        if (folder / name).is_file():
            return name
    return "tokenizer.json"


def _adds_bos(folder: Path, tokenizer_file: str) -> bool:
    """tokenizer_config.json's add_bos_token when it says; else SentencePiece models add BOS, BPE ones do not."""
    config = folder / "tokenizer_config.json"
    if config.is_file():
        value = read_json(config, "tokenizer_config.json").get("add_bos_token")
        if isinstance(value, bool):
            return value
    return tokenizer_file == "tokenizer.model"


def _export_section(cls: str, arch: dict, folder: Path) -> str:
    """The export settings a draft starts from: prefill/KV lengths, or an encoder's sequence lengths."""
    if KINDS.get(cls) == "encoder":
        from edgellm.spec.sentence_config import max_seq_length

        longest = min(max_seq_length(folder) or 512, arch.get("max_position_embeddings", 512))
        return f"export:\n  sequence_lengths: {sorted({min(n, longest) for n in (16, 64, longest)})}\n"
    if KINDS.get(cls) == "encoder-decoder":
        return "export:\n  sequence_lengths: [32, 128]\n  kv_cache_length: 128\n"
    kv = min(1024, arch.get("max_position_embeddings", 1024))
    return f"export:\n  prefill_lengths: {sorted({min(32, kv), min(128, kv)})}\n  kv_cache_length: {kv}\n"


def draft_specs(source: Path, output: Path) -> list[Path]:
    """Write one spec per supported class in the checkpoint's `architectures`; returns the files written."""
    source = source.resolve()
    folder = source if source.is_dir() else source.parent
    config = read_hf_config(source)
    classes = config.get("architectures") or []
    supported = [c for c in classes if c in FAMILY_SPECS]
    if not supported:
        raise EdgeLLMError(
            f"{source}: architectures {classes or '(none listed)'} are not supported; "
            f"supported: {', '.join(sorted(FAMILY_SPECS))}"
        )
    arch = architecture_from_hf_config(config)
    tokenizer = _tokenizer_file(folder)
    name = re.sub(r"[^a-z0-9.]+", "-", folder.name.lower()).strip("-") or "model"
    written = []
    for cls in supported:
        path = output if len(supported) == 1 else output.with_name(f"{output.stem}-{cls.lower()}{output.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (
            f"# Drafted by `edgellm spec init` from {source} ({cls}). Review, then build it.\n"
            f"extends: {FAMILY_SPECS[cls]}\n"
            f"name: {name}\n"
            f"source:\n  path: {os.path.relpath(folder, path.parent.resolve())}\n"
            f"tokenizer:\n  file: {tokenizer}\n  add_bos: {str(cls not in KINDS and _adds_bos(folder, tokenizer)).lower()}\n"
            f"{_export_section(cls, arch, folder)}"
        )
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text(text)
        try:
            load_spec(staging)  # a draft that would not load is a bug: never leave one behind
        finally:
            staging.unlink()
        write_bytes_atomically(path, text.encode())
        written.append(path)
    return written
