"""Peak memory of a 4-cell matrix of real-size models built at once on this machine, against its memory.

    .venv/bin/python bench/matrix_memory.py [--models smollm2-135m,tinyllama-1.1b] [--recipes int8-dynamic,fp16]
        [--real-models ~/.cache/edgellm-real-models] [--work /tmp/edgellm-matrix-memory]

SmolLM2-135M-Instruct is the real model; the others are random-weight checkpoints at the real shapes
(bench/convert_vs_litert_torch.py). `edgellm matrix run` starts cells while their memory estimates
fit in what the machine has free; the whole process tree's resident memory is sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_vs_litert_torch import measured  # a sibling script
from memory import checkpoint_for  # a sibling script

from edgellm.spec.load import find_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,tinyllama-1.1b")
    parser.add_argument("--recipes", default="int8-dynamic,fp16")
    parser.add_argument("--real-models", type=Path, default=Path.home() / ".cache" / "edgellm-real-models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgellm-matrix-memory"))
    args = parser.parse_args()
    lines = ["models:"]
    for name in args.models.split(","):
        checkpoint = checkpoint_for(name, args.real_models, args.work / name)
        spec = name
        if name != "smollm2-135m":  # a random checkpoint carries a stand-in tokenizer (TinyLlama's)
            spec = str(args.work / name / "bench.yaml")
            Path(spec).write_text(f"extends: {find_spec(name)}\ntokenizer:\n  file: tokenizer.model\n  bos_id: 1\n  eos_ids: [2]\n  stop_ids: []\n")
        lines += [f"  - spec: {spec}", f"    checkpoint: {checkpoint}"]
    lines.append(f"recipes: [{args.recipes}]")
    matrix = args.work / "matrix.yaml"
    matrix.write_text("\n".join(lines) + "\n")
    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    run = measured([sys.executable, "-m", "edgellm", "matrix", "run", str(matrix), "--json"], env)
    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if "error" in run:
        sys.exit(f"matrix run failed: {run['error']}")
    print("| cell | status | stages that ran |")
    print("|---|---|---|")
    for cell in json.loads(run["stdout"])["cells"]:
        print(f"| {cell['id']} | {cell['status']} | {', '.join(s['stage'] for s in cell['stages'] if s['how'] == 'ran')} |")
    print(f"\nwhole tree peak RSS {run['peak_rss_gb']:.2f} GiB of {machine / 2**30:.1f} GiB, {run['seconds']:.0f} s")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
