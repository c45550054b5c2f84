"""Time `edgellm --help` and a cold vs cached `edgellm build` of the demo model; prints a table.

    .venv/bin/python bench/cli_timings.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(*args: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / "edgellm"), *args], check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EDGELLM_CACHE_DIR": tmp, "HF_HUB_OFFLINE": "1"}
        help_s = min(timed("--help", env=env) for _ in range(5))
        build = ("build", "--spec", "stories260k", "-o", f"{tmp}/out")
        cold = timed(*build, env=env)
        cached = timed(*build, env=env)
    rows = [
        ("edgellm --help (best of 5)", f"{help_s:.3f} s", "goal < 0.5 s"),
        ("build stories260k, cold cache", f"{cold:.2f} s", ""),
        ("build stories260k, cached", f"{cached:.2f} s", f"{cached / cold:.1%} of cold (goal < 10%)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'time':>9}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>9}  {note}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
