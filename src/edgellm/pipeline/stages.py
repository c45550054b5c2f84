"""A build's stages, one table: what each needs, what its key hashes, and the stage function it calls.

    fetch ─┬─ verify ──────────┬─ verify-tflite
           └─ convert ─────────┘
              convert | model-file ─ [calibrate ─ [sensitivity ─ search]] ─ quantize ─ bundle-<format> ─ export

The stage functions (build.py, quantize.py, package.py) take typed inputs and return typed reports;
the lambdas here are the only place that reads a build's state to feed them. The convert key, for
instance, hashes the architecture, weight mapping, checkpoint digests and export settings, not the
whole spec: two specs that differ only in verify limits or tokenizer settings share it.

Adding a stage is one entry in `STAGES` and its function; a bundle format is one entry in
bundle/formats.FORMATS, which the table picks up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgellm import __version__
from edgellm.bundle.formats import FORMATS
from edgellm.bundle.inputs import BundleReport
from edgellm.errors import EdgeLLMError
from edgellm.infra.cache import ArtifactCache, library_versions
from edgellm.infra.files import file_digest
from edgellm.infra.heap import map_large_allocations
from edgellm.kinds import kind_named
from edgellm.kinds.kind import ModelKind
from edgellm.pipeline import build, package, quantize
from edgellm.pipeline.runner import Runner, Stage, StageResult
from edgellm.quantize.recipes import Recipe
from edgellm.spec.schema import ModelSpec
from edgellm.tflite.metadata import LoraLayout, ModelMetadata, model_metadata
from edgellm.verify.report import VerifyReport

VERIFY_STAGES = ("fetch", "verify", "convert", "verify-tflite")


class Pipeline(Runner):
    """One build: a spec (and checkpoint) or an existing model file, and what to make of it."""

    def __init__(
        self,
        spec: ModelSpec | None = None,
        *,
        model: Path | None = None,
        tokenizer: Path | None = None,
        checkpoint: Path | None = None,
        adapters: tuple[Path, ...] = (),
        token: str | None = None,
        offline: bool | None = None,
        recipe: Recipe | None = None,
        calibration: Path | None = None,
        max_ppl_ratio: float | None = None,
        formats: tuple[str, ...] = (),
        chat_template: str | None = None,
        stop_ids: tuple[int, ...] = (),
        output: Path | None = None,
        cache: ArtifactCache | None = None,
        on_start: Callable[[str], None] = lambda stage: None,
        on_finish: Callable[[StageResult], None] = lambda result: None,
    ):
        if (spec is None) == (model is None):
            raise ValueError("a pipeline starts from a spec or from a model file")
        super().__init__(STAGES, cache, on_start, on_finish)
        map_large_allocations()  # stages free models of gigabytes: that memory must leave the process
        if model is not None and not model.is_file():
            raise EdgeLLMError(f"model {model} does not exist; pass the path of a .tflite file")
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.checkpoint, self.token, self.offline = checkpoint, token, offline
        self.adapters = tuple(adapters)  # PEFT LoRA folders merged into the weights, in order
        self.recipe, self.formats, self.output = recipe, tuple(formats), output
        self.calibration = calibration  # text for recipes that calibrate; None: the shipped default
        self.max_ppl_ratio = max_ppl_ratio  # the budget of the search stage
        self.chat_template, self.stop_ids = chat_template, list(stop_ids)  # replace the model's own in bundles
        self._folder: Path | None = None

    def build_stages(self) -> list[str]:
        """What `edgellm build` runs: every verification, then quantize, bundles and export as asked."""
        quantizing = [*(["calibrate"] if self.recipe.calibrated else []), "quantize"] if self.recipe is not None else []
        return [*VERIFY_STAGES, *quantizing, *(f"bundle-{fmt}" for fmt in self.formats), *(["export"] if self.output else [])]

    # -- the inputs stages share --------------------------------------------------------------
    @property
    def fetched(self) -> build.FetchReport:
        return self.result("fetch").report

    @property
    def kind(self) -> ModelKind:
        """The model kind of the spec's architecture (kinds/)."""
        return kind_named(self.fetched.architecture.kind)

    @property
    def model_stage(self) -> str:
        """The stage that gives the float model: convert, or the file the user named."""
        return "convert" if self.spec is not None else "model-file"

    @property
    def final_stage(self) -> str:
        """The stage that gives the model that ships (quantized if a recipe was asked for)."""
        return "quantize" if self.recipe is not None else self.model_stage

    def checkpoint_folder(self) -> Path:
        if self._folder is None:
            from edgellm.checkpoint.locate import locate_checkpoint

            self._folder = locate_checkpoint(self.spec, self.checkpoint, token=self.token, offline=self.offline)
        return self._folder

    def model_identity(self) -> dict:
        """What the re-authored model's numbers depend on: two specs that agree here share artifacts."""
        return {
            "architecture": self.fetched.architecture.model_dump(mode="json"),
            "weights": self.spec.model_dump(mode="json", include={"weights", "ignore_tensors"}),
            "checkpoint": self.fetched.file_digests,
            "adapters": [adapter.digest for adapter in self.fetched.adapters],
        }

    def metadata_and_tokenizer(self) -> tuple[ModelMetadata, Path]:
        """The `edgellm.json` of the model that ships, and its tokenizer file."""
        if self.spec is None:
            metadata, tokenizer = model_metadata(self.model, self.tokenizer)
            overrides = {"chat_template": self.chat_template or metadata.chat_template, "stop_ids": self.stop_ids or metadata.stop_ids}
            return metadata.model_copy(update=overrides), tokenizer
        fetched, converted = self.fetched, self.result("convert").report
        tokenizer = Path(fetched.checkpoint_dir) / self.spec.tokenizer.file
        metadata = ModelMetadata(
            name=self.spec.name,
            edgellm_version=__version__,
            tokenizer=tokenizer.name,
            **fetched.prompt.model_dump(),
            prefill_lengths=converted.prefill_lengths,
            kv_cache_length=converted.kv_cache_length,
            recipe=self.recipe.name if self.recipe is not None else None,
            lora=LoraLayout(rank=self.spec.export.lora_rank, sources=fetched.lora_sources) if self.spec.export.lora_rank else None,
        )
        return metadata, tokenizer

    def calibration_text(self) -> quantize.CalibrationText:
        from edgellm.quantize.calibration import DEFAULT_CALIBRATION

        return quantize.CalibrationText(self.result(self.model_stage).file, self.metadata_and_tokenizer()[1], self.calibration or DEFAULT_CALIBRATION)


def _fetch_inputs(p: Pipeline) -> dict:
    folder = p.checkpoint_folder()
    from edgellm.checkpoint.adapter import adapter_digest

    files = sorted(f for f in folder.iterdir() if f.is_file())
    return {"spec": p.spec.model_dump(mode="json"), "folder": str(folder), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
            "adapters": [(str(a), adapter_digest(a)) for a in p.adapters]}


def _verify_inputs(p: Pipeline) -> dict:
    # peft applies the adapters in the reference: its version shapes only builds that have some.
    reference = {"peft": library_versions(("peft",))} if p.fetched.adapters else {}
    return {**p.model_identity(), "verify": p.spec.verify.model_dump(), "bos_id": p.fetched.prompt.bos_id, **p.kind.verify_key(p.spec), **reference}


def _calibrate_inputs(p: Pipeline) -> dict:
    from edgellm.quantize.calibration import DEFAULT_WINDOWS, read_calibration_text

    text = p.calibration_text()
    read_calibration_text(text.text)  # a bad file is one line before anything runs
    return {"model": p.result(p.model_stage).key, "text": file_digest(text.text), "tokenizer": file_digest(text.tokenizer), "windows": DEFAULT_WINDOWS}


def _quantize_inputs(p: Pipeline) -> dict:
    calibration = {"calibration": p.result("calibrate").key} if p.recipe.calibrated else {}
    return {"model": p.result(p.model_stage).key, "recipe": p.recipe.model_dump(), **calibration}


def _quantize(p: Pipeline, out: Path) -> quantize.QuantizeReport:
    calibrated = (p.calibration_text(), p.result("calibrate").path) if p.recipe.calibrated else None
    return quantize.quantize(p.result(p.model_stage).file, p.recipe, out, calibrated)


