"""The stages that make and check a model from a spec: fetch, verify, convert, verify-tflite (and
model-file, the stage that stands for a model the user names). Each is a plain function from typed
inputs to its typed report; what differs between model kinds is the kind's (kinds/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, Field

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import file_digest, inside
from edgellm.infra.isolated import run_isolated
from edgellm.infra.reports import StageReport
from edgellm.kinds import kind_named
from edgellm.spec.schema import Architecture, ExportSection, LoraSource, ModelSpec
from edgellm.text.prompt import PromptSettings
from edgellm.tflite.metadata import MODEL_FILE
from edgellm.verify.report import VerifyReport


class AdapterSummary(BaseModel):
    """What fetch records of a merged adapter: where, what it is, and its content's digest (part of every key)."""

    path: str
    digest: str
    method: str  # lora, rslora or dora
    rank: int  # the largest of its layers' ranks
    layers: int  # adapted linear layers


class FetchReport(StageReport):
    checkpoint_dir: str
    weight_elements: int
    file_digests: dict[str, str]
    architecture: Architecture
    prompt: PromptSettings
    output_head: str = ""  # which tensor the output head reads, in a few words ("" without a head)
    adapters: list[AdapterSummary] = Field(default_factory=list)  # PEFT LoRA adapters merged into the weights, in order
    lora_sources: dict[str, LoraSource] = Field(default_factory=dict)  # swappable LoRA (export.lora_rank): the tensor each target adapts

    def summary(self) -> str:
        arch = self.architecture
        head = f", output head: {self.output_head}" if self.output_head else ""
        merged = "".join(f", + {a.method} adapter {Path(a.path).name} (rank {a.rank}, {a.layers} layers)" for a in self.adapters)
        return f"{Path(self.checkpoint_dir).name}: {arch.num_layers} layers, hidden {arch.hidden_size}, vocab {arch.vocab_size}{head}{merged}"


class ConvertReport(StageReport):
    file: str
    size_bytes: int
    signatures: list[str]
    prefill_lengths: list[int]  # of a generative decoder, for edgellm.json
    kv_cache_length: int
    worker_peak_rss_bytes: int

    def summary(self) -> str:
        return f"{self.size_bytes / 1e6:.2f} MB, signatures " + ", ".join(self.signatures)


class ModelFileReport(StageReport):
    path: str = Field(exclude=True)  # the folder holding the model (the stage is not cached: the file is the user's)
    file: str
    size_bytes: int

    def summary(self) -> str:
        return f"{Path(self.path) / self.file} ({self.size_bytes / 1e6:.2f} MB)"


def weight_elements(checkpoint) -> int:
    """The number of weights in a checkpoint (checkpoint/loader.Checkpoint)."""
    total = 0
    for info in checkpoint.tensors.values():
        count = 1
        for dim in info.shape:
            count *= dim
        total += count
    return total


def _memory_parts(arch: Architecture, export: ExportSection) -> tuple[int, int]:
    kv_cache = 2 * arch.num_layers * export.kv_cache_length * arch.num_kv_heads * arch.head_dim * 4
    return kv_cache, max(export.prefill_lengths) * arch.vocab_size * 4


def memory_needed(arch: Architecture, export: ExportSection, weights: int) -> int:
    """Bytes of the float weights, the KV cache and the largest prefill's logits."""
    return 4 * weights + sum(_memory_parts(arch, export))


def check_memory(arch: Architecture, export: ExportSection, weights: int) -> None:
    """Refuse, with the estimate, a model whose float weights, KV cache and largest prefill's logits
    would not fit in this machine's memory (a KV cache of 10^9 positions, say)."""
    kv_cache, logits = _memory_parts(arch, export)
    need = memory_needed(arch, export, weights)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > memory:
        raise EdgeLLMError(
            f"the model needs about {need / 2**30:.1f} GiB (float32 weights {4 * weights / 2**30:.1f}, KV cache {kv_cache / 2**30:.1f}, "
            f"prefill logits {logits / 2**30:.1f}) and this machine has {memory / 2**30:.1f} GiB; lower export.kv_cache_length or prefill_lengths"
        )


