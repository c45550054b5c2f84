"""Shared fixtures: real assets from ../shared/assets, the real CLI in a subprocess, a private cache."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgellm.spec.load import BUILTIN_SPECS as SPECS

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
DEMO = SPECS.parent / "demo" / "stories260K"
EXPECTED_GREEDY = "checkpoints/stories260K-llama2c/expected_greedy_200steps.txt"
# Real trained checkpoints, fetched by ../shared/tools/get_real_models.sh (make install).
REAL_SMOLLM2 = Path(os.environ.get("EDGELLM_REAL_MODELS", Path.home() / ".cache" / "edgellm-real-models")) / "smollm2-135m-instruct"


def asset(relative: str) -> Path:
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"shared asset {relative} is absent (expected at {ASSETS}); see ../shared/assets/README.md")
    return path


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(*args: str, cache: Path, env: dict | None = None, cwd: Path = REPO, stdin: str | None = None) -> Result:
    """Run the installed `edgellm` entry point for real, as a user or CI would."""
    full_env = {**os.environ, "EDGELLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", **(env or {})}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "edgellm", *args], check=False, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=900, input=stdin or ""
    )
    return Result(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


LITERT_LM_GREEDY = """
import json, sys, litert_lm as lm
texts = []
for bundle in sys.argv[3:]:
    engine = lm.Engine(bundle, backend=lm.Backend.CPU(), cache_dir=sys.argv[2])
    session = engine.create_session(apply_prompt_template=False, sampler_config=lm.SamplerConfig(top_k=1),
                                    max_output_tokens=int(sys.argv[1]))
    session.run_prefill([""])  # from the bundle's start token alone
    texts.append("".join(r.texts[0] for r in session.run_decode_async()))
    session.close(); engine.close()
print(json.dumps(texts))
"""


def litert_lm_greedy(bundles: list[Path], max_tokens: int, scratch: Path) -> list[str]:
    """Greedy text of each .litertlm from its start token, in LiteRT-LM's own engine (one process)."""
    pytest.importorskip("litert_lm", reason="litert-lm-api is a dev extra: make install")
    engine = subprocess.run([sys.executable, "-c", LITERT_LM_GREEDY, str(max_tokens), str(scratch), *map(str, bundles)],
                            check=False, capture_output=True, text=True, timeout=600)
    assert engine.returncode == 0, engine.stderr[-2000:]
    return json.loads(engine.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, what: str, seconds: float = 120) -> None:
    """Until a server started by a test accepts connections on 127.0.0.1:`port` (fails if it exits or takes too long)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.2)


def cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.fixture(scope="session", autouse=True)
def private_cache_root(tmp_path_factory):
    """Code that runs in the test process (LiteRTModel's weight cache, pipelines without a cache
    argument) writes to a cache of the session's, never the user's ~/.cache/edgellm."""
    os.environ["EDGELLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("session-cache"))


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """tiny_build(spec name) -> (spec, tiny checkpoint, cache): one per shipped spec for the whole
    run, so every module that converts a spec's tiny checkpoint converts it once (tiny_models.py)."""
    from tiny_models import make_tiny_checkpoint

    from edgellm.infra.cache import ArtifactCache
    from edgellm.spec.load import load_spec

    builds: dict = {}

    def build(name: str):
        if name not in builds:
            asset("corpora/tinyshakespeare/input.txt")  # what the tokenizer.json stand-in is trained on
            spec = load_spec(SPECS / f"{name}.yaml")
            root = tmp_path_factory.mktemp(name)
            builds[name] = spec, make_tiny_checkpoint(name, root / "ckpt", spec.tokenizer.file), ArtifactCache(root / "cache")
        return builds[name]

    return build


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    """A writable copy of the demo checkpoint, for tests that damage it."""
    folder = tmp_path / "stories260K"
    shutil.copytree(DEMO, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


@dataclass
class Build:
    cache: Path
    output: Path
    first: Result
    second: Result


@pytest.fixture(scope="session")
def stories_build(tmp_path_factory) -> Build:
    """stories260K built once through the CLI (the slow part: a real conversion), then built again."""
    root = tmp_path_factory.mktemp("stories")
    cache, output = root / "cache", root / "out"
    first = run_cli("build", "--spec", str(SPECS / "stories260k.yaml"), "-o", str(output), "--json", cache=cache)
    assert first.code == 0, first.stderr
    second = run_cli("build", "--spec", str(SPECS / "stories260k.yaml"), "-o", str(output), cache=cache)
    assert second.code == 0, second.stderr
    return Build(cache, output, first, second)

