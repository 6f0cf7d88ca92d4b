"""Cutting CSV into row-aligned blocks: the quote scan, row ends, and :class:`CsvInput`.

The calling thread streams each CSV input (local or ``gs://``, decompressing ``.gz``) and cuts
it into blocks of about ``block_size`` bytes at row boundaries. The cut is quote-aware, so a
quoted field with newlines is never cut; block boundaries depend on the input bytes and the
block size only, which keeps the output independent of the worker count.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator

import numpy as np

from tfpipes import storage
from tfpipes.errors import UserError, location
from tfpipes.preprocess.blocks import Block
from tfpipes.preprocess.fingerprint import Tap
from tfpipes.preprocess.inputs import delimiter

# A row (or a quoted field) may span blocks, but not this much: beyond it the input is
# almost certainly broken (an unterminated quote) and buffering more would break the memory
# bound.
MAX_ROW_BYTES = 64 << 20
_NUMPY_COUNT_BYTES = 1 << 16  # count_lines counts longer data with numpy ...
_NUMPY_SLICE = 1 << 18  # ... in slices this long


def count_lines(data: bytes | bytearray, end: int | None = None) -> int:
    """Line ends (\\n, \\r\\n or a lone \\r) in ``data[:end]``."""
    end = len(data) if end is None else end
    if end < _NUMPY_COUNT_BYTES:
        n = data.count(b"\n", 0, end)
        if data.find(b"\r", 0, end) == -1:
            return n
        return n + data.count(b"\r", 0, end) - data.count(b"\r\n", 0, end)
    # A block: numpy counts ~4x faster than bytes.count, and lets the workers run meanwhile;
    # in slices, so that its temporaries stay small and in cache (twice as fast again).
    a = np.frombuffer(data, dtype=np.uint8, count=end)
    n = sum(
        int(np.count_nonzero(a[i : i + _NUMPY_SLICE] == 10)) for i in range(0, end, _NUMPY_SLICE)
    )
    if data.find(b"\r", 0, end) == -1:
        return n
    cr = a == 13
    return n + int(np.count_nonzero(cr)) - int(np.count_nonzero(cr[:-1] & (a[1:] == 10)))


def quoted_spans(buf: bytes, delim: int) -> tuple[list[int], list[int]]:
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


def unclosed_quote(buf: bytes | bytearray, delim: int) -> int | None:
    """Where the quoted field that ``buf`` (from a row start) leaves open starts, or None."""
    if b'"' not in buf:
        return None
    starts, ends = quoted_spans(bytes(buf), delim)
    return starts[-1] if starts and ends[-1] == len(buf) else None


_NEWLINE = re.compile(rb"\r\n|\n|\r")


def row_end(buf: bytes, delim: int, eof: bool, first: bool = False) -> int:
    """Offset just past the last (``first``: the first) row terminator of ``buf`` outside quoted
    fields, 0 if there is none yet. ``\\n``, ``\\r\\n`` and a lone ``\\r`` end rows."""
    starts, ends = quoted_spans(buf, delim) if b'"' in buf else ([], [])

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


class CsvInput:
    """One CSV file streamed as row-aligned blocks; checksums the raw bytes on the way."""

    def __init__(self, path: str, block_size: int) -> None:
        self.path = path
        self.block_size = block_size
        self.delimiter = delimiter(path)
        self._stack = contextlib.ExitStack()
        raw = self._stack.enter_context(storage.open_read(path))
        self.tap = Tap(raw)
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
        # Where the block being handed out starts in the (decompressed) stream: a fan-out plan
        # records it to read the same blocks again by byte range (:mod:`.fanout`).
        self.offset = self.tap.bytes - len(self._pending)

    def close(self) -> None:
        self._stack.close()

    def _read_chunk(self) -> bytes:
        """The next ``block_size`` bytes of input; b"" (and _eof set) at its end."""
        if self._eof:
            return b""
        try:
            data = self._stream.read(self.block_size)
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated .gz, a disk error
            raise UserError(f"{self.path}: cannot read ({type(e).__name__}: {e})") from None
        if not data:
            self._eof = True
        return data if isinstance(data, bytes) else bytes(data)

    def _read(self) -> bool:
        """Append one block of input to _pending; False at the end of the input."""
        data = self._read_chunk()
        if not data:
            return False
        self._pending = _appendable(self._pending)
        self._pending += data
        return True

    def _read_header(self) -> list[str]:
        delim = ord(self.delimiter)
        while True:
            # blank lines before the header are skipped, as Arrow skips blank lines
            stripped = self._pending.lstrip(b"\r\n")
            self._line += count_lines(self._pending, len(self._pending) - len(stripped))
            self._pending = stripped
            end = row_end(self._pending, delim, self._eof, first=True)
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
        self._line += count_lines(head)
        return header

    def blocks(self, lines: bool = True) -> Iterator[Block]:
        """Row-aligned blocks: what each read of ``block_size`` bytes completes (the first one
        is what the header's read brought in), the rest at the end of the input. Without
        ``lines`` the line ends are not counted and every block's ``first`` is 0 (the first
        pass, which names no line, saves a count of the whole input)."""
        delim = ord(self.delimiter)
        data = b""  # the read just made; what the header's read brought in is in _pending
        while True:
            data = self._cut(data, delim)
            if data:
                yield Block(self.path, self._line if lines else 0, data, self.delimiter)
                if lines:
                    self._line += count_lines(data)
                self.offset += len(data)
            if self._eof:
                return
            data = self._read_chunk()

    def _cut(self, data: bytes, delim: int) -> bytes:
        """The block that ``data`` (one read, b"" at the end of the input) completes after
        what is pending, or b"" when no row ends in them yet; the rest stays pending
        (:func:`cut_block`). At the end of the input every quoted field must be closed; a
        row without an end stays bounded."""
        if self._eof:  # data is b"": the last read found nothing more
            self._check_quotes_closed()
        block, self._pending = cut_block(self._pending, data, delim, self._eof)
        if not block and len(self._pending) > max(MAX_ROW_BYTES, 4 * self.block_size):
            raise UserError(self._no_row_end_message())
        return block

    def _check_quotes_closed(self) -> None:
        """At the end of the input every quoted field must be closed: Arrow would take an open
        one, in a string column, for a value running to the end of the file (issue 12)."""
        at = unclosed_quote(self._pending, ord(self.delimiter))
        if at is not None:
            line = self._line + count_lines(self._pending, at)
            raise UserError(f"{location(self.path, line)}: unterminated quoted field")

    def _no_row_end_message(self) -> str:
        at = unclosed_quote(self._pending, ord(self.delimiter))
        if at is not None:
            line = self._line + count_lines(self._pending, at)
            return (
                f"{location(self.path, line)}: unterminated quoted field (no closing quote "
                f"within {MAX_ROW_BYTES >> 20} MB)"
            )
        return f"{location(self.path, self._line)}: a row longer than {MAX_ROW_BYTES >> 20} MB"


def cut_block(
    rest: bytes | bytearray, data: bytes, delim: int, eof: bool
) -> tuple[bytes, bytes | bytearray]:
    """(the block, what stays pending): the rows that ``data`` (one read; b"" at the end of
    the input, ``eof``) completes after ``rest`` (pending, from a row start), cut as
    :func:`row_end` cuts: at the last line end outside quotes (at the end of the input: all
    of it, unless blank). b"" for the block when no row ends in them yet.

    Without a quote in either, the last ``\\n`` of ``data`` is that line end, and the block is
    ``rest`` and ``data`` up to it, joined in one copy (large buffers are costly to allocate
    and grow: the kernel zeroes every fresh page). The fan-out's scans cut with this same
    function (:mod:`.fanout_scan`)."""
    if data and b'"' not in data and b'"' not in rest:
        p = data.rfind(b"\n") + 1
        if p:
            if p == len(data) and not rest:
                return data, b""
            with memoryview(data) as view:
                return b"".join((rest, view[:p])), bytes(view[p:])
    rest = _appendable(rest)
    rest += data
    if eof:  # what is left: the last rows, perhaps without a line end
        end = len(rest) if rest.strip(b"\r\n") else 0
    else:
        end = row_end(rest, delim, eof=False)
    if not end:
        return b"", rest
    with memoryview(rest) as view:
        block = bytes(view[:end])
    del rest[:end]
    return block, rest


def _appendable(buf: bytes | bytearray) -> bytearray:
    """``buf`` as a bytearray, to append to and cut from the front of in place."""
    return buf if isinstance(buf, bytearray) else bytearray(buf)
