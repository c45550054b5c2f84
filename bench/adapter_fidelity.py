"""A swappable LoRA adapter on a quantized base: how close it stays to transformers + peft.

    .venv/bin/python bench/adapter_fidelity.py PEFT_DIR [--checkpoint ~/.cache/edgellm-real-models/smollm2-135m-instruct]
        [--recipes float,int8-dynamic,int4] [--work /tmp/edgellm-adapters]

Real SmolLM2-135M-Instruct is built once with rank-16 LoRA inputs (`--lora-rank 16`), quantized with
each recipe (the LoRA inputs stay float: they are activations to the converter), and the PEFT
adapter (scripts/train_lora.py writes one) becomes each model's LoRA file. On held-out
tinyshakespeare windows (the end of the corpus the script trains on the start of), the logits of
edgellm's runtime with the LoRA file are compared with transformers + peft applying the adapter in
float: max and mean |Δlogit|, top-1 agreement and both perplexities. The last column is whether
LiteRT-LM's engine, loading the same LoRA file, writes the same 32-token greedy text as `edgellm run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from train_lora import CORPUS

REAL = Path.home() / ".cache" / "edgellm-real-models" / "smollm2-135m-instruct"


def perplexity(logits: np.ndarray, tokens: list[int]) -> float:
    shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(tokens) - 1), tokens[1:]].mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peft_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=REAL)
    parser.add_argument("--recipes", default="float,int8-dynamic,int4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-adapters"))
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("EDGELLM_CACHE_DIR", str(args.work / "cache"))

    import torch
    from transformers import AutoTokenizer

    from edgellm.bundle.adapter import engine_texts, write_adapter
    from edgellm.cli.options import with_lora_inputs
    from edgellm.pipeline.stages import Pipeline
    from edgellm.quantize.recipes import load_recipe
    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.runtime.generate import Generator
    from edgellm.spec.load import load_spec
    from edgellm.verify.logits import load_reference, with_adapters

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    ids = tokenizer(CORPUS.read_text(encoding="utf-8")[-20_000:])["input_ids"]
    windows = [ids[i * 128:(i + 1) * 128] for i in range(args.windows)]
    reference = with_adapters(load_reference(args.checkpoint, "MODEL_FOR_CAUSAL_LM_MAPPING"), [args.peft_dir])
    with torch.no_grad():
        theirs = [reference(torch.tensor([w])).logits[0].numpy() for w in windows]
    del reference

    spec = with_lora_inputs(load_spec("smollm2-135m"), "16", None)
    print("| base recipe | max abs dlogit | mean abs dlogit | top-1 agreement | ppl edgellm | ppl transformers+peft | LiteRT-LM text = edgellm run |")
    print("|---|---|---|---|---|---|---|")
    for name in args.recipes.split(","):
        out = args.work / name
        recipe = None if name == "float" else load_recipe(name)
        build = Pipeline(spec, checkpoint=args.checkpoint, recipe=recipe, formats=("litertlm",), output=out)
        build.run(build.build_stages())
        lora = out / "adapter.tflite"
        write_adapter(args.peft_dir, out / "model.tflite", lora)
        model = LiteRTModel(out / "model.tflite")
        model.load_adapter(lora)
        diffs, agree, ppl_ours, ppl_theirs = [], [], [], []
        for window, reference_logits in zip(windows, theirs):
            model.reset()
            ours = model.prefill(window, 0)
            diffs.append(np.abs(ours - reference_logits))
            agree.append((ours.argmax(-1) == reference_logits.argmax(-1)).mean())
            ppl_ours.append(perplexity(ours, window))
            ppl_theirs.append(perplexity(reference_logits, window))
        generator = Generator(out / "model.tflite")
        generator.load_adapter(lora)
        prompt = generator.prompt_ids("ROMEO:")
        ours_text = "".join(generator.complete(prompt, 32, []))
        [engine] = engine_texts(out / "smollm2-135m.litertlm", [lora], "ROMEO:", 32)
        print(f"| {name} | {max(d.max() for d in diffs):.3g} | {np.mean([d.mean() for d in diffs]):.3g} | {np.mean(agree):.1%} | "
              f"{np.mean(ppl_ours):.2f} | {np.mean(ppl_theirs):.2f} | {'yes' if engine == ours_text else 'NO: ' + repr(engine[:40])} |", flush=True)


if __name__ == "__main__":
    main()
