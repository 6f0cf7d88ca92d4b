"""Keeping the memory of blocks once touched: glibc's malloc told to reuse large buffers.

Preprocess allocates and frees buffers of about a block's size over and over (each block's
bytes, its joined rows, its encoded records). glibc serves a buffer larger than its mmap
threshold (128 KiB, raised to the largest one freed so far) with a fresh ``mmap`` and gives
it back on free, and returns the top of its heap past its trim threshold: so the next block
gets fresh pages, which the kernel faults in and zeroes, one by one (measured on the all-float
benchmark: ~52,000 minor faults and 0.25 s of system time for a 192 MB CSV; on a machine where
a page fault costs more, that is what preprocess waits on, and the bare parse it is measured
against does not pay it per block). Raised thresholds keep those pages in the heap for the
next block: ~21,000 faults, ~5-10 % less CPU there. Memory stays bounded: each of glibc's
arenas (the main one and one per busy thread) keeps at most about the trim threshold of free
memory at its top, plus what fragmentation leaves inside (measured: peak RSS unchanged, and
flat from 1M to 4M rows, ``bench/scale.py``).

Process-wide, once, and not undone (a program that imports tfpipes keeps the thresholds after
preprocess returns); a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: buffers below come from the heap
TRIM_THRESHOLD = 128 << 20  # free bytes the heap's top keeps before giving them back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

log = logging.getLogger("tfpipes.preprocess")
_tuned: bool | None = None  # set by the first call


def keep_block_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether they were."""
    global _tuned
    if _tuned is None:
        _tuned = _mallopt()
    return _tuned


def _mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # not glibc (musl's mallopt does nothing)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("preprocess: glibc's mallopt refused the thresholds; left as they were")
    return ok
