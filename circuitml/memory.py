"""Allocator settings for large graphs: keep freed tensor memory in the heap instead of returning it to the OS.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back
with ``munmap`` on free, so each new ``[N, hidden]`` temporary of a large graph is fresh memory that the kernel
must fault in and zero page by page. On a 100k-AND AIG a DeeperGCN step spent twice its user time in the kernel
(6.6M page faults per step, issue 16). With mmap off for the heap (``M_MMAP_MAX = 0``) and trimming effectively
off, freed blocks are reused: the same step takes a fraction of the faults (``bench/bench_encoders.py`` prints
faults per size with and without). The cost is that the process keeps its peak heap until it exits.

:func:`tune_malloc` is applied by the ``circuitml`` command at start; set ``CIRCUITML_MALLOC=default`` to keep
glibc's defaults. It does nothing outside glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

__all__ = ["tune_malloc", "page_faults"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_applied: bool | None = None


def tune_malloc() -> bool:
    """Turn off glibc's mmap for large blocks and heap trimming (once per process). True when applied."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CIRCUITML_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    ok = mallopt(_M_TOP_PAD, 64 * 2**20) == 1 and ok  # grow the heap in 64 MB steps
    _applied = ok
    return ok


def page_faults() -> int:
    """Minor + major page faults of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt
