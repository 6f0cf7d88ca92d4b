"""The fan-out plan's read of the input, in parallel: byte ranges of plain CSV files scanned
apart, one range per process on any number of machines.

Single-process preprocess's first pass reads a plain CSV file in reads of ``block_size``
bytes and cuts a block at the last row end of each read (:class:`.csv_blocks.CsvInput`).
Where every read holds a ``\\n`` and no quoted field holds a line end, that cut depends on
the read alone: block k ends just after the last ``\\n`` before byte ``k * block_size``. So a
range of whole reads can be cut, counted (line ends, CRC32C) and sampled (its blocks' heads
through :func:`.inference.profile_block`, as the first pass samples them) without the bytes
before it: a look back at the one read before it finds where its first block starts. The
plan (:func:`.fanout.plan_fanout` with ``scans``) joins the ranges in order into exactly
what one serial pass gives: the same blocks, line numbers, checksums and column profiles, so
the same plan, byte for byte.

Quoted fields are checked block by block, from the block's start: a quoted field holding a
line end, or running past its block, means the cut may be elsewhere (whether a byte is
inside a quoted field depends on every byte before it), and the file goes to the plan. If
every block passes, each one starts at a row start by induction from the header, so the check
of each is sound, and the first block that fails is found whichever range holds it. A file
with such a field, a read without a ``\\n`` (a row longer than a block), a compressed CSV and
a Parquet file are read by the plan itself, serially, as without scans; a range says why it
could not be scanned.

Steps: :func:`list_scans` (the ranges, written into the scan place), :func:`run_scan` (one
range, anywhere that sees the input and the place), then ``plan_fanout(..., scans=place)``.
"""

from __future__ import annotations

import base64
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
from tfpipes.preprocess.csv_blocks import CsvInput, count_lines, quoted_spans
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


