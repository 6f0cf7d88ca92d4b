"""The CRC32C of each row's serialized ``tf.train.Example`` without serializing the rows.

The split hash (:func:`.encoding.split_mask`) is a function of each row's record CRC, the
record being what :class:`.example_codec.ExampleBatch` writes. The block layout writes no
per-row records, so building them only to hash them (an Arrow join of every row, then a CRC
call per row) was most of its encoding time with missing cells or strings. This module gets
the same CRCs from the parts instead, vectorized over the rows:

- CRC32C is linear: ``crc(A + B) = shift(crc(A), len(B)) ^ crc(B)``, ``shift`` being a
  linear map of the 32-bit value (a table lookup per byte of it, one table per length);
- a row is its header (``0a varint(body)``) and its columns' map entries in a fixed order
  (floats, int64, strings; :mod:`.example_codec`), a missing cell's entry left out;
- an entry of one width (a float, an int64 of a given varint width) has its CRC from its
  value bytes by table lookups (``example_codec._linear_crcs``); a string entry's CRC is
  computed once per distinct value; the header's once per distinct body length.
"""

from __future__ import annotations

import google_crc32c
import numpy as np

from tfpipes.preprocess.crc32c import crc32c_extend_array
from tfpipes.preprocess.example_codec import (
    _as_large_binary,
    _byte_tables,
    _join,
    _linear_crcs,
    _string_pieces,
    _varint,
    check_columns,
)

_shift_tables: dict[int, np.ndarray] = {}
_BITS = ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1).astype(bool)  # (256, 8)


_DIRECT_SHIFT = 4096  # up to this length a shift's table comes from CRCs of zero bytes


def _shift_table(length: int) -> np.ndarray:
    """(4, 256) uint32: the shift by ``length`` zero bytes of each byte of a CRC value, so
    that ``shift(c) = t[0][c & 255] ^ t[1][c >> 8 & 255] ^ t[2][c >> 16 & 255] ^ t[3][c >> 24]``.
    """
    table = _shift_tables.get(length)
    if table is None:
        if length <= _DIRECT_SHIFT:
            zeros = bytes(length)
            z = google_crc32c.value(zeros)
            # shift(c) = crc(A + zeros) ^ crc(zeros) for any A with crc(A) = c: extend does that
            bits = [google_crc32c.extend(1 << i, zeros) ^ z for i in range(32)]
            basis = np.array(bits, dtype=np.uint32)
        else:  # a long string: shift by half, then by the rest (no long run of zeros)
            half = length // 2
            basis = np.array([1 << i for i in range(32)], dtype=np.uint32)
            basis = _apply(_shift_table(length - half), _apply(_shift_table(half), basis))
        table = np.zeros((4, 256), dtype=np.uint32)
        basis = basis.reshape(4, 8)
        for bit in range(8):
            table ^= np.where(_BITS[None, :, bit], basis[:, bit, None], np.uint32(0))
        if len(_shift_tables) > 4096:
            _shift_tables.clear()
        _shift_tables[length] = table
    return table


def _apply(t: np.ndarray, acc: np.ndarray) -> np.ndarray:
    b0, b1 = acc & np.uint32(0xFF), (acc >> np.uint32(8)) & np.uint32(0xFF)
    b2, b3 = (acc >> np.uint32(16)) & np.uint32(0xFF), acc >> np.uint32(24)
    return t[0][b0] ^ t[1][b1] ^ t[2][b2] ^ t[3][b3]


def _halves(t: np.ndarray) -> np.ndarray:
    """(2, 65536) uint32: a (4, 256) byte table as tables of the low and the high 16 bits
    (two lookups a value instead of four: ~3x faster)."""
    x = np.arange(1 << 16)
    return np.stack([t[0][x & 255] ^ t[1][x >> 8], t[2][x & 255] ^ t[3][x >> 8]])


def _apply16(t: np.ndarray, acc: np.ndarray) -> np.ndarray:
    return np.take(t[0], acc & np.uint32(0xFFFF)) ^ np.take(t[1], acc >> np.uint32(16))


_shift16: dict[int, np.ndarray] = {}


def _shift(acc: np.ndarray, lens) -> np.ndarray:
    """``shift(acc[i], lens[i])`` for each row (``lens``: an int for all rows, or per row)."""
    if np.ndim(lens) == 0:
        t = _shift16.get(int(lens))
        if t is None:
            if len(_shift16) > 16:  # 512 KiB each
                _shift16.clear()
            t = _shift16[int(lens)] = _halves(_shift_table(int(lens)))
        return _apply16(t, acc)
    uniq, inv = np.unique(lens, return_inverse=True)
    if len(uniq) == 1:
        return _shift(acc, int(uniq[0]))
    b0, b1 = acc & np.uint32(0xFF), (acc >> np.uint32(8)) & np.uint32(0xFF)
    b2, b3 = (acc >> np.uint32(16)) & np.uint32(0xFF), acc >> np.uint32(24)
    flat = np.stack([_shift_table(int(u)) for u in uniq]).reshape(-1)
    base = inv.reshape(-1).astype(np.intp) * 1024
    return flat[base + b0] ^ flat[base + 256 + b1] ^ flat[base + 512 + b2] ^ flat[base + 768 + b3]