def _check_lora(spec: ModelSpec, arch: Architecture, checkpoint, kind, adapters: list[Path]) -> tuple[list[AdapterSummary], dict[str, LoraSource]]:
    """The adapters to merge, each checked against the checkpoint, and the LoRA inputs' sources."""
    from edgellm.checkpoint.adapter import adapter_digest, check_adapter, lora_sources, read_peft_adapter

    if (adapters or spec.export.lora_rank) and not kind.takes_lora:
        raise EdgeLLMError(f"spec {spec.name}: a {kind.name} model takes no LoRA; --adapter and --lora-rank are for decoders")
    summaries = []
    for folder in adapters:
        adapter = read_peft_adapter(folder)
        check_adapter(adapter, checkpoint)
        summaries.append(AdapterSummary(path=str(folder), digest=adapter_digest(folder), method=adapter.method, rank=adapter.rank,
                                        layers=len(adapter.layers)))
    sources = lora_sources(spec, arch, checkpoint, kind.build, spec.export.lora_targets) if spec.export.lora_rank else {}
    return summaries, sources


def fetch(spec: ModelSpec, folder: Path, adapters: list[Path] = ()) -> FetchReport:
    """Every tensor name and shape, the tokenizer and the memory the model will need, checked
    before any later stage; `adapters` (PEFT LoRA folders, merged in order) checked against it."""
    from concurrent.futures import ThreadPoolExecutor

    from edgellm.checkpoint.loader import Checkpoint, plan_weights, resolve_output_head
    from edgellm.checkpoint.prompt import resolve_prompt_settings
    from edgellm.spec.hf_config import resolve_architecture
    from edgellm.text.tokenizer import load_tokenizer

    # Hashing gigabytes of weights (the GIL released) runs beside the checks, which mostly import libraries.
    hashing = ThreadPoolExecutor(max_workers=1)
    digests = {f.name: hashing.submit(file_digest, f) for f in sorted(folder.iterdir()) if f.is_file()}
    try:
        arch = resolve_architecture(spec, folder)
        checkpoint = Checkpoint.open(folder)
        kind = kind_named(arch.kind)
        arch, head = resolve_output_head(spec, arch, checkpoint, kind.build)  # may untie it
        plan_weights(spec, arch, checkpoint, kind.build)
        tokenizer_file = inside(folder, spec.tokenizer.file, "tokenizer.file")
        if not tokenizer_file.is_file():
            raise EdgeLLMError(f"checkpoint {folder.name}: tokenizer file {spec.tokenizer.file} is missing; fix tokenizer.file in the spec")
        tokenizer = load_tokenizer(tokenizer_file)  # a damaged tokenizer fails here, not in a runtime
        # Special added tokens past the embedding (a multimodal placeholder) are allowed, as transformers allows them.
        if tokenizer.ordinary_size > arch.vocab_size:
            raise EdgeLLMError(f"checkpoint {folder.name}: the tokenizer has {tokenizer.ordinary_size} tokens but the model only {arch.vocab_size}; "
                               "fix tokenizer.file in the spec (it names another model's tokenizer)")
        prompt = resolve_prompt_settings(spec, folder)
        # Stop ids past the embedding are never produced, so harmless; a start token is fed, and would index past it.
        for what, token_id, fix in (("BOS", prompt.bos_id, "set tokenizer.bos_id in the spec"),
                                    ("decoder start", prompt.decoder_start_id, "fix decoder_start_token_id in config.json")):
            if token_id is not None and not 0 <= token_id < arch.vocab_size:
                raise EdgeLLMError(f"checkpoint {folder.name}: the {what} token id {token_id} is outside the model's {arch.vocab_size} tokens; {fix}")
        check_memory(arch, spec.export, weight_elements(checkpoint))
        kind.check_export(spec, arch)
        merged, sources = _check_lora(spec, arch, checkpoint, kind, list(adapters))
        return FetchReport(
            checkpoint_dir=str(folder),
            weight_elements=weight_elements(checkpoint),
            file_digests={name: digest.result() for name, digest in digests.items()},
            architecture=arch,
            prompt=prompt,
            output_head=head,
            adapters=merged,
            lora_sources=sources,
        )
    finally:
        hashing.shutdown(cancel_futures=True)


