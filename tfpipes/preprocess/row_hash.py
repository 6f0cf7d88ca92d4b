"""The split's row hash: 64 bits of each row's values, vectorized over the rows.

:func:`.encoding.split_mask` puts a row in train or eval by this hash, so a row lands in the
same split whatever the file order, block size, worker count, fan-out part or record layout,
and identical rows stay together. It is a function of the row's values only — each column's
name, type and value, a missing cell's absence — in the plan's column order:

- a float32 cell hashes its 32 bits, an int64 cell its 64 (so ``-0.0`` and ``0.0`` differ, as
  their serialized Examples do); a string cell a polynomial hash of its bytes modulo 2**64
  (``sum((b_j + 1) * P**j)``), with its length;
- a missing cell a fixed marker of its column;
- a row: the columns' values folded in order (``h * P + v``), then mixed (splitmix64's
  finalizer), so that every bit of the result depends on every column.

It replaced the CRC32C of each row's serialized Example (the block layout had to compute those
without the records, which was a quarter of its encoding time); the split of a given input
changed with it.
"""

from __future__ import annotations

import zlib

import numpy as np

from tfpipes.preprocess.example_codec import binary_bytes, check_columns
from tfpipes.preprocess.statistics import _mix as mix  # splitmix64's finalizer

_P = 0x100000001B3  # odd: invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_CHUNK = 1 << 16  # string bytes hashed by one vectorized pass (powers of P precomputed)
_powers: tuple[np.ndarray, np.ndarray] | None = None
_MISSING = np.uint64(0x9E3779B97F4A7C15)
_LENGTH = np.uint64(0xD6E8FEB86659FD93)
_SPREAD = np.uint64(0xBF58476D1CE4E5B9)  # odd: spreads a value over the bits before the fold


def _pow_tables() -> tuple[np.ndarray, np.ndarray]:
    """P**j and P**-j modulo 2**64 for j in [0, 2 * _CHUNK]."""
    global _powers
    if _powers is None:
        n = 2 * _CHUNK + 1
        with np.errstate(over="ignore"):
            up = np.full(n, _P, dtype=np.uint64)
            up[0] = 1
            down = np.full(n, _P_INV, dtype=np.uint64)
            down[0] = 1
            _powers = (np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64))
    return _powers


def _poly(data: np.ndarray) -> np.uint64:
    """``sum((data[j] + 1) * P**j)`` modulo 2**64 of one value's bytes, of any length."""
    up, _ = _pow_tables()
    total, scale = np.uint64(0), np.uint64(1)
    step = np.uint64(pow(_P, _CHUNK, 1 << 64))
    for lo in range(0, len(data), _CHUNK):
        piece = data[lo : lo + _CHUNK].astype(np.uint64) + np.uint64(1)
        total += scale * np.sum(piece * up[: len(piece)], dtype=np.uint64)
        scale *= step
    return total


def string_hashes(values) -> np.ndarray:
    """Each string's (or bytes') hash: its polynomial mixed with its length (uint64)."""
    data, off = binary_bytes(values)
    n = len(off) - 1
    poly = np.zeros(n, dtype=np.uint64)
    up, down = _pow_tables()
    # Groups of values of about _CHUNK bytes: each group in one vectorized pass, a group over
    # 2 * _CHUNK bytes (it holds a long value) value by value.
    cuts = np.searchsorted(off, np.arange(_CHUNK, off[-1], _CHUNK), "right")
    bounds = [0, *np.unique(cuts).tolist(), n]
    with np.errstate(over="ignore"):
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a >= b:
                continue
            lo, hi = int(off[a]), int(off[b])
            if hi - lo > 2 * _CHUNK:
                for i in range(a, b):
                    poly[i] = _poly(data[off[i] : off[i + 1]])
                continue
            w = (data[lo:hi].astype(np.uint64) + np.uint64(1)) * up[: hi - lo]
            sums = np.zeros(hi - lo + 1, dtype=np.uint64)
            np.cumsum(w, dtype=np.uint64, out=sums[1:])
            rel = off[a : b + 1] - lo
            poly[a:b] = (sums[rel[1:]] - sums[rel[:-1]]) * down[rel[:-1]]
        lengths = np.diff(off).astype(np.uint64)
        return mix(poly ^ (lengths * _LENGTH))


def _salt(name: str, dtype: str) -> np.uint64:
    return mix(np.array([zlib.crc32(f"{dtype}\0{name}".encode())], dtype=np.uint64))[0]


def _value_hashes(dtype: str, values) -> np.ndarray:
    if dtype == "string":
        return string_hashes(values)
    if dtype == "float32":
        return np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return np.asarray(values, dtype=np.int64).view(np.uint64)


def row_hashes(columns: list[tuple]) -> np.ndarray:
    """The hash of each row of ``(name, dtype, values, present)`` columns (uint64)."""
    columns = [c if len(c) == 4 else (*c, None) for c in columns]
    n = len(columns[0][2]) if columns else 0
    check_columns(columns, n)
    h = np.zeros(n, dtype=np.uint64)
    p = np.uint64(_P)
    with np.errstate(over="ignore"):
        for name, dtype, values, present in columns:
            salt = _salt(name, dtype)
            v = (_value_hashes(dtype, values) + salt) * _SPREAD
            if present is not None:
                v = np.where(present, v, _MISSING ^ salt)
            h *= p
            h += v
        return mix(h)
