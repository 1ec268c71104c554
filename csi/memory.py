"""glibc malloc settings for a long-running driver: few arenas, and start-up's garbage given back.

The driver runs its blocking work in worker threads, and glibc gives each
thread that allocates concurrently an arena of its own, which keeps its free
memory after the call: under 16 concurrent rawdisk calls the RSS grew ~1.3 MiB
per arena (docs/benchmarks.md). Two arenas serve a process whose Python code
runs under one interpreter lock anyway. Start-up (imports, the backend's index
rebuild) leaves freed heap that glibc only returns when asked.

Both are no-ops off glibc; ``MALLOC_ARENA_MAX`` in the environment wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

from loguru import logger

#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas the driver allows: the event loop's and one the worker threads share.
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas() -> bool:
    """Cap glibc's malloc arenas at :data:`ARENAS` (before any worker thread starts). True when set here."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS))


def release_unused() -> None:
    """Collect garbage and hand the free heap back to the kernel (after start-up, not on a hot path)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    logger.debug("returned free heap to the kernel after start-up")
