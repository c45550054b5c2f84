"""Decode and prefill speed of edgellm's graph against litert-torch's, in LiteRT-LM and in `edgellm bench`.

    .venv/bin/python bench/decode_vs_litert_torch.py --litert-torch-python /tmp/lt-venv/bin/python
        [--models smollm2-135m,qwen2.5-0.5b,tinyllama-1.1b] [--precisions float32,int8] [--rounds 3]

For each model and precision, both converters build a LiteRT-LM bundle from the same checkpoint
(prefill 128, KV cache 1024): `edgellm build --recipe int8-dynamic --bundle litertlm` (no recipe for
float32) and litert-torch's `export_hf --bundle_litert_lm=True` (`--quantization_recipe` none or
its int8 default, dynamic_wi8_afp32). SmolLM2 is the real SmolLM2-135M-Instruct
(../shared/tools/get_real_models.sh); the others are random weights at the real shapes.

Timing is one paired run: in each round every bundle goes through LiteRT-LM's own
`litert-lm benchmark -p 128 -d 64 --cpu-thread-count 2`, alternating, and the medians over rounds
are compared; then `edgellm bench OURS --compare THEIRS` times the two `.tflite` files in edgellm's
runtime the same way. "bound" is decode speed as a share of the memory-bandwidth bound: the
bytes a decode step reads (the weights the decode signature uses plus the whole KV cache, which
attention reads at every step) over this machine's copy bandwidth (numpy, read + write).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_vs_litert_torch import make_checkpoint

from edgellm.spec.load import find_spec

REAL_MODELS = Path(os.environ.get("EDGELLM_REAL_MODELS", Path.home() / ".cache" / "edgellm-real-models"))
CHECKPOINTS = {"smollm2-135m": REAL_MODELS / "smollm2-135m-instruct"}
LITERT_TORCH_RECIPES = {"float32": "none", "int8": "dynamic_wi8_afp32"}
EDGELLM = [sys.executable, "-m", "edgellm"]


def copy_bandwidth() -> float:
    """Bytes per second a large numpy copy moves (read + write), best of five."""
    source = np.ones(64 * 2**20, np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


def decode_bytes(model: Path) -> int:
    """Bytes one decode step reads: each constant buffer the decode signature uses, and the KV cache inputs."""
    from ai_edge_litert import schema_py_generated as schema

    from edgellm.tflite.file import buffer_data

    data = model.read_bytes()
    flat = schema.Model.GetRootAs(data, 0)
    decode = next(flat.SignatureDefs(i) for i in range(flat.SignatureDefsLength()) if flat.SignatureDefs(i).SignatureKey() == b"decode")
    subgraph = flat.Subgraphs(decode.SubgraphIndex())
    buffers, cache = set(), 0
    for t in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(t)
        if tensor.Buffer() > 0 and buffer_data(flat.Buffers(tensor.Buffer())) is not None:
            buffers.add(tensor.Buffer())
        elif tensor.Name().decode().split("decode_")[-1].startswith("kv_cache_"):
            cache += int(np.prod(tensor.ShapeAsNumpy())) * 4
    weights = sum(buffer_data(flat.Buffers(b))[1] for b in buffers)
    return weights + cache // 2  # a cache is both an input and an output tensor: count it once


def build_edgellm(name: str, checkpoint: Path, precision: str, work: Path) -> tuple[Path, Path]:
    spec = work / "bench.yaml"
    # Random-weight checkpoints carry a stand-in tokenizer (TinyLlama's): its stop id, not the model's.
    tokens = "" if name in CHECKPOINTS else "tokenizer:\n  stop_ids: [2]\n"
    spec.write_text(f"extends: {find_spec(name)}\n{tokens}export:\n  prefill_lengths: [128]\n  kv_cache_length: 1024\n")
    out = work / f"edgellm-{precision}"
    recipe = ["--recipe", "int8-dynamic"] if precision == "int8" else []
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(work / "edgellm-cache"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([*EDGELLM, "build", "--spec", str(spec), "--checkpoint", str(checkpoint), *recipe, "--bundle", "litertlm", "-o", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "model.tflite", next(out.glob("*.litertlm"))


def build_litert_torch(python: str, checkpoint: Path, precision: str, work: Path) -> tuple[Path, Path]:
    out = work / f"litert-torch-{precision}"
    if not list(out.rglob("*.litertlm")):
        subprocess.run([python, "-m", "litert_torch.generative.export_hf", f"--model={checkpoint}", f"--output_dir={out}", "--prefill_lengths=[128]",
                        "--cache_length=1024", f"--quantization_recipe={LITERT_TORCH_RECIPES[precision]}", "--bundle_litert_lm=True"],
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bundle = max((p for p in out.rglob("*.litertlm") if p.name != "generic.litertlm"), key=lambda p: p.stat().st_size)
    model, dump = out / "model.tflite", out / "sections"
    if not model.is_file():  # the bundle holds the .tflite: take it out for edgellm's runtime
        subprocess.run([str(Path(sys.executable).parent / "litert-lm-peek"), "--litertlm_file", str(bundle), "--dump_files_dir", str(dump)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        max(dump.rglob("*.tflite"), key=lambda p: p.stat().st_size).rename(model)
    return model, as_generic_model(bundle, dump, model, checkpoint / "tokenizer.json")


def as_generic_model(bundle: Path, dump: Path, model: Path, tokenizer: Path) -> Path:
    """The bundle, or one with the same model, tokenizer and state layout declared a generic model.

    export_hf declares a family's model type (lfm2) but carries no chat template: LiteRT-LM then
    wants the family's own template and refuses a stand-in tokenizer ("Unsupported model type for
    template"). The graph, which is what is timed, stays the same."""
    from google.protobuf import text_format
    from litert_lm_builder import litertlm_builder as lb
    from litert_lm_builder import litertlm_core
    from litert_lm_builder.runtime.proto import executor_metadata_pb2, llm_metadata_pb2

    llm = text_format.Parse((dump / "LlmMetadataProto.pbtext").read_text(), llm_metadata_pb2.LlmMetadata())
    if llm.jinja_prompt_template or llm.llm_model_type.WhichOneof("model_type") in (None, "generic_model"):
        return bundle
    llm.llm_model_type.generic_model.SetInParent()
    executor = text_format.Parse((dump / "ExecutorMetadataProto.pbtext").read_text(), executor_metadata_pb2.ExecutorMetadata())
    (dump / "llm.pb").write_bytes(llm.SerializeToString())
    (dump / "executor.pb").write_bytes(executor.SerializeToString())
    generic = bundle.with_name("generic.litertlm")
    builder = lb.LitertLmFileBuilder().add_llm_metadata(str(dump / "llm.pb")).add_executor_metadata(str(dump / "executor.pb"))
    builder.add_hf_tokenizer(str(tokenizer)).add_tflite_model(str(model), lb.TfLiteModelType.PREFILL_DECODE)
    with litertlm_core.open_file(str(generic), "wb") as f:
        builder.build(f)
    return generic


