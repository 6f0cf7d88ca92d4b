"""Vectorized encoding of ``tf.train.Example`` protos and TFRecord framing, in numpy and Arrow.

Building one ``tf.train.Example`` per row in Python costs tens of microseconds; this module
writes the protobuf wire format for a whole batch of rows at once instead. A row is a sequence
of *pieces*: constant bytes (tags, keys), fixed-width values (a float32 spliced into a template)
and variable-width ones (varints, strings). When every piece has one width in a batch (the
common case: float features, small integer labels) the rows are written into one
``(rows, width)`` matrix, column range by column range; otherwise each run of fixed pieces
becomes a matrix, each variable piece a compact Arrow binary array, and Arrow's
``binary_join_element_wise`` concatenates them row by row in C++. The bytes are exactly what
``tf.train.Example.SerializeToString`` writes for the same map entries (tests parse them back
with TensorFlow).

TFRecord framing (``uint64 length | masked crc32c(length) | data | masked crc32c(data)``) is
part of the same assembly. The data CRC of fixed-width rows comes from the values alone (CRC32C
is linear: a table lookup per value byte, vectorized over the batch), so :class:`ExampleBatch`
can split rows by it before framing only the rows each split needs; rows of varying width
cost one CRC call each.

Layout per row (see tensorflow/core/example/example.proto and feature.proto):
``Example{1: Features{1: repeated MapEntry{1: key, 2: Feature{1|2|3: BytesList|FloatList|
Int64List{1: packed values}}}}}``.
"""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np

_FLOAT_LIST, _INT64_LIST, _BYTES_LIST = 0x12, 0x1A, 0x0A  # Feature oneof field tags
MAX_KEY_BYTES = 100  # keeps every fixed entry's length prefix in one byte


# ----------------------------------------------------------------------------- pieces
#
# A piece is one of:
#   ("const", bytes)              the same bytes in every row
#   ("f32", values (n,))          a little-endian float32 per row
#   ("u8", matrix (n, w))         w bytes per row
#   ("pad", matrix (n, w), lens)  the first lens[i] bytes of row i (variable width)
#   ("arrow", large_binary array) one value per row (variable width)
#   ("arrow", array, lens)        the same with nulls where a row has nothing (lens[i] == 0)


def _width(piece) -> int | None:
    """Bytes per row if the piece has one width in this batch, else None."""
    kind = piece[0]
    if kind == "const":
        return len(piece[1])
    if kind == "f32":
        return 4
    if kind == "u8":
        return piece[1].shape[1]
    return None


def _lens(piece) -> np.ndarray | int:
    kind = piece[0]
    if kind == "pad":
        return piece[2]
    if kind == "arrow":
        return piece[2] if len(piece) > 2 else np.diff(_arrow_offsets(piece[1]))
    return _width(piece)


def _varint(values: np.ndarray):
    """Varint-encode int64 values (two's complement for negatives) as a piece."""
    v = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    n = len(v)
    lengths = _varint_len(v)
    width = int(lengths.max()) if n else 1
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    more = np.arange(width)[None, :] < (lengths[:, None] - 1)  # a continuation bit
    groups |= more.view(np.uint8) << np.uint8(7)
    if n == 0 or lengths.min() == width:
        return ("u8", groups)
    return ("pad", groups, lengths)


def _float_pieces(key: bytes, values: np.ndarray) -> list:
    # 0a L | 0a klen key | 12 08 | 12 06 | 0a 04 | f32
    head = bytes([0x0A, len(key) + 12, 0x0A, len(key)]) + key + b"\x12\x08\x12\x06\x0a\x04"
    return [("const", head), ("f32", values)]


