"""The build pipeline: one table of stages, each a plain function from its inputs to an artifact,
and one runner that runs each at most once per build and serves it from the cache when it can.

    fetch ─┬─ verify ──────────┬─ verify-tflite
           └─ convert ─────────┘
              convert | model-file ─ [calibrate ─ [sensitivity ─ search]] ─ quantize ─ bundle-<format> ─ export

A stage declares the stages it needs (run first) and what its key hashes (`inputs`, plus edgellm's
code and the versions of the libraries that shape its output: see cache.artifact_key). A key hashes
exactly what the artifact depends on, so a repeated build serves every stage from the cache, and a
change (new weights, another prefill length) re-runs only the stages downstream of it. The convert
key, for instance, hashes the architecture, weight mapping, checkpoint digests and export settings,
not the whole spec: two specs that differ only in verify limits or tokenizer settings share it.

Adding a stage is one entry in `STAGES` (and its produce function); adding a bundle format is one
entry in bundle.FORMATS, which the table picks up.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgellm_cli import __version__
from edgellm_cli.cache import ArtifactCache, artifact_key, file_digest
from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.files import inside, publish, read_json, write_json
from edgellm_cli.heap import map_large_allocations
from edgellm_cli.isolated import discard_spare, run_isolated, start_ahead
from edgellm_cli.metadata import METADATA_FILE, ModelMetadata, model_metadata, read_metadata
from edgellm_cli.spec import Architecture, ExportSection, ModelSpec, resolve_architecture

MODEL_FILE = "model.tflite"
REPORT_FILE = "report.json"
VERIFY_STAGES = ("fetch", "verify", "convert", "verify-tflite")


@dataclass
class StageResult:
    stage: str
    key: str
    path: Path  # the artifact folder; for a stage that is not cached, the folder it read or wrote
    cached: bool
    seconds: float  # this run's time: a cached stage reports its lookup, not the original run
    report: dict = field(default_factory=dict)
    peak_rss_bytes: int = 0  # the stage's peak memory (its worker's, when it ran in one)

    @property
    def file(self) -> Path:
        """The artifact's main file (a model or a bundle)."""
        return self.path / self.report["file"]

    def as_json(self) -> dict:
        return {**self.report, "stage": self.stage, "key": self.key, "path": str(self.path), "cached": self.cached, "seconds": round(self.seconds, 3),
                "peak_rss_bytes": self.peak_rss_bytes}


@dataclass(frozen=True)
class Stage:
    needs: Callable[[Pipeline], list[str]]  # stages that run first
    inputs: Callable[[Pipeline], dict]  # what the key hashes (JSON-able)
    produce: Callable[[Pipeline, Path], dict]  # fills the artifact folder; returns the report
    libraries: tuple[str, ...] = ()  # distributions whose versions shape the artifact
    cached: bool = True  # False: produce writes outside the cache and returns "path" in its report
    worker_imports: tuple[str, ...] = ()  # produce runs in a worker (isolated.py), started ahead importing these


