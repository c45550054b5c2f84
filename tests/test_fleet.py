"""Fleet builds: `matrix run` / `matrix plan` and the shared cache tier, against a real S3 server
(moto's standalone server on 127.0.0.1), reached through the same client code users run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import free_port, run_cli, wait_for_port
from tiny_models import make_tiny_checkpoint

from edgellm.spec.load import load_spec

BUCKET = "edgellm-fleet"
MODELS = ("smollm2-135m", "qwen3-0.6b")
RECIPES = ("int8-dynamic", "fp16")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 server on a free loopback port, with one bucket; yields the environment that points clients at it."""
    pytest.importorskip("moto", reason="moto[server] is a dev extra: make install")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    try:
        wait_for_port(port, server, "the S3 server")
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket=BUCKET)
        yield env, client
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def matrix_file(tmp_path_factory) -> Path:
    """A 2-model x 2-recipe matrix of tiny checkpoints written by their transformers classes."""
    root = tmp_path_factory.mktemp("matrix")
    lines = ["models:"]
    for name in MODELS:
        make_tiny_checkpoint(name, root / name, load_spec(name).tokenizer.file)
        lines += [f"  - spec: {name}", f"    checkpoint: {name}"]
    lines += [f"recipes: [{', '.join(RECIPES)}]", "export: {prefill_lengths: [8], kv_cache_length: 64}"]
    (root / "fleet.yaml").write_text("\n".join(lines) + "\n")
    return root / "fleet.yaml"