def litert_lm_speeds(bundle: Path) -> tuple[float, float]:
    """Prefill and decode tokens/s from LiteRT-LM's own benchmark."""
    done = subprocess.run([str(Path(sys.executable).parent / "litert-lm"), "benchmark", str(bundle), "-p", "128", "-d", "64", "--cpu-thread-count", "2"],
                          check=False, capture_output=True, text=True)
    speeds = {line.split(":")[0].strip(): float(line.split(":")[1].split()[0]) for line in done.stdout.splitlines() if line.strip().endswith("tokens/s")}
    return speeds.get("Prefill speed", 0.0), speeds.get("Decode speed", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b,tinyllama-1.1b")
    parser.add_argument("--precisions", default="float32,int8")
    parser.add_argument("--litert-torch-python", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-decode-vs-litert-torch"))
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write); {args.rounds} alternating rounds; 2 threads\n")
    print("| model | precision | converter | LiteRT-LM prefill tok/s | LiteRT-LM decode tok/s | decode bound | edgellm bench prefill_128 | edgellm bench decode |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for name in args.models.split(","):
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = CHECKPOINTS.get(name) or make_checkpoint(name, work / "checkpoint")
        for precision in args.precisions.split(","):
            built = {"edgellm": build_edgellm(name, checkpoint, precision, work), "litert-torch": build_litert_torch(args.litert_torch_python, checkpoint, precision, work)}
            runs = {side: [] for side in built}
            for _ in range(args.rounds):
                for side, (_, bundle) in built.items():
                    runs[side].append(litert_lm_speeds(bundle))
            compared = subprocess.run([*EDGELLM, "bench", str(built["edgellm"][0]), "--compare", str(built["litert-torch"][0]), "--threads", "2",
                                       "--prompt-tokens", "128", "--repeats", str(args.rounds), "--json"], capture_output=True, text=True, check=True)
            ours_bench, theirs_bench = json.loads(compared.stdout)["speeds"]
            medians = {side: (statistics.median(p for p, _ in r), statistics.median(d for _, d in r)) for side, r in runs.items()}
            for side, bench in (("edgellm", ours_bench), ("litert-torch", theirs_bench)):
                prefill, decode = medians[side]
                bound = decode * decode_bytes(built[side][0]) / bandwidth
                print(f"| {name} | {precision} | {side} | {prefill:.0f} | {decode:.1f} | {bound:.0%} | {bench.get('prefill (prefill_128)', 0):.0f} | "
                      f"{bench['decode, raw invoke']:.1f} |")
            for _, bundle in built.values():  # LiteRT-LM's packed weights beside each bundle: GBs each
                for packed in bundle.parent.glob("*.xnnpack_cache"):
                    packed.unlink()
            shutil.rmtree(built["edgellm"][0].parent)  # disk: edgellm's are quick to make again, litert-torch's are kept
            ours, theirs = medians["edgellm"], medians["litert-torch"]
            ratios.append((name, precision, ours[0] / theirs[0], ours[1] / theirs[1]))
        shutil.rmtree(work / "edgellm-cache", ignore_errors=True)
    print("\n| model | precision | prefill ratio | decode ratio |  (edgellm / litert-torch, LiteRT-LM medians; goal 1.2x and 1.15x)")
    print("|---|---|---|---|")
    for name, precision, prefill, decode in ratios:
        print(f"| {name} | {precision} | {prefill:.2f}x | {decode:.2f}x |")


if __name__ == "__main__":
    main()
