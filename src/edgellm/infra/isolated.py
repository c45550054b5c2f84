"""Run a stage's native-heavy work in a worker process.

The converter's native code ends the process on some failures (an I/O error on a full disk, an
allocation it cannot make) instead of raising, so no Python cleanup would run and the user would
see a bare exit status. In a worker, only the worker ends: edgellm reports it in one line, and the
stage's staging folder is removed as for any other failure. A worker is also killed with edgellm:
on Ctrl-C nothing is left running behind it.

A worker can be started ahead of its stage (`start_ahead`), so that its seconds of imports (torch,
the converter) overlap the stages before it instead of following them.
"""

from __future__ import annotations

import importlib
import multiprocessing
import resource
from collections.abc import Callable

from edgellm.errors import EdgeLLMError
from edgellm.infra.heap import map_large_allocations

_spare = None  # (process, task sender, result receiver): a worker started ahead, not yet given work


def _work(tasks, results, modules: tuple[str, ...]) -> None:
    map_large_allocations()
    for module in modules:
        importlib.import_module(module)
    try:
        function, args = tasks.recv()
    except EOFError:
        return  # discarded: its stage did not need it
    try:
        outcome = (True, function(*args), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except EdgeLLMError as exc:
        outcome = (False, exc, 0)
    except BaseException as exc:  # noqa: BLE001 - sent back as the parent's internal error
        outcome = (False, RuntimeError(f"{type(exc).__name__}: {exc}"), 0)
    results.send(outcome)


def _start(modules: tuple[str, ...]):
    context = multiprocessing.get_context("spawn")  # no fork: torch's threads do not survive one
    task_receiver, task_sender = context.Pipe(duplex=False)
    result_receiver, result_sender = context.Pipe(duplex=False)
    worker = context.Process(target=_work, args=(task_receiver, result_sender, modules), daemon=True)
    worker.start()
    task_receiver.close()
    result_sender.close()
    return worker, task_sender, result_receiver


def start_ahead(modules: tuple[str, ...]) -> None:
    """Start the next worker now, importing `modules` while this process goes on; the next
    `run_isolated` gives it its work."""
    global _spare
    if _spare is None:
        _spare = _start(modules)


def discard_spare() -> None:
    """End a worker started ahead that no stage took (its stage was cached)."""
    global _spare
    if _spare is not None:
        worker, tasks, results = _spare
        _spare = None
        _stop(worker, tasks, results)


def _stop(worker, tasks, results) -> None:
    tasks.close()
    results.close()
    if worker.is_alive():
        worker.terminate()
    worker.join()


def run_isolated(function: Callable, args: tuple, what: str) -> tuple[object, int]:
    """`function(*args)` in a fresh process (the one started ahead, if any): its result and the
    worker's peak RSS in bytes."""
    global _spare
    (worker, tasks, results), _spare = _spare or _start(()), None
    try:
        tasks.send((function, args))
        ok, value, peak_kb = results.recv()
    except (EOFError, BrokenPipeError):
        worker.join()
        raise EdgeLLMError(
            f"{what} died (its process ended with status {worker.exitcode}): native code ends like this when the disk is full "
            "or memory runs out; free space or memory and run it again"
        ) from None
    finally:
        _stop(worker, tasks, results)
    if not ok:
        raise value
    return value, peak_kb * 1024