def _int_pieces(key: bytes, values: np.ndarray) -> list:
    """0a L | 0a klen key | 12 4+l | 1a 2+l | 0a l | varint(l bytes)."""
    vpiece = _varint(values)
    k = len(key)
    if vpiece[0] == "u8":
        vl = vpiece[1].shape[1]
        head = bytes([0x0A, k + 8 + vl, 0x0A, k]) + key
        return [("const", head + bytes([0x12, 4 + vl, 0x1A, 2 + vl, 0x0A, vl])), vpiece]
    _, groups, vl = vpiece
    n, w = groups.shape
    m = np.empty((n, k + 10 + w), dtype=np.uint8)
    m[:, 0] = 0x0A
    m[:, 1] = k + 8 + vl
    m[:, 2] = 0x0A
    m[:, 3] = k
    m[:, 4 : 4 + k] = np.frombuffer(key, dtype=np.uint8)
    m[:, 4 + k] = 0x12
    m[:, 5 + k] = 4 + vl
    m[:, 6 + k] = 0x1A
    m[:, 7 + k] = 2 + vl
    m[:, 8 + k] = 0x0A
    m[:, 9 + k] = vl
    m[:, 10 + k :] = groups
    return [("pad", m, k + 10 + vl)]


def _varint_len(x: np.ndarray) -> np.ndarray:
    """Bytes of each value's varint (x: non-negative int64, or uint64 bit patterns)."""
    out = np.ones(len(x), dtype=np.int64)
    unsigned = x.dtype == np.uint64
    top = x.max() if len(x) else 0
    for k in range(1, 10):
        bound = np.uint64(1 << (7 * k)) if unsigned else 1 << (7 * k)
        if top < bound:
            break  # no value has this many bytes: skip the comparisons left
        out += x >= bound
    return out


def _string_pieces(key: bytes, values) -> list:
    """0a varint(E) | 0a klen key | 12 varint(F) | 0a varint(L) | 0a varint(S) | bytes(S)."""
    arr = _as_large_binary(values)
    s = np.diff(_arrow_offsets(arr))
    lst = 1 + _varint_len(s) + s  # BytesList{1: value}
    feat = 1 + _varint_len(lst) + lst  # Feature{1: BytesList}
    entry = 2 + len(key) + 1 + _varint_len(feat) + feat  # MapEntry{1: key, 2: Feature}
    return [
        ("const", b"\x0a"),
        _varint(entry),
        ("const", bytes([0x0A, len(key)]) + key + b"\x12"),
        _varint(feat),
        ("const", bytes([_BYTES_LIST])),
        _varint(lst),
        ("const", b"\x0a"),
        _varint(s),
        ("arrow", arr),
    ]


def _as_large_binary(values):
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if values.null_count:
            raise ValueError("string column with nulls")
        if not (pa.types.is_large_binary(values.type)):
            values = values.cast(pa.large_binary())
        return values
    enc = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]
    return pa.array(enc, type=pa.large_binary())


def binary_bytes(values) -> tuple[np.ndarray, np.ndarray]:
    """(its values' bytes as one uint8 array, n + 1 int64 offsets into it from 0) of a string
    or binary column, without a copy of the bytes."""
    arr = _as_large_binary(values)
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    buf = arr.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)
    return data[off[0] : off[-1]], off - off[0]


def _arrow_offsets(arr) -> np.ndarray:
    """The n + 1 int64 offsets of a large_binary array, relative to its first value."""
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    return off - off[0] if len(off) and off[0] else off


def _absent_where(pieces: list, present: np.ndarray, n: int) -> list:
    """One column's map entry as a single variable-width piece that is null where the value is
    absent (a missing cell: the key is left out of that row's Example, as TF and TFX expect);
    the row join skips nulls."""
    import pyarrow as pa

    if all(_width(p) is not None for p in pieces):
        width = sum(_width(p) for p in pieces)
        flat = _fixed_matrix(pieces, n).reshape(-1)
        offsets = np.arange(n + 1, dtype=np.int64) * width
        lens = np.where(present, width, 0)
    else:
        flat, offsets = _join(pieces, n)
        lens = np.where(present, np.diff(offsets), 0)
    valid = pa.array(present, type=pa.bool_()).buffers()[1]
    arr = pa.Array.from_buffers(
        pa.large_binary(),
        n,
        [valid, pa.py_buffer(offsets), pa.py_buffer(flat)],
        null_count=n - int(np.count_nonzero(present)),
    )
    return [("arrow", arr, lens)]


