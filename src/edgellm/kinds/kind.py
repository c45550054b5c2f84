"""What every model kind supplies: the hooks the pipeline's stages and the model-file commands call."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from edgellm.errors import EdgeLLMError
from edgellm.spec.schema import Architecture, ExportSection, ModelSpec
from edgellm.text.prompt import PromptSettings
from edgellm.verify.report import VerifyReport

if TYPE_CHECKING:
    from torch import nn

    from edgellm.runtime.sampler import Sampler

Signature = tuple[str, "nn.Module", dict]  # name, module, sample inputs: one signature to lower


class TextGenerator(Protocol):
    """What `edgellm run` drives: a prompt in, text out as it streams."""

    def prompt_ids(self, prompt: str) -> list[int]: ...

    def load_adapter(self, adapter: Path) -> None: ...

    def complete(self, prompt_ids: list[int], max_tokens: int, tokens: list[int]) -> Iterator[str]: ...


class ModelKind:
    """One kind of model. Subclasses set the class attributes and fill in the hooks; a hook a kind
    has no use for keeps its default. Heavy libraries are imported inside the hooks."""

    name: ClassVar[str]  # Architecture.kind's value
    marker: ClassVar[re.Pattern]  # a signature name that only this kind's `.tflite` has
    commands: ClassVar[tuple[str, ...]]  # the model-file commands that take it, the one to suggest first
    takes_lora: ClassVar[bool] = False  # merged adapters (build --adapter) and LoRA inputs (export.lora_rank)

    # -- building and checking, from a spec (the pipeline's stages) ------------------------------
    def build(self, arch: Architecture) -> nn.Module:
        """Our model for `arch`, every parameter made, none filled (the loader fills them)."""
        raise NotImplementedError

    def check_export(self, spec: ModelSpec, arch: Architecture) -> None:
        """fetch: refuse export settings the architecture cannot take (one line, naming the fix)."""

    def verify_key(self, spec: ModelSpec) -> dict:
        """What else verification depends on, beyond the model and the verify section."""
        return {}

    def verify(self, spec: ModelSpec, arch: Architecture, prompt: PromptSettings, checkpoint_dir: Path, model, out: Path,
               adapters: list[Path]) -> VerifyReport:
        """Our model against transformers' on fixed inputs (with peft merging `adapters`, for a kind that takes them);
        the references are saved in `out` for verify_tflite."""
        raise NotImplementedError

    def signatures(self, model, export: ExportSection) -> list[Signature]:
        """The signatures convert lowers into one `.tflite`."""
        raise NotImplementedError

    def prefill_lengths(self, export: ExportSection) -> list[int]:
        """The prefill lengths edgellm.json records (generative decoders only)."""
        return []

    def verify_tflite(self, spec: ModelSpec, verified: VerifyReport, references: Path, model_file: Path) -> VerifyReport:
        """The `.tflite` against transformers' saved outputs and against our model's."""
        raise NotImplementedError

    # -- commands on a model file ----------------------------------------------------------------
    def generator(self, model: Path, tokenizer: Path | None, sampler: Sampler, stop_ids: list[int], stop_strings: list[str],
                  threads: int | None, max_prefill: int | None) -> TextGenerator:
        raise self._unsupported("run")

    def evaluate(self, models: list[Path], corpus: Path, tokenizer: Path | None, max_tokens: int, window: int | None, checkpoint: Path | None):
        raise self._unsupported("eval")

    def benchmark(self, model: Path, tokenizer: Path | None, threads: int | None, prompt_tokens: int, decode_tokens: int, repeats: int,
                  compare: Path | None = None):
        raise self._unsupported("bench")

    def _unsupported(self, command: str) -> EdgeLLMError:
        return EdgeLLMError(f"`edgellm {command}` does not handle {self.name} models; use `edgellm {self.commands[0]}`")
