"""Running a matrix's cells: each in its own `edgellm matrix run --cell` process, here (at most as
many at once as the cores allow and the memory estimates fit in what is free) or as Ray tasks that
request that memory and a core on an existing cluster.

A process per cell keeps one cell's crash or memory from the others, and is the same command a CI
job runs for its one cell, so every executor builds exactly what `matrix run --cell` builds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgellm.infra.heap import proc_bytes
from edgellm.pipeline.matrix import Cell


def cell_command(matrix: Path, cell: Cell, cache_url: str | None) -> list[str]:
    return [sys.executable, "-m", "edgellm", "matrix", "run", str(matrix.resolve()), "--cell", cell.id, "--json",
            *(["--cache", cache_url] if cache_url else [])]


def run_cell_process(command: list[str], cell_id: str) -> dict:
    """One cell in its own process; its JSON report, or a failed one carrying the process's last words."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout)["cells"][0]
    except (json.JSONDecodeError, KeyError, IndexError):
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"id": cell_id, "status": "failed", "error": last.removeprefix("error: "), "stages": [], "outputs": []}


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable), or all of it where that is unknown."""
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    return available if available is not None else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def run_here(commands: dict[str, list[str]], estimates: dict[str, int], jobs: int, on_done: Callable[[dict], None]) -> list[dict]:
    """Cells as processes on this machine: at most `jobs` at once, and a cell starts only while the
    estimates of those running and its own fit in the memory free at the start (one always may)."""
    budget, held, gate = available_memory(), [0], threading.Condition()

    def one(cell_id: str) -> dict:
        need = min(estimates[cell_id], budget)
        with gate:
            gate.wait_for(lambda: held[0] == 0 or held[0] + need <= budget)
            held[0] += need
        try:
            report = run_cell_process(commands[cell_id], cell_id)
        finally:
            with gate:
                held[0] -= need
                gate.notify_all()
        on_done(report)
        return report

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, commands))


def run_on_ray(commands: dict[str, list[str]], estimates: dict[str, int], address: str | None, jobs: int, on_done: Callable[[dict], None]) -> list[dict]:
    """Cells as Ray tasks, each asking for a core and its memory estimate; `address`: an existing
    cluster (whose nodes see the matrix file and checkpoints at the same paths), else a local Ray."""
    from edgellm.errors import EdgeLLMError

    try:
        import ray
    except ImportError:
        raise EdgeLLMError("--executor ray needs Ray: pip install 'edgellm[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        # A local Ray inherits this process's cache settings; a cluster's nodes keep their own local cache.
        local = {name: os.environ[name] for name in ("EDGELLM_CACHE_DIR", "HF_HUB_OFFLINE", "HF_HOME") if name in os.environ}
        ray.init(address=address, num_cpus=None if address else jobs, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": local} if local and not address else None)
    try:
        task = ray.remote(run_cell_process)
        # A request above every node's memory would wait forever: the largest node takes it whole instead.
        largest = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"]), default=0) or None
        pending = {task.options(num_cpus=1, memory=min(estimates[cell_id], largest or estimates[cell_id]), name=f"edgellm {cell_id}")
                   .remote(command, cell_id): cell_id
                   for cell_id, command in commands.items()}
        reports = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell_id = pending.pop(ready[0])
            reports[cell_id] = ray.get(ready[0])
            on_done(reports[cell_id])
        return [reports[cell_id] for cell_id in commands]
    finally:
        if started_here:
            ray.shutdown()
