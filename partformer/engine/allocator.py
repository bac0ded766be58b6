"""Host memory allocator settings for CPU work.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, growing up to 32 MiB)
with a fresh ``mmap`` and returns it to the system on ``free``. A training step on the CPU
allocates and frees activations of tens of MB hundreds of times, so each one is page-faulted and
zeroed again by the kernel: an elementwise op on an 8 x 64 x 128 x 128 float32 tensor took 10.5 ms
instead of 2.4 ms, a GELU on an 8200 x 1536 tensor including its float32 cast 143 ms instead of
6 ms (measured on the project's 2-core CPU; the training-step times with and without it are in
README "Performance"). Raising the mmap and trim
thresholds keeps those blocks in the heap for reuse: the same effect as the jemalloc / tcmalloc
``LD_PRELOAD`` that CPU PyTorch guides recommend, set from inside the process with ``mallopt``.

The tools (``partformer.cli.cli_entry``) call :func:`tune_allocator` once at start;
``PARTFORMER_MALLOC_TUNING=0`` leaves the allocator as it is. A library user can call it too.
Freed memory is then kept by the process until it exits (peak RSS is what it was; the resident
size between peaks no longer drops).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: the largest block still taken from the heap (bigger ones are mmap'ed as before)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap that is kept instead of being returned to the system
TRIM_THRESHOLD = 1 << 31

_STATE: dict = {}


def _libc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return lib if hasattr(lib, "mallopt") else None


def tune_allocator() -> bool:
    """Keep large blocks in glibc's heap (see the module docstring). Returns whether the settings
    are in effect; a no-op (False) without glibc or with ``PARTFORMER_MALLOC_TUNING=0``.
    Idempotent."""
    if "tuned" in _STATE:
        return _STATE["tuned"]
    tuned = False
    if os.environ.get("PARTFORMER_MALLOC_TUNING", "1") != "0":
        lib = _libc()
        if lib is not None:
            tuned = bool(lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(lib.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _STATE["tuned"] = tuned
    return tuned


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` put its settings in effect in this process."""
    return bool(_STATE.get("tuned"))
