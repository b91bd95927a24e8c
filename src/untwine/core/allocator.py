"""Process-wide malloc settings for training: keep freed memory for reuse instead of returning it to the OS.

glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a
fresh ``mmap`` and unmaps it on free, and trims the heap top back to the kernel once it exceeds the trim
threshold. A training step allocates and frees the same large tensors every time (activations, their
gradients, a dense embedding gradient of the whole table), so each step page-faults them in again: the
kernel zeroes every 4 KiB page on first touch. On a 2-core AMD EPYC VM that cost a T1 DCN-V2 step a quarter
of its time (benchmarks/results/profile/levers.md, lever 4). ``retain`` turns mmap off for the heap's
allocations (``M_MMAP_MAX = 0``) and sets a 1 GiB trim threshold, so freed blocks stay in the process and the
next step reuses them without faults; the price is that peak memory stays resident until the process ends.
Not for long-lived servers, where a spike's memory should go back.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["M_MMAP_MAX", "M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "RETAIN", "retain_freed_memory"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt options (malloc.h)
RETAIN = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))  # (option, value) pairs ``retain`` sets


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent from musl
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    return libc


def retain_freed_memory() -> str:
    """Apply the ``retain`` settings to this process; returns what was done (for the run's log)."""
    libc = _glibc()
    if libc is None:
        return "allocator unchanged: not glibc"
    ok = all(libc.mallopt(option, value) == 1 for option, value in RETAIN)
    return ("allocator: freed memory retained for reuse (glibc M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)" if ok
            else "allocator unchanged: glibc refused mallopt")
