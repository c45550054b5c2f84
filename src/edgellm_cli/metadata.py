"""`edgellm.json`, written beside every model edgellm outputs: what `run`, `chat`, `eval` and the
bundlers need to prompt the model (tokenizer, start and stop tokens, chat template, lengths).

One typed model, read and written here only. Models from other tools have no such file; their
metadata is derived from the tokenizer the user names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.files import inside, read_json, write_json
from edgellm_cli.spec import ModelSpec

METADATA_FILE = "edgellm.json"


class PromptSettings(BaseModel):
    """How prompts are made for a model: special tokens, stop conditions and the chat template."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    bos_id: int | None = None
    add_bos: bool = True
    stop_ids: list[int] = []
    stop_strings: list[str] = []
    bos_token: str | None = None  # the special tokens as text, for chat templates
    eos_token: str | None = None
    chat_template: str | None = None
    prompt_prefix: str | None = None  # bundle overrides; None derives them from the chat template
    prompt_suffix: str | None = None
    decoder_start_id: int | None = None  # encoder-decoders: the decoder's first token (config's decoder_start_token_id)

    @property
    def start_id(self) -> int | None:
        """The token a prompt starts with: BOS, unless the model's input does not start with it."""
        return self.bos_id if self.add_bos else None

    @property
    def template_strings(self) -> dict[str, str]:
        """The special tokens as text, the variables chat templates expect."""
        return {"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""}

    @property
    def specials(self) -> dict[str, int]:
        """Special-token text a rendered template may contain, with its id (SentencePiece never maps it from text)."""
        return {self.bos_token: self.bos_id} if self.bos_token and self.bos_id is not None else {}


class ModelMetadata(PromptSettings):
    name: str | None = None
    edgellm_version: str | None = None
    tokenizer: str  # file name beside the model (an absolute path for other tools' models)
    prefill_lengths: list[int] = []
    kv_cache_length: int | None = None
    recipe: str | None = None  # the quantization recipe, if any

    def write(self, folder: Path) -> Path:
        path = folder / METADATA_FILE
        write_json(path, self.model_dump(mode="json"))
        return path


def read_metadata(model: Path) -> ModelMetadata | None:
    """The `edgellm.json` beside `model`, or None for other tools' models."""
    path = model.parent / METADATA_FILE
    if not path.is_file():
        return None
    try:
        return ModelMetadata.model_validate(read_json(path, METADATA_FILE))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise EdgeLLMError(f"{path}: field {field}: {error['msg']}; re-run edgellm build or delete the file") from None


def model_metadata(model: Path, tokenizer: Path | None = None) -> tuple[ModelMetadata, Path]:
    """What it takes to prompt `model`, and its tokenizer file: `tokenizer` if given, else the one
    `edgellm.json` names. A model without `edgellm.json` (another tool's) needs `tokenizer`; its
    BOS and EOS then come from the tokenizer."""
    metadata = read_metadata(model)
    if tokenizer is None:
        if metadata is None:
            raise EdgeLLMError(f"no {METADATA_FILE} beside {model} names its tokenizer; pass --tokenizer")
        tokenizer = inside(model.parent, metadata.tokenizer, f"{METADATA_FILE}: tokenizer")
    if not tokenizer.is_file():
        raise EdgeLLMError(f"tokenizer {tokenizer} does not exist; pass --tokenizer with a tokenizer.model or tokenizer.json")
    if metadata is None:
        from edgellm_cli.tokenizer import load_tokenizer

        loaded = load_tokenizer(tokenizer)
        metadata = ModelMetadata(
            tokenizer=str(tokenizer.resolve()),
            bos_id=loaded.bos_id,
            add_bos=loaded.bos_id is not None,
            stop_ids=[loaded.eos_id] if loaded.eos_id is not None else [],
        )
    return metadata, tokenizer


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def resolve_prompt_settings(spec: ModelSpec, checkpoint_dir: Path) -> PromptSettings:
    """The spec's settings where given, else the checkpoint's generation_config.json, config.json,
    tokenizer_config.json and, for BOS, the tokenizer itself."""
    from edgellm_cli.chat_template import checkpoint_template
    from edgellm_cli.tokenizer import load_tokenizer, token_text, tokenizer_config

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