class Pipeline:
    """One build: a spec (and checkpoint) or an existing model file, and what to make of it."""

    def __init__(
        self,
        spec: ModelSpec | None = None,
        *,
        model: Path | None = None,
        tokenizer: Path | None = None,
        checkpoint: Path | None = None,
        token: str | None = None,
        offline: bool | None = None,
        recipe=None,
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
        map_large_allocations()  # stages free models of gigabytes: that memory must leave the process
        if model is not None and not model.is_file():
            raise EdgeLLMError(f"model {model} does not exist; pass the path of a .tflite file")
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.checkpoint, self.token, self.offline = checkpoint, token, offline
        self.recipe, self.formats, self.output = recipe, tuple(formats), output
        self.calibration = calibration  # text for recipes that calibrate; None: the shipped default
        self.max_ppl_ratio = max_ppl_ratio  # the budget of the search stage
        self.chat_template, self.stop_ids = chat_template, list(stop_ids)  # replace the model's own in bundles
        self.cache = cache or ArtifactCache()
        self.on_start, self.on_finish = on_start, on_finish
        self._results: dict[str, StageResult] = {}
        self._folder: Path | None = None

    # -- the runner -------------------------------------------------------------------------
    def result(self, name: str) -> StageResult:
        """Stage `name`'s result: memoised in this build, served from the cache, or produced."""
        if name not in self._results:
            stage = STAGES[name]
            for need in stage.needs(self):
                self.result(need)
            self.on_start(name)
            started, memory = time.perf_counter(), PeakMemory()
            key = self.key(name)
            if stage.cached:
                cached = self.cache.lookup(name, key) is not None
                if not cached:
                    with self.cache.writing(name, key) as folder:
                        write_json(folder / REPORT_FILE, stage.produce(self, folder))
                path = self.cache.path(name, key)
                report = read_json(path / REPORT_FILE, "stage report")
            else:
                cached, report = False, stage.produce(self, Path())
                path = Path(report.pop("path"))
            peak = max(memory.peak(), report.get("worker_peak_rss_bytes", 0) if not cached else 0)
            self._results[name] = StageResult(name, key, path, cached, time.perf_counter() - started, report, peak)
            if stage.worker_imports:
                discard_spare()  # started for this stage: not kept beside the next ones when it was cached
            self.on_finish(self._results[name])
        return self._results[name]

    def key(self, name: str) -> str:
        """Stage `name`'s cache key (its needs run, it does not)."""
        stage = STAGES[name]
        for need in stage.needs(self):
            self.result(need)
        return artifact_key(name, stage.inputs(self), stage.libraries)

    def forget(self, name: str) -> None:
        """Drop stage `name`'s memoised result (after changing what it is made from)."""
        self._results.pop(name, None)

    def run(self, names: list[str]) -> list[StageResult]:
        ahead = [STAGES[name].worker_imports for name in names if STAGES[name].worker_imports]
        if ahead:
            start_ahead(ahead[0])  # its imports overlap the stages before it (fetch, verify)
        try:
            return [self.result(name) for name in names]
        finally:
            discard_spare()

    def build_stages(self) -> list[str]:
        """What `edgellm build` runs: every verification, then quantize, bundles and export as asked."""
        quantize = [*(["calibrate"] if self.recipe.calibrated else []), "quantize"] if self.recipe is not None else []
        return [*VERIFY_STAGES, *quantize, *(f"bundle-{fmt}" for fmt in self.formats), *(["export"] if self.output else [])]

    # -- what stages share ------------------------------------------------------------------
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
            from edgellm_cli.fetch import locate_checkpoint

            self._folder = locate_checkpoint(self.spec, self.checkpoint, token=self.token, offline=self.offline)
        return self._folder

    def model_identity(self) -> dict:
        """What the re-authored model's numbers depend on: two specs that agree here share artifacts."""
        fetched = self.result("fetch").report
        return {
            "architecture": fetched["architecture"],
            "weights": self.spec.model_dump(mode="json", include={"weights", "ignore_tensors"}),
            "checkpoint": fetched["file_digests"],
        }

    @property
    def kind(self) -> str:
        """decoder, encoder or encoder-decoder (Architecture.kind): the last two go to encoder_stages."""
        return self.result("fetch").report["architecture"]["kind"]

    def load_decoder(self):
        from edgellm_cli.loader import Checkpoint, load_model

        fetched = self.result("fetch").report
        arch = Architecture.model_validate(fetched["architecture"])
        return load_model(self.spec, arch, Checkpoint.open(Path(fetched["checkpoint_dir"])))

    def metadata_and_tokenizer(self) -> tuple[ModelMetadata, Path]:
        """The `edgellm.json` of the model that ships, and its tokenizer file."""
        if self.spec is None:
            metadata, tokenizer = model_metadata(self.model, self.tokenizer)
            overrides = {"chat_template": self.chat_template or metadata.chat_template, "stop_ids": self.stop_ids or metadata.stop_ids}
            return metadata.model_copy(update=overrides), tokenizer
        fetched, converted = self.result("fetch").report, self.result("convert").report
        tokenizer = Path(fetched["checkpoint_dir"]) / self.spec.tokenizer.file
        metadata = ModelMetadata(
            name=self.spec.name,
            edgellm_version=__version__,
            tokenizer=tokenizer.name,
            **fetched["prompt"],
            prefill_lengths=converted["prefill_lengths"],
            kv_cache_length=converted["kv_cache_length"],
            recipe=self.recipe.name if self.recipe is not None else None,
        )
        return metadata, tokenizer


class PeakMemory:
    """This process's peak resident memory from now on: Linux lets a process reset its high-water
    mark (clear_refs 5), so each stage gets its own peak; elsewhere, the process's peak so far."""

    def __init__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak(self) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def weight_elements(checkpoint) -> int:
    total = 0
    for info in checkpoint.tensors.values():
        count = 1
        for dim in info.shape:
            count *= dim
        total += count
    return total


def check_memory(arch: Architecture, export: ExportSection, weights: int) -> None:
    """Refuse, with the estimate, a model whose float weights, KV cache and largest prefill's logits
    would not fit in this machine's memory (a KV cache of 10^9 positions, say)."""
    kv_cache = 2 * arch.num_layers * export.kv_cache_length * arch.num_kv_heads * arch.head_dim * 4
    logits = max(export.prefill_lengths) * arch.vocab_size * 4
    need = 4 * weights + kv_cache + logits
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > memory:
        raise EdgeLLMError(
            f"the model needs about {need / 2**30:.1f} GiB (float32 weights {4 * weights / 2**30:.1f}, KV cache {kv_cache / 2**30:.1f}, "
            f"prefill logits {logits / 2**30:.1f}) and this machine has {memory / 2**30:.1f} GiB; lower export.kv_cache_length or prefill_lengths"
        )


# -- the stages -------------------------------------------------------------------------------


def _fetch_inputs(p: Pipeline) -> dict:
    folder = p.checkpoint_folder()
    files = sorted(f for f in folder.iterdir() if f.is_file())
    return {"spec": p.spec.model_dump(mode="json"), "folder": str(folder), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}


def _fetch(p: Pipeline, _: Path) -> dict:
    """Every tensor name and shape, the tokenizer and the memory the model will need, checked
    before any later stage."""
    from concurrent.futures import ThreadPoolExecutor

    from edgellm_cli.loader import Checkpoint, plan_weights
    from edgellm_cli.metadata import resolve_prompt_settings
    from edgellm_cli.tokenizer import load_tokenizer

    folder = p.checkpoint_folder()
    # Hashing gigabytes of weights (the GIL released) runs beside the checks, which mostly import libraries.
    hashing = ThreadPoolExecutor(max_workers=1)
    digests = {f.name: hashing.submit(file_digest, f) for f in sorted(folder.iterdir()) if f.is_file()}
    try:
        arch = resolve_architecture(p.spec, folder)
        checkpoint = Checkpoint.open(folder)
        plan_weights(p.spec, arch, checkpoint)
        tokenizer_file = inside(folder, p.spec.tokenizer.file, "tokenizer.file")
        if not tokenizer_file.is_file():
            raise EdgeLLMError(f"checkpoint {folder.name}: tokenizer file {p.spec.tokenizer.file} is missing; fix tokenizer.file in the spec")
        tokenizer = load_tokenizer(tokenizer_file)  # a damaged tokenizer fails here, not in a runtime
        if tokenizer.vocab_size > arch.vocab_size:
            raise EdgeLLMError(f"checkpoint {folder.name}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {arch.vocab_size}; "
                               "fix tokenizer.file in the spec (it names another model's tokenizer)")
        check_memory(arch, p.spec.export, weight_elements(checkpoint))
        if arch.kind != "decoder":
            from edgellm_cli.encoder_stages import check_lengths

            check_lengths(p.spec, arch)
        return {
            "checkpoint_dir": str(folder),
            "weight_elements": weight_elements(checkpoint),
            "file_digests": {name: digest.result() for name, digest in digests.items()},
            "architecture": arch.model_dump(mode="json"),
            "prompt": resolve_prompt_settings(p.spec, folder).model_dump(mode="json"),
        }
    finally:
        hashing.shutdown(cancel_futures=True)


def _verify_inputs(p: Pipeline) -> dict:
    fetched = p.result("fetch").report
    # An encoder's inputs are padded to its signature lengths, so those shape its verification too.
    lengths = {} if p.kind == "decoder" else {"sequence_lengths": p.spec.export.sequence_lengths}
    return {**p.model_identity(), "verify": p.spec.verify.model_dump(), "bos_id": fetched["prompt"]["bos_id"], **lengths}


def _verify(p: Pipeline, folder: Path) -> dict:
    """The re-authored model's logits against transformers'; the reference is freed before ours loads."""
    import numpy as np

    from edgellm_cli import verify

    if p.kind != "decoder":
        from edgellm_cli import encoder_stages

        return encoder_stages.verify(p, folder)
    fetched = p.result("fetch").report
    tokens = verify.verification_tokens(fetched["architecture"]["vocab_size"], p.spec.verify.num_tokens, fetched["prompt"]["bos_id"])
    reference = verify.reference_logits(Path(fetched["checkpoint_dir"]), tokens)
    ours = verify.reauthored_logits(p.load_decoder(), tokens)
    np.save(folder / "reference_logits.npy", reference)
    np.save(folder / "reauthored_logits.npy", ours)
    report = {"tokens": tokens, "comparisons": {"reauthored_vs_transformers": verify.compare(ours, reference)}}
    verify.check(report, p.spec.verify)
    return report


def _convert_worker(spec: ModelSpec, fetched: dict, out: Path, log: Path) -> None:
    from edgellm_cli.convert import convert_to_tflite  # torch and litert_torch: only when not cached
    from edgellm_cli.loader import Checkpoint, load_model

    arch = Architecture.model_validate(fetched["architecture"])
    # Plain reads, not views of the file's mapping: the converter clamps every weight in place, and
    # on a mapped view each page is copied on write (10 % of the TinyLlama conversion's time).
    decoder = load_model(spec, arch, Checkpoint.open(Path(fetched["checkpoint_dir"])), mapped=False)
    if arch.kind != "decoder":
        from edgellm_cli import encoder_stages

        return encoder_stages.convert(spec, arch, decoder, out, log)
    convert_to_tflite(decoder, spec.export.prefill_lengths, spec.export.kv_cache_length, out, log)


def _convert(p: Pipeline, folder: Path) -> dict:
    from edgellm_cli.tflite_file import read_signatures

    export, fetched = p.spec.export, p.result("fetch").report
    need = 4 * fetched["weight_elements"]

    def disk_full() -> EdgeLLMError | None:
        free = shutil.disk_usage(folder).free
        if free >= need:
            return None
        return EdgeLLMError(f"cannot write to the cache {p.cache.root}: {free / 1e6:.1f} MB free, and the float32 model needs about "
                            f"{need / 1e6:.1f} MB; free space there or set EDGELLM_CACHE_DIR to a larger disk")

    if problem := disk_full():
        raise problem
    log = p.cache.root / "logs" / f"{folder.name.removeprefix('.')}.log"  # kept when the stage fails, unlike its staging folder
    log.parent.mkdir(exist_ok=True)
    try:
        # The converter's native code ends the process on an I/O error: in a worker, only the worker ends.
        _, peak = run_isolated(_convert_worker, (p.spec, fetched, folder / MODEL_FILE, log), "the converter")
    except EdgeLLMError as exc:
        raise (disk_full() or exc) from None
    log.unlink(missing_ok=True)
    decoder = p.kind == "decoder"
    return {
        **({} if decoder else {"signatures": sorted(read_signatures(folder / MODEL_FILE), key=lambda name: (len(name), name))}),
        "file": MODEL_FILE,
        "worker_peak_rss_bytes": peak,
        "size_bytes": (folder / MODEL_FILE).stat().st_size,
        "prefill_lengths": sorted(export.prefill_lengths) if decoder else [],
        "kv_cache_length": export.kv_cache_length,
    }


def _verify_tflite_inputs(p: Pipeline) -> dict:
    return {"verify": p.result("verify").key, "convert": p.result("convert").key, "limits": p.spec.verify.model_dump()}


def _verify_tflite(p: Pipeline, _: Path) -> dict:
    import numpy as np

    from edgellm_cli import verify

    if p.kind != "decoder":
        from edgellm_cli import encoder_stages

        return encoder_stages.verify_tflite(p)
    verified, converted = p.result("verify"), p.result("convert")
    tokens = verified.report["tokens"]
    logits = verify.tflite_logits(converted.file, tokens)
    report = {
        "tokens": tokens,
        "comparisons": {
            "tflite_vs_transformers": verify.compare(logits, np.load(verified.path / "reference_logits.npy")),
            "tflite_vs_reauthored": verify.compare(logits, np.load(verified.path / "reauthored_logits.npy")),
        },
    }
    verify.check(report, p.spec.verify)
    return report


def _model_file(p: Pipeline, _: Path) -> dict:
    from edgellm_cli.tflite_file import read_signatures

    read_signatures(p.model)  # quantizer and bundlers would crash on a damaged file
    return {"path": str(p.model.parent), "file": p.model.name, "size_bytes": p.model.stat().st_size}


def _calibration_text(p: Pipeline) -> Path:
    from edgellm_cli.calibration import DEFAULT_CALIBRATION

    return p.calibration or DEFAULT_CALIBRATION


def _calibrate_inputs(p: Pipeline) -> dict:
    from edgellm_cli.calibration import DEFAULT_WINDOWS, read_calibration_text

    read_calibration_text(_calibration_text(p))  # a bad file is one line before anything runs
    return {"model": p.result(p.model_stage).key, "text": file_digest(_calibration_text(p)), "tokenizer": file_digest(p.metadata_and_tokenizer()[1]),
            "windows": DEFAULT_WINDOWS}


def _calibrate(p: Pipeline, folder: Path) -> dict:
    from edgellm_cli.calibration import calibrate, read_calibration_text
    from edgellm_cli.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(p.metadata_and_tokenizer()[1])
    return calibrate(p.result(p.model_stage).file, tokenizer, read_calibration_text(_calibration_text(p)), folder)


def _held_out(p: Pipeline) -> tuple[list[list[int]], str]:
    """Windows of the calibration text that calibration did not use, and the prefill that runs them."""
    from edgellm_cli.calibration import held_out_windows, read_calibration_text, widest_prefill
    from edgellm_cli.tokenizer import load_tokenizer

    width = widest_prefill(p.result(p.model_stage).file)
    tokens = load_tokenizer(p.metadata_and_tokenizer()[1]).encode(read_calibration_text(_calibration_text(p)))
    return held_out_windows(tokens, width), f"prefill_{width}"


def _weight_probe(p: Pipeline):
    """The float model and calibration Hessians, scored on the held-out windows."""
    from edgellm_cli.calibration import load_hessians
    from edgellm_cli.search import WeightProbe

    return WeightProbe(p.result(p.model_stage).file, load_hessians(p.result("calibrate").path), *_held_out(p))


def _layer_groups(p: Pipeline):
    from edgellm_cli.calibration import weight_readers
    from edgellm_cli.quantize import model_ops
    from edgellm_cli.search import layer_groups

    model = p.result(p.model_stage).file
    return layer_groups(model_ops(model), weight_readers(model)[0])


def _sensitivity(p: Pipeline, _: Path) -> dict:
    from dataclasses import asdict

    from edgellm_cli.search import measure_sensitivity

    groups = _layer_groups(p)
    probe = _weight_probe(p)
    return {"groups": [asdict(g) for g in groups], "windows": len(probe.windows), **measure_sensitivity(probe, groups)}


def _search(p: Pipeline, _: Path) -> dict:
    from edgellm_cli.search import Group, choose, frontier

    measured = p.result("sensitivity").report
    groups = [Group(**g) for g in measured["groups"]]
    points = frontier(groups, measured)
    chosen, checked = choose(_weight_probe(p), groups, points, p.max_ppl_ratio)
    return {"max_ppl_ratio": p.max_ppl_ratio, "frontier": points, "chosen": chosen, "checked": len(checked)}


def quantize_searched(p: Pipeline) -> tuple[StageResult, StageResult]:
    """The search's choice quantized as it ships (activations quantized too, which weights-only
    measurements do not see); while exp(its mean KL from float on the held-out text) is over the
    budget, a smaller frontier point, stepped back by the excess. Sets `p.recipe` to the one kept."""
    from edgellm_cli.search import Group, search_recipe

    searched = p.result("search")
    groups = {g["name"]: Group(**g) for g in p.result("sensitivity").report["groups"]}
    points = searched.report["frontier"]
    index = len(searched.report["chosen"]["int4_groups"])
    while True:
        p.recipe = search_recipe([groups[name] for name in points[index]["int4_groups"]], f"search-{p.max_ppl_ratio:g}")
        p.forget("quantize")  # another recipe: another quantize stage
        quantized = p.result("quantize")
        excess = quantized.report["held_out_mean_kl"] - math.log(p.max_ppl_ratio)  # the budget bounds exp(KL)
        if excess <= 0 or index == 0:
            return searched, quantized
        target = math.log(points[index]["predicted_ppl_ratio"]) - excess
        index = max([i for i in range(index) if math.log(points[i]["predicted_ppl_ratio"]) <= target] or [0])


def publish_quantized(p: Pipeline, result: StageResult, output: Path) -> list[Path]:
    """The quantized model at `output`. Where that folder has no edgellm.json, the model's own
    (naming the recipe) and its tokenizer go with it, so that run, eval and bundle find them."""
    written = [publish(result.file, output)]
    if (output.parent / METADATA_FILE).exists() or read_metadata(p.model) is None:
        return written
    metadata, tokenizer = p.metadata_and_tokenizer()
    written.append(publish(tokenizer, output.parent / tokenizer.name))
    written.append(metadata.model_copy(update={"tokenizer": tokenizer.name, "recipe": p.recipe.name}).write(output.parent))
    return written


def _quantize_needs(p: Pipeline) -> list[str]:
    return [p.model_stage, *(["calibrate"] if p.recipe.calibrated else [])]


def _quantize_inputs(p: Pipeline) -> dict:
    calibration = {"calibration": p.result("calibrate").key} if p.recipe.calibrated else {}
    return {"model": p.result(p.model_stage).key, "recipe": p.recipe.model_dump(), **calibration}


def _quantize(p: Pipeline, folder: Path) -> dict:
    from edgellm_cli.quantize import quantize_tflite

    model, out = p.result(p.model_stage).file, folder / MODEL_FILE
    if not p.recipe.calibrated:
        return {"file": MODEL_FILE, **quantize_tflite(model, p.recipe, out)}
    from edgellm_cli.search import score_windows

    report = quantize_tflite(model, p.recipe, out, p.result("calibrate").path)
    windows, signature = _held_out(p)
    float_nll, _, float_logp = score_windows(model, windows, signature)
    nll, kl, _ = score_windows(out, windows, signature, float_logp)
    return {"file": MODEL_FILE, **report, "held_out_ppl_ratio": round(math.exp(nll - float_nll), 4), "held_out_mean_kl": round(kl, 5),
            "held_out_tokens": sum(len(w) - 1 for w in windows)}


def _bundle_inputs(fmt: str) -> Callable[[Pipeline], dict]:
    def inputs(p: Pipeline) -> dict:
        metadata, tokenizer = p.metadata_and_tokenizer()
        return {"model": p.result(p.final_stage).key, "format": fmt, "metadata": metadata.model_dump(mode="json"), "tokenizer": file_digest(tokenizer)}

    return inputs


def _bundle(fmt: str) -> Callable[[Pipeline, Path], dict]:
    def produce(p: Pipeline, folder: Path) -> dict:
        from edgellm_cli.bundle import BundleInputs, write_bundle

        metadata, tokenizer = p.metadata_and_tokenizer()
        out = folder / f"model.{fmt}"
        report = write_bundle(BundleInputs(p.result(p.final_stage).file, tokenizer, metadata), fmt, out)
        return {"file": out.name, "size_bytes": out.stat().st_size, **report.model_dump()}

    return produce


def _export(p: Pipeline, _: Path) -> dict:
    """The build's outputs in the user's folder: model, tokenizer, edgellm.json and bundles."""
    metadata, tokenizer = p.metadata_and_tokenizer()
    out = p.output
    outputs = [publish(p.result(p.final_stage).file, out / MODEL_FILE), publish(tokenizer, out / tokenizer.name)]
    outputs.append(metadata.write(out))
    outputs += [publish(p.result(f"bundle-{fmt}").file, out / f"{p.spec.name}.{fmt}") for fmt in p.formats]
    return {"path": str(out), "outputs": [str(o) for o in outputs]}


def _bundle_stages() -> dict[str, Stage]:
    from edgellm_cli.bundle import FORMATS  # light: the writers import their libraries when they run

    return {
        f"bundle-{fmt}": Stage(lambda p: [p.final_stage], _bundle_inputs(fmt), _bundle(fmt), ("litert-lm-builder", "sentencepiece", "tokenizers"))
        for fmt in FORMATS
    }


STAGES: dict[str, Stage] = {
    "fetch": Stage(lambda p: [], _fetch_inputs, _fetch, ("transformers",)),
    "verify": Stage(lambda p: ["fetch"], _verify_inputs, _verify, ("torch", "transformers")),
    "convert": Stage(lambda p: ["fetch"], lambda p: {**p.model_identity(), "export": p.spec.export.model_dump()}, _convert, ("torch", "litert-torch"),
                     worker_imports=("edgellm_cli.convert", "edgellm_cli.loader", "litert_torch")),
    "verify-tflite": Stage(lambda p: ["verify", "convert"], _verify_tflite_inputs, _verify_tflite, ("ai-edge-litert",)),
    "model-file": Stage(lambda p: [], lambda p: {"digest": file_digest(p.model)}, _model_file, cached=False),
    "calibrate": Stage(lambda p: [p.model_stage], _calibrate_inputs, _calibrate, ("ai-edge-litert", "tokenizers", "sentencepiece")),
    "sensitivity": Stage(lambda p: ["calibrate"], lambda p: {"calibration": p.result("calibrate").key}, _sensitivity, ("ai-edge-litert", "torch")),
    "search": Stage(lambda p: ["sensitivity"], lambda p: {"sensitivity": p.result("sensitivity").key, "max_ppl_ratio": p.max_ppl_ratio}, _search,
                    ("ai-edge-litert", "torch")),
    "quantize": Stage(_quantize_needs, _quantize_inputs, _quantize, ("ai-edge-quantizer", "ai-edge-litert", "torch")),
    **_bundle_stages(),
    "export": Stage(lambda p: [p.final_stage, *(f"bundle-{fmt}" for fmt in p.formats)], lambda p: {"output": str(p.output)}, _export, cached=False),
}
