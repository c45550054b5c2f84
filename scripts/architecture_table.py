"""Print the README's architecture table: each shipped spec on a tiny random checkpoint made by
its real transformers class, re-authored and converted, compared with transformers' logits.

    .venv/bin/python scripts/architecture_table.py [SPEC...]   # every shipped spec, or the ones named
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tiny_models import TINY, make_tiny_checkpoint

from edgellm.infra.cache import ArtifactCache
from edgellm.infra.quiet import quiet_libraries
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.load import load_spec


def main() -> None:
    quiet_libraries()
    print("| spec | transformers class | logit std | re-authored max \\|Δlogit\\| | .tflite max \\|Δlogit\\| | top-1 agreement (.tflite) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or sorted(TINY):
            spec = load_spec(name)
            folder = make_tiny_checkpoint(name, Path(tmp) / name, spec.tokenizer.file)
            pipeline = Pipeline(spec, checkpoint=folder, cache=ArtifactCache(Path(tmp) / "cache"))
            ours = pipeline.result("verify").report.comparisons["reauthored_vs_transformers"]
            tflite = pipeline.result("verify-tflite").report.comparisons["tflite_vs_transformers"]
            cls = json.loads((folder / "config.json").read_text())["architectures"][0]
            spread = np.load(pipeline.result("verify").path / "reference_logits.npy").std()
            print(f"| {name} | {cls} | {spread:.2f} | {ours.max_abs_logit_diff:.1e} | {tflite.max_abs_logit_diff:.1e} | {tflite.top1_agreement:.0%} |", flush=True)


if __name__ == "__main__":
    main()
