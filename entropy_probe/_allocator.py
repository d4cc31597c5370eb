"""Keep freed memory in the process for the command line's large batched float64 work."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from the heap and are reused
_TRIM_THRESHOLD = (1 << 31) - 1  # free heap memory is kept up to 2 GiB


def keep_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds, so that the large temporary tensors of one
    layer's math reuse the pages the previous layer freed instead of being handed back to the
    OS and page-faulted in again (measured: ResNet-50's spectral profile 14.5 s → 10.3 s).

    Process-wide, so only the command line calls it, once at start; a library must not change
    its host's allocator. A no-op off Linux/glibc and when the user set any ``MALLOC_*``
    variable. Returns whether the thresholds were set.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into the process
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success (musl's stub returns 0: nothing to tune there)
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
