"""How far a long loop is (calibration windows, search scores, eval windows), told to whoever
listens: the CLI's progress bar. Without a listener it costs a list lookup."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[int, int | None], None]  # (steps done, steps in all; None: not known)
_listeners: list[Listener] = []


def advance(done: int, total: int | None) -> None:
    for listener in _listeners:
        listener(done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
