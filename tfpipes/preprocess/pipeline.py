"""The preprocess step end to end: inputs -> first pass (column types) -> plan -> blocks ->
(workers) -> shards -> stats, schema, manifest -> commit.

The calling thread opens each input, cuts it into blocks and hands them to the ordered runner;
it writes each block's chunks in block order (:mod:`.shard_writer`) and folds its statistics in
the same order, so runs with any number of workers write identical bytes. Everything goes to a
staging place that :func:`tfpipes.storage.staged_dir` commits with ``manifest.json`` last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time

from tfpipes import layout, manifest, progress, storage
from tfpipes.errors import UserError
from tfpipes.preprocess.blocks import BlockResult, Plan
from tfpipes.preprocess.columns import (
    MAX_INT_CLASSES,
    column_table,
    column_types,
    label_task,
    make_schema,
)
from tfpipes.preprocess.config import PreprocessConfig, PreprocessResult
from tfpipes.preprocess.csv_blocks import CsvInput
from tfpipes.preprocess.fingerprint import crc_hex, file_crc_hex, fingerprint
from tfpipes.preprocess.inference import (
    SAMPLE_BYTES,
    ColumnInference,
    ScanPlan,
    block_tail,
    profile_block,
)
from tfpipes.preprocess.inputs import is_parquet, source_files
from tfpipes.preprocess.parallel import OrderedRunner, default_workers
from tfpipes.preprocess.parquet_reader import ParquetInput
from tfpipes.preprocess.shard_writer import SplitWriter
from tfpipes.preprocess.statistics import Stats, sample_threshold
from tfpipes.preprocess.worker import process_block
from tfpipes.schema import load_overrides

MAX_COLUMNS = 10_000  # the widest table preprocess accepts

log = logging.getLogger("tfpipes.preprocess")


def preprocess(cfg: PreprocessConfig) -> PreprocessResult:
    """Read ``cfg.source``, write and commit the data set at ``cfg.output``.

    Two passes over the input: the first infers every column's type and kind from a sample of
    every block (:mod:`.inference`; read whole when the rows written show it may decide
    otherwise, and written again if it does), the second parses, validates, encodes and
    writes. Raises UserError for bad input (naming file, line and column); nothing is
    committed then. Memory stays bounded
    by a few blocks per worker whatever the input size.
    """
    cfg.validate()
    t0, cpu0 = time.monotonic(), time.process_time()
    files = source_files(cfg.source)
    total_bytes = sum(storage.size(f) for f in files)
    workers = cfg.workers or default_workers()
    if total_bytes <= cfg.block_size:
        workers = 1  # one block: nothing to share
    overrides = load_overrides(cfg.schema_path) if cfg.schema_path else {}
    header = read_header(cfg, files)
    unknown = sorted(set(overrides) - set(header))
    if unknown:
        log.warning("--schema names columns not in the data, ignored: %s", unknown)
    inference = _scan(cfg, files, header, workers, sample=True)
    plan, task = _make_plan(cfg, header, overrides, inference)
    args = (cfg, files, overrides, workers, total_bytes)
    try:
        result = _write(*args, plan, task, inference)
    except _BadInput:
        if inference.exact:
            raise
        full = _full_plan(cfg, files, header, overrides, workers)
        if full == (plan, task):
            raise  # the whole input gives the same plan: the error stands
        result = _write(*args, *full, None)
    except _PlanChanged as e:
        result = _write(*args, e.plan, e.task, None)
    secs, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return dataclasses.replace(result, seconds=secs, workers=workers, cpu_seconds=cpu)


def read_header(cfg: PreprocessConfig, files: list[str]) -> list[str]:
    """The first input's header, checked: not too wide, holding the label and a feature, and
    no column name the block layout reserves (with that layout)."""
    with contextlib.ExitStack() as stack:
        first = open_input(files[0], cfg.block_size)
        stack.callback(first.close)
        header = first.header
        if len(header) > MAX_COLUMNS:
            # Per-column costs (inference, statistics, encoding) make a very wide table slow
            # and memory-hungry (100,000 columns: minutes and GBs for a few rows): refuse it.
            raise UserError(
                f"{files[0]}: {len(header):,} columns; at most {MAX_COLUMNS:,} are supported"
            )
        if cfg.label not in header:
            shown = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
            raise UserError(f"{files[0]}: no label column {cfg.label!r}; columns are: {shown}")
        if len(header) < 2:
            raise UserError(f"{files[0]}: only the label column; at least one feature is needed")
        reserved = {layout.BLOCK_ROWS_KEY, layout.BLOCK_MISSING_KEY} & set(header)
        if reserved and cfg.layout == "blocks":
            raise UserError(
                f"{files[0]}: column {sorted(reserved)[0]!r} is a name the block layout "
                "reserves; rename it or pass --layout rows"
            )
    return header


class _BadInput(UserError):
    """A block's bad input, found by the main pass (a plan from samples may explain it)."""


