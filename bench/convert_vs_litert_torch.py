"""Conversion cost and decode speed: edgellm against litert-torch's `export_hf`, in one run.

    .venv/bin/python bench/convert_vs_litert_torch.py [--models smollm2-135m,qwen2.5-0.5b,tinyllama-1.1b]
        [--litert-torch-python PATH] [--threads 2] [--work /tmp/edgellm-vs-litert-torch]

For each shape it writes a random-weight checkpoint with the real transformers class, converts it
with `edgellm convert` (cold cache) and with `python -m litert_torch.generative.export_hf` (same
prefill length 128, KV cache 1024, float: `--quantization_recipe=none`, as its default is int8), each in its own process tree, sampling the tree's
total RSS every 50 ms. Both outputs are then timed in the same runtime (LiteRT CompiledModel, the
same thread count), invoking the model alone with its KV-cache buffers bound in place.

litert-torch's exporter runs in the interpreter given by --litert-torch-python (default: this
one); it is never an edgellm dependency.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgellm.spec.load import find_spec

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "smollm2-135m": ("Llama", {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                                   "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": True}),
    "qwen2.5-0.5b": ("Qwen2", {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                                   "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": True}),
    "tinyllama-1.1b": ("Llama", {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                                     "num_key_value_heads": 4, "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": False}),
    "qwen2.5-1.5b": ("Qwen2", {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                                   "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": True}),
    "gemma-2-2b": ("Gemma2", {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
                                  "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192, "query_pre_attn_scalar": 256,
                                  "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True}),
    # SmolLM3-3B: every fourth layer without RoPE (transformers' default no_rope_layer_interval).
    "smollm3-3b": ("SmolLM3", {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                                   "num_key_value_heads": 4, "max_position_embeddings": 65536, "tie_word_embeddings": True}),
    # LFM2-350M: 10 short-convolution layers and 6 attention layers (config.json's layer_types).
    "lfm2-350m": ("Lfm2", {"vocab_size": 65536, "hidden_size": 1024, "intermediate_size": 6656, "num_hidden_layers": 16, "num_attention_heads": 16,
                           "num_key_value_heads": 8, "max_position_embeddings": 128000, "tie_word_embeddings": True, "conv_L_cache": 3,
                           "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
                           "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv", "full_attention",
                                           "conv", "full_attention", "conv", "full_attention", "conv", "full_attention", "conv"]}),
}
# Shapes above a billion parameters are written in bfloat16, as their real checkpoints are (W still counts float32).
BFLOAT16 = {"qwen2.5-1.5b", "gemma-2-2b", "smollm3-3b"}
TOKENIZERS = REPO.parent / "shared" / "assets" / "tokenizers"


def make_checkpoint(name: str, folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    prefix, config = SHAPES[name]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if name in BFLOAT16 else torch.float32
    torch.set_default_dtype(dtype)
    model = getattr(transformers, f"{prefix}ForCausalLM")(getattr(transformers, f"{prefix}Config")(**config, bos_token_id=1, eos_token_id=2))
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    # Stand-in tokenizers (both converters copy them; neither uses them to convert).
    shutil.copyfile(TOKENIZERS / "tinyllama-chat" / "tokenizer.model", folder / "tokenizer.model")
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZERS / "tinyllama-chat" / file, folder / file)
    return folder


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measured(command: list[str], env: dict) -> dict:
    """Run `command`; its wall time, the peak RSS of its whole process tree, and what it printed."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    if process.returncode:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-300:]}
    return {"seconds": time.perf_counter() - started, "peak_rss_gb": peak / 2**30, "stdout": stdout.decode(errors="replace")}


