"""`edgellm.json`, written beside every model edgellm outputs: what `run`, `chat`, `eval` and the
bundlers need to prompt the model (tokenizer, start and stop tokens, chat template, lengths).

One typed model, read and written here only. Models from other tools have no such file; their
metadata is derived from the tokenizer the user names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import inside, read_json, write_json
from edgellm.spec.schema import LoraSource
from edgellm.text.prompt import PromptSettings

METADATA_FILE = "edgellm.json"
MODEL_FILE = "model.tflite"  # the name edgellm gives the models it writes (in the cache and in -o folders)


class LoraLayout(BaseModel):
    """A model built with LoRA inputs (export.lora_rank): their rank, and the checkpoint tensor each
    target adapts, which `edgellm adapter` matches a PEFT adapter's layers against."""

    rank: int
    sources: dict[str, LoraSource]


class ModelMetadata(PromptSettings):
    name: str | None = None
    edgellm_version: str | None = None
    tokenizer: str  # file name beside the model (an absolute path for other tools' models)
    prefill_lengths: list[int] = Field(default_factory=list)
    kv_cache_length: int | None = None
    recipe: str | None = None  # the quantization recipe, if any
    lora: LoraLayout | None = None  # swappable LoRA inputs, if built with them

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
        from edgellm.text.tokenizer import load_tokenizer

        loaded = load_tokenizer(tokenizer)
        metadata = ModelMetadata(
            tokenizer=str(tokenizer.resolve()),
            bos_id=loaded.bos_id,
            add_bos=loaded.bos_id is not None,
            stop_ids=[loaded.eos_id] if loaded.eos_id is not None else [],
        )
    return metadata, tokenizer