class _PlanChanged(Exception):
    """The whole input decides the columns otherwise than the sample did: write again."""

    def __init__(self, plan: Plan, task: str) -> None:
        super().__init__("the plan changed")
        self.plan, self.task = plan, task


def _write(cfg, files, overrides, workers, total_bytes, plan: Plan, task: str, inference):
    """The main pass with ``plan``, committed. ``inference``: the sampled first pass the plan
    came from (None: it came from the whole input); before committing, raises _PlanChanged
    when the rows written show that the whole input decides otherwise."""
    stack = contextlib.ExitStack()
    with stack:
        runner = OrderedRunner(workers, process_block)
        stack.callback(runner.close)
        with storage.staged_dir(
            cfg.output,
            overwrite=cfg.overwrite,
            last=(manifest.MANIFEST,),
            inputs=(cfg.source, *files, cfg.schema_path),
        ) as tmp:
            run = _Run(cfg, tmp, plan, runner, total_bytes)
            try:
                for path in files:
                    inp = open_input(path, cfg.block_size)
                    try:
                        run.consume(inp)
                    finally:
                        inp.close()
                run.finish()
            finally:
                runner.close()
                run.close()
            if inference is not None and _sample_may_mislead(run, inference, plan, task):
                full = _full_plan(cfg, files, run.header, overrides, workers)
                if full != (plan, task):
                    raise _PlanChanged(*full)
            return run.commit(files, overrides, task)


def _sample_may_mislead(run: _Run, inference: ColumnInference, plan: Plan, task: str) -> bool:
    """Whether the rows written leave room for the whole input to decide the columns
    otherwise than the sampled first pass did (then the whole input is read to check)."""
    if inference.exact:
        return False
    if inference.uncertain or run.skipped:  # a skipped value may be one the sample missed
        return True
    for name, fam in inference.family.items():
        if fam == "null" and run.stats.cols[name].count:
            return True  # values the sample never saw
    fam = inference.family[plan.label]
    return fam == "int" and task == "classification" and len(run.stats.label_hist) > MAX_INT_CLASSES


def _full_plan(cfg, files, header, overrides, workers) -> tuple[Plan, str]:
    """The plan from the first pass over every whole block (the sample's check)."""
    log.info("preprocess: checking the column types against the whole input")
    return _make_plan(cfg, header, overrides, _scan(cfg, files, header, workers, sample=False))


def open_input(path: str, block_size: int) -> CsvInput | ParquetInput:
    """The reader for ``path`` by its suffix; it has ``header``, ``blocks()`` and ``close()``."""
    return ParquetInput(path) if is_parquet(path) else CsvInput(path, block_size)


def _scan(
    cfg: PreprocessConfig,
    files: list[str],
    header: list[str],
    workers: int,
    sample: bool,
    listing=None,
    scanned: dict | None = None,
):
    """The first pass: every file's header checked and its columns profiled, in input order
    (``sample``: the head of each CSV block and the tail of each file's last one).
    ``listing``: told of each CSV block (``block(inp, block)``) and each file read
    (``file(inp)``), for a fan-out plan (:mod:`.fanout`). ``scanned``: files whose first pass
    ran in parallel ranges (path -> :class:`.fanout_scan.FileScan`, told to ``listing`` as
    ``scanned(path, scan)``): their profiles are folded in, in the same place."""
    inference = ColumnInference(header, cfg.label)
    na = tuple(cfg.na_values)
    scan_plan = ScanPlan(tuple(header), na, cfg.label, SAMPLE_BYTES if sample else 0)
    whole = ScanPlan(tuple(header), na, cfg.label)
    runner = OrderedRunner(workers, profile_block)
    try:
        for path in files:
            if scanned and path in scanned:
                for prof in scanned[path].profiles:
                    inference.merge(prof)
                if listing is not None:
                    listing.scanned(path, scanned[path])
                continue
            inp = open_input(path, cfg.block_size)
            try:
                if inp.header != header:
                    raise UserError(
                        f"{path}: columns {inp.header} differ from {files[0]}'s {header}"
                    )
                if isinstance(inp, ParquetInput):
                    inference.merge(inp.profile(cfg.label))
                    if listing is not None:
                        listing.file(inp)
                    continue
                last = None
                # one behind: the last block's tail is read too
                for block in _scan_blocks(inp, cfg.block_size, listing):
                    if listing is not None:
                        listing.block(inp, block)
                    if last is not None:
                        for prof in runner.submit(scan_plan, last):
                            inference.merge(prof)
                    last = block
                tail = block_tail(last, scan_plan.sample_bytes) if last is not None else None
                parts = [(scan_plan, last), (scan_plan, tail)] if tail else [(whole, last)]
                for p, part in parts:
                    if part is not None:
                        for prof in runner.submit(p, part):
                            inference.merge(prof)
                for prof in runner.drain():
                    inference.merge(prof)
                if listing is not None:
                    listing.file(inp)
            finally:
                inp.close()
    finally:
        runner.close()
    return inference