def _matrix_run(matrix: Path, cache: Path, url: str, env: dict, *extra: str) -> subprocess.Popen:
    full_env = {**os.environ, **env, "EDGELLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgellm", "matrix", "run", str(matrix), "--cache", url, "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def _cells(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=1200)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)["cells"]


def _ran(cells: list[dict], stage: str) -> Counter:
    return Counter(cell["model"] if stage == "convert" else cell["id"] for cell in cells for s in cell["stages"] if s["stage"] == stage and s["how"] == "ran")


def _output_digests(cells: list[dict]) -> dict[str, str]:
    return {cell["id"]: hashlib.sha256(Path(cell["outputs"][0]).read_bytes()).hexdigest() for cell in cells}


@pytest.fixture(scope="module")
def raced(s3, matrix_file, tmp_path_factory):
    """Two `matrix run`s started at once, on two local caches and one bucket."""
    env, _ = s3
    root = tmp_path_factory.mktemp("race")
    url = f"s3://{BUCKET}/race"
    runs = [_matrix_run(matrix_file, root / f"cache-{i}", url, env) for i in range(2)]
    return url, [_cells(run) for run in runs]


def test_two_racing_runs_build_each_artifact_once(raced):
    _, (first, second) = raced
    both = first + second
    assert all(cell["status"] != "failed" for cell in both), [cell["error"] for cell in both]
    assert _ran(both, "convert") == Counter({name: 1 for name in MODELS})  # each model converted once in total
    assert _ran(both, "quantize") == Counter({f"{m}/{r}": 1 for m in MODELS for r in RECIPES})  # each cell quantized once
    assert _output_digests(first) == _output_digests(second)  # the loser adopted the winner's artifacts


def test_a_fresh_runner_fetches_every_cell_and_builds_nothing(raced, s3, matrix_file, tmp_path):
    url, (first, _) = raced
    env, _ = s3
    plan = run_cli("matrix", "plan", str(matrix_file), "--cache", url, "--json", cache=tmp_path / "cache", env=env)
    assert plan.code == 0, plan.stderr
    assert {row["where"] for row in json.loads(plan.stdout)} == {"remote"}
    cells = _cells(_matrix_run(matrix_file, tmp_path / "cache", url, env))
    assert [cell["status"] for cell in cells] == ["fetched"] * 4
    assert not any(s["how"] == "ran" for cell in cells for s in cell["stages"])
    assert _output_digests(cells) == _output_digests(first)
    emitted = run_cli("matrix", "plan", str(matrix_file), "--emit", "gitlab", cache=tmp_path / "other", env=env)
    assert emitted.code == 0 and emitted.stdout.count("smollm2-135m/") == 2, emitted.stdout  # nothing local: every cell is a job


def test_a_corrupt_remote_blob_is_named_and_rebuilt(raced, s3, matrix_file, tmp_path):
    url, (first, _) = raced
    env, client = s3
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    cell = first[0]
    quantize_key = next(s["key"] for s in cell["stages"] if s["stage"] == "quantize")
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifests/quantize/{quantize_key}.json")["Body"].read())
    blob = f"{prefix}/blobs/{manifest['files']['model.tflite']['sha256']}"
    data = bytearray(client.get_object(Bucket=BUCKET, Key=blob)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    client.put_object(Bucket=BUCKET, Key=blob, Body=bytes(data))
    verify = run_cli("cache", "verify", "--cache", url, cache=tmp_path / "cache", env=env)
    assert verify.code == 3 and f"quantize {quantize_key}: model.tflite does not match its digest" in verify.stdout
    rebuilt = run_cli("matrix", "run", str(matrix_file), "--cell", cell["id"], "--cache", url, "--json", cache=tmp_path / "cache", env=env)
    assert rebuilt.code == 0, rebuilt.stderr
    assert "is corrupt; dropping it and rebuilding" in rebuilt.stderr
    (report,) = json.loads(rebuilt.stdout)["cells"]
    assert {s["stage"]: s["how"] for s in report["stages"]}["quantize"] == "ran"
    assert _output_digests([report]) == _output_digests([cell])
    assert run_cli("cache", "verify", "--cache", url, cache=tmp_path / "cache", env=env).code == 0  # republished whole


def test_cache_ls_and_gc_on_the_remote_tier(s3, matrix_file, tmp_path):
    env, _ = s3
    url = f"s3://{BUCKET}/gc"
    run = run_cli("matrix", "run", str(matrix_file), "--cell", "smollm2-135m/fp16", "--cache", url, cache=tmp_path / "cache", env=env)
    assert run.code == 0, run.stderr
    listed = json.loads(run_cli("cache", "ls", "--cache", url, "--json", cache=tmp_path / "cache", env=env).stdout)
    assert {e["stage"] for e in listed} == {"verify", "convert", "verify-tflite", "quantize", "cell"}
    kept = run_cli("cache", "gc", "--older-than", "1h", "--cache", url, "--json", cache=tmp_path / "cache", env=env)
    assert json.loads(kept.stdout)["deleted"] == 0
    gone = run_cli("cache", "gc", "--older-than", "0s", "--cache", url, "--json", cache=tmp_path / "cache", env=env)
    assert json.loads(gone.stdout)["deleted"] == len(listed)
    assert json.loads(run_cli("cache", "ls", "--cache", url, "--json", cache=tmp_path / "cache", env=env).stdout) == []


def test_local_gc_keeps_what_a_kept_cell_record_names(matrix_file, tmp_path):
    cache = tmp_path / "cache"
    assert run_cli("matrix", "run", str(matrix_file), "--cell", "qwen3-0.6b/fp16", cache=cache).code == 0
    listed = json.loads(run_cli("cache", "ls", "--json", cache=cache).stdout)
    old = time.time() - 3 * 86400
    for entry in listed:
        if entry["stage"] != "cell":
            folder = cache / entry["stage"] / entry["key"]
            for path in [folder, *folder.iterdir()]:
                os.utime(path, (old, old))
    gc = run_cli("cache", "gc", "--older-than", "1d", "--json", cache=cache)
    assert json.loads(gc.stdout)["deleted"] == 0  # the fresh record names every stage of its cell
    assert run_cli("cache", "verify", cache=cache).code == 0


def test_a_failed_cell_does_not_stop_the_others(matrix_file, tmp_path):
    (tmp_path / "empty").mkdir()
    matrix = tmp_path / "partly-broken.yaml"
    matrix.write_text(f"models:\n  - spec: smollm2-135m\n    checkpoint: {matrix_file.parent / 'smollm2-135m'}\n"
                      f"  - spec: qwen3-0.6b\n    checkpoint: {tmp_path / 'empty'}\nrecipes: [fp16]\n")
    result = run_cli("matrix", "run", str(matrix), "--json", cache=tmp_path / "cache")
    assert result.code == 4, result.stderr
    cells = {cell["id"]: cell for cell in json.loads(result.stdout)["cells"]}
    assert cells["smollm2-135m/fp16"]["status"] == "built" and cells["smollm2-135m/fp16"]["error"] is None
    assert cells["qwen3-0.6b/fp16"]["status"] == "failed" and "config.json" in cells["qwen3-0.6b/fp16"]["error"]


@pytest.mark.parametrize("content, message", [
    ("models: []\nrecipes: [int8-dynamic]\n", "models: "),
    ("models:\n  - spec: smollm2-135m\nrecipes: [int9]\n", "unknown recipe 'int9'"),
    ("models:\n  - spec: smollm2-135m\nrecipes: [fp16]\nbundles: [zip]\n", "unknown bundle format 'zip'"),
    ("models:\n  - spec: smollm2-135m\n    size: 3\nrecipes: [fp16]\n", "models.0.size: unknown key"),
    ("models:\n  - spec: smollm2-135m\nrecipes: [fp16]\nexport: {kv_cache_length: 0}\n", "export overrides of smollm2-135m"),
    ("models: [\n", "not valid YAML"),
])
def test_a_bad_matrix_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_cli("matrix", "run", str(path), cache=tmp_path / "cache")
    assert result.code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_an_unknown_cell_and_a_bad_cache_url_are_one_line(matrix_file, tmp_path):
    cell = run_cli("matrix", "run", str(matrix_file), "--cell", "nope/fp16", cache=tmp_path / "cache")
    assert cell.code == 2 and "no cell 'nope/fp16'" in cell.stderr
    url = run_cli("matrix", "plan", str(matrix_file), "--cache", "ftp://host/x", cache=tmp_path / "cache")
    assert url.code == 2 and "unsupported scheme 'ftp'" in url.stderr


@pytest.mark.slow
def test_ray_builds_the_same_artifacts(raced, s3, matrix_file, tmp_path):
    pytest.importorskip("ray", reason="Ray is the [ray] extra: make install")
    _, (first, _) = raced
    env, _ = s3
    cells = _cells(_matrix_run(matrix_file, tmp_path / "cache", f"s3://{BUCKET}/ray", env, "--executor", "ray", "--jobs", "2"))
    assert [cell["status"] for cell in cells] == ["built"] * 4
    assert _output_digests(cells) == _output_digests(first)  # the same content hashes as the local executor's
