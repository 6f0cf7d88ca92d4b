"""preprocess: tabular data (CSV, plain or .gz, or Parquet) into a committed TFRecord data set.

Output layout (written to a staging place, committed with ``manifest.json`` last)::

    <output>/train/part-00000-of-00008.tfrecord[.gz]   one tf.train.Example per row
    <output>/eval/part-00000-of-00008.tfrecord[.gz]
    <output>/schema.json      feature names, dtypes, shapes; label; task
    <output>/stats.json       count/mean/std/min/max per numeric feature, label histogram
    <output>/manifest.json    every file with size and CRC32C, row counts

How the work is split, and why the output does not depend on it:

- The calling thread streams each input (local or ``gs://``, decompressing ``.gz``) and cuts
  it into *blocks* of about ``block_size`` bytes at row boundaries (quote-aware, so a quoted
  field with newlines is never cut). Block boundaries depend on the input bytes and the block
  size only.
- Each block is parsed (Arrow's C++ CSV reader), validated, summarized and serialized into
  framed TFRecords (:mod:`tfpipes.example_codec`) by a pool of worker threads — Arrow, numpy,
  zlib and file writes release the GIL — or in the calling thread for one worker. A block's
  train and eval records come back already cut into ``num_shards`` balanced chunks.
- The calling thread writes the chunks in block order, rotating which shard gets which chunk,
  so shards stay within one row of each other, and folds the block statistics in the same
  order. Runs with any number of workers therefore write identical bytes.

Bad input: in ``fail`` mode the first problem (wrong field count, unparseable number, empty
value, missing label, NaN or infinity, bad UTF-8) stops the run with one line naming file,
line and column — found by re-reading just that block with Python's ``csv`` module — and
nothing is committed. In ``skip`` mode such rows are dropped, counted in ``stats.json``
(``skipped_rows``) and reported.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator

import numpy as np

from tfpipes import example_codec, manifest, progress, storage
from tfpipes.errors import UserError, location
from tfpipes.schema import Feature, Schema, load_forced_types

log = logging.getLogger("tfpipes.preprocess")

SPLIT_BUCKETS = 10_000
MAX_LABEL_CLASSES = 10_000
FLOAT32_MAX = 3.4028234663852886e38
CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_BATCH_ROWS = 65_536
# A row (or a quoted field) may span blocks, but not this much: beyond it the input is
# almost certainly broken (an unterminated quote) and buffering more would break the memory
# bound.
MAX_ROW_BYTES = 64 << 20
INFER_BYTES = 1 << 20  # column types come from the rows in the first MB
GZIP_LEVEL = 1  # zlib level for --compression GZIP: 3x faster than 6, files ~20% larger


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What to read, where to write, and how to split.

    source: a file, a glob, a directory or a ``gs://`` prefix of ``.csv``/``.csv.gz``/``.tsv``
        or ``.parquet`` files (all with the same columns).
    output: the data set directory or ``gs://`` prefix to commit.
    label: the label column's name.
    eval_fraction: fraction of rows for the eval split, by a hash of each row's content.
    num_shards: shards per split; at least 4 x the workers that will train on it is a good
        default for multi-worker training (each input pipeline gets whole files).
    workers: threads that parse and encode; 0 means one per CPU core. The output is the same
        for any number.
    on_bad_row: "fail" (the first bad row stops the run) or "skip" (bad rows are dropped,
        counted and reported).
    """

    source: str
    output: str
    label: str
    eval_fraction: float = 0.2
    num_shards: int = 16
    split_seed: int = 0
    compression: str = ""  # "" | "GZIP"
    schema_path: str = ""  # optional {column: dtype} or schema.json forcing column types
    overwrite: bool = False
    block_size: int = 4 << 20
    progress: bool | None = None  # None: a bar when stderr is a terminal
    workers: int = 0
    on_bad_row: str = "fail"

    def validate(self) -> None:
        if not self.label:
            raise UserError("--label is required: the name of the label column")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")
        if self.num_shards < 1:
            raise UserError(f"--num-shards must be at least 1, got {self.num_shards}")
        if self.compression not in ("", "GZIP"):
            raise UserError(f"--compression must be GZIP or empty, got {self.compression!r}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 (one per core) or more, got {self.workers}")
        if self.on_bad_row not in ("fail", "skip"):
            raise UserError(f"--on-bad-row must be fail or skip, got {self.on_bad_row!r}")
        if self.block_size < 1:
            raise UserError(f"block_size must be positive, got {self.block_size}")


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    output: str
    rows: int
    train_rows: int
    eval_rows: int
    seconds: float
    schema: Schema
    source_hash: str
    skipped_rows: int = 0
    bytes_read: int = 0
    workers: int = 1
    peak_rss_mb: int = 0  # the largest resident memory of the process
    cpu_seconds: float = 0.0  # CPU time of all its threads

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds else 0.0


# ----------------------------------------------------------------------------- inputs


def _source_files(source: str) -> list[str]:
    files = storage.match_files(source, CSV_SUFFIXES + PARQUET_SUFFIXES)
    if not files:
        raise UserError(
            f"{source}: no input files found (looked for *.csv, *.csv.gz, *.tsv, *.parquet)"
        )
    return files


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def _delimiter(path: str) -> str:
    return "\t" if path.lower().endswith((".tsv", ".tsv.gz")) else ","


def _crc_hex(crc) -> str:
    return crc.hexdigest().decode()