def _scan_blocks(inp: CsvInput, block_size: int, listing):
    """The first pass's blocks of ``inp``: without counting line ends unless a fan-out plan
    records them; a reading error (an unterminated quote, a row too long) is raised with its
    line all the same, from a second read that counts them."""
    if listing is not None:
        yield from inp.blocks()
        return
    try:
        yield from inp.blocks(lines=False)
    except UserError:
        again = open_input(inp.path, block_size)
        try:
            for _ in again.blocks():
                pass
        finally:
            again.close()
        raise


def _make_plan(cfg, header, overrides, inference: ColumnInference) -> tuple[Plan, str]:
    families = dict(inference.family)
    types, kinds, formats = column_types(families, overrides, cfg.label)
    forced = bool(overrides.get(cfg.label, {}).get("dtype"))
    types[cfg.label], task = label_task(types, families, inference, cfg.label, cfg.task, forced)
    features = [h for h in header if h != cfg.label]
    return (
        Plan(
            header=tuple(header),
            types=types,
            label=cfg.label,
            order=tuple(features + [cfg.label]),
            eval_fraction=cfg.eval_fraction,
            split_seed=cfg.split_seed,
            num_shards=cfg.num_shards,
            compression=cfg.compression,
            on_bad_row=cfg.on_bad_row,
            kinds=kinds,
            formats=formats,
            na_values=tuple(cfg.na_values),
            on_missing_label=cfg.on_missing_label,
            layout=cfg.layout,
        ),
        task,
    )


class _Run:
    """The calling thread's side of one run: feeds blocks, writes the results in order."""

    def __init__(self, cfg, tmp, plan: Plan, runner: OrderedRunner, total_bytes: int) -> None:
        self.cfg, self.tmp, self.plan = cfg, tmp, plan
        self.header = list(plan.header)
        self.runner = runner
        self.workers = runner.workers  # threads for the statistics at the end
        self.writers = {
            s: SplitWriter(tmp, s, cfg.num_shards, cfg.compression) for s in ("train", "eval")
        }
        self.stats = Stats(plan)
        self.skipped = 0
        self.notes: list[str] = []
        self.crcs: list[tuple[str, str]] = []
        self.bytes_done = 0
        self.bar = progress.Progress(
            "preprocess", total=total_bytes, unit="B", enabled=cfg.progress
        )

    def consume(self, inp) -> None:
        before = self.bytes_done
        for block in inp.blocks():
            if not block.parquet and not block.data.strip(b"\r\n"):
                continue  # blank lines: no rows
            # The sample threshold of the rows handled so far can only be above the final one:
            # the worker drops the values past it, which keeps results in flight small.
            limit = sample_threshold(self.stats.parsed)
            for res in self.runner.submit(self.plan, block, limit):
                self._handle(res)
            done = inp.tap.bytes if isinstance(inp, CsvInput) else 0
            self.bar.update_to(before + done, rows=self.rows)
        if isinstance(inp, CsvInput):
            self.crcs.append((inp.path, crc_hex(inp.tap.crc)))
            self.bytes_done = before + inp.tap.bytes
        else:
            self.crcs.append((inp.path, file_crc_hex(inp.path)))
            self.bytes_done = before + inp.bytes
        self.bar.update_to(self.bytes_done, rows=self.rows)

    @property
    def rows(self) -> int:
        return self.stats.n

    def _handle(self, res: BlockResult) -> None:
        if res.error:
            raise _BadInput(res.error)
        self.stats.parsed += res.parsed
        self.skipped += res.skipped
        self.stats.missing_label += res.missing_label
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

    def commit(self, files: list[str], overrides: dict, task: str) -> PreprocessResult:
        cfg = self.cfg
        if self.rows == 0:
            why = f" ({self.skipped} bad rows skipped)" if self.skipped else ""
            if self.stats.missing_label:
                why += f" ({self.stats.missing_label} rows without a label dropped)"
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
        if self.stats.missing_label:
            log.warning(
                "preprocess: dropped %d rows without a label (--on-missing-label=drop)",
                self.stats.missing_label,
            )
        schema = make_schema(self.plan, self.stats, overrides, task, files[0])
        kinds = {f.name: f.kind for f in (*schema.features, schema.label)}
        source_hash = fingerprint(self.crcs)
        storage.write_text(os.path.join(self.tmp, layout.SCHEMA), schema.to_json())
        stats = self.stats.to_dict(
            train_rows,
            eval_rows,
            list(schema.label_vocabulary),
            self.skipped,
            kinds,
            workers=self.workers,
        )
        storage.write_text(os.path.join(self.tmp, layout.STATS), json.dumps(stats, indent=2) + "\n")
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
            [layout.SCHEMA, layout.STATS],
            {"train": train_rows, "eval": eval_rows},
            cfg.compression,
            source_hash,
            checksums=checksums,
            layout=self.plan.layout,
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
            missing_label_rows=self.stats.missing_label,
            column_table=column_table(schema, self.stats),
            bytes_read=self.bytes_done,
            peak_rss_mb=_peak_rss_mb(),
        )


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