def invoke_rates(model: Path, threads: int, decode_steps: int = 32) -> dict:
    """Prefill (largest signature) and decode tokens/s, the model call alone, caches bound in place."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    compiled = CompiledModel.from_file(str(model), options=Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads)))
    signatures = compiled.get_signature_list()
    caches: dict = {}

    def bound(signature: str):
        inputs = compiled.get_input_tensor_details(signature)
        in_buffers = {}
        for name, info in inputs.items():
            if name not in caches:
                buffer = compiled.create_input_buffer_by_name(signature, name)
                position = 512 if name in ("input_pos", "positions") else 0
                buffer.write(np.full(info["shape"], position, dtype=info["dtype"]))
                if name.startswith(("kv_cache", "k_cache", "v_cache")):
                    caches[name] = buffer
                in_buffers[name] = buffer
            else:
                in_buffers[name] = caches[name]
        out_buffers = {name: caches.get(name) or compiled.create_output_buffer_by_name(signature, name) for name in signatures[signature]["outputs"]}
        return in_buffers, out_buffers

    def rate(signature: str, tokens: int, steps: int) -> float:
        ins, outs = bound(signature)
        compiled.run_by_name(signature, ins, outs)  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            compiled.run_by_name(signature, ins, outs)
        return tokens * steps / (time.perf_counter() - started)

    prefill = max((s for s in signatures if s.startswith("prefill")), key=lambda s: compiled.get_input_tensor_details(s)["input_pos"]["shape"][-1])
    width = int(compiled.get_input_tensor_details(prefill)["input_pos"]["shape"][-1])
    return {"prefill_tokens_per_second": rate(prefill, width, 3), "decode_tokens_per_second": rate("decode", 1, decode_steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--litert-torch-python", default=sys.executable)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-vs-litert-torch"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        work = args.work / name
        checkpoint = make_checkpoint(name, work / "checkpoint")
        spec = work / "bench.yaml"
        spec.write_text(f"extends: {find_spec(name)}\nexport:\n  prefill_lengths: [128]\n  kv_cache_length: 1024\n")
        shutil.rmtree(work / "edgellm-cache", ignore_errors=True)
        env = {**os.environ, "EDGELLM_CACHE_DIR": str(work / "edgellm-cache"), "HF_HUB_OFFLINE": "1"}
        ours = measured([sys.executable, "-m", "edgellm", "convert", "--spec", str(spec), "--checkpoint", str(checkpoint), "-o", str(work / "edgellm")], env)
        shutil.rmtree(work / "litert-torch", ignore_errors=True)
        theirs = measured([args.litert_torch_python, "-m", "litert_torch.generative.export_hf", f"--model={checkpoint}", f"--output_dir={work / 'litert-torch'}",
                           "--prefill_lengths=[128]", "--cache_length=1024", "--bundle_litert_lm=False", "--quantization_recipe=none"], {**os.environ, "HF_HUB_OFFLINE": "1"})
        for side, result, folder in (("edgellm", ours, work / "edgellm"), ("litert-torch", theirs, work / "litert-torch")):
            models = sorted(folder.rglob("model.tflite")) if folder.is_dir() else []  # export_hf writes into a temporary subfolder
            if "error" not in result and models:
                result["size_gb"] = models[0].stat().st_size / 2**30
                result.update(invoke_rates(models[0], args.threads))
            rows.append((name, side, result))
    print(f"| model | converter | wall s | peak RSS GB | size GB | prefill_128 tok/s | decode tok/s ({args.threads} threads) |")
    print("|---|---|---|---|---|---|---|")
    for name, side, r in rows:
        if "error" in r:
            print(f"| {name} | {side} | failed: {r['error']} | | | | |")
        else:
            print(f"| {name} | {side} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['size_gb']:.2f} | {r['prefill_tokens_per_second']:.1f} | {r['decode_tokens_per_second']:.2f} |")
    print("\n| model | wall ratio | peak RSS ratio | decode speed ratio |  (edgellm / litert-torch)")
    print("|---|---|---|---|")
    by_model = {}
    for name, side, r in rows:
        by_model.setdefault(name, {})[side] = r
    for name, sides in by_model.items():
        ours, theirs = sides.get("edgellm", {}), sides.get("litert-torch", {})
        if "seconds" in ours and "seconds" in theirs:
            print(f"| {name} | {ours['seconds'] / theirs['seconds']:.2f} | {ours['peak_rss_gb'] / theirs['peak_rss_gb']:.2f} | "
                  f"{ours['decode_tokens_per_second'] / theirs['decode_tokens_per_second']:.2f} |")


if __name__ == "__main__":
    main()