def _column_pieces(name: str, dt: str, values, present, n: int) -> list:
    key = name.encode("utf-8")
    make = {"float32": _float_pieces, "int64": _int_pieces, "string": _string_pieces}[dt]
    if present is None or bool(np.all(present)):
        return make(key, values)
    return _absent_where(make(key, values), np.asarray(present, dtype=bool), n)


def check_columns(columns: list[tuple], n: int) -> None:
    """The ValueErrors of :class:`ExampleBatch` for (name, dtype, values, present) columns."""
    for name, dt, values, present in columns:
        if dt not in ("float32", "int64", "string"):
            raise ValueError(f"column {name!r}: unknown dtype {dt!r}")
        if len(name.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError(f"column name longer than {MAX_KEY_BYTES} bytes: {name[:40]!r}...")
        if len(values) != n:
            raise ValueError(f"column {name!r}: {len(values)} values, expected {n}")
        if present is not None and len(present) != n:
            raise ValueError(f"column {name!r}: {len(present)} presence flags, expected {n}")


def _example_pieces(columns: list[tuple], n: int) -> list:
    columns = [c if len(c) == 4 else (*c, None) for c in columns]
    check_columns(columns, n)
    pieces: list = []
    # Map order carries no meaning in a proto map: floats first, then int64, then strings.
    for kind in ("float32", "int64", "string"):
        for name, dt, values, present in columns:
            if dt == kind:
                pieces += _column_pieces(name, dt, values, present, n)
    body = sum((_lens(p) for p in pieces), np.zeros(n, dtype=np.int64))
    return [("const", b"\x0a"), _varint(body), *pieces], 1 + _varint_len(body) + body


# ----------------------------------------------------------------------------- assembly


def _write_fixed(out: np.ndarray, col: int, piece, rows: np.ndarray | None = None) -> None:
    """Write the values of a fixed-width, non-constant piece (only ``rows`` of them, in that
    order, if given) into ``out[:, col:]``."""
    kind, data = piece[0], piece[1]
    if rows is not None:
        data = data[rows]  # a contiguous gather, then a strided write: faster than take(out=)
    if kind == "f32":
        out[:, col : col + 4].view("<f4")[:, 0] = data
    else:
        out[:, col : col + _width(piece)] = data


def _template(pieces: list) -> bytes:
    """The constant bytes of a run of fixed-width pieces, zeros where the values go."""
    return b"".join(p[1] if p[0] == "const" else bytes(_width(p)) for p in pieces)


def _fill_fixed(out: np.ndarray, col: int, pieces: list, rows: np.ndarray | None = None) -> int:
    """Write a run of fixed-width pieces (for ``rows`` only, if given) into ``out[:, col:]``;
    return the next column.

    The constant bytes of the whole run go in with one broadcast row copy; only the values
    are written piece by piece (many small constant writes cost more than the values).
    """
    template = _template(pieces)
    end = col + len(template)
    out[:, col:end] = np.frombuffer(template, dtype=np.uint8)
    for p in pieces:
        if p[0] != "const":
            _write_fixed(out, col, p, rows)
        col += _width(p)
    return end


# CRC32C is linear: for messages of one length, crc(template ^ d) = crc(template) ^ L(d), and
# L(d) is the XOR over d's bytes of a per-position table. When only the value bytes of a row
# differ from its template (the fixed-width case), a few table lookups per value byte, vectorized
# over the batch, replace one Python call per row.
_LINEAR_CRC_MAX_POSITIONS = 160  # beyond this one call per row is cheaper
_tables: dict[tuple, np.ndarray] = {}


def _byte_tables(length: int, positions: tuple[int, ...]) -> np.ndarray:
    """(len(positions), 256) uint32: L(byte b at position p) for messages of ``length`` bytes."""
    key = (length, positions)
    tables = _tables.get(key)
    if tables is None:
        zero = google_crc32c.value(bytes(length))
        msg = bytearray(length)
        basis = np.empty((len(positions), 8), dtype=np.uint32)
        for j, p in enumerate(positions):
            for bit in range(8):
                msg[p] = 1 << bit
                basis[j, bit] = google_crc32c.value(bytes(msg)) ^ zero
            msg[p] = 0
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1  # (256, 8)
        tables = np.zeros((len(positions), 256), dtype=np.uint32)
        for bit in range(8):
            tables ^= np.where(bits[None, :, bit] == 1, basis[:, bit, None], 0).astype(np.uint32)
        if len(_tables) > 32:
            _tables.clear()
        _tables[key] = tables
    return tables


def _linear_crcs(pieces: list, n: int) -> np.ndarray | None:
    """CRC32C of each row of a fixed-width run of pieces, or None if too many value bytes."""
    positions, columns, col = [], [], 0
    for p in pieces:
        w = _width(p)
        if p[0] != "const":
            b = p[1] if p[0] == "u8" else np.ascontiguousarray(p[1], dtype="<f4").view(np.uint8)
            b = b.reshape(n, w)
            positions += range(col, col + w)
            columns += [b[:, k] for k in range(w)]
        col += w
    if len(positions) > _LINEAR_CRC_MAX_POSITIONS:
        return None
    template = _template(pieces)
    crc = np.full(n, google_crc32c.value(template), dtype=np.uint32)
    for table, column in zip(_byte_tables(len(template), tuple(positions)), columns):
        crc ^= table[column]
    return crc


def _fixed_matrix(pieces: list, n: int) -> np.ndarray:
    out = np.empty((n, sum(_width(p) for p in pieces)), dtype=np.uint8)
    _fill_fixed(out, 0, pieces)
    return out


def _to_arrow(piece, n: int):
    """A variable-width piece, or a fixed matrix, as a large_binary array (one value per row)."""
    import pyarrow as pa

    kind = piece[0]
    if kind == "arrow":
        return piece[1]
    if kind == "pad":
        m, lens = piece[1], piece[2]
        data = m[np.arange(m.shape[1])[None, :] < lens[:, None]]
    else:  # a fixed matrix
        m = piece[1]
        lens = np.full(n, m.shape[1], dtype=np.int64)
        data = np.ascontiguousarray(m).reshape(-1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _join(pieces: list, n: int):
    """Concatenate the pieces row by row: (writable flat uint8 array, int64 offsets)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays, run = [], []
    for p in pieces:
        if _width(p) is not None:
            run.append(p)
            continue
        if run:
            arrays.append(_to_arrow(("u8", _fixed_matrix(run, n)), n))
            run = []
        arrays.append(_to_arrow(p, n))
    if run:
        arrays.append(_to_arrow(("u8", _fixed_matrix(run, n)), n))
    joined = (
        arrays[0]
        if len(arrays) == 1 and not arrays[0].null_count
        else pc.binary_join_element_wise(
            *arrays, pa.scalar(b"", pa.large_binary()), null_handling="skip"
        )
    )
    offsets = _arrow_offsets(joined)
    base = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset]
    flat = np.frombuffer(joined.buffers()[2], dtype=np.uint8)[base : base + offsets[-1]]
    if not flat.flags.writeable:
        flat = flat.copy()
    return flat, offsets.astype(np.int64, copy=True)


def _len_headers(data_len: np.ndarray) -> np.ndarray:
    """(n, 12): uint64 length and its masked CRC32C; one CRC call per distinct length."""
    n = len(data_len)
    head = np.empty((n, 12), dtype=np.uint8)
    head[:, :8] = data_len.astype("<u8").view(np.uint8).reshape(n, 8)
    uniq, inverse = np.unique(data_len, return_inverse=True)
    crcs = np.array([google_crc32c.value(struct.pack("<Q", int(x))) for x in uniq], dtype=np.uint64)
    head[:, 8:] = _mask_crc(crcs)[inverse.reshape(-1)].view(np.uint8).reshape(n, 4)
    return head


def _crc_records(buf: bytes, starts, lengths) -> np.ndarray:
    value = google_crc32c.value
    return np.array([value(buf[s : s + k]) for s, k in zip(starts, lengths)], dtype=np.uint32)


def _assemble_fixed(
    pieces: list, dl: int, n: int, crc: np.ndarray | None = None, rows: np.ndarray | None = None
):
    """Frames of n rows of one width (``rows`` of the pieces, if given; then ``crc`` is theirs):
    (flat frames, starts, data CRCs)."""
    width = 12 + dl + 4
    frames = np.empty((n, width), dtype=np.uint8)
    if n:
        frames[:, :12] = _len_headers(np.array([dl], dtype=np.int64))
    _fill_fixed(frames, 12, pieces, rows)
    if crc is None:
        crc = _crc_records(frames.tobytes(), range(12, n * width, width), [dl] * n)
    frames[:, width - 4 :].view("<u4")[:, 0] = _mask_crc(crc).view("<u4")
    return frames.reshape(-1), np.arange(n + 1, dtype=np.int64) * width, crc


def _assemble_variable(pieces: list, data_len: np.ndarray, n: int):
    """Frames of n rows of varying widths: (flat frames, starts, data CRCs)."""
    framed = [("u8", _len_headers(data_len)), *pieces, ("const", b"\0\0\0\0")]
    flat, starts = _join(framed, n)
    buf = flat.tobytes()
    crc = _crc_records(buf, (starts[:-1] + 12).tolist(), data_len.tolist())
    tails = (starts[1:] - 4)[:, None] + np.arange(4)[None, :]
    flat[tails] = _mask_crc(crc).view(np.uint8).reshape(n, 4)
    return flat, starts, crc


class ExampleBatch:
    """Rows to serialize as ``tf.train.Example`` protos, framed as TFRecords.

    ``columns``: (name, dtype, values) or (name, dtype, values, present), dtype float32 /
    int64 / string, one value per row; string values may be an Arrow string/binary array
    (fastest), or any sequence of str/bytes. ``present`` (a bool array, or None for all) marks
    the rows that have the feature: the others leave its key out (their value is ignored).
    Raises ValueError for an unknown dtype, a key over 100 bytes, columns of different lengths
    or a null string.

    :meth:`crcs` gives every record's CRC32C; when all rows have one width it comes from the
    values alone, so :meth:`frames` then writes only the rows asked for, in the order asked
    for, instead of framing all rows and gathering them afterwards.
    """

    def __init__(self, columns: list[tuple[str, str, object]]) -> None:
        self.n = n = len(columns[0][2])
        self._pieces, self._data_len = _example_pieces(columns, n)
        self._fixed = all(_width(p) is not None for p in self._pieces)
        self._crc: np.ndarray | None = None
        self._all: tuple | None = None  # (frames, starts) of every row, once framed

    def _frame_all(self) -> None:
        n = self.n
        if n == 0:
            frames, starts, crc = (
                np.zeros(0, np.uint8),
                np.zeros(1, np.int64),
                np.zeros(0, np.uint32),
            )
        elif self._fixed:
            dl = int(self._data_len[0])
            frames, starts, crc = _assemble_fixed(self._pieces, dl, n, self._crc)
        else:
            frames, starts, crc = _assemble_variable(self._pieces, self._data_len, n)
        self._all, self._crc = (frames, starts), crc

    def crcs(self) -> np.ndarray:
        """The unmasked CRC32C of each serialized record (uint32; the split hash uses it)."""
        if self._crc is None:
            if self._fixed and self.n:
                self._crc = _linear_crcs(self._pieces, self.n)
            if self._crc is None:
                self._frame_all()
        return self._crc

    def frames(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(flat uint8 frames, n + 1 offsets) of ``rows`` (indices, in that order; default all)."""
        if self._all is None:
            if rows is None or not self._fixed:
                self._frame_all()
            else:
                self.crcs()  # frames every row when the CRCs cannot come from the values
        if self._all is not None:
            frames, starts = self._all
            return (frames, starts) if rows is None else take_records(frames, starts, rows)
        rows = np.asarray(rows, dtype=np.int64)
        dl = int(self._data_len[0])
        frames, starts, _ = _assemble_fixed(self._pieces, dl, len(rows), self._crc[rows], rows)
        return frames, starts


def frame_examples(columns: list[tuple[str, str, object]]):
    """One framed TFRecord of a serialized ``tf.train.Example`` per row.

    ``columns`` as for :class:`ExampleBatch`. Returns ``(frames, starts, data_crc)``: a flat
    writable uint8 array, the n + 1 frame offsets, and each record's unmasked CRC32C.
    """
    batch = ExampleBatch(columns)
    frames, starts = batch.frames()
    return frames, starts, batch.crcs()


def encode_examples(columns: list[tuple[str, str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Serialize one ``tf.train.Example`` per row, unframed.

    ``columns`` as for :func:`frame_examples`. Float entries are written first, then int64,
    then string ones (map order carries no meaning in a proto map). Returns (flat uint8
    buffer, offsets) where record i is ``buf[offsets[i]:offsets[i+1]]``.
    """
    n = len(columns[0][2])
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    pieces, _ = _example_pieces(columns, n)
    return _join(pieces, n)


def take_records(frames: np.ndarray, starts: np.ndarray, idx: np.ndarray):
    """The records ``idx`` (in that order) of a flat buffer: (flat uint8, n + 1 offsets)."""
    import pyarrow as pa

    n = len(starts) - 1
    if len(idx) == n and (n == 0 or (idx == np.arange(n)).all()):
        return frames, starts
    lens = np.diff(starts)
    if n and (lens == lens[0]).all():
        w = int(lens[0])
        out = frames[: n * w].reshape(n, w)[idx].reshape(-1)
        return out, np.arange(len(idx) + 1, dtype=np.int64) * w
    arr = pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(starts), pa.py_buffer(frames)]
    )
    taken = arr.take(pa.array(idx, type=pa.int64()))
    offsets = _arrow_offsets(taken)
    base = np.frombuffer(taken.buffers()[1], dtype=np.int64)[taken.offset]
    flat = np.frombuffer(taken.buffers()[2], dtype=np.uint8)[base : base + offsets[-1]]
    return flat, offsets.astype(np.int64, copy=True)


# ----------------------------------------------------------------------------- framing


def _mask_crc(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    rot = ((crc >> np.uint64(15)) | (crc << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rot + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)).astype("<u4")


def frame_records(
    flat: np.ndarray, offsets: np.ndarray, data_crc: np.ndarray | None = None
) -> tuple[bytes, np.ndarray]:
    """TFRecord framing for a run of serialized records: (bytes, n + 1 frame offsets).

    Each frame is ``uint64 length | masked crc32c(length) | data | masked crc32c(data)``;
    ``data_crc`` (from :func:`data_crcs`) is computed here when not given.
    """
    import pyarrow as pa

    n = len(offsets) - 1
    offsets = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(offsets)
    if data_crc is None:
        data_crc = data_crcs(flat, offsets)
    rel = offsets - offsets[0]
    data = pa.Array.from_buffers(
        pa.large_binary(),
        n,
        [None, pa.py_buffer(rel), pa.py_buffer(np.ascontiguousarray(flat[offsets[0] :]))],
    )
    tail = _mask_crc(np.asarray(data_crc)).view(np.uint8).reshape(n, 4)
    frames, starts = _join([("u8", _len_headers(lens)), ("arrow", data), ("u8", tail)], n)
    return frames.tobytes(), starts


def data_crcs(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Unmasked CRC32C of each record's bytes (the split hash uses them too)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    return _crc_records(flat.tobytes(), offsets[:-1].tolist(), np.diff(offsets).tolist()).astype(
        np.uint64
    )


def frame_header(length: int) -> bytes:
    """The 12-byte TFRecord header for one record of ``length`` bytes (tests use it)."""
    lb = struct.pack("<Q", length)
    return lb + _mask_crc(np.array([google_crc32c.value(lb)]))[0].tobytes()
