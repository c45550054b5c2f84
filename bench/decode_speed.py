"""Build a TinyLlama-1.1B-shaped model (random weights, transformers' own LlamaForCausalLM) with
edgellm, then `edgellm bench` it and the demo model; prints a table.

    .venv/bin/python bench/decode_speed.py [--threads 1 2] [--work DIR]

The checkpoint is 4.4 GB of float32 and the build takes minutes; the work folder is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EDGELLM = [sys.executable, "-m", "edgellm"]
TINYLLAMA = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
                 "tie_word_embeddings": False}


def make_checkpoint(folder: Path) -> None:
    if (folder / "model.safetensors").is_file():
        return
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINYLLAMA)).save_pretrained(folder)
    shutil.copyfile(REPO.parent / "shared/assets/tokenizers/tinyllama-chat/tokenizer.model", folder / "tokenizer.model")


def build(checkpoint: Path, output: Path, env: dict) -> dict:
    """`edgellm build` in a child process: wall time and the child's peak RSS."""
    started = time.perf_counter()
    subprocess.run([*EDGELLM, "build", "--spec", "tinyllama-1.1b", "--checkpoint", str(checkpoint), "-o", str(output)],
                   check=True, env=env, cwd=REPO)
    return {"seconds": time.perf_counter() - started, "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def bench(model: Path, threads: int, repeats: int, decode_tokens: int, env: dict) -> dict:
    out = subprocess.run([*EDGELLM, "bench", str(model), "--threads", str(threads), "--prompt-tokens", "128",
                          "--decode-tokens", str(decode_tokens), "--repeats", str(repeats), "--json"], check=True, env=env,
                         cwd=REPO, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-bench"))
    args = parser.parse_args()
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(args.work / "cache"), "HF_HUB_OFFLINE": "1"}
    make_checkpoint(args.work / "tinyllama-ckpt")
    built = build(args.work / "tinyllama-ckpt", args.work / "tinyllama", env)
    subprocess.run([*EDGELLM, "build", "--spec", "stories260k", "-o", str(args.work / "stories")], check=True, env=env, cwd=REPO, capture_output=True)
    # A stories260K run takes milliseconds, so it gets many paired runs; a TinyLlama token takes a
    # quarter second, so its runs are shorter and fewer (its step is memory-bound and noisy here).
    rows = [(name, bench(args.work / folder / "model.tflite", threads, repeats, decode_tokens, env))
            for name, folder, repeats, decode_tokens in [("stories260k", "stories", 41, 64), ("tinyllama-1.1b shape", "tinyllama", 7, 32)]
            for threads in args.threads]
    print(f"TinyLlama-shaped build (cold cache unless reused): {built['seconds']:.0f} s, peak RSS {built['peak_rss_gb']:.2f} GB")
    print("| model | threads | TTFT (128-token prompt) | largest prefill_N tok/s | decode tok/s (pipeline) | decode tok/s (raw invoke) | overhead |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        prefill = max(r["prefill"].values(), key=lambda p: p["tokens"])
        print(f"| {name} | {r['threads']} | {r['time_to_first_token_ms']:.1f} ms | {prefill['tokens_per_second']:.0f} | "
              f"{r['decode_tokens_per_second']:.2f} | {r['raw_decode_tokens_per_second']:.2f} | {r['pipeline_overhead_percent']:.1f} % |")


if __name__ == "__main__":
    main()
