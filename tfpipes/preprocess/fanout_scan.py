"""The fan-out plan's read of the input, in parallel: byte ranges of plain CSV files scanned
apart, one range per process on any number of machines.

Single-process preprocess's first pass reads a plain CSV file in reads of ``block_size``
bytes and cuts a block at the last row end of each read, outside quoted fields
(:class:`.csv_blocks.CsvInput`, with :func:`.csv_blocks.cut_block`). Once it is known where
the block before a read ended, that read's cut depends on the read alone. A range of whole
reads finds where its first block starts by a look back at the read before it: without
quotes there, just after its last ``\\n``; with quotes, whether that line end is inside a
quoted field depends on every byte before it, so the range tries two places, the last line
end followed by an even number of quotes and the last one followed by an odd number (for
well-formed CSV one of them is the serial reader's cut), and cuts on from each with the
serial reader's own cutter; the two usually meet within a row and go on as one. Each range
then has its blocks, line ends, CRC32C and the first pass's profiles of its blocks' heads
(:func:`.inference.profile_block`) for each place it may start. The plan
(:func:`.fanout.plan_fanout` with ``scans``, :func:`load_scans`) joins the ranges in order,
keeping for each the start where the range before ended: exactly what one serial pass gives
(the same blocks, line numbers, checksums and column profiles, so the same plan, byte for
byte). Each start counts its line ends block by block, as the serial reader does (a cut
may fall on a lone ``\\r`` in an earlier read than the one being cut). If no start of a range
is where the one before ended (a quote the parity misleads about, a last cut at a lone
``\\r``), the plan reads that file itself: a wrong guess costs time, never a wrong cut.

A read that ends no row (a row or a quoted field longer than a block), a quoted field left
open at the end of the file, a compressed CSV and a Parquet file are read by the plan
itself, serially, as without scans; a range says why it could not be scanned.

Steps: :func:`list_scans` (the ranges, written into the scan place), :func:`run_scan` (one
range, anywhere that sees the input and the place), then ``plan_fanout(..., scans=place)``.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import os
import re

import google_crc32c
import numpy as np

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.preprocess.blocks import Block
from tfpipes.preprocess.config import PreprocessConfig
from tfpipes.preprocess.crc32c import crc32c_combine
from tfpipes.preprocess.csv_blocks import CsvInput, count_lines, cut_block, unclosed_quote
from tfpipes.preprocess.inference import (
    SAMPLE_BYTES,
    BlockProfile,
    ScanPlan,
    block_tail,
    profile_block,
)
from tfpipes.preprocess.inputs import delimiter, is_parquet, source_files
from tfpipes.preprocess.parallel import OrderedRunner, default_workers
from tfpipes.preprocess.places import read_doc, write_marked

FORMAT = "tfpipes.fanout-scan/v1"
LISTING = "_scan/listing.json"  # in the scan place; its presence marks the place ours
MAX_RANGES = 10_000
_RANGE_RE = re.compile(r"_scan/range-\d{5}\.json")


def range_name(i: int) -> str:
    return f"_scan/range-{i:05d}.json"


def scannable(path: str) -> bool:
    """A plain CSV file: one that can be cut into byte ranges."""
    return not is_parquet(path) and not path.lower().endswith(".gz")


def list_scans(cfg: PreprocessConfig, ranges: int, place: str, full_scan: bool = False) -> dict:
    """Cut ``cfg.source``'s plain CSV files into about ``ranges`` ranges of whole reads (each
    file at least one, in proportion to its bytes) and write the listing into ``place`` (new,
    empty or an earlier listing's, whose files are then removed). Returns the listing."""
    cfg.validate()
    if not 1 <= ranges <= MAX_RANGES:
        raise UserError(f"--ranges must be between 1 and {MAX_RANGES}, got {ranges}")
    from tfpipes.preprocess.pipeline import read_header

    place = storage.normalize(place).rstrip("/")
    files = source_files(cfg.source)
    storage.check_output_location(place, (cfg.source, *files))
    header = read_header(cfg, files)
    sizes = [storage.size(f) for f in files]
    b = cfg.block_size
    total = sum(s for f, s in zip(files, sizes) if scannable(f)) or 1
    out = []
    for i, (path, size) in enumerate(zip(files, sizes)):
        if not scannable(path) or size <= b:
            continue  # a file of one block or less: the plan reads it (one read either way)
        reads = -(-size // b)
        n = max(1, min(reads, round(ranges * size / total)))  # files of many blocks
        for j in range(n):
            lo, hi = j * reads // n, (j + 1) * reads // n
            out.append({"file": i, "path": path, "start": lo * b, "end": min(hi * b, size)})
    if not out:  # nothing to cut: one empty range, so that a ParallelFor has a task
        out.append({"file": -1, "path": "", "start": 0, "end": 0})
    doc = {
        "format": FORMAT,
        "source": cfg.source,
        "files": files,
        "sizes": sizes,
        "block_size": b,
        "label": cfg.label,
        "na_values": list(cfg.na_values),
        "sample": not full_scan,
        "header": list(header),
        "ranges": out,
    }
    doc["id"] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    _fresh_place(place)
    _write(place, LISTING, json.dumps(doc, indent=1) + "\n")
    return doc


def load_listing(place: str) -> dict:
    return read_doc(place, LISTING, FORMAT, "scan listing", "preprocess-scan-list")[0]


def run_scan(place: str, index: int, workers: int = 0) -> dict:
    """Scan range ``index`` of the listing in ``place`` and write its result there (written
    whole, once done: a rerun replaces it)."""
    lst = load_listing(place)
    if not 0 <= index < len(lst["ranges"]):
        raise UserError(f"--range must be between 0 and {len(lst['ranges']) - 1}, got {index}")
    rng = lst["ranges"][index]
    if rng["file"] < 0:
        res = {"fast": False, "why": "no plain CSV file of more than one block", "header": None}
    elif storage.size(rng["path"]) != lst["sizes"][rng["file"]]:
        raise UserError(f"{rng['path']}: changed since the scans were listed; list them again")
    else:
        res = _RangeScan(lst, rng, workers or default_workers()).run()
    res |= {"format": FORMAT, "listing": lst["id"], "index": index}
    _write(storage.normalize(place).rstrip("/"), range_name(index), json.dumps(res) + "\n")
    return res


class _NotFast(Exception):
    """The range cannot be cut on its own (the message says why): the plan reads the file."""


class _Start:
    """One place the range's first block may start (the serial reader's cut in the read
    before the range, which depends on the quotes before it), followed from there exactly as
    the serial reader cuts (:func:`.csv_blocks.cut_block`)."""

    def __init__(self, first: int, pending: bytes) -> None:
        self.first = first  # where the range's first block starts
        self.at = first  # where the pending bytes start
        self.rel: int | None = None  # line ends in [range start, at), as CsvInput counts them
        self.pending: bytes | bytearray = pending
        self.keys: list[tuple[int, int]] = []  # (offset, length) of its blocks, in order
        self.why = ""  # why the serial reader cannot have cut this way ("": it can)
        self.joins: tuple[_Start, int] | None = None  # (w, i): w's blocks from w.keys[i] on

    @property
    def live(self) -> bool:
        return not self.why and self.joins is None

    def reason(self) -> str:
        """Why it cannot be the serial reader's ("": it can), the start it joined's too."""
        return self.why or (self.joins[0].reason() if self.joins else "")

    def all_keys(self) -> list[tuple[int, int]]:
        return self.keys + (self.joins[0].all_keys()[self.joins[1] :] if self.joins else [])

    def end(self) -> int:
        return self.joins[0].end() if self.joins else self.at


class _RangeScan:
    """One range: its blocks, line ends, CRC32C and the first pass's profiles of its blocks.

    Window k is the read ``[k*B, (k+1)*B)``; the range is windows ``a .. b-1``. A block is
    handed to the range where it ends; the first one starts in the window before (after the
    header, in the first range), where the serial reader made its last cut. That cut depends
    on whether the window's line ends are inside quoted fields: for well-formed CSV, on the
    parity of the quotes after them. So the look back tries the last line end followed by an
    even and the last followed by an odd number of quotes (without quotes: one place), and
    follows each with the serial reader's own cutter. Two starts usually meet within a row (a
    quote read from the wrong state is mid-field, which the cutter takes literally) and go on
    as one. The plan keeps the start where the range before ended (:func:`load_scans`), and
    reads the file itself if none does, so a wrong guess costs time, never a wrong cut."""

    def __init__(self, lst: dict, rng: dict, workers: int) -> None:
        self.path, self.start, self.end = rng["path"], rng["start"], rng["end"]
        self.b = lst["block_size"]
        self.size = lst["sizes"][rng["file"]]
        self.delim = delimiter(self.path)
        head, na = tuple(lst["header"]), tuple(lst["na_values"])
        self.plan = ScanPlan(head, na, lst["label"], SAMPLE_BYTES if lst["sample"] else 0)
        self.whole = ScanPlan(head, na, lst["label"])
        self.workers = workers
        self.header = None  # the file's header (read by its first ranges)
        self.lines = 0  # line ends whose last byte is in [start, end)
        self.crc = 0
        self.units: dict[tuple[int, int], list[int]] = {}  # key -> [offset, rel, len, CRC32C]
        self.profiles: dict[tuple, list] = {}  # (key, last) -> profile docs
        self._order: collections.deque = collections.deque()  # (key, last) per piece sent
        self._deferred: dict[tuple[int, int], Block] = {}  # the file's last window's blocks

    def run(self) -> dict:
        runner = OrderedRunner(self.workers, profile_block)
        try:
            starts = self._cut_all(runner)
            final = self.end == self.size
            variants = []
            for v in (v for v in starts if not v.reason()):
                keys = v.all_keys()
                roles = [(k, final and i == len(keys) - 1) for i, k in enumerate(keys)]
                for role in roles:
                    self._profile(runner, role, self._deferred.get(role[0]))
                variants.append((v, keys, roles))
            self._take(runner.drain())
        except _NotFast as e:
            return {"fast": False, "why": str(e), "header": self.header}
        finally:
            runner.close()
        if not variants:
            return {"fast": False, "why": starts[0].reason(), "header": self.header}
        return {
            "fast": True,
            "header": self.header,
            "crc": self.crc,
            "lines": self.lines,
            "variants": [
                {
                    "first": v.first,
                    "end": v.end(),
                    "units": [self.units[k] for k in keys],
                    "profiles": [d for role in roles for d in self.profiles[role]],
                }
                for v, keys, roles in variants
            ],
        }

    def _profile(self, runner, role: tuple, block: Block | None) -> None:
        """Profile a block once per role (the file's last block: its head and tail, or all
        of it; any other: its head), in submission order."""
        if role in self.profiles:
            return
        self.profiles[role] = []
        pieces = [(self.plan, block)]
        if role[1]:
            tail = block_tail(block, self.plan.sample_bytes)
            pieces = [(self.plan, block), (self.plan, tail)] if tail else [(self.whole, block)]
        for plan, piece in pieces:
            self._order.append(role)
            self._take(runner.submit(plan, piece))

    def _take(self, results) -> None:
        for prof in results:
            self.profiles[self._order.popleft()].append(_profile_doc(prof))

    def _header_end(self) -> int:
        """The offset just past the header, as CsvInput reads it."""
        inp = CsvInput(self.path, self.b)
        try:
            self.header = list(inp.header)
            if inp.tap.bytes > min(self.b, self.size) or inp.offset > self.b:
                raise _NotFast("the header does not end within the first read of a block")
            return inp.offset
        finally:
            inp.close()

    def _read(self, f, n: int) -> bytes:
        data = f.read(n)
        while len(data) < n and (more := f.read(n - len(data))):
            data += more
        if len(data) != n:
            raise UserError(f"{self.path}: shorter than when the scans were listed")
        return data

    def _starts(self, prev: bytes, lo: int) -> list[_Start]:
        """Where the range's first block may start, from the read before it: after its last
        line end (from ``lo``) followed by an even number of quotes, and after the last one
        followed by an odd number."""
        last = prev.rfind(b"\n", lo)
        if last < 0:
            raise _NotFast(
                f"a read of {self.b} bytes holds no line end after the header (a row that long?)"
            )
        if prev.find(b'"', lo) < 0:  # no quote: one place
            return [_Start(self.start - self.b + last + 1, prev[last + 1 :])]
        a = np.frombuffer(prev, dtype=np.uint8)
        ends = np.flatnonzero(a[lo:] == 10) + lo
        quotes = np.flatnonzero(a == 34)
        parity = (len(quotes) - np.searchsorted(quotes, ends, side="right")) % 2  # after each
        out = []
        for odd in (0, 1):
            hit = ends[parity == odd]
            if len(hit):
                p = int(hit[-1]) + 1
                out.append(_Start(self.start - self.b + p, prev[p:]))
        return out

    def _cut_all(self, runner) -> list[_Start]:
        """Every start followed through the range's windows (and, at the file's end, its
        last rows), each new block profiled (those of the file's last window later, when it
        is known which one is last)."""
        b, start, delim = self.b, self.start, ord(self.delim)
        h = self._header_end() if start in (0, b) else 0
        last_k = -(-self.end // b) - 1
        with storage.open_read(self.path) as f:
            prev = b""
            starts: list[_Start] = []
            if start:
                f.seek(start - b)
                prev = self._read(f, b)
                starts = self._starts(prev, h if start == b else 0)
            lines_before = 0  # line ends in [start, k*b)
            for k in range(start // b, last_k + 1):
                data = self._read(f, min(b, self.size - k * b))
                self.crc = google_crc32c.extend(self.crc, data)
                if not start and not k:
                    starts = [_Start(h, data[h:])]  # the header's read: cut without more
                    starts[0].rel = count_lines(data, h)
                elif k * b == start:  # a look-back start: minus the line ends after it
                    for v in starts:
                        v.rel = -_line_ends(v.pending, data[:1])
                else:  # the window before is whole: its line ends
                    lines_before += _line_ends(prev, data[:1])
                defer = self.end == self.size and k == last_k
                for v in (v for v in starts if v.live):
                    block, v.pending = cut_block(v.pending, data if k else b"", delim, False)
                    if not block:
                        v.why = f"a read of {b} bytes holds no line end outside quotes"
                        continue
                    self._block(runner, v, block, defer)
                _join(starts)
                prev = data
            self.lines = lines_before + _line_ends(prev, f.read(1))
        if self.end == self.size:
            for v in (v for v in starts if v.live):
                self._last_rows(runner, v)
        return starts

    def _block(self, runner, v: _Start, block: bytes, defer: bool) -> None:
        """A block ``v`` cut: recorded once (its offset, line ends before it, length and
        CRC32C), profiled now, or kept for the end when it is cut from the file's last read
        (which of them is the last block is known only then)."""
        key = (v.at, len(block))
        if key not in self.units:
            self.units[key] = [v.at, v.rel, len(block), google_crc32c.value(block)]
            if not defer:
                self._profile(runner, (key, False), Block(self.path, 0, block, self.delim))
        if defer and key not in self._deferred:
            self._deferred[key] = Block(self.path, 0, block, self.delim)
        v.keys.append(key)
        v.at += len(block)
        v.rel += count_lines(block)  # a cut never splits a \r\n

    def _last_rows(self, runner, v: _Start) -> None:
        """The file's end: the rest of the rows as the serial reader takes them, or why this
        start cannot be the serial reader's (a quoted field left open)."""
        if unclosed_quote(v.pending, ord(self.delim)) is not None:
            v.why = "a quoted field left open at the end of the file"
            return
        block, _ = cut_block(v.pending, b"", ord(self.delim), True)
        if block:
            self._block(runner, v, block, True)


def _join(starts: list[_Start]) -> None:
    """A start that reaches where another has: the other's blocks from there on."""
    live = [v for v in starts if v.live]
    for i, v in enumerate(live):
        for w in live[:i]:
            if w.live and w.at == v.at:
                v.joins = (w, len(w.keys))
                break


def scan_summary(res: dict) -> str:
    """One line on a range's result, for the command and the component that ran it."""
    if not res["fast"]:
        return f"left to the plan: {res['why']}"
    variants = res["variants"]
    starts = f" from {len(variants)} possible starts" if len(variants) > 1 else ""
    return f"{len(variants[0]['units'])} blocks{starts}"


def _line_ends(data: bytes, nxt: bytes) -> int:
    """Line ends whose last byte is in ``data`` (``nxt``: the byte after it, b"" at the end):
    a final ``\\r`` is half of a ``\\r\\n`` when ``nxt`` is ``\\n``."""
    return count_lines(data) - (data[-1:] == b"\r" and nxt == b"\n")


def _profile_doc(p: BlockProfile) -> dict:
    d = dataclasses.asdict(p)
    d["labels"] = None if p.labels is None else [_label_doc(v) for v in p.labels]
    return d


def _label_doc(v):
    if isinstance(v, bytes):  # a label column Arrow read as binary (not UTF-8)
        return {"bytes": base64.b64encode(v).decode()}
    if v is not None and not isinstance(v, (bool, int, float, str)):
        raise _NotFast(f"a label value of type {type(v).__name__} (the plan reads it)")
    return v


def _profile_from(d: dict) -> BlockProfile:
    labels = d["labels"]
    if labels is not None:
        labels = [base64.b64decode(v["bytes"]) if isinstance(v, dict) else v for v in labels]
    cols = d["columns"]
    return BlockProfile(
        rows=d["rows"],
        columns=None if cols is None else {k: tuple(v) for k, v in cols.items()},
        labels=labels,
        failed=d["failed"],
        sampled=d["sampled"],
    )


@dataclasses.dataclass
class FileScan:
    """What the scans found for one file: what the first pass would have."""

    header: list
    profiles: list  # BlockProfile, in fold order
    units: list  # {"path", "offset", "line", "len", "crc"} per block
    crc_hex: str
    size: int


def load_scans(
    place: str, cfg: PreprocessConfig, files: list, header: list, full_scan: bool
) -> dict[str, FileScan]:
    """The files the scans in ``place`` cut (path -> :class:`FileScan`), after checking they
    were listed for this input and these settings; a file a range could not cut is left out
    (the plan reads it). UserError for a missing or foreign scan, naming it."""
    lst = load_listing(place)
    want = {
        "files": files,
        "block_size": cfg.block_size,
        "label": cfg.label,
        "na_values": list(cfg.na_values),
        "sample": not full_scan,
        "header": list(header),
    }
    for key, value in want.items():
        if lst[key] != value:
            raise UserError(
                f"{place}: the scans were listed with another {key.replace('_', ' ')} "
                f"({lst[key]!r}, not {value!r}); list and run them again"
            )
    results = []
    for i in range(len(lst["ranges"])):
        path = storage.join(storage.normalize(place).rstrip("/"), range_name(i))
        if not storage.exists(path):
            raise UserError(
                f"{place}: scan {i} of {len(lst['ranges'])} is missing ({range_name(i)}); "
                f"run `preprocess-scan --range {i}`"
            )
        try:
            res = json.loads(storage.read_text(path))
        except ValueError as e:
            raise UserError(f"{path}: not a scan result ({e}); run scan {i} again") from None
        if res.get("format") != FORMAT or res.get("listing") != lst["id"]:
            raise UserError(f"{path}: from another listing; run scan {i} again")
        if res.get("fast") and "variants" not in res:
            # before 2026-12-04: one start per range, no block checksums (the parts check them)
            raise UserError(f"{path}: from an older tfpipes; run scan {i} again")
        results.append(res)
    by_file: dict[int, list] = {}
    for rng, res in zip(lst["ranges"], results):
        if rng["file"] >= 0:
            by_file.setdefault(rng["file"], []).append((rng, res))
    out = {}
    for fi, pieces in by_file.items():
        path = files[fi]
        first = pieces[0][1]
        if first["header"] is not None and first["header"] != list(header):
            raise UserError(f"{path}: columns {first['header']} differ from {files[0]}'s {header}")
        if not all(res["fast"] for _, res in pieces):
            continue
        if storage.size(path) != lst["sizes"][fi]:
            raise UserError(f"{path}: changed since the scans were listed; list them again")
        units, profiles, crc, before, end = [], [], 0, 0, None
        for rng, res in pieces:
            # the start where the range before ended (the first range has one start)
            v = next((v for v in res["variants"] if end is None or v["first"] == end), None)
            if v is None:
                break  # no start of this range is the serial reader's: the plan reads the file
            for offset, rel, length, block_crc in v["units"]:
                units.append({"path": path, "offset": offset, "line": 1 + before + rel})
                units[-1] |= {"len": length, "crc": block_crc}
            profiles += [_profile_from(d) for d in v["profiles"]]
            crc = crc32c_combine(crc, res["crc"], rng["end"] - rng["start"])
            before, end = before + res["lines"], v["end"]
        else:
            out[path] = FileScan(list(header), profiles, units, f"{crc:08x}", lst["sizes"][fi])
    return out


def _fresh_place(place: str) -> None:
    """Empty the scan place, which must be new, empty, or an earlier listing's (ours)."""
    if storage.is_remote(place):
        mark = _mark(place)
        owners = storage.list_owners(place)
        # only a listing's own files, marked as a scan place's (a data set's or a staging
        # place's objects carry other marks, and other names)
        foreign = sorted(
            n
            for n, o in owners.items()
            if o != mark or not (n == LISTING or _RANGE_RE.fullmatch(n))
        )
        if foreign:
            raise UserError(
                f"{place}: holds objects that are not a scan listing's (e.g. {foreign[0]}); "
                "choose another --scans"
            )
        storage.delete_objects(place, sorted(owners))
        return
    if os.path.exists(place) and not os.path.isdir(place):
        raise UserError(f"{place}: is a file; --scans must be a directory or a gs:// prefix")
    if os.path.isdir(place) and os.listdir(place):
        if not os.path.isfile(os.path.join(place, *LISTING.split("/"))):
            raise UserError(
                f"{place}: exists and is not a scan listing's directory; choose another --scans"
            )
        old = load_listing(place)
        for name in [LISTING] + [range_name(i) for i in range(len(old["ranges"]))]:
            try:
                os.remove(os.path.join(place, *name.split("/")))
            except FileNotFoundError:
                pass
        for folder in (os.path.join(place, "_scan"), place):
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
    os.makedirs(os.path.join(place, "_scan"), exist_ok=True)


def _write(place: str, name: str, text: str) -> None:
    """A file of the scan place, marked as the place's (only ours is ever removed)."""
    write_marked(place, name, text, _mark(place))


def _mark(place: str) -> str:
    """The owner mark of a scan place's objects: not any output's (``storage.owner_mark``)."""
    return storage.owner_mark(place) + "#scans"