def _fingerprint(parts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for path, crc_hex in parts:
        h.update(f"{os.path.basename(path)}\0{crc_hex}\0".encode())
    return h.hexdigest()


def source_fingerprint(files: list[str]) -> str:
    """A content hash of the inputs (name, size, CRC32C of the bytes): the cache key.

    :func:`preprocess` computes the same value while it streams the inputs.
    """
    return _fingerprint([(path, _file_crc_hex(path)) for path in files])


def _file_crc_hex(path: str) -> str:
    """CRC32C of the bytes of ``path`` (local or remote), as :func:`_crc_hex` writes it."""
    import google_crc32c

    crc = google_crc32c.Checksum()
    with storage.open_read(path) as f:
        while chunk := f.read(8 << 20):
            crc.update(chunk)
    return _crc_hex(crc)


class _Tap:
    """A read-only file wrapper that counts and checksums the raw bytes passing through."""

    def __init__(self, f) -> None:
        import google_crc32c

        self._f = f
        self.crc = google_crc32c.Checksum()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.crc.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


# ----------------------------------------------------------------------------- CSV blocks


def _count_lines(data: bytes | bytearray, end: int | None = None) -> int:
    """Line ends (\\n, \\r\\n or a lone \\r) in ``data[:end]``."""
    end = len(data) if end is None else end
    n = data.count(b"\n", 0, end)
    if data.find(b"\r", 0, end) == -1:
        return n
    return n + data.count(b"\r", 0, end) - data.count(b"\r\n", 0, end)


def _quoted_spans(buf: bytes, delim: int) -> tuple[list[int], list[int]]:
    """Start and end offsets of the quoted sections of ``buf`` (which starts at a row start).

    A quote opens a quoted field only at the start of a field; inside one, ``""`` is a literal
    quote and a single quote closes it (Arrow's and RFC 4180's rule). An unclosed section ends
    at ``len(buf)``. Vectorized when every quote sits where well-formed CSV puts it (then the
    quotes simply pair up); a Python scan over the quotes otherwise.
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    q = np.flatnonzero(arr == 0x22)
    if not len(q):
        return [], []
    n = len(buf)
    opens, closes = q[0::2], q[1::2]
    prev = arr[np.maximum(opens - 1, 0)]
    ok_open = (opens == 0) | (prev == delim) | (prev == 10) | (prev == 13) | (prev == 0x22)
    nxt = arr[np.minimum(closes + 1, n - 1)]
    ok_close = (closes == n - 1) | (nxt == delim) | (nxt == 10) | (nxt == 13) | (nxt == 0x22)
    if ok_open.all() and ok_close.all():
        ends = closes.tolist() + ([n] if len(q) % 2 else [])
        return opens.tolist(), ends
    starts, ends = [], []
    qs = q.tolist()
    inside, j = False, 0
    while j < len(qs):
        p = qs[j]
        if not inside:
            if p == 0 or buf[p - 1] in (delim, 10, 13):
                inside = True
                starts.append(p)
            j += 1
        elif j + 1 < len(qs) and qs[j + 1] == p + 1:
            j += 2  # "" inside a quoted field
        else:
            inside = False
            ends.append(p)
            j += 1
    if inside:
        ends.append(n)
    return starts, ends


_NEWLINE = re.compile(rb"\r\n|\n|\r")


def _row_end(buf: bytes, delim: int, eof: bool, first: bool = False) -> int:
    """Offset just past the last (``first``: the first) row terminator of ``buf`` outside quoted
    fields, 0 if there is none yet. ``\\n``, ``\\r\\n`` and a lone ``\\r`` end rows."""
    starts, ends = _quoted_spans(buf, delim) if b'"' in buf else ([], [])

    def outside(p: int) -> bool:
        i = bisect.bisect_right(starts, p) - 1
        return i < 0 or p > ends[i]

    if first:
        for m in _NEWLINE.finditer(buf):
            if outside(m.start()):
                if m.group() == b"\r" and m.end() == len(buf) and not eof:
                    return 0  # may be the first half of \r\n
                return m.end()
        return 0
    for term in (b"\n", b"\r"):
        hi = len(buf) if (term == b"\n" or eof) else len(buf) - 1  # a final \r: half of \r\n?
        p = buf.rfind(term, 0, hi)
        while p != -1 and not outside(p):
            p = buf.rfind(term, 0, starts[bisect.bisect_right(starts, p) - 1])
        if p != -1:
            return p + 1
    return 0


class _CsvInput:
    """One CSV file streamed as row-aligned blocks; checksums the raw bytes on the way."""

    def __init__(self, path: str, block_size: int) -> None:
        self.path = path
        self.block_size = block_size
        self.delimiter = _delimiter(path)
        self._stack = contextlib.ExitStack()
        raw = self._stack.enter_context(storage.open_read(path))
        self.tap = _Tap(raw)
        self._stream = (
            gzip.GzipFile(fileobj=self.tap, mode="rb") if path.lower().endswith(".gz") else self.tap
        )
        self._pending = bytearray()  # read but not yet handed out (cheap to cut from the front)
        self._eof = False
        self._line = 1  # line number of the first line in _pending
        try:
            self.header = self._read_header()
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def _read(self) -> bool:
        """Append one block of input to _pending; False at the end of the input."""
        if self._eof:
            return False
        try:
            data = self._stream.read(self.block_size)
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated .gz, a disk error
            raise UserError(f"{self.path}: cannot read ({type(e).__name__}: {e})") from None
        if not data:
            self._eof = True
            return False
        self._pending += data
        return True

    def _read_header(self) -> list[str]:
        delim = ord(self.delimiter)
        while True:
            # blank lines before the header are skipped, as Arrow skips blank lines
            stripped = self._pending.lstrip(b"\r\n")
            self._line += _count_lines(self._pending, len(self._pending) - len(stripped))
            self._pending = stripped
            end = _row_end(self._pending, delim, self._eof, first=True)
            if end or self._eof:
                break
            if len(self._pending) > MAX_ROW_BYTES:
                raise UserError(f"{location(self.path, 1)}: header line longer than 64 MB")
            self._read()
        head = bytes(self._pending[:end] if end else self._pending)
        del self._pending[: len(head)]
        try:
            text = head.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{location(self.path, self._line)}: cannot read the header (not UTF-8 text: "
                f"{e.reason} at byte {e.start})"
            ) from None
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter))
        header = rows[0] if rows else []
        if not header or all(not h.strip() for h in header):
            raise UserError(
                f"{self.path}: the file is empty; expected a header line with column names"
            )
        seen = set()
        for i, name in enumerate(header):
            if not name.strip():
                raise UserError(
                    f"{location(self.path, self._line, i + 1)}: empty column name in the header"
                )
            if name in seen:
                raise UserError(
                    f"{location(self.path, self._line, name)}: duplicate column name in the header"
                )
            seen.add(name)
        self._line += _count_lines(head)
        return header

    def blocks(self) -> Iterator[_Block]:
        """Row-aligned blocks: what each read of ``block_size`` bytes completes (the first one
        is what the header's read brought in), the rest at the end of the input."""
        delim = ord(self.delimiter)
        while True:
            if self._eof:  # what is left: the last rows, perhaps without a line end
                end = len(self._pending) if self._pending.strip(b"\r\n") else 0
            else:
                end = _row_end(self._pending, delim, eof=False)
            if end:
                with memoryview(self._pending) as view:
                    data = bytes(view[:end])
                yield _Block(self.path, self._line, data, self.delimiter)
                self._line += _count_lines(self._pending, end)
                del self._pending[:end]
            elif len(self._pending) > max(MAX_ROW_BYTES, 4 * self.block_size):
                raise UserError(self._no_row_end_message())
            if self._eof:
                return
            self._read()

    def _no_row_end_message(self) -> str:
        starts, ends = _quoted_spans(self._pending, ord(self.delimiter))
        if starts and ends[-1] == len(self._pending):
            line = self._line + _count_lines(self._pending, starts[-1])
            return (
                f"{location(self.path, line)}: unterminated quoted field (no closing quote "
                f"within {MAX_ROW_BYTES >> 20} MB)"
            )
        return f"{location(self.path, self._line)}: a row longer than {MAX_ROW_BYTES >> 20} MB"


class _ParquetInput:
    """One Parquet file streamed as record batches of ``PARQUET_BATCH_ROWS`` rows."""

    def __init__(self, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self._stack = contextlib.ExitStack()
        try:
            if storage.is_remote(path):
                raw = self._stack.enter_context(storage.open_read(path))
                self._file = pq.ParquetFile(pa.PythonFile(raw, mode="r"))
            else:
                self._file = pq.ParquetFile(storage.normalize(path))
        except (pa.ArrowException, OSError) as e:
            self._stack.close()
            raise UserError(f"{path}: not a readable Parquet file ({_one_line(e)})") from None
        self.schema = self._file.schema_arrow
        self.header = list(self.schema.names)
        if len(set(self.header)) != len(self.header):
            self._stack.close()
            raise UserError(f"{path}: duplicate column names {self.header}")
        self.bytes = storage.size(path)

    def close(self) -> None:
        self._stack.close()

    def blocks(self) -> Iterator[_Block]:
        import pyarrow as pa

        first = 1
        try:
            for batch in self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield _Block(self.path, first, batch, "", parquet=True)
                first += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.path}: cannot read ({_one_line(e)})") from None


# ----------------------------------------------------------------------------- types


def _arrow_to_dtype(t) -> str:
    import pyarrow as pa

    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int64"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float32"
    return "string"


def _csv_infer_types(block: _Block, header: list[str]) -> dict[str, str]:
    """Column dtypes from Arrow's inference on the rows in the first MB of the first block
    (rows it cannot parse are left for the block's own validation to report)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    data = block.data
    if len(data) > INFER_BYTES:  # the rows in the first MB, as Arrow's own reader does
        data = data[: _row_end(data[:INFER_BYTES], ord(block.delimiter), eof=False) or len(data)]
    try:
        data.decode("utf-8")  # Arrow's bad-row callback fails on undecodable rows
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(
                column_names=header, use_threads=False, block_size=len(data) + 1
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=block.delimiter,
                newlines_in_values=True,
                invalid_row_handler=lambda row: "skip",
            ),
            convert_options=pcsv.ConvertOptions(
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
        return {f.name: _arrow_to_dtype(f.type) for f in table.schema}
    except (pa.ArrowInvalid, UnicodeDecodeError):
        # Types cannot be told from a block Arrow rejects; the block's validation names the
        # problem (every column is a string until then).
        return {h: "string" for h in header}


# ----------------------------------------------------------------------------- blocks


@dataclasses.dataclass(frozen=True)
class _Block:
    """A unit of work: CSV bytes starting at ``first`` (a line number) or a Parquet batch
    starting at row ``first``."""

    path: str
    first: int
    data: object  # bytes | pyarrow.RecordBatch
    delimiter: str
    parquet: bool = False


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything a worker needs besides the block."""

    header: tuple[str, ...]
    types: dict
    label: str
    order: tuple[str, ...]  # columns in the order they are encoded: features, then the label
    eval_fraction: float
    split_seed: int
    num_shards: int
    compression: str
    on_bad_row: str


@dataclasses.dataclass
class _Chunks:
    """One split of one block, cut into ``num_shards`` chunks of whole records (a GZIP member
    each with compression)."""

    data: list  # a uint8 array per chunk
    rows: list  # rows per chunk


@dataclasses.dataclass
class _BlockResult:
    error: str | None = None
    rows: int = 0
    skipped: int = 0
    skip_note: str | None = None
    stats: dict | None = None
    splits: dict | None = None  # split -> _Chunks


class _BadBlock(Exception):
    """A problem in a block (fail mode): the message names file, line and column."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def process_block(plan: _Plan, block: _Block) -> _BlockResult:
    """Parse, validate, summarize and encode one block (runs on a worker thread).

    Returns the error message for bad input instead of raising, so that the caller reports
    the first problem in input order.
    """
    try:
        if block.parquet:
            cols, keep, skipped, note = _parquet_columns(plan, block)
        else:
            cols, keep, skipped, note = _csv_columns(plan, block)
    except _BadBlock as e:
        return _BlockResult(error=str(e))
    if keep is not None:
        cols = {k: _filter(v, keep) for k, v in cols.items()}
    n = len(cols[plan.label])
    result = _BlockResult(rows=n, skipped=skipped, skip_note=note)
    if n == 0:
        return result
    result.stats = _block_stats(plan, cols, n)
    batch = example_codec.ExampleBatch([(c, plan.types[c], cols[c]) for c in plan.order])
    is_eval = split_mask(batch.crcs(), plan.eval_fraction, plan.split_seed)
    result.splits = {}
    for split, sel in (("train", ~is_eval), ("eval", is_eval)):
        frames, starts = batch.frames(np.flatnonzero(sel))
        result.splits[split] = _cut(frames, starts, plan.num_shards, plan.compression)
    return result


def _peak_rss_mb() -> int:
    """This process's peak resident memory: Linux's VmHWM rather than ru_maxrss, which keeps
    the figure of the process that started this one across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) >> 10
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak >> 20 if sys.platform == "darwin" else peak >> 10  # bytes there, KiB here


def _filter(values, keep: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[keep]
    import pyarrow as pa

    return values.filter(pa.array(keep))


def _cut(frames: np.ndarray, starts: np.ndarray, k: int, compression: str) -> _Chunks:
    """Cut n records into k contiguous chunks of n // k or n // k + 1 records."""
    n = len(starts) - 1
    # The first n % k chunks get the extra row; the writer sends chunk i to shard
    # (i + rows so far) % k, so the extra rows go round-robin and shards stay within one row.
    q, r = divmod(n, k)
    bounds = [i * q + min(i, r) for i in range(k + 1)]
    data, rows = [], []
    for i in range(k):
        lo, hi = bounds[i], bounds[i + 1]
        piece = frames[starts[lo] : starts[hi]]  # a view: written out without a copy
        if hi > lo and compression == "GZIP":
            z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # one gzip member per chunk
            piece = np.frombuffer(z.compress(piece) + z.flush(), dtype=np.uint8)
        data.append(piece)
        rows.append(hi - lo)
    return _Chunks(data, rows)


def _crc32c_extend_array(crc: int, data: np.ndarray) -> int:
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


def split_mask(data_crc: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """True for eval rows: a hash of the serialized example, so identical rows stay together."""
    h = (data_crc.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(
        0xFFFFFFFF
    )
    h ^= h >> np.uint64(16)
    return (h % np.uint64(SPLIT_BUCKETS)) < np.uint64(round(eval_fraction * SPLIT_BUCKETS))


# ----------------------------------------------------------------------------- CSV validation

_INT_RE = r"^[ \t]*-?[0-9]+[ \t]*$"
_FLOAT_RE = r"^[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$"
_NONFINITE_RE = r"^[ \t]*[+-]?(nan|inf|infinity)[ \t]*$"
_BLANK_RE = r"^[ \t]*$"
_int_re, _float_re = re.compile(_INT_RE), re.compile(_FLOAT_RE)
_nonfinite_re = re.compile(_NONFINITE_RE, re.IGNORECASE)


def _check_cell(value: str, dtype: str) -> str | None:
    """Why ``value`` is not a valid ``dtype`` cell (Arrow's rules), or None."""
    if dtype == "string":
        return None
    if re.match(_BLANK_RE, value):
        return "empty value"
    if dtype == "int64":
        if not _int_re.match(value):
            return f"{value!r} is not an integer"
        if not -(2**63) <= int(value) < 2**63:
            return f"{value!r} overflows int64"
        return None
    if _nonfinite_re.match(value):
        return f"{value!r} is not a finite number (NaN and infinity are not allowed)"
    if not _float_re.match(value):
        return f"{value!r} is not a number"
    if not abs(float(value)) <= FLOAT32_MAX:
        return f"{value!r} overflows float32"
    return None


def _row_problem(plan: _Plan, row: list[str]) -> tuple[str | None, str] | None:
    if len(row) != len(plan.header):
        return None, f"expected {len(plan.header)} fields, got {len(row)}"
    for name, value in zip(plan.header, row):
        if name == plan.label and re.match(_BLANK_RE, value):
            return name, "missing label"
        problem = _check_cell(value, plan.types[name])
        if problem:
            return name, problem
    return None


def _locate(plan: _Plan, block: _Block) -> str | None:
    """Re-read a CSV block with Python's csv module: the first bad row as a one-line message
    naming file, line and column, or None if the module finds nothing wrong."""
    data: bytes = block.data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = block.first + _count_lines(data[: e.start])
        return f"{location(block.path, line)}: not UTF-8 text ({e.reason})"
    starts, ends = _quoted_spans(data, ord(block.delimiter))
    open_line = None
    if starts and ends[-1] == len(data):
        open_line = block.first + _count_lines(data[: starts[-1]])
    # Not strict: like Arrow, text after a closing quote joins the field.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=block.delimiter)
    try:
        for row in reader:
            line = block.first - 1 + reader.line_num
            if open_line is not None and line >= open_line:
                break
            if not row:
                continue  # a blank line; Arrow skips them too
            found = _row_problem(plan, row)
            if found:
                column, problem = found
                return f"{location(block.path, line, column)}: {problem}"
    except csv.Error as e:
        return f"{location(block.path, block.first - 1 + reader.line_num)}: malformed CSV ({e})"
    if open_line is not None:
        return f"{location(block.path, open_line)}: unterminated quoted field"
    return None


def _fail(plan: _Plan, block: _Block, cause: str) -> _BadBlock:
    found = _locate(plan, block) if not block.parquet else None
    if found:
        return _BadBlock(found)
    where = location(block.path, block.first) if not block.parquet else block.path
    return _BadBlock(f"{where}: {cause} (in the rows from here on)")


def _read_block(plan: _Plan, block: _Block, typed: bool):
    """Arrow's parse of a CSV block: (table, rows dropped for a wrong field count)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # float32 straight away: a value past float32's range parses as infinity and is reported
    arrow = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.string()}
    types = {n: arrow[t] if typed else pa.string() for n, t in plan.types.items()}
    bad_rows = []

    def on_invalid(row) -> str:
        bad_rows.append(row)
        return "skip"

    table = pcsv.read_csv(
        pa.py_buffer(block.data),
        read_options=pcsv.ReadOptions(
            column_names=list(plan.header), use_threads=False, block_size=len(block.data) + 1
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=block.delimiter,
            # without a quote in the block, quoting cannot matter: the simpler lexer is faster
            quote_char='"' if b'"' in block.data else False,
            newlines_in_values=True,
            invalid_row_handler=on_invalid if plan.on_bad_row == "skip" else None,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, len(bad_rows)


def _csv_columns(plan: _Plan, block: _Block):
    """Typed, validated columns of a CSV block: (columns, keep mask or None, skipped, note)."""
    import pyarrow as pa

    skip = plan.on_bad_row == "skip"
    if skip:
        try:  # Arrow's bad-row callback cannot show undecodable rows: not a row-level problem
            block.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _fail(plan, block, f"not UTF-8 text ({e.reason})") from None
    try:
        table, dropped = _read_block(plan, block, typed=True)
        typed = True
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        if not skip:
            raise _fail(plan, block, _one_line(e)) from None
        try:
            table, dropped = _read_block(plan, block, typed=False)
        except (pa.ArrowInvalid, UnicodeDecodeError) as e2:
            raise _fail(plan, block, _one_line(e2)) from None  # not row-level: cannot skip
        typed = False
    n = table.num_rows
    cols, bad = {}, np.zeros(n, dtype=bool)
    for name in plan.header:
        arr = table.column(name).combine_chunks()
        values, bad_here = _convert(arr, plan.types[name], typed, name == plan.label)
        cols[name] = values
        if bad_here is not None:
            if not skip:
                raise _fail(plan, block, f"column {name!r}: invalid values")
            bad |= bad_here
    keep = None
    note = None
    skipped = dropped + int(bad.sum())
    if skipped:
        keep = ~bad if bad.any() else None
        note = _locate(plan, block)
    return cols, keep, skipped, note


def _convert(arr, dtype: str, typed: bool, is_label: bool):
    """(values, mask of bad rows or None) for one column: numpy for numbers, Arrow for text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(arr)
    if dtype == "string":
        values = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
        if is_label:
            blank = pc.match_substring_regex(values, _BLANK_RE).to_numpy(zero_copy_only=False)
            return values, (blank if blank.any() else None)
        return values, None
    if typed:
        a = arr.to_numpy(zero_copy_only=False)
        if dtype == "int64":
            return a.astype(np.int64, copy=False), None
        if a.dtype == np.float32:  # parsed as float32: past its range is infinity
            finite = np.isfinite(a)
            return a, (None if finite.all() else ~finite)
        bad = ~(np.abs(a) <= FLOAT32_MAX)  # NaN, infinities, float32 overflow
        return a.astype(np.float32), (bad if bad.any() else None)
    # Skip mode after a failed typed parse: every cell is text; keep the ones Arrow would take.
    ok = pc.match_substring_regex(arr, _INT_RE if dtype == "int64" else _FLOAT_RE)
    ok = ok.to_numpy(zero_copy_only=False)
    text = pc.utf8_trim(arr, " \t")
    target = pa.int64() if dtype == "int64" else pa.float64()
    filled = pc.if_else(pa.array(ok), text, pa.scalar("0"))
    try:
        a = filled.cast(target).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # an int64 overflow: fall back to Python for this column
        vals = filled.to_pylist()
        a = np.zeros(n, dtype=np.int64)
        for i, v in enumerate(vals):
            x = int(v)
            if -(2**63) <= x < 2**63:
                a[i] = x
            else:
                ok[i] = False
    bad = ~ok
    if dtype == "float32":
        bad |= ~(np.abs(a) <= FLOAT32_MAX)
        a = np.where(bad, 0.0, a).astype(np.float32)
    return a.astype(np.int64, copy=False) if dtype == "int64" else a, (bad if bad.any() else None)


# ----------------------------------------------------------------------------- Parquet


def _parquet_columns(plan: _Plan, block: _Block):
    import pyarrow as pa
    import pyarrow.compute as pc

    batch = block.data
    skip = plan.on_bad_row == "skip"
    if list(batch.schema.names) != list(plan.header):
        raise _BadBlock(f"{block.path}: columns {batch.schema.names} differ from {plan.header}")
    n = batch.num_rows
    cols, bad = {}, np.zeros(n, dtype=bool)
    for name in plan.header:
        arr = batch.column(name)
        dtype = plan.types[name]
        target = {"int64": pa.int64(), "float32": pa.float64(), "string": pa.string()}[dtype]
        try:
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if pa.types.is_boolean(arr.type) and dtype != "string":
                arr = arr.cast(pa.int64())
            arr = arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise _BadBlock(
                f"{block.path}: column {name!r}: cannot convert {batch.column(name).type} to "
                f"{dtype} ({_one_line(e)})"
            ) from None
        null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
        if null is not None:
            arr = arr.fill_null(pa.scalar("" if dtype == "string" else 0, target))
        values, bad_here = _convert(arr, dtype, True, name == plan.label)
        if null is not None:
            bad_here = null if bad_here is None else (bad_here | null)
        if bad_here is not None and not skip:
            i = int(np.flatnonzero(bad_here)[0])
            if null is not None and null[i]:
                what = "missing label" if name == plan.label else "missing value"
            elif dtype == "string":
                what = "missing label"  # an empty one
            else:
                value = pc.take(arr, [i])[0].as_py()
                what = f"{value!r} is not a finite float32 (NaN and infinity are not allowed)"
            raise _BadBlock(f"{block.path}: row {block.first + i}: column {name!r}: {what}")
        if bad_here is not None:
            bad |= bad_here
        cols[name] = values
    skipped = int(bad.sum())
    note = None
    if skipped:
        i = int(np.flatnonzero(bad)[0])
        note = f"{block.path}: row {block.first + i}: missing, NaN or infinite value"
    return cols, (~bad if skipped else None), skipped, note


# ----------------------------------------------------------------------------- statistics


def _block_stats(plan: _Plan, cols: dict, n: int) -> dict:
    """Sums, extremes, distinct strings and the label histogram of one block."""
    import pyarrow.compute as pc

    out: dict = {"n": n, "num": {}, "str": {}, "hist": None}
    for name in plan.header:
        dtype = plan.types[name]
        v = cols[name]
        if dtype == "string":
            u = pc.unique(v)
            out["str"][name] = u.to_pylist() if len(u) <= MAX_LABEL_CLASSES else len(u)
            continue
        a = v.astype(np.float64)
        out["num"][name] = (
            n,
            float(a.sum()),
            float(np.square(a).sum()),
            float(a.min()),
            float(a.max()),
        )
    lab = cols[plan.label]
    if plan.types[plan.label] == "int64":
        vals, counts = np.unique(lab, return_counts=True)
        out["hist"] = (vals.tolist(), counts.tolist())
    elif plan.types[plan.label] == "string":
        vc = pc.value_counts(lab)
        out["hist"] = (vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    return out


class _Stats:
    """Statistics folded block by block, in input order."""

    def __init__(self, schema_types: dict[str, str], label: str):
        self.types = schema_types
        self.label = label
        self.n = 0
        self.num = {
            k: [0, 0.0, 0.0, math.inf, -math.inf] for k, t in schema_types.items() if t != "string"
        }
        self.str_unique: dict[str, set] = {
            k: set() for k, t in schema_types.items() if t == "string"
        }
        self.str_over: set[str] = set()  # columns with more distinct values than we track
        self.label_hist: dict = {}

    def merge(self, part: dict) -> None:
        self.n += part["n"]
        for k, (c, s, ss, lo, hi) in part["num"].items():
            acc = self.num[k]
            acc[0] += c
            acc[1] += s
            acc[2] += ss
            acc[3] = min(acc[3], lo)
            acc[4] = max(acc[4], hi)
        for k, vals in part["str"].items():
            u = self.str_unique[k]
            if isinstance(vals, int) or k in self.str_over:
                self.str_over.add(k)
                continue
            u.update(vals)
            if len(u) > MAX_LABEL_CLASSES and k != self.label:
                self.str_over.add(k)
        if part["hist"] is not None:
            for v, c in zip(*part["hist"]):
                self.label_hist[v] = self.label_hist.get(v, 0) + c

    def to_dict(self, train_rows: int, eval_rows: int, vocab: list, skipped: int = 0) -> dict:
        """The ``stats.json`` document."""
        feats = {}
        for k, (c, s, ss, lo, hi) in self.num.items():
            mean = s / c if c else 0.0
            var = max(ss / c - mean * mean, 0.0) if c else 0.0
            feats[k] = {"count": c, "mean": mean, "std": math.sqrt(var), "min": lo, "max": hi}
        for k, u in self.str_unique.items():
            feats[k] = {"count": self.n, "unique": len(u)}
            if k in self.str_over:
                feats[k]["unique_at_least"] = True
        out = {"num_rows": self.n, "train_rows": train_rows, "eval_rows": eval_rows}
        out["skipped_rows"] = skipped
        out["features"] = {k: feats[k] for k in self.types if k != self.label}
        out["label"] = {"name": self.label, **feats[self.label]}
        if self.label_hist:
            if vocab:
                out["label"]["histogram"] = {str(v): self.label_hist.get(v, 0) for v in vocab}
            else:
                out["label"]["histogram"] = {str(k): v for k, v in sorted(self.label_hist.items())}
        return out


# ----------------------------------------------------------------------------- writing


class _SplitWriter:
    """N shard files of one split; chunk i of a block goes to shard (i + rotation) % N."""

    def __init__(self, root: str, split: str, num_shards: int, compression: str):
        os.makedirs(os.path.join(root, split))
        ext = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
        self.rel = [f"{split}/part-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]
        self.fds = [
            os.open(os.path.join(root, r), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            for r in self.rel
        ]
        self.rows = [0] * num_shards
        self.sizes = [0] * num_shards
        self.crcs = [0] * num_shards
        self.next = 0  # rotates which shard gets the larger chunk, keeping shards within 1 row

    def write(self, chunks: _Chunks) -> None:
        k = len(self.fds)
        for i, (data, rows) in enumerate(zip(chunks.data, chunks.rows)):
            if not rows:
                continue
            shard = (i + self.next) % k
            view = memoryview(data)
            while view:
                view = view[os.write(self.fds[shard], view) :]
            self.crcs[shard] = _crc32c_extend_array(self.crcs[shard], data)
            self.sizes[shard] += len(data)
            self.rows[shard] += rows
        self.next = (self.next + sum(chunks.rows)) % k

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def checksums(self) -> dict[str, tuple[int, str]]:
        return {r: (s, f"{c:08x}") for r, s, c in zip(self.rel, self.sizes, self.crcs)}


# ----------------------------------------------------------------------------- the pool


class _Runner:
    """Runs :func:`process_block` on the blocks in input order: in this thread, or on a pool
    of worker threads with a bounded number of blocks in flight (which bounds memory).

    Threads, not processes: Arrow's CSV parser, numpy's kernels, zlib, file writes and the
    CRC32C library all release the GIL, which leaves little to serialize on, while processes
    would cost a start-up and a copy of every byte in and out (measured: ~40% more CPU on two
    cores).
    """

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="preprocess") if workers > 1 else None
        )
        self._pending: deque = deque()

    def submit(self, plan: _Plan, block: _Block) -> Iterator[_BlockResult]:
        """Queue a block; yield the results that are due, in order."""
        if self._pool is None:
            yield process_block(plan, block)
            return
        self._pending.append(self._pool.submit(process_block, plan, block))
        while len(self._pending) > 2 * self.workers:
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[_BlockResult]:
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- the step


def preprocess(cfg: PreprocessConfig) -> PreprocessResult:
    """Read ``cfg.source``, write and commit the data set at ``cfg.output``.

    Raises UserError for bad input (naming file, line and column); nothing is committed then.
    Memory stays bounded by a few blocks per worker whatever the input size.
    """
    cfg.validate()
    t0, cpu0 = time.monotonic(), time.process_time()
    files = _source_files(cfg.source)
    total_bytes = sum(storage.size(f) for f in files)
    workers = cfg.workers or _default_workers()
    if total_bytes <= cfg.block_size:
        workers = 1  # one block: nothing to share
    forced = load_forced_types(cfg.schema_path) if cfg.schema_path else {}
    stack = contextlib.ExitStack()
    with stack:
        runner = _Runner(workers)
        stack.callback(runner.close)
        first = _open_input(files[0], cfg.block_size)
        stack.callback(first.close)
        header = first.header
        if cfg.label not in header:
            raise UserError(
                f"{files[0]}: no label column {cfg.label!r}; columns are: {', '.join(header)}"
            )
        if len(header) < 2:
            raise UserError(f"{files[0]}: only the label column; at least one feature is needed")
        unknown = sorted(set(forced) - set(header))
        if unknown:
            log.warning("--schema names columns not in the data, ignored: %s", unknown)
        with storage.staged_dir(
            cfg.output, overwrite=cfg.overwrite, last=(manifest.MANIFEST,)
        ) as tmp:
            run = _Run(cfg, tmp, header, forced, runner, total_bytes)
            try:
                for i, path in enumerate(files):
                    inp = first if i == 0 else _open_input(path, cfg.block_size)
                    try:
                        if inp.header != header:
                            raise UserError(
                                f"{path}: columns {inp.header} differ from {files[0]}'s {header}"
                            )
                        run.consume(inp)
                    finally:
                        inp.close()
                run.finish()
            finally:
                runner.close()
                run.close()
            result = run.commit(files)
    secs, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return dataclasses.replace(result, seconds=secs, workers=workers, cpu_seconds=cpu)


def _open_input(path: str, block_size: int):
    return _ParquetInput(path) if _is_parquet(path) else _CsvInput(path, block_size)


class _Run:
    """The calling thread's side of one run: feeds blocks, writes the results in order."""

    def __init__(self, cfg, tmp, header, forced, runner: _Runner, total_bytes: int) -> None:
        self.cfg, self.tmp, self.header, self.forced = cfg, tmp, header, forced
        self.runner = runner
        self.plan: _Plan | None = None
        self.writers = {
            s: _SplitWriter(tmp, s, cfg.num_shards, cfg.compression) for s in ("train", "eval")
        }
        self.stats: _Stats | None = None
        self.skipped = 0
        self.notes: list[str] = []
        self.crcs: list[tuple[str, str]] = []
        self.bytes_done = 0
        self.bar = progress.Progress(
            "preprocess", total=total_bytes, unit="B", enabled=cfg.progress
        )

    def _make_plan(self, inp, block: _Block | None) -> _Plan:
        cfg = self.cfg
        if isinstance(inp, _ParquetInput):
            types = {f.name: _arrow_to_dtype(f.type) for f in inp.schema}
        else:
            types = _csv_infer_types(block, self.header)
        types.update({k: v for k, v in self.forced.items() if k in types})
        features = [h for h in self.header if h != cfg.label]
        self.stats = _Stats(types, cfg.label)
        return _Plan(
            header=tuple(self.header),
            types=types,
            label=cfg.label,
            order=tuple(features + [cfg.label]),
            eval_fraction=cfg.eval_fraction,
            split_seed=cfg.split_seed,
            num_shards=cfg.num_shards,
            compression=cfg.compression,
            on_bad_row=cfg.on_bad_row,
        )

    def consume(self, inp) -> None:
        before = self.bytes_done
        for block in inp.blocks():
            if self.plan is None:
                if not block.parquet and not block.data.strip(b"\r\n"):
                    continue  # blank lines: no rows, and nothing to infer types from
                self.plan = self._make_plan(inp, block)
            for res in self.runner.submit(self.plan, block):
                self._handle(res)
            done = inp.tap.bytes if isinstance(inp, _CsvInput) else 0
            self.bar.update_to(before + done, rows=self.rows)
        if isinstance(inp, _CsvInput):
            self.crcs.append((inp.path, _crc_hex(inp.tap.crc)))
            self.bytes_done = before + inp.tap.bytes
        else:
            self.crcs.append((inp.path, _file_crc_hex(inp.path)))
            self.bytes_done = before + inp.bytes
        self.bar.update_to(self.bytes_done, rows=self.rows)

    @property
    def rows(self) -> int:
        return self.stats.n if self.stats else 0

    def _handle(self, res: _BlockResult) -> None:
        if res.error:
            raise UserError(res.error)
        self.skipped += res.skipped
        if res.skip_note and len(self.notes) < 5:
            self.notes.append(res.skip_note)
        if not res.rows:
            return
        self.stats.merge(res.stats)
        for split, chunks in res.splits.items():
            self.writers[split].write(chunks)

    def finish(self) -> None:
        for res in self.runner.drain():
            self._handle(res)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.bar.close()

    def commit(self, files: list[str]) -> PreprocessResult:
        cfg = self.cfg
        if self.rows == 0:
            why = f" ({self.skipped} bad rows skipped)" if self.skipped else ""
            raise UserError(f"{cfg.source}: no data rows after the header{why}")
        train_rows, eval_rows = sum(self.writers["train"].rows), sum(self.writers["eval"].rows)
        if train_rows == 0:
            raise UserError("every row went to the eval split; lower --eval-fraction")
        if self.skipped:
            log.warning(
                "preprocess: skipped %d bad rows (--on-bad-row=skip); first: %s",
                self.skipped,
                "; ".join(self.notes) or "-",
            )
        types = self.plan.types
        features = list(self.plan.order[:-1])  # the label comes last
        schema = _make_schema(types, features, cfg.label, self.stats, files[0])
        source_hash = _fingerprint(self.crcs)
        storage.write_text(os.path.join(self.tmp, "schema.json"), schema.to_json())
        stats = self.stats.to_dict(
            train_rows, eval_rows, list(schema.label_vocabulary), self.skipped
        )
        storage.write_text(os.path.join(self.tmp, "stats.json"), json.dumps(stats, indent=2) + "\n")
        shards = [
            (rel, split, rows)
            for split, w in self.writers.items()
            for rel, rows in zip(w.rel, w.rows)
        ]
        checksums = {}
        for w in self.writers.values():
            w.close()
            checksums.update(w.checksums())
        manifest.write_manifest(
            self.tmp,
            shards,
            ["schema.json", "stats.json"],
            {"train": train_rows, "eval": eval_rows},
            cfg.compression,
            source_hash,
            checksums=checksums,
        )
        return PreprocessResult(
            cfg.output,
            self.rows,
            train_rows,
            eval_rows,
            0.0,
            schema,
            source_hash,
            skipped_rows=self.skipped,
            bytes_read=self.bytes_done,
            peak_rss_mb=_peak_rss_mb(),
        )


def _make_schema(types, feature_names, label, stats: _Stats, first_file: str) -> Schema:
    lt = types[label]
    if lt == "float32":
        task, num_classes, vocab = "regression", 0, ()
    elif lt == "int64":
        keys = list(stats.label_hist)
        if min(keys) < 0:
            raise UserError(
                f"{location(first_file, None, label)}: integer labels must be >= 0 for "
                f"classification (found {min(keys)}); force float with --schema for regression"
            )
        task, num_classes, vocab = "classification", int(max(keys)) + 1, ()
        if num_classes > MAX_LABEL_CLASSES:
            raise UserError(f"column {label!r}: {num_classes} classes is too many")
    else:
        vocab = tuple(sorted(str(v) for v in stats.label_hist))
        task, num_classes = "classification", len(vocab)
        if num_classes > MAX_LABEL_CLASSES:
            raise UserError(f"column {label!r}: {num_classes} classes is too many")
    return Schema(
        features=tuple(Feature(n, types[n]) for n in feature_names),
        label=Feature(label, lt),
        task=task,
        num_classes=num_classes,
        label_vocabulary=vocab,
    )
