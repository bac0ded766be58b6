"""Signals that stop training: Ctrl-C (SIGINT) and SIGTERM (``kill``, cluster schedulers)."""
from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _handlers(handler) -> Iterator[bool]:
    """Install ``handler`` for the stop signals within the block; yields False (and changes
    nothing) outside the main thread, where Python cannot install handlers."""
    try:
        old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:
        yield False
        return
    try:
        yield True
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class _Critical:
    """Whether the main thread is inside :func:`critical_section` and whether a stop signal
    arrived there."""
    depth = 0
    pending = False


def _stop_now(signum, frame) -> None:
    """The stop-signal handler: ``KeyboardInterrupt``, or, inside a critical section, a note
    that raises it when the section ends."""
    if _Critical.depth > 0:
        _Critical.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """A block that a stop signal must not cut in two: the optimiser update and the counters
    that say it happened (a checkpoint saying step N must hold step N's weights). A signal that
    arrives inside it raises ``KeyboardInterrupt`` right after it (nesting allowed)."""
    _Critical.depth += 1
    try:
        yield
    finally:
        _Critical.depth -= 1
    if _Critical.depth == 0 and _Critical.pending:
        _Critical.pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_stop_training() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT both raise ``KeyboardInterrupt`` (deferred to the end
    of a :func:`critical_section`), so training saves ``last.pt`` and says how to resume. SIGINT
    is re-armed too: a job started in the background of a non-interactive shell (``nohup ... &``)
    inherits SIGINT as ignored."""
    _Critical.pending = False
    with _handlers(_stop_now):
        yield


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[Callable[[], bool]]:
    """Within the block, a stop signal only sets a flag; the block's code polls it (the yielded
    function) at a point where its state is consistent, e.g. between two optimiser steps, and
    stops there. A second signal raises ``KeyboardInterrupt`` at once."""
    pending = {"count": 0}

    def handler(signum, frame):
        pending["count"] += 1
        if pending["count"] > 1:
            _stop_now(signum, frame)

    with _handlers(handler):
        yield lambda: pending["count"] > 0
