"""Quality and speed of every quantization recipe, and of the searched mix, against the float model.

    .venv/bin/python bench/int4_quality.py [--models smollm2-135m,stories260k] [--real-models ~/.cache/edgellm-real-models]
        [--work /tmp/edgellm-int4] [--max-ppl-ratio 1.05]

Each model is built in float (`edgellm build`), quantized with every shipped recipe and with
`quantize --search --max-ppl-ratio R`, and every result is scored by `edgellm eval --json` on text
that calibration never saw, against `transformers` on the original checkpoint: real SmolLM2-135M-
Instruct (../shared/tools/get_real_models.sh) on WikiText-2's test split (4,096 tokens, windows of
256) after calibrating on the shipped default text; stories260K on stories its float model samples
(seeds 1-12), after calibrating on other samples (seeds 101-140). Decode speed is
`edgellm bench --threads 2`'s raw decode tokens/s (the fastest of 3 runs), and LiteRT-LM's own
`litert-lm benchmark -p 128 -d 64 --cpu-thread-count 2` on each model bundled as `.litertlm`
(SmolLM2 only: stories260K's prefill signatures stop at 32 tokens): every quantized model runs in the
runtime users deploy to.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_vs_litert_torch import litert_lm_speeds

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
EDGELLM = [sys.executable, "-m", "edgellm"]
RECIPES = ["fp16", "int8-dynamic", "int8-weight-only", "int4-block32", "int4-block128", "mixed-int8-int4", "int4"]


def edgellm(*args: str, env: dict) -> str:
    done = subprocess.run([*EDGELLM, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"edgellm {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def sampled_stories(model: Path, seeds: range, env: dict) -> str:
    return "\n".join(edgellm("run", str(model), "--max-tokens", "200", "--temperature", "1", "--seed", str(seed), env=env) for seed in seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,stories260k")
    parser.add_argument("--real-models", type=Path, default=Path.home() / ".cache" / "edgellm-real-models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-int4"))
    parser.add_argument("--max-ppl-ratio", type=float, default=1.05)
    args = parser.parse_args()
    print("| model | recipe | MB | x float | perplexity ratio | top-1 | mean KL | greedy differs at | decode tok/s | LiteRT-LM decode tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "EDGELLM_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
        if name == "smollm2-135m":
            checkpoint, spec = args.real_models / "smollm2-135m-instruct", "smollm2-135m"
            if not (checkpoint / ".complete").is_file():
                sys.exit(f"{checkpoint} is missing: run ../shared/tools/get_real_models.sh {args.real_models}")
        else:
            checkpoint, spec = ASSETS / "checkpoints" / "stories260K-hf", "stories260k"
        # Quantized models are written beside the float one, where its edgellm.json and tokenizer are.
        models = work / "models"
        edgellm("build", "--spec", spec, "--checkpoint", str(checkpoint), "-o", str(models), env=env)
        model = models / "model.tflite"
        calibration: list[str] = []
        corpus = ASSETS / "corpora" / "wikitext2-test" / "wikitext-2-raw-test.txt"
        if name == "stories260k":
            corpus, text = work / "held-out.txt", work / "calibration.txt"
            corpus.write_text(sampled_stories(model, range(1, 13), env))
            text.write_text(sampled_stories(model, range(101, 141), env))
            calibration = ["--calibration", str(text)]
        outputs = []
        for recipe in RECIPES:
            out = models / f"{recipe}.tflite"
            edgellm("quantize", str(model), "--recipe", recipe, *calibration, "-o", str(out), env=env)
            outputs.append((recipe, out))
        out = models / "search.tflite"
        edgellm("quantize", str(model), "--search", "--max-ppl-ratio", str(args.max_ppl_ratio), *calibration, "-o", str(out), env=env)
        outputs.append((f"--search --max-ppl-ratio {args.max_ppl_ratio}", out))
        report = json.loads(edgellm("eval", str(model), *(str(o) for _, o in outputs), "--corpus", str(corpus), "--max-tokens", "4096",
                                    "--transformers", str(checkpoint), "--json", env=env))
        for (recipe, path), row in zip([("float", model), *outputs], report["models"], strict=True):
            speed = json.loads(edgellm("bench", str(path), "--threads", "2", "--json", env=env))["raw_decode_tokens_per_second"]
            litert_lm = "-"
            if name == "smollm2-135m":
                bundle = path.with_suffix(".litertlm")
                edgellm("bundle", str(path), "--format", "litertlm", "-o", str(bundle), env=env)
                decode = max(litert_lm_speeds(bundle)[1] for _ in range(2))
                if not decode:
                    sys.exit(f"litert-lm benchmark {bundle} failed")
                litert_lm = f"{decode:.0f}"
                for made in (bundle, *models.glob("*.xnnpack_cache")):
                    made.unlink()
            divergence = "never" if row["greedy_divergence"] is None else row["greedy_divergence"]
            print(f"| {name} | {recipe} | {row['size_bytes'] / 1e6:.1f} | {row['size_bytes'] / model.stat().st_size:.3f} | {row['perplexity_ratio']:.3f} | "
                  f"{row['top1_agreement']:.1%} | {row['mean_kl']:.3f} | {divergence} | {speed:.0f} | {litert_lm} |", flush=True)


if __name__ == "__main__":
    main()