class _RangeScan:
    """One range: its blocks, line ends, CRC32C and the first pass's profiles of its blocks.

    Window k is the read ``[k*B, (k+1)*B)``; the range is windows ``a .. b-1``. A block is
    handed to the range where it ends; the first one starts in the window before (after the
    header, in the first range), found by a look back at it."""

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
        # [offset, line ends before it from start, length, CRC32C] per block
        self.units: list[list[int]] = []
        self.lines = 0  # line ends whose last byte is in [start, end)
        self.crc = 0

    def run(self) -> dict:
        profiles: list = []
        try:
            for prof in self._profiles():
                profiles.append(_profile_doc(prof))
        except _NotFast as e:
            return {"fast": False, "why": str(e), "header": self.header}
        return {
            "fast": True,
            "header": self.header,
            "crc": self.crc,
            "lines": self.lines,
            "units": self.units,
            "profiles": profiles,
        }

    def _profiles(self):
        """The profiles in the order the serial first pass folds them."""
        runner = OrderedRunner(self.workers, profile_block)
        try:
            last = None
            for block in self._blocks():
                if last is not None:
                    yield from runner.submit(self.plan, last)
                last = block
            if last is not None:
                if self.end < self.size:
                    pieces = [(self.plan, last)]
                else:  # the file's last block: its head and its tail, or all of it
                    tail = block_tail(last, self.plan.sample_bytes)
                    pieces = (
                        [(self.plan, last), (self.plan, tail)] if tail else [(self.whole, last)]
                    )
                for plan, piece in pieces:
                    yield from runner.submit(plan, piece)
            yield from runner.drain()
        finally:
            runner.close()

    def _header_end(self) -> tuple[int, int]:
        """(offset just past the header, line ends before it), as CsvInput reads them."""
        inp = CsvInput(self.path, self.b)
        try:
            self.header = list(inp.header)
            if inp.tap.bytes > min(self.b, self.size) or inp.offset > self.b:
                raise _NotFast("the header does not end within the first read of a block")
            return inp.offset, inp._line - 1
        finally:
            inp.close()

    def _read(self, f, n: int) -> bytes:
        data = f.read(n)
        while len(data) < n and (more := f.read(n - len(data))):
            data += more
        if len(data) != n:
            raise UserError(f"{self.path}: shorter than when the scans were listed")
        return data

    def _cut(self, data: bytes, lo: int) -> int:
        """Where the last block of a read ending in ``data`` ends (in ``data``), checking the
        read the way the fast cut needs it: a ``\\n`` (from ``lo``)."""
        p = data.rfind(b"\n", lo)
        if p < 0:
            raise _NotFast(
                f"a read of {self.b} bytes holds no line end after the header (a row that long?)"
            )
        return p + 1

    def _blocks(self):
        b, start = self.b, self.start
        h, header_lines = self._header_end() if start in (0, b) else (0, 0)
        with storage.open_read(self.path) as f:
            if start == 0:
                at, rel, tail = h, header_lines, b""  # rel: line ends from start to ``at``
            else:
                f.seek(start - b)
                prev = self._read(f, b)
                lo = h if start == b else 0
                p = self._cut(prev, lo)
                at, tail = start - b + p, prev[p:]
            pending = None  # the previous window's line ends, not yet added (its final \r?)
            for k in range(start // b, -(-self.end // b)):
                lo = h if k == 0 else 0
                data = self._read(f, min(b, self.size - k * b))
                self.crc = google_crc32c.extend(self.crc, data)
                if k * b == start and start:  # the look back's tail ends at start
                    rel = -_line_ends(tail, data[:1])
                if pending is not None:
                    self.lines += pending - (tail[-1:] == b"\r" and data[:1] == b"\n")
                p = self._cut(data, lo)
                block = tail + data[lo:p] if tail else data[lo:p]
                self._check_quotes(block)
                head = count_lines(data, p)  # it ends with a \n: no half of a \r\n
                self.units.append([at, rel, len(block), google_crc32c.value(block)])
                yield Block(self.path, 0, block, self.delim)
                at, rel, tail = k * b + p, self.lines + head, data[p:]
                pending = head + count_lines(tail)  # the window's line ends but a final \r's
            if pending is not None:
                self.lines += pending - (tail[-1:] == b"\r" and f.read(1) == b"\n")
            if self.end == self.size and tail.strip(b"\r\n"):  # the rest: the last rows
                self._check_quotes(tail)
                self.units.append([at, rel, len(tail), google_crc32c.value(tail)])
                yield Block(self.path, 0, tail, self.delim)

    def _check_quotes(self, block: bytes) -> None:
        """A block is cut as the serial reader cuts it if none of its quoted fields holds a
        line end or runs past its end: checked from its start, a row start if every block
        before it passed (so the first block to fail is found, whichever range holds it)."""
        if b'"' not in block:
            return
        starts, ends = quoted_spans(block, ord(self.delim))
        if not starts:
            return
        if ends[-1] == len(block):  # not closed: it holds the line end the block ends with
            raise _NotFast(
                "a quoted field holds a line end (whether a byte is quoted depends "
                "on every byte before it)"
            )
        a = np.frombuffer(block, dtype=np.uint8)
        ends_at = np.flatnonzero((a == 10) | (a == 13))
        i = np.searchsorted(np.asarray(starts), ends_at, side="right") - 1
        if np.any((i >= 0) & (ends_at < np.asarray(ends)[np.maximum(i, 0)])):
            raise _NotFast(
                "a quoted field holds a line end (whether a byte is quoted depends "
                "on every byte before it)"
            )


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
        if res.get("fast") and any(len(u) != 4 for u in res["units"]):
            # before 2026-12-04 a block's CRC32C was not kept; the parts check it now
            raise UserError(
                f"{path}: from an older tfpipes (no block checksums); run scan {i} again"
            )
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
        units, profiles, crc, before = [], [], 0, 0
        for rng, res in pieces:
            for offset, rel, length, block_crc in res["units"]:
                units.append({"path": path, "offset": offset, "line": 1 + before + rel})
                units[-1] |= {"len": length, "crc": block_crc}
            profiles += [_profile_from(d) for d in res["profiles"]]
            crc = crc32c_combine(crc, res["crc"], rng["end"] - rng["start"])
            before += res["lines"]
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
