"""A checkpoint's prompt settings: the spec's where given, else what its config files and tokenizer say."""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import inside, read_json
from edgellm.spec.schema import ModelSpec
from edgellm.text.prompt import PromptSettings


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def resolve_prompt_settings(spec: ModelSpec, checkpoint_dir: Path) -> PromptSettings:
    """The spec's settings where given, else the checkpoint's generation_config.json, config.json,
    tokenizer_config.json and, for BOS, the tokenizer itself."""
    from edgellm.text.chat_template import checkpoint_template
    from edgellm.text.tokenizer import load_tokenizer, token_text, tokenizer_config

    found: dict = {}
    for name in ("config.json", "generation_config.json"):  # later files win
        if (checkpoint_dir / name).is_file():
            found.update({k: v for k, v in read_json(checkpoint_dir / name, name).items() if v is not None})
    config = tokenizer_config(checkpoint_dir)
    section = spec.tokenizer
    bos = section.bos_id if section.bos_id is not None else found.get("bos_token_id")
    if bos is None and section.add_bos:
        bos = load_tokenizer(inside(checkpoint_dir, section.file, "tokenizer.file")).bos_id  # a config without bos_token_id: the tokenizer knows it
    eos = section.eos_ids if section.eos_ids is not None else _ids(found.get("eos_token_id"))
    if section.add_bos and bos is None:
        raise EdgeLLMError(f"spec {spec.name}: tokenizer.add_bos is set but no BOS id is known; set tokenizer.bos_id")
    return PromptSettings(
        bos_id=bos,
        add_bos=section.add_bos,
        stop_ids=list(dict.fromkeys([*eos, *section.stop_ids])),
        stop_strings=section.stop_strings,
        bos_token=token_text(config.get("bos_token")),
        eos_token=token_text(config.get("eos_token")),
        chat_template=section.chat_template or checkpoint_template(checkpoint_dir, config),
        prompt_prefix=section.prompt_prefix,
        prompt_suffix=section.prompt_suffix,
        decoder_start_id=found.get("decoder_start_token_id"),
    )
