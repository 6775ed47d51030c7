"""Keep glibc from handing every multi-MiB activation back to the OS (torch's eager paths on Linux).

glibc serves allocations above its mmap threshold (128 KiB at start) with a fresh ``mmap`` and
returns them with ``munmap`` on free, so a fresh process pays page faults and zeroing for every
activation tensor of every step, until one large free raises the threshold dynamically. Setting
the threshold (and the heap trim threshold) once at start removes that: measured in
docs/BENCHMARKS.md, training and eager sampling in a fresh process then run at warm speed.
Same effect as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment.
``DIFFZOO_MALLOPT=0`` turns it off (``diffzoo bench --allocator`` measures both ways).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["tune_allocator", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 << 20  # keep up to this much freed heap for reuse instead of trimming it

_done: bool | None = None


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds once per process; False where there is no glibc or DIFFZOO_MALLOPT=0."""
    global _done
    if _done is None:
        _done = False
        if os.environ.get("DIFFZOO_MALLOPT", "1") != "0" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
            except (OSError, AttributeError) as e:
                log.debug("mallopt unavailable: %s", e)
    return _done
