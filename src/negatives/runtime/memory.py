"""Process-wide settings of a job's process (called by ``python -m negatives``).

:func:`keep_freed_memory`: glibc's ``malloc`` serves large blocks (above a
threshold that adapts up to 32 MB) with fresh ``mmap`` pages and returns
freed memory at the top of the heap to the system.  A training step
allocates and frees the same activation and gradient tensors (up to 13 MB
each at the default scale) every step, so every step touched fresh pages:
about 6,800 page faults and their zeroing per step at the default scale.
Fixing the mmap threshold at its maximum and never trimming the heap lets
each step reuse the memory the previous one freed.  The process keeps its
peak memory (which it reaches again every step anyway).  A no-op where the C
library is not glibc; the environment variables ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``, when set, win.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters
_MMAP_MAX_THRESHOLD = 32 * 1024 * 1024             # glibc's upper limit on 64-bit
_NEVER_TRIM = 2**31 - 1                            # mallopt takes an int


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed large blocks instead of returning them
    to the system (see the module docstring).  Returns True when applied."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL(None)                   # the process's own symbols: its C library among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version                  # glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
