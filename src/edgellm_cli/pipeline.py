"""The build pipeline: fetch -> verify -> convert -> verify-tflite, each stage a cached artifact.

Each stage's key hashes exactly what its output depends on, so a repeated build serves every
stage from the cache, and a change (new weights, another prefill length) re-runs only the
stages downstream of it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgellm_cli import __version__
from edgellm_cli.cache import ArtifactCache, artifact_key, file_digest
from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.fetch import locate_checkpoint
from edgellm_cli.runtime import METADATA_FILE
from edgellm_cli.spec import Architecture, ModelSpec, resolve_architecture

STAGES = ("fetch", "verify", "convert", "verify-tflite")
MODEL_FILE = "model.tflite"
REPORT_FILE = "report.json"


@dataclass
class StageResult:
    stage: str
    key: str
    path: Path
    cached: bool
    seconds: float
    report: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"stage": self.stage, "key": self.key, "path": str(self.path), "cached": self.cached, "seconds": round(self.seconds, 3), **self.report}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


class Pipeline:
    def __init__(
        self,
        spec: ModelSpec,
        checkpoint: Path | None = None,
        token: str | None = None,
        offline: bool | None = None,
        cache: ArtifactCache | None = None,
    ):
        self.spec, self.checkpoint, self.token, self.offline = spec, checkpoint, token, offline
        self.cache = cache or ArtifactCache()
        self._results: dict[str, StageResult] = {}

    def _stage(self, stage: str, inputs: dict, produce: Callable[[Path], dict]) -> StageResult:
        self._results[stage] = run_stage(self.cache, stage, inputs, produce)
        return self._results[stage]

    # -- fetch ------------------------------------------------------------------------------
    def fetch(self) -> StageResult:
        folder = locate_checkpoint(self.spec, self.checkpoint, token=self.token, offline=self.offline)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        fingerprint = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]

        def produce(_: Path) -> dict:
            from edgellm_cli.loader import Checkpoint, plan_weights
            from edgellm_cli.tokenizer import resolve_prompt_settings

            arch = resolve_architecture(self.spec, folder)
            checkpoint = Checkpoint.open(folder)
            plan_weights(self.spec, arch, checkpoint)  # every name and shape checked before any later stage
            tokenizer = folder / self.spec.tokenizer.file
            if not tokenizer.is_file():
                raise EdgeLLMError(f"checkpoint {folder.name}: tokenizer file {self.spec.tokenizer.file} is missing; fix tokenizer.file in the spec")
            prompt = resolve_prompt_settings(self.spec, folder)
            return {
                "checkpoint_dir": str(folder),
                "file_digests": {p.name: file_digest(p) for p in files},
                "architecture": arch.model_dump(mode="json"),
                "prompt": dataclasses.asdict(prompt),
            }

        return self._stage("fetch", {"spec": self.spec.model_dump(mode="json"), "folder": str(folder), "files": fingerprint}, produce)

    def _fetched(self) -> StageResult:
        return self._results.get("fetch") or self.fetch()

    def _model_identity(self) -> dict:
        """What the re-authored model's numbers depend on: two specs that agree here share artifacts."""
        fetched = self._fetched().report
        return {
            "architecture": fetched["architecture"],
            "weights": self.spec.model_dump(mode="json", include={"weights", "ignore_tensors"}),
            "checkpoint": fetched["file_digests"],
        }

    def _load_decoder(self):
        from edgellm_cli.loader import Checkpoint, load_model

        fetched = self._fetched().report
        folder = Path(fetched["checkpoint_dir"])
        arch = Architecture.model_validate(fetched["architecture"])
        return load_model(self.spec, arch, Checkpoint.open(folder))

    # -- verify -----------------------------------------------------------------------------
    def verify(self) -> StageResult:
        from edgellm_cli import verify

        def produce(folder: Path) -> dict:
            fetched = self._fetched().report
            arch = fetched["architecture"]
            tokens = verify.verification_tokens(arch["vocab_size"], self.spec.verify.num_tokens, fetched["prompt"]["bos_id"])
            reference = verify.reference_logits(Path(fetched["checkpoint_dir"]), tokens)
            ours = verify.reauthored_logits(self._load_decoder(), tokens)
            np.save(folder / "reference_logits.npy", reference)
            np.save(folder / "reauthored_logits.npy", ours)
            report = {"tokens": tokens, "comparisons": {"reauthored_vs_transformers": verify.compare(ours, reference)}}
            verify.check(report, self.spec.verify)
            return report

        inputs = {**self._model_identity(), "verify": self.spec.verify.model_dump(), "bos_id": self._fetched().report["prompt"]["bos_id"]}
        return self._stage("verify", inputs, produce)

    # -- convert ----------------------------------------------------------------------------
    def convert(self) -> StageResult:
        def produce(folder: Path) -> dict:
            from edgellm_cli.convert import convert_to_tflite  # torch and litert_torch: only when not cached

            export = self.spec.export
            convert_to_tflite(self._load_decoder(), export.prefill_lengths, export.kv_cache_length, folder / MODEL_FILE)
            return {
                "size_bytes": (folder / MODEL_FILE).stat().st_size,
                "prefill_lengths": sorted(export.prefill_lengths),
                "kv_cache_length": export.kv_cache_length,
            }

        return self._stage("convert", {**self._model_identity(), "export": self.spec.export.model_dump()}, produce)

    # -- verify-tflite ----------------------------------------------------------------------
    def verify_tflite(self) -> StageResult:
        from edgellm_cli import verify

        verified, converted = self._results.get("verify") or self.verify(), self._results.get("convert") or self.convert()

        def produce(_: Path) -> dict:
            tokens = verified.report["tokens"]
            logits = verify.tflite_logits(converted.path / MODEL_FILE, tokens)
            report = {
                "tokens": tokens,
                "comparisons": {
                    "tflite_vs_transformers": verify.compare(logits, np.load(verified.path / "reference_logits.npy")),
                    "tflite_vs_reauthored": verify.compare(logits, np.load(verified.path / "reauthored_logits.npy")),
                },
            }
            verify.check(report, self.spec.verify)
            return report

        inputs = {"verify": verified.key, "convert": converted.key, "limits": self.spec.verify.model_dump()}
        return self._stage("verify-tflite", inputs, produce)

    # -- quantize ---------------------------------------------------------------------------
    def quantize(self, recipe) -> StageResult:
        """The converted model quantized by `recipe` (a quantize.Recipe)."""
        from edgellm_cli.quantize import quantize_tflite

        converted = self._results.get("convert") or self.convert()
        model = converted.path / MODEL_FILE
        inputs = {"model": converted.key, "recipe": recipe.model_dump()}
        return self._stage("quantize", inputs, lambda folder: quantize_tflite(model, recipe, folder / MODEL_FILE))

    def stage(self, name: str) -> StageResult:
        return {"fetch": self.fetch, "verify": self.verify, "convert": self.convert, "verify-tflite": self.verify_tflite}[name]()

    def export_outputs(self, out_dir: Path) -> list[Path]:
        """Write the model (quantized if this build quantized it), its tokenizer and `edgellm.json`
        (what `run` needs) into `out_dir`."""
        converted, fetched = self._results.get("convert") or self.convert(), self._fetched().report
        final = self._results.get("quantize") or converted
        tokenizer = Path(fetched["checkpoint_dir"]) / self.spec.tokenizer.file
        metadata = {
            "name": self.spec.name,
            "edgellm_version": __version__,
            "tokenizer": tokenizer.name,
            **fetched["prompt"],
            "prefill_lengths": converted.report["prefill_lengths"],
            "kv_cache_length": converted.report["kv_cache_length"],
            "recipe": final.report.get("recipe"),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final.path / MODEL_FILE, out_dir / MODEL_FILE)
        shutil.copyfile(tokenizer, out_dir / tokenizer.name)
        _write_json(out_dir / METADATA_FILE, metadata)
        return [out_dir / MODEL_FILE, out_dir / tokenizer.name, out_dir / METADATA_FILE]


def run_stage(cache: ArtifactCache, stage: str, inputs: dict, produce: Callable[[Path], dict]) -> StageResult:
    """Serve `stage` from the cache, or run `produce(folder)` into a fresh artifact folder."""
    started = time.perf_counter()
    key = artifact_key(stage, inputs)
    cached = cache.lookup(stage, key)
    if cached is None:
        with cache.writing(stage, key) as folder:
            _write_json(folder / REPORT_FILE, produce(folder))
    path = cache.path(stage, key)
    return StageResult(stage, key, path, cached is not None, time.perf_counter() - started, _read_json(path / REPORT_FILE))


def quantize_file(cache: ArtifactCache, model: Path, recipe) -> StageResult:
    """Cached quantization of any `.tflite`, keyed by its content and the recipe."""
    from edgellm_cli.quantize import quantize_tflite

    if not model.is_file():
        raise EdgeLLMError(f"model {model} does not exist; pass the path of a .tflite file")
    inputs = {"model": file_digest(model), "recipe": recipe.model_dump()}
    return run_stage(cache, "quantize", inputs, lambda folder: quantize_tflite(model, recipe, folder / MODEL_FILE))
