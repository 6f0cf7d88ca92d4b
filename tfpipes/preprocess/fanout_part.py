"""One part of a fanned-out preprocess: its blocks -> its shards and partial statistics.

The part reads exactly the blocks of its byte ranges that the plan recorded (same bytes, same
first line numbers as single-process preprocess cuts), runs the same block work
(:func:`.worker.process_block`) and writes its shards under their data set names and its
partial statistics (:mod:`.partials`) into the staging place — the partial last, so its
presence says the part is done. A retried part writes the same names again: it replaces
only its own files, and its bytes are the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator

import google_crc32c

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.preprocess.blocks import Block
from tfpipes.preprocess.csv_blocks import CsvInput, count_lines
from tfpipes.preprocess.fanout import FanoutPlan, check_whole_input, load_plan, partial_name
from tfpipes.preprocess.fingerprint import crc_hex, file_crc_hex
from tfpipes.preprocess.inputs import delimiter
from tfpipes.preprocess.parallel import OrderedRunner, default_workers
from tfpipes.preprocess.partials import partial_bytes
from tfpipes.preprocess.pipeline import _BadInput, _Run, open_input
from tfpipes.preprocess.statistics import is_categorical, sample_threshold
from tfpipes.preprocess.worker import process_block


@dataclasses.dataclass(frozen=True)
class PartResult:
    """What one part wrote: rows, the files (data set names), and how long it took."""

    part: int
    rows: int
    files: list
    seconds: float


class _PartRun(_Run):
    """A run over a part's blocks that also keeps each block's numeric figures."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.figures: list[list[tuple]] = []
        self.numeric = [h for h in self.plan.header if not is_categorical(self.plan, h)]

    def consume_blocks(self, blocks: Iterator[Block]) -> None:
        for block in blocks:
            if not block.parquet and not block.data.strip(b"\r\n"):
                continue  # blank lines: no rows
            limit = sample_threshold(self.stats.parsed)  # this part's rows: at or above the end's
            for res in self.runner.submit(self.plan, block, limit):
                self._handle(res)

    def _handle(self, res) -> None:
        if res.rows and not res.error:
            self.figures.append([tuple(res.stats["num"][k][:6]) for k in self.numeric])
        super()._handle(res)


def _range_blocks(rng: dict, block_size: int, planned_crc: str) -> Iterator[Block]:
    """The blocks of one range of the plan: a whole file (compressed CSV, Parquet) read as
    single-process preprocess reads it, or plain CSV blocks at their recorded offsets. The
    bytes are checked against the plan's CRC32C (``planned_crc``: the whole file's): a block
    before it is handed on; a whole file once read, before anything of the part is published
    (a ``.gz`` by the bytes it was read from; a Parquet file read again for it, as
    single-process preprocess reads it for its fingerprint; a bad row of a changed whole file
    may be reported first). UserError when they differ."""
    path = rng["path"]
    if rng["whole"]:
        inp = open_input(path, block_size)
        try:
            yield from inp.blocks()
            crc = crc_hex(inp.tap.crc) if isinstance(inp, CsvInput) else file_crc_hex(path)
        finally:
            inp.close()
        if crc != planned_crc:
            raise UserError(
                f"{path}: its bytes differ from the planned ones (CRC32C {crc}, planned "
                f"{planned_crc}): the file changed since the plan; plan again"
            )
        return
    line, delim, at = rng["line"], delimiter(path), rng["offset"]
    crcs = rng.get("crcs") or [None] * len(rng["lengths"])  # a plan from before they were kept
    if len(crcs) != len(rng["lengths"]):
        raise UserError(
            f"{path}: the plan's range holds {len(crcs)} checksums for "
            f"{len(rng['lengths'])} blocks (a damaged plan); plan again"
        )
    with storage.open_read(path) as f:
        f.seek(at)
        for n, crc in zip(rng["lengths"], crcs):
            data = f.read(n)
            while len(data) < n and (more := f.read(n - len(data))):
                data += more
            if len(data) != n:
                raise UserError(f"{path}: shorter than when it was planned; plan again")
            if crc is not None and google_crc32c.value(data) != crc:
                # Same size, other bytes: rows from two versions of a file would make one
                # data set. (A gs:// object is read whole-object-checked only start to end.)
                raise UserError(
                    f"{path}: bytes {at:,}-{at + n:,} differ from the planned ones (CRC32C): "
                    "the file changed since the plan; plan again"
                )
            yield Block(path, line, data, delim)
            line += count_lines(data)
            at += n


