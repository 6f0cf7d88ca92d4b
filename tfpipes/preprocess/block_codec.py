"""The block record layout (``layout.RECORD_LAYOUTS``): one ``tf.train.Example`` per block of
up to ``layout.BLOCK_ROWS`` consecutive rows, column by column.

Each column becomes one feature of its own name holding a packed list of one value per row,
so a reader parses a block per record instead of a row per record. A missing cell holds its
dtype's ``layout.MISSING_VALUES`` entry (what parsing gives a per-row record without the
feature), and ``BLOCK_MISSING_KEY`` lists the missing cells so that the per-row records can be
rebuilt exactly (:mod:`tfpipes.records`). Everything is vectorized per column; the per-block
work is a few byte slices and joins per column.
"""

from __future__ import annotations

import google_crc32c
import numpy as np

from tfpipes.layout import BLOCK_MISSING_KEY, BLOCK_ROWS_KEY, MISSING_VALUES
from tfpipes.preprocess.example_codec import _varint, _varint_len, binary_bytes

# The Feature oneof field of each dtype's list (feature.proto): bytes 1, float 2, int64 3.
_LIST_TAG = {"string": 0x0A, "float32": 0x12, "int64": 0x1A}


def _len_prefix(n: int) -> bytes:
    """The varint of a non-negative int (a length, a row count)."""
    if n < 0x80:
        return bytes([n])
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([tag]) + _len_prefix(len(payload)) + payload


def _flat_varints(values) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint8, n + 1 offsets) of the values' varints (two's complement for negatives)."""
    piece = _varint(np.asarray(values, dtype=np.int64))
    if piece[0] == "u8":
        m = piece[1]
        return m.reshape(-1), np.arange(len(m) + 1, dtype=np.int64) * m.shape[1]
    m, lens = piece[1], piece[2]
    offsets = np.zeros(len(m) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return m[np.arange(m.shape[1])[None, :] < lens[:, None]], offsets


def _elements(dt: str, values, present) -> tuple[np.ndarray, np.ndarray]:
    """One column's list elements as bytes: (flat uint8, n + 1 offsets); a missing cell holds
    its dtype's missing value."""
    n = len(values)
    if dt == "float32":
        v = np.asarray(values, dtype="<f4")
        if present is not None:
            v = np.where(present, v, np.float32(MISSING_VALUES["float32"])).astype("<f4")
        return v.view(np.uint8), np.arange(n + 1, dtype=np.int64) * 4
    if dt == "int64":
        v = np.asarray(values, dtype=np.int64)
        if present is not None:
            v = np.where(present, v, np.int64(MISSING_VALUES["int64"]))
        return _flat_varints(v)
    return _string_elements(values, present)


