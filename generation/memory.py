"""Process memory: RSS as PM2 measures it, and returning freed heap to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

import psutil


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of one process (PM2's max_memory_restart compares exactly this)."""
    return int(psutil.Process(pid).memory_info().rss)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def malloc_trim() -> bool:
    """glibc keeps freed heap in its arenas; malloc_trim(0) hands it back. False where unavailable."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True


def collect_and_trim() -> None:
    gc.collect()
    malloc_trim()
