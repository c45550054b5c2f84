"""Peak memory of every stage of a build, and of the runtime, against the float32 weights W.

    .venv/bin/python bench/memory.py [--models smollm2-135m,tinyllama-1.1b,qwen2.5-1.5b,gemma-2-2b] [--litert-torch-python PATH]
        [--real-models ~/.cache/edgellm-real-models] [--work /tmp/edgellm-memory]

SmolLM2-135M-Instruct is the real model (../shared/tools/get_real_models.sh); the other names are
random-weight checkpoints written by transformers at the real shapes (bench/convert_vs_litert_torch.py).
Each is built cold with `edgellm build --recipe int8-dynamic --bundle litertlm --json`: its stage
table gives each stage's peak RSS (the high-water mark is reset per stage; convert's is its
worker's), and the whole run's process-tree peak is sampled every 50 ms. Then `edgellm bench`
loads the float model twice (the second load maps the packed-weight cache). With
--litert-torch-python, litert-torch's `export_hf` (default int8 recipe, bundled) runs on the same
checkpoint from its own environment; a failure is printed as the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_vs_litert_torch import make_checkpoint, measured  # a sibling script

from edgellm.spec.load import find_spec

EDGELLM = [sys.executable, "-m", "edgellm"]
# The bundle in LiteRT-LM's own engine: a prompt prefilled, then a sentence scored token by token.
# Scored, not sampled: a random-weight model's greedy tokens fall outside its stand-in tokenizer's
# vocabulary, which the engine refuses to detokenize.
LITERT_LM = """
import math, sys, litert_lm as lm
engine = lm.Engine(sys.argv[1], backend=lm.Backend.CPU(), cache_dir=sys.argv[2])
session = engine.create_session(apply_prompt_template=False)
session.run_prefill(["Hello"])
scores = session.run_text_scoring([" the quick brown fox jumps over the lazy dog"]).token_scores[0]
assert scores and all(math.isfinite(s) for s in scores), scores
print(len(scores))
"""


def checkpoint_for(name: str, real: Path, work: Path) -> Path:
    if name == "smollm2-135m":
        folder = real / "smollm2-135m-instruct"
        if not (folder / ".complete").is_file():
            sys.exit(f"{folder} is missing: run ../shared/tools/get_real_models.sh {real}")
        return folder
    return make_checkpoint(name, work / "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,tinyllama-1.1b")
    parser.add_argument("--litert-torch-python")
    parser.add_argument("--real-models", type=Path, default=Path.home() / ".cache" / "edgellm-real-models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-memory"))
    parser.add_argument("--memory-cgroup", type=Path, help="A cgroup v1 memory folder to run litert-torch in (its limit, not the machine's, ends it)")
    args = parser.parse_args()
    print("| model | W (float32) | what | peak RSS | x W | seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        work = args.work / name
        checkpoint = checkpoint_for(name, args.real_models, work)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "EDGELLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
        spec = name
        if name != "smollm2-135m":  # a random checkpoint carries a stand-in tokenizer (TinyLlama's): its ids, not the family's
            spec = str(work / "bench.yaml")
            Path(spec).write_text(f"extends: {find_spec(name)}\n"
                                  "tokenizer:\n  file: tokenizer.model\n  bos_id: 1\n  eos_ids: [2]\n  stop_ids: []\n")
        build = measured([*EDGELLM, "build", "--spec", spec, "--checkpoint", str(checkpoint), "--recipe", "int8-dynamic", "--bundle", "litertlm",
                          "-o", str(work / "out"), "--json"], env)
        if "error" in build:
            print(f"| {name} | | edgellm build | failed: {build['error']} | | |")
            continue
        stages = json.loads(build["stdout"])["stages"]
        weights = 4 * stages[0]["weight_elements"]
        row = f"| {name} | {weights / 1e9:.2f} GB |"
        for stage in stages:
            print(f"{row} {stage['stage']} | {stage['peak_rss_bytes'] / 1e9:.2f} GB | {stage['peak_rss_bytes'] / weights:.2f} | {stage['seconds']:.1f} |")
        print(f"{row} **edgellm build, whole tree** | {build['peak_rss_gb'] * 2**30 / 1e9:.2f} GB | {build['peak_rss_gb'] * 2**30 / weights:.2f} | "
              f"{build['seconds']:.0f} |")
        bundle = next((work / "out").glob("*.litertlm"))
        (work / "litert-lm-cache").mkdir(exist_ok=True)
        engine = measured([sys.executable, "-c", LITERT_LM, str(bundle), str(work / "litert-lm-cache")], env)
        outcome = f"failed: {engine['error']}" if "error" in engine else f"{engine['peak_rss_gb'] * 2**30 / 1e9:.2f} GB"
        print(f"{row} LiteRT-LM engine runs the bundle ({bundle.stat().st_size / 1e9:.2f} GB) | {outcome} | | {engine.get('seconds', 0):.0f} |")
        model = next(s for s in stages if s["stage"] == "convert")
        model_file = Path(model["path"]) / model["file"]
        for load in ("first", "second"):
            bench = measured([*EDGELLM, "bench", str(model_file), "--repeats", "1", "--decode-tokens", "8", "--json"], env)
            if "error" in bench:
                print(f"{row} edgellm bench ({load} load) | failed: {bench['error']} | | |")
                continue
            report = json.loads(bench["stdout"])
            print(f"{row} edgellm bench, float model ({load} load {report['load_seconds']:.2f} s) | {bench['peak_rss_gb'] * 2**30 / 1e9:.2f} GB | "
                  f"{bench['peak_rss_gb'] * 2**30 / model_file.stat().st_size:.2f} x file | {bench['seconds']:.0f} |")
        for artifacts in (cache, work / "out", work / "litert-lm-cache"):  # three models' artifacts would fill a small disk
            shutil.rmtree(artifacts, ignore_errors=True)
        if args.litert_torch_python:
            shutil.rmtree(work / "litert-torch", ignore_errors=True)
            inside = ["sh", "-c", f'echo $$ > {args.memory_cgroup}/cgroup.procs && exec "$@"', "sh"] if args.memory_cgroup else []
            theirs = measured([*inside, args.litert_torch_python, "-m", "litert_torch.generative.export_hf", f"--model={checkpoint}", f"--output_dir={work / 'litert-torch'}",
                               "--prefill_lengths=[128]", "--cache_length=1024"], {**os.environ, "HF_HUB_OFFLINE": "1"})
            if "error" in theirs:
                print(f"{row} litert-torch export_hf | failed: {theirs['error']} | | |")
            else:
                print(f"{row} litert-torch export_hf (int8, bundled) | {theirs['peak_rss_gb'] * 2**30 / 1e9:.2f} GB | "
                      f"{theirs['peak_rss_gb'] * 2**30 / weights:.2f} | {theirs['seconds']:.0f} |")


if __name__ == "__main__":
    main()
