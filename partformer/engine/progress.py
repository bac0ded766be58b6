"""Progress of the long tools (train, pretrain, eval, infer, visualize's parts view).

On a terminal: a tqdm bar. Off a terminal (a SLURM or nohup log, a pipe): no bar and no control
characters, but one plain line at a steady interval (``logging.progress_every`` seconds, 30 by
default; ``PARTFORMER_PROGRESS_EVERY`` in the environment wins), plus the first and the last::

    [train] step 120/1000 (12%) epoch 2 loss 0.4321 | 41.3 img/s | elapsed 0:00:58 | ETA 0:07:05

Only rank 0 shows progress. ``logging.progress=false`` (``--no-progress`` of infer) turns both off.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

DEFAULT_EVERY = 30.0
ENV_EVERY = "PARTFORMER_PROGRESS_EVERY"

_every: Optional[float] = None


def configure(every: Optional[float]) -> None:
    """Set the seconds between plain progress lines (a tool does it from its config)."""
    global _every
    _every = None if every is None else float(every)


def interval() -> float:
    """Seconds between plain lines: ``$PARTFORMER_PROGRESS_EVERY``, else :func:`configure`'s,
    else 30."""
    env = os.environ.get(ENV_EVERY)
    if env:
        try:
            return max(0.0, float(env))
        except ValueError:
            pass
    return DEFAULT_EVERY if _every is None else max(0.0, _every)


def _clock(seconds: float) -> str:
    seconds = int(max(0, round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class PlainProgress:
    """A tqdm-like counter (``update``, ``set_postfix``, ``write``, ``close``) that prints one
    plain line every :func:`interval` seconds. ``images`` per unit (a batch, a step) gives the
    images/s; the ETA comes from the rate since it started."""

    def __init__(self, total: Optional[int], desc: str, initial: int = 0, unit: str = "step",
                 images: Optional[float] = None, stream=None, every: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start = int(initial)
        self.images = images
        self.stream = stream if stream is not None else sys.stderr
        self.every = interval() if every is None else float(every)
        self.clock = clock
        self.t0 = clock()
        self.last: Optional[float] = None
        self.printed_n: Optional[int] = None
        self.postfix: Dict[str, Any] = {}
        self.closed = False

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.last is None or now - self.last >= self.every:
            self._print(now)

    def write(self, line: str, file=None) -> None:
        print(line, file=file or self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start and self.printed_n != self.n:
                self._print(self.clock())

    def line(self, now: Optional[float] = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.t0, 1e-9)
        done = self.n - self.start
        count = f"{self.unit} {self.n}" + (f"/{self.total}" if self.total else "")
        if self.total:
            count += f" ({100.0 * self.n / self.total:.0f}%)"
        parts = [" ".join([f"[{self.desc}] {count}"] + [f"{k} {_value(v)}" for k, v in
                                                         self.postfix.items()])]
        rate = done / elapsed
        if self.images:
            parts.append(f"{rate * self.images:.1f} img/s")
        else:
            parts.append(f"{rate:.2f} {self.unit}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and done > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        return " | ".join(parts)

    def _print(self, now: float) -> None:
        self.last, self.printed_n = now, self.n
        print(self.line(now), file=self.stream, flush=True)


def make_progress(total: Optional[int], desc: str, enabled: bool = True, initial: int = 0,
                  unit: str = "step", images: Optional[float] = None, leave: bool = True,
                  main: Optional[bool] = None):
    """A tqdm bar on a terminal, a :class:`PlainProgress` off one, None when disabled or not on
    rank 0."""
    if main is None:
        from partformer.engine import distributed as D
        main = D.is_main_process()
    if not enabled or not main:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=leave,
                    unit=unit)
    return PlainProgress(total, desc, initial=initial, unit=unit, images=images)


def tracked(iterable: Iterable, bar) -> Iterator:
    """``iterable``, updating ``bar`` (or nothing) after each item and closing it at the end."""
    try:
        for item in iterable:
            yield item
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
