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


@contextlib.contextmanager
def interrupts_stop_training() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT both raise ``KeyboardInterrupt``, so training saves
    ``last.pt`` and says how to resume. SIGINT is re-armed too: a job started in the background
    of a non-interactive shell (``nohup ... &``) inherits SIGINT as ignored."""
    with _handlers(signal.default_int_handler):
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
            raise KeyboardInterrupt

    with _handlers(handler):
        yield lambda: pending["count"] > 0
