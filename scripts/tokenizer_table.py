"""Print the README table: edgellm's `tokenizer to-spm` against litert-torch's tokenizer_to_sentencepiece.

Both converters run on the same tokenizers from ../shared/assets, and both results are measured
by the same `edgellm.text.tokenizer_check.check`: (a) 1,000 random id pairs (seed 0), strict / loose mismatch;
(b) llama.cpp's test vectors; (c) every non-empty line of WikiText-2 test, exact id match.
litert-torch runs in a subprocess (as its documented CLI; its own
verification cut to 1 pair, since ours measures it); a crash is reported as such. It runs in
the interpreter given by --litert-torch-python (default: this one; litert-torch 0.10's
tokenizer tool needs no TensorFlow, but an environment with tensorflow-cpu, such as the one in
bench/README.md, works too); it is never an edgellm dependency.

    .venv/bin/python scripts/tokenizer_table.py [--litert-torch-python /tmp/lt-venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.text.spm import to_sentencepiece
from edgellm.text.tokenizer_check import check

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
CORPUS = ASSETS / "corpora/wikitext2-test/wikitext-2-raw-test.txt"
# name: (what edgellm converts, the folder litert-torch's AutoTokenizer loads, llama.cpp vectors)
CASES = {
    "tinyllama-chat": ("tinyllama-chat/tokenizer.json", "tinyllama-chat", "llama-spm"),
    "gpt2": ("gpt2", "gpt2", "gpt-2"),
    "phi-2": ("phi-2/tokenizer.json", "phi-2", "phi-2"),
    "phi-3-mini": ("phi-3-mini/tokenizer.json", "phi-3-mini", "phi-3"),
    "qwen2": ("qwen2", "qwen2", "qwen2"),
}


def litert_torch(python: str, folder: Path, out: Path) -> str | None:
    """Run litert-torch's converter; None on success, else its last error line."""
    done = subprocess.run(
        [python, "-m", "litert_torch.generative.tools.tokenizer_to_sentencepiece", f"--checkpoint={folder}", f"--output_path={out}", "--num_pairs_to_verify=1"],
        check=False, capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    if done.returncode == 0 and out.is_file():
        return None
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1][:120] if lines else f"exit code {done.returncode}"


def cells(reference: Path, model: Path, vectors: str) -> list[str]:
    r = check(reference, model, pairs=1000, seed=0, vectors=ASSETS / f"tokenizer-vectors/ggml-vocab-{vectors}.gguf.inp", corpus=CORPUS)
    p, v, c = r["pairs"], r["vectors"], r["corpus"]
    return [f"{100 * p['strict_rate']:.1f} % / {100 * p['loose_rate']:.1f} %", f"{v['passed']}/{v['total']}", f"{100 * c['exact_rate']:.2f} % ({c['exact']}/{c['lines']})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litert-torch-python", default=sys.executable, help="Interpreter with litert-torch installed.")
    args = parser.parse_args()
    print("| tokenizer | converter | (a) strict / loose mismatch | (b) llama.cpp vectors | (c) WikiText-2 lines exact |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (ours_source, folder, vectors) in CASES.items():
            reference = ASSETS / "tokenizers" / ours_source
            ours, theirs = Path(tmp) / f"{name}-edgellm.model", Path(tmp) / f"{name}-litert.model"
            try:
                to_sentencepiece(reference, ours, pairs=0)
                row = cells(reference, ours, vectors)
            except EdgeLLMError as exc:
                row = [f"failed: {exc}", "", ""]
            print(f"| {name} | edgellm | " + " | ".join(row) + " |")
            crash = litert_torch(args.litert_torch_python, ASSETS / "tokenizers" / folder, theirs)
            row = cells(reference, theirs, vectors) if crash is None else [f"crashed: {crash.replace('|', '/')}", "—", "—"]
            print(f"| {name} | litert-torch | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
