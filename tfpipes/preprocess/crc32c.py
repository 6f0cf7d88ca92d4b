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


_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, m) for m in mat]


_ZEROS: list[list[int]] = []  # [k]: the operator that moves a CRC past 2**k zero bytes


def _zeros(k: int) -> list[int]:
    if not _ZEROS:
        op = [_POLY] + [1 << n for n in range(31)]  # past one zero bit
        for _ in range(3):
            op = _gf2_square(op)  # 2, 4, 8 bits: one byte
        _ZEROS.append(op)
    while len(_ZEROS) <= k:
        _ZEROS.append(_gf2_square(_ZEROS[-1]))
    return _ZEROS[k]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32C of ``a + b`` from ``crc1`` (of ``a``), ``crc2`` (of ``b``) and ``len(b)``,
    without the bytes: ``crc1`` is moved past ``len2`` zero bytes with the CRC's operator on
    GF(2) (one per set bit of ``len2``; operators cached), the usual way to join checksums
    of pieces read apart."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_zeros(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