def _per_value(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The CRC32C of each of a few byte strings (one call each, no copy)."""
    flat = np.ascontiguousarray(flat)
    ends = offsets.tolist()
    crcs = [crc32c_extend_array(0, flat[a:b]) for a, b in zip(ends[:-1], ends[1:])]
    return np.array(crcs, dtype=np.uint32)


def _value_bytes(piece) -> int:
    return 0 if piece[0] == "const" else (4 if piece[0] == "f32" else piece[1].shape[1])


def _fixed_entry(pieces: list, n: int) -> tuple[np.ndarray, int]:
    """(CRCs, width) of fixed-width pieces (constant heads and value bytes)."""
    width = sum(len(p[1]) if p[0] == "const" else _value_bytes(p) for p in pieces)
    crc = _linear_crcs(pieces, n)
    if crc is None:  # too many value bytes for the tables: one call per row
        flat, offsets = _join(pieces, n)
        crc = _per_value(flat, offsets)
    return crc, width


_float16: dict[bytes, tuple[int, np.ndarray]] = {}


def _float_entry(key: bytes, values) -> tuple[np.ndarray, int]:
    """(CRCs, width) of a float32 entry: ``crc(head + v) = shift(crc(head), 4) ^ crc(v)``,
    ``crc(v)`` linear in v's bits (two 16-bit table lookups)."""
    head = _float_pieces(key, values)[0][1]
    got = _float16.get(head)
    if got is None:
        value_crc = _halves(_byte_tables(4, (0, 1, 2, 3)))  # crc(v) ^ crc(0000)
        base = _shift(np.array([google_crc32c.value(head)], np.uint32), 4)[0]
        got = (int(base) ^ google_crc32c.value(bytes(4)), value_crc)
        if len(_float16) > 4096:
            _float16.clear()
        _float16[head] = got
    base, t = got
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint32, copy=False)
    return _apply16(t, bits) ^ np.uint32(base), len(head) + 4


def _float_pieces(key: bytes, values) -> list:
    head = bytes([0x0A, len(key) + 12, 0x0A, len(key)]) + key + b"\x12\x08\x12\x06\x0a\x04"
    return [("const", head), ("f32", np.asarray(values))]


def _int_head(key: bytes, vl: int) -> bytes:
    """The bytes of an int64 entry before its varint of ``vl`` bytes (as _int_pieces)."""
    k = len(key)
    return bytes([0x0A, k + 8 + vl, 0x0A, k]) + key + bytes([0x12, 4 + vl, 0x1A, 2 + vl, 0x0A, vl])


def _int_entry(key: bytes, piece, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An int64 entry of varint widths that vary (``piece``: ("pad", groups, widths)): one
    table pass per width."""
    groups, widths = piece[1], piece[2]
    crc = np.zeros(n, dtype=np.uint32)
    k = len(key)
    for vl in np.unique(widths).tolist():
        sel = np.flatnonzero(widths == vl)
        head = _int_head(key, vl)
        crc[sel] = _fixed_entry([("const", head), ("u8", groups[sel, :vl])], len(sel))[0]
    return crc, k + 10 + widths


def _string_entry(key: bytes, values) -> tuple[np.ndarray, np.ndarray]:
    """Computed once per distinct value."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(_as_large_binary(values))
    words = enc.dictionary
    flat, offsets = _join(_string_pieces(key, words), len(words))
    idx = enc.indices.to_numpy(zero_copy_only=False)
    return _per_value(flat, offsets)[idx], np.diff(offsets)[idx]


def example_crcs(columns: list[tuple]) -> np.ndarray:
    """The unmasked CRC32C of each row's record as :meth:`.ExampleBatch.crcs` gives it
    (``columns`` as for :class:`.ExampleBatch`; the same ValueErrors)."""
    columns = [c if len(c) == 4 else (*c, None) for c in columns]
    n = len(columns[0][2])
    check_columns(columns, n)
    entries = []  # (crcs, widths, present or None), in the record's order
    run: list = []  # fixed-width entries every row has, in a row: one table pass for all

    def flush() -> None:
        if run:
            entries.append((*_fixed_entry(run, n), None))
            run.clear()

    for kind in ("float32", "int64", "string"):
        for name, dt, values, present in columns:
            if dt != kind:
                continue
            key = name.encode("utf-8")
            pres = None if present is None or bool(np.all(present)) else np.asarray(present, bool)
            pieces = None
            if dt == "float32":
                if pres is not None:  # the column's own entry, kept where present
                    flush()
                    entries.append((*_float_entry(key, values), pres))
                    continue
                pieces = _float_pieces(key, values)
            elif dt == "int64":
                piece = _varint(values)
                if piece[0] != "u8":  # varint widths that vary
                    flush()
                    entries.append((*_int_entry(key, piece, n), pres))
                    continue
                pieces = [("const", _int_head(key, piece[1].shape[1])), piece]
            else:
                flush()
                entries.append((*_string_entry(key, values), pres))
                continue
            if pres is not None:
                flush()
                entries.append((*_fixed_entry(pieces, n), pres))
                continue
            if sum(map(_value_bytes, run + pieces)) > _linear_max():
                flush()
            run += pieces
    flush()
    body = np.zeros(n, dtype=np.int64)
    for _, widths, pres in entries:
        body += widths if pres is None else np.where(pres, widths, 0)
    # The header (0a varint(body)): one CRC per distinct body length.
    lengths, inv = np.unique(body, return_inverse=True)
    head_flat, head_off = _join([("const", b"\x0a"), _varint(lengths)], len(lengths))
    acc = _per_value(head_flat, head_off)[inv.reshape(-1)]
    for crc, widths, pres in entries:
        nxt = _shift(acc, widths) ^ crc
        acc = nxt if pres is None else np.where(pres, nxt, acc)
    return acc


def _linear_max() -> int:
    from tfpipes.preprocess.example_codec import _LINEAR_CRC_MAX_POSITIONS

    return _LINEAR_CRC_MAX_POSITIONS
