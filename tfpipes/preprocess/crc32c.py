"""CRC32C of numpy arrays without a copy: ``crc32c_extend`` of the libcrc32c that
google_crc32c ships, called through ctypes (google_crc32c's Python functions take only
``bytes``); the shard writer checksums every chunk it writes with it, for the manifest."""

from __future__ import annotations

import os

import numpy as np


def crc32c_extend_array(crc: int, data: np.ndarray) -> int:
    """Extend a CRC32C by a uint8 array without copying it into ``bytes`` (google_crc32c's
    Python functions take nothing else) when the C library can be called directly; that call
    also lets other threads run."""
    global _crc32c_extend
    if _crc32c_extend is None:
        _crc32c_extend = _load_crc32c_extend()
    if _crc32c_extend is False or not data.flags.c_contiguous:
        import google_crc32c

        return google_crc32c.extend(crc, data.tobytes())
    return _crc32c_extend(crc, data.ctypes.data, len(data))


_crc32c_extend = None


def _load_crc32c_extend():
    """``crc32c_extend`` of the libcrc32c that google_crc32c ships, through ctypes; False if
    it cannot be found (then data is copied into bytes)."""
    import ctypes
    import ctypes.util
    import glob

    import google_crc32c

    site = os.path.dirname(os.path.dirname(os.path.abspath(google_crc32c.__file__)))
    candidates = sorted(glob.glob(os.path.join(site, "google_crc32c.libs", "libcrc32c*.so*")))
    candidates.append(ctypes.util.find_library("crc32c"))
    for path in filter(None, candidates):
        try:
            fn = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        fn.restype = ctypes.c_uint32
        if fn(0, b"123456789", 9) == 0xE3069283:  # the CRC32C check value
            return fn
    return False
