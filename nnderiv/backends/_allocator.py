"""Keep the memory of freed stacks mapped, so the next call does not page-fault it back in.

A derivative computation allocates and frees stacks of a few to a few hundred MiB per layer, on
every call. glibc's ``malloc`` serves mid-sized blocks from its heap but returns the heap's free
top to the system once it exceeds a threshold that glibc adapts at run time; the next call then
touches fresh pages, and the page faults (zeroing every 4 KiB page) can cost more than the
arithmetic: measured 2-2.5x on a small network's Jacobian and Laplacian (``docs/performance.md``).
Fixing the two thresholds — blocks under 32 MiB from the heap, up to 512 MiB of free heap kept —
removes those faults; blocks over 32 MiB are mapped directly, and NumPy already asks for huge
pages for them.

This is a process-wide setting, made once when the Numba backend loads. It is skipped when the
user already chose (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``
set), when ``NNDERIV_MALLOC_TUNING=0``, and off glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper bound for this parameter on 64-bit systems
TRIM_THRESHOLD = 512 * 2**20

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's thresholds as described above; returns whether they were set."""
    if os.environ.get("NNDERIV_MALLOC_TUNING", "1") == "0" or any(v in os.environ for v in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