def run_part(staging: str, part: int, workers: int = 0) -> PartResult:
    """Preprocess part ``part`` of the plan in ``staging``; its files go into ``staging``.

    Raises UserError for bad input (file:line: column, as single-process preprocess) or a part
    number outside the plan; nothing of the part is marked done then.
    """
    t0 = time.monotonic()
    fp = load_plan(staging)
    if not 0 <= part < fp.num_parts:
        raise UserError(f"--part must be between 0 and {fp.num_parts - 1}, got {part}")
    for path, size in zip(fp.files, fp.sizes):
        if storage.size(path) != size:
            raise UserError(f"{path}: changed since the plan ({size} bytes then); plan again")
    k = fp.shards_per_part
    cfg = dataclasses.replace(fp.config, num_shards=k, progress=False)
    plan = dataclasses.replace(fp.plan, num_shards=k)
    remote = storage.is_remote(fp.staging)
    with _scratch(fp, part, remote) as tmp:
        runner = OrderedRunner(workers or cfg.workers or default_workers(), process_block)
        run = _PartRun(cfg, os.path.join(tmp, "w"), plan, runner, fp.parts[part]["bytes"])
        try:
            crcs = dict(fp.crcs)
            for rng in fp.parts[part]["ranges"]:
                run.consume_blocks(_range_blocks(rng, cfg.block_size, crcs[rng["path"]]))
            run.finish()
        except _BadInput as e:
            if not fp.inference["exact"]:
                check_whole_input(fp, "a value the plan's column types reject")
            raise UserError(str(e)) from None
        finally:
            runner.close()
            run.close()
        out = os.path.join(tmp, "o")
        shards = {}
        for split, w in run.writers.items():
            sums = w.checksums()
            for rel, name, rows in zip(w.rel, fp.shard_names(part, split), w.rows):
                os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
                os.rename(os.path.join(tmp, "w", rel), os.path.join(out, name))
                shards[name] = [rows, *sums[rel]]
        done = partial_name(part)
        data = partial_bytes(run, part, fp.id, shards, run.figures)
        os.makedirs(os.path.join(out, "_fanout"), exist_ok=True)
        with open(os.path.join(out, *done.split("/")), "wb") as f:
            f.write(data)
        names = [*shards, done]
        _publish(out, fp.staging, names, done, remote)
    return PartResult(part, run.rows, names, time.monotonic() - t0)


@contextlib.contextmanager
def _scratch(fp: FanoutPlan, part: int, remote: bool) -> Iterator[str]:
    """A private directory for one attempt: inside the local staging place (so publishing is
    a rename), or a temporary one when the staging place is remote."""
    if remote:
        tmp = tempfile.mkdtemp(prefix=f"tfpipes-part{part}-")
    else:
        tmp = os.path.join(fp.staging, "_fanout", f"tmp-{part:05d}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(out: str, staging: str, names: list[str], done: str, remote: bool) -> None:
    """The part's files into the staging place, ``done`` last; each replaces its name whole."""
    if remote:
        storage.delete_objects(staging, [done])  # not done until written again
        storage.commit_files(out, staging, names, last=(done,), owner=storage.owner_mark(staging))
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(staging, *done.split("/")))  # not done until written again
    for name in [n for n in names if n != done] + [done]:
        target = os.path.join(staging, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(out, *name.split("/")), target)
