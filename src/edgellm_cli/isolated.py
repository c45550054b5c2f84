"""Run a stage's native-heavy work in a worker process.

The converter's native code ends the process on some failures (an I/O error on a full disk, an
allocation it cannot make) instead of raising, so no Python cleanup would run and the user would
see a bare exit status. In a worker, only the worker ends: edgellm reports it in one line, and the
stage's staging folder is removed as for any other failure. A worker is also killed with edgellm:
on Ctrl-C nothing is left running behind it.
"""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable

from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.heap import map_large_allocations


def _work(sender, function: Callable, args: tuple) -> None:
    map_large_allocations()
    try:
        outcome = (True, function(*args), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except EdgeLLMError as exc:
        outcome = (False, exc, 0)
    except BaseException as exc:  # noqa: BLE001 - sent back as the parent's internal error
        outcome = (False, RuntimeError(f"{type(exc).__name__}: {exc}"), 0)
    sender.send(outcome)


def run_isolated(function: Callable, args: tuple, what: str) -> tuple[object, int]:
    """`function(*args)` in a fresh process: its result and the worker's peak RSS in bytes."""
    context = multiprocessing.get_context("spawn")  # no fork: torch's threads do not survive one
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_work, args=(sender, function, args), daemon=True)
    worker.start()
    sender.close()
    try:
        ok, value, peak_kb = receiver.recv()
    except EOFError:
        worker.join()
        raise EdgeLLMError(
            f"{what} died (its process ended with status {worker.exitcode}): native code ends like this when the disk is full "
            "or memory runs out; free space or memory and run it again"
        ) from None
    finally:
        if worker.is_alive():
            worker.terminate()
        worker.join()
    if not ok:
        raise value
    return value, peak_kb * 1024
