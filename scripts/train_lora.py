"""Train a small real LoRA adapter with peft: SmolLM2-135M-Instruct taught to continue Shakespeare.

Rank 8 on the attention projections (q, k, v, o: what LiteRT-LM's swappable LoRA feeds, so the same
adapter merges with `edgellm build --adapter` and swaps with `edgellm adapter`), a few minutes of CPU
on the shipped tinyshakespeare corpus. Prints the held-out loss before and after, and writes the
folder PEFT's save_pretrained writes.

    .venv/bin/python scripts/train_lora.py ~/.cache/edgellm-real-models/smollm2-135m-instruct -o build/shakespeare-lora
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "corpora" / "tinyshakespeare" / "input.txt"


def windows(ids: list[int], length: int) -> torch.Tensor:
    count = len(ids) // length
    return torch.tensor(ids[: count * length]).view(count, length)


def held_out_loss(model, batches: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(float(model(input_ids=b[None], labels=b[None]).loss) for b in batches) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="SmolLM2-135M-Instruct folder (../shared/tools/get_real_models.sh)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--length", type=int, default=64, help="tokens per training window")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    data = windows(tokenizer(args.corpus.read_text(encoding="utf-8")[:400_000])["input_ids"], args.length)
    train, held_out = data[:-16], data[-16:]
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    before = held_out_loss(model.eval(), held_out)
    started = time.perf_counter()
    model.train()
    order = torch.randperm(len(train))
    for step in range(args.steps):
        batch = train[order[(step * args.batch) % len(train):][: args.batch]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss):.3f}  {time.perf_counter() - started:6.1f}s", flush=True)
    after = held_out_loss(model.eval(), held_out)
    model.save_pretrained(args.output)
    print(f"held-out loss {before:.3f} -> {after:.3f} over {len(held_out)} windows of {args.length} tokens; adapter in {args.output}")


if __name__ == "__main__":
    main()