def _bundle_stage(fmt: str) -> Stage:
    def inputs(p: Pipeline) -> dict:
        metadata, tokenizer = p.metadata_and_tokenizer()
        return {"model": p.result(p.final_stage).key, "format": fmt, "metadata": metadata.model_dump(mode="json"), "tokenizer": file_digest(tokenizer)}

    def produce(p: Pipeline, out: Path) -> BundleReport:
        metadata, tokenizer = p.metadata_and_tokenizer()
        return package.bundle(p.result(p.final_stage).file, tokenizer, metadata, fmt, out)

    return Stage(lambda p: [p.final_stage], inputs, produce, BundleReport, ("litert-lm-builder", "sentencepiece", "tokenizers"))


def _export(p: Pipeline, _: Path) -> package.ExportReport:
    metadata, tokenizer = p.metadata_and_tokenizer()
    bundles = {fmt: p.result(f"bundle-{fmt}").file for fmt in p.formats}
    return package.export(p.result(p.final_stage).file, tokenizer, metadata, bundles, p.spec.name, p.output)


STAGES: dict[str, Stage] = {
    # fetch's key names the local checkpoint folder (its report, too): it never leaves this machine.
    "fetch": Stage(lambda p: [], _fetch_inputs, lambda p, _: build.fetch(p.spec, p.checkpoint_folder(), list(p.adapters)), build.FetchReport, ("transformers",),
                   shared=False),
    "verify": Stage(lambda p: ["fetch"],
                    _verify_inputs,
                    lambda p, out: build.verify(p.spec, p.fetched, out), VerifyReport, ("torch", "transformers")),
    "convert": Stage(lambda p: ["fetch"], lambda p: {**p.model_identity(), "export": p.spec.export.model_dump()},
                     lambda p, out: build.convert(p.spec, p.fetched, out, p.cache.root), build.ConvertReport, ("torch", "litert-torch"),
                     worker_imports=("edgellm.convert.lowering", "edgellm.checkpoint.loader", "litert_torch")),
    "verify-tflite": Stage(lambda p: ["verify", "convert"],
                           lambda p: {"verify": p.result("verify").key, "convert": p.result("convert").key, "limits": p.spec.verify.model_dump()},
                           lambda p, _: build.verify_tflite(p.spec, p.fetched, p.result("verify").report, p.result("verify").path, p.result("convert").file),
                           VerifyReport, ("ai-edge-litert",)),
    "model-file": Stage(lambda p: [], lambda p: {"digest": file_digest(p.model)}, lambda p, _: build.model_file(p.model), build.ModelFileReport, cached=False),
    "calibrate": Stage(lambda p: [p.model_stage], _calibrate_inputs, lambda p, out: quantize.calibrate(p.calibration_text(), out),
                       quantize.CalibrationReport, ("ai-edge-litert", "tokenizers", "sentencepiece")),
    "sensitivity": Stage(lambda p: ["calibrate"], lambda p: {"calibration": p.result("calibrate").key},
                         lambda p, _: quantize.sensitivity(p.calibration_text(), p.result("calibrate").path), quantize.SensitivityReport,
                         ("ai-edge-litert", "torch")),
    "search": Stage(lambda p: ["sensitivity"], lambda p: {"sensitivity": p.result("sensitivity").key, "max_ppl_ratio": p.max_ppl_ratio},
                    lambda p, _: quantize.search(p.calibration_text(), p.result("calibrate").path, p.result("sensitivity").report, p.max_ppl_ratio),
                    quantize.SearchReport, ("ai-edge-litert", "torch")),
    "quantize": Stage(lambda p: [p.model_stage, *(["calibrate"] if p.recipe.calibrated else [])], _quantize_inputs, _quantize, quantize.QuantizeReport,
                      ("ai-edge-quantizer", "ai-edge-litert", "torch")),
    **{f"bundle-{fmt}": _bundle_stage(fmt) for fmt in FORMATS},
    "export": Stage(lambda p: [p.final_stage, *(f"bundle-{fmt}" for fmt in p.formats)], lambda p: {"output": str(p.output)}, _export,
                    package.ExportReport, cached=False),
}