def _string_elements(values, present) -> tuple[np.ndarray, np.ndarray]:
    """BytesList{1: value} repeated: each element its tag (0a), its length's varint and its
    bytes (a missing cell: an empty value), laid out with numpy — the element heads go to
    their places and the values' bytes, in order, fill the rest."""
    data, off = binary_bytes(values)
    n = len(off) - 1
    lens = np.diff(off)
    if present is not None:
        data = data[np.repeat(present, lens)]  # a missing cell's bytes (its NA token) go
        lens = np.where(present, lens, 0)
    vlen = _varint_len(lens)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(1 + vlen + lens, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    head = np.zeros(len(out), dtype=bool)
    starts = offsets[:-1]
    out[starts] = 0x0A
    head[starts] = True
    u = lens.astype(np.uint64)
    for k in range(int(vlen.max()) if n else 0):
        sel = vlen > k
        group = (u[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (vlen[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        at = starts[sel] + 1 + k
        out[at] = (group | more).astype(np.uint8)
        head[at] = True
    out[~head] = data
    return out, offsets


def encode_blocks(columns: list[tuple], bounds: list[int], block_rows: int) -> list[np.ndarray]:
    """Framed block records of each chunk of rows ``bounds[i]:bounds[i + 1]``, cut into blocks
    of ``block_rows`` (the last of a chunk may be shorter): one flat uint8 array per chunk.

    ``columns``: (name, dtype, values, present or None) in schema order (features, then the
    label), one value per row.
    """
    cols = []
    absent = []
    for name, dt, values, present in columns:
        pres = None if present is None or bool(np.all(present)) else np.asarray(present, bool)
        flat, off = _elements(dt, values, pres)
        key = _field(0x0A, name.encode("utf-8"))
        cols.append((key, dt, flat, off))
        absent.append(None if pres is None else ~pres)
    n = len(columns[0][2]) if columns else 0
    starts = [lo for a, b in zip(bounds[:-1], bounds[1:]) for lo in range(a, b, block_rows)]
    missing = _missing_cells(absent, n, starts, bounds[-1] if starts else 0)
    out = []
    heads: dict = {}  # (column, payload bytes) -> the bytes before the payload
    i = 0  # the block's number in ``starts``
    for lo_chunk, hi_chunk in zip(bounds[:-1], bounds[1:]):
        # Each frame goes straight into the chunk's one join: length, its masked CRC, the
        # record, the record's masked CRC (what frame_records writes, without its copies).
        parts: list = []
        for lo in range(lo_chunk, hi_chunk, block_rows):
            cells = missing(i)
            record = _block_record(cols, cells, lo, min(lo + block_rows, hi_chunk), heads)
            parts += (_frame_head(len(record)), record, _masked(google_crc32c.value(record)))
            i += 1
        out.append(np.frombuffer(b"".join(parts), dtype=np.uint8))
    return out


def _missing_cells(absent: list, n: int, starts: list, end: int):
    """A function of a block's number (its first row in ``starts``) giving the varints of its
    missing cells (row in the block x columns + column, in that order; b"" for none),
    encoded for every block at once; the last block ends at row ``end``."""
    if all(a is None for a in absent) or not starts:
        return lambda i: b""
    missing = np.zeros((n, len(absent)), dtype=bool)
    for c, a in enumerate(absent):
        if a is not None:
            missing[:, c] = a
    cells = np.flatnonzero(missing)  # row x columns + column
    first = np.asarray(starts, dtype=np.int64) * len(absent)  # each block's first cell
    cells = cells[(cells >= first[0]) & (cells < end * len(absent))]  # the chunks' rows only
    block = np.searchsorted(first, cells, side="right") - 1
    flat, offsets = _flat_varints(cells - first[block])
    cut = offsets[np.searchsorted(cells, np.append(first, end * len(absent)))].tolist()
    data = flat.tobytes()
    return lambda i: data[cut[i] : cut[i + 1]]


def _masked(crc: int) -> bytes:
    """A TFRecord's masked CRC32C, little-endian."""
    rot = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return ((rot + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def _frame_head(length: int) -> bytes:
    """A TFRecord's length and its masked CRC32C."""
    lb = length.to_bytes(8, "little")
    return lb + _masked(google_crc32c.value(lb))


def _column_head(key_field: bytes, dt: str, n: int) -> bytes:
    """The bytes of a column's map entry before its ``n`` payload bytes (the list's values)."""
    lst_head = b"" if dt == "string" else b"\x0a" + _len_prefix(n)  # packed floats / varints
    lst = len(lst_head) + n
    feat = 1 + len(_len_prefix(lst)) + lst
    entry = len(key_field) + 1 + len(_len_prefix(feat)) + feat
    return (
        b"\x0a" + _len_prefix(entry) + key_field + b"\x12" + _len_prefix(feat)
        + bytes([_LIST_TAG[dt]]) + _len_prefix(lst) + lst_head
    )  # fmt: skip


def _block_record(cols: list, missing: bytes, lo: int, hi: int, heads: dict) -> bytes:
    """One serialized Example of rows lo..hi; ``missing``: the varints of its missing cells
    (``heads``: a cache of :func:`_column_head`)."""
    entries: list = [b"\x0a", b""]  # Example{1: Features}: the length goes in [1]
    size = 0
    for c, (key, dt, flat, off) in enumerate(cols):
        a, b = int(off[lo]), int(off[hi])
        head = heads.get((c, b - a))
        if head is None:
            head = heads[(c, b - a)] = _column_head(key, dt, b - a)
        entries.append(head)
        entries.append(memoryview(flat[a:b]))
        size += len(head) + b - a
    rows = _len_prefix(hi - lo)  # a non-negative int64's varint
    tail = [_entry(_field(0x0A, BLOCK_ROWS_KEY.encode()), _field(0x1A, _field(0x0A, rows)))]
    if missing:
        key = _field(0x0A, BLOCK_MISSING_KEY.encode())
        tail.append(_entry(key, _field(0x1A, _field(0x0A, missing))))
    entries += tail
    entries[1] = _len_prefix(size + sum(len(t) for t in tail))
    return b"".join(entries)


def _entry(key_field: bytes, feature: bytes) -> bytes:
    """Features{1: MapEntry{1: key, 2: Feature}}."""
    return _field(0x0A, key_field + _field(0x12, feature))