def load_reauthored(spec: ModelSpec, fetched: FetchReport, mapped: bool = True):
    """Our model of the fetched checkpoint (its adapters merged), every weight loaded (`mapped=False`: as copies)."""
    from edgellm.checkpoint.adapter import open_adapted
    from edgellm.checkpoint.loader import load_model

    kind = kind_named(fetched.architecture.kind)
    checkpoint = open_adapted(Path(fetched.checkpoint_dir), [a.path for a in fetched.adapters])
    return load_model(spec, fetched.architecture, checkpoint, kind.build, mapped=mapped)


def verify(spec: ModelSpec, fetched: FetchReport, out: Path) -> VerifyReport:
    """Our model against transformers'; the reference is freed before ours loads."""
    kind = kind_named(fetched.architecture.kind)
    adapters = [Path(a.path) for a in fetched.adapters]
    return kind.verify(spec, fetched.architecture, fetched.prompt, Path(fetched.checkpoint_dir), lambda: load_reauthored(spec, fetched), out, adapters)


def _convert_worker(spec: ModelSpec, fetched: FetchReport, out: Path, log: Path) -> None:
    from edgellm.convert.lowering import write_tflite  # torch and litert_torch: only when not cached

    # Plain reads, not views of the file's mapping: the converter clamps every weight in place, and
    # on a mapped view each page is copied on write (10 % of the TinyLlama conversion's time).
    model = load_reauthored(spec, fetched, mapped=False)
    write_tflite(kind_named(fetched.architecture.kind).signatures(model, spec.export), out, log)


def convert(spec: ModelSpec, fetched: FetchReport, folder: Path, cache_root: Path) -> ConvertReport:
    """The kind's signatures lowered into one `.tflite`, in a worker process."""
    from edgellm.tflite.file import read_signatures

    need = 4 * fetched.weight_elements

    def disk_full() -> EdgeLLMError | None:
        free = shutil.disk_usage(folder).free
        if free >= need:
            return None
        return EdgeLLMError(f"cannot write to the cache {cache_root}: {free / 1e6:.1f} MB free, and the float32 model needs about "
                            f"{need / 1e6:.1f} MB; free space there or set EDGELLM_CACHE_DIR to a larger disk")

    if problem := disk_full():
        raise problem
    log = cache_root / "logs" / f"{folder.name.removeprefix('.')}.log"  # kept when the stage fails, unlike its staging folder
    log.parent.mkdir(exist_ok=True)
    try:
        # The converter's native code ends the process on an I/O error: in a worker, only the worker ends.
        _, peak = run_isolated(_convert_worker, (spec, fetched, folder / MODEL_FILE, log), "the converter")
    except EdgeLLMError as exc:
        raise (disk_full() or exc) from None
    log.unlink(missing_ok=True)
    return ConvertReport(
        file=MODEL_FILE,
        size_bytes=(folder / MODEL_FILE).stat().st_size,
        signatures=sorted(read_signatures(folder / MODEL_FILE), key=lambda name: (len(name), name)),
        prefill_lengths=kind_named(fetched.architecture.kind).prefill_lengths(spec.export),
        kv_cache_length=spec.export.kv_cache_length,
        worker_peak_rss_bytes=peak,
    )


def verify_tflite(spec: ModelSpec, fetched: FetchReport, verified: VerifyReport, references: Path, model_file: Path) -> VerifyReport:
    """The `.tflite` against transformers and against our model (their outputs saved by verify in `references`)."""
    return kind_named(fetched.architecture.kind).verify_tflite(spec, verified, references, model_file)


def model_file(model: Path) -> ModelFileReport:
    from edgellm.tflite.file import read_signatures

    read_signatures(model)  # quantizer and bundlers would crash on a damaged file
    return ModelFileReport(path=str(model.parent), file=model.name, size_bytes=model.stat().st_size)
