"""The preprocess step end to end: inputs -> plan -> blocks -> (workers) -> shards -> stats,
schema, manifest -> commit.

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
from tfpipes.errors import UserError, location
from tfpipes.preprocess.blocks import Block, BlockResult, Plan, arrow_to_dtype
from tfpipes.preprocess.config import PreprocessConfig, PreprocessResult
from tfpipes.preprocess.csv_blocks import CsvInput
from tfpipes.preprocess.csv_reader import infer_csv_types
from tfpipes.preprocess.fingerprint import crc_hex, file_crc_hex, fingerprint
from tfpipes.preprocess.inputs import is_parquet, source_files
from tfpipes.preprocess.parallel import OrderedRunner, default_workers
from tfpipes.preprocess.parquet_reader import ParquetInput
from tfpipes.preprocess.shard_writer import SplitWriter
from tfpipes.preprocess.statistics import MAX_LABEL_CLASSES, Stats
from tfpipes.preprocess.worker import process_block
from tfpipes.schema import Feature, Schema, load_forced_types

log = logging.getLogger("tfpipes.preprocess")


def preprocess(cfg: PreprocessConfig) -> PreprocessResult:
    """Read ``cfg.source``, write and commit the data set at ``cfg.output``.

    Raises UserError for bad input (naming file, line and column); nothing is committed then.
    Memory stays bounded by a few blocks per worker whatever the input size.
    """
    cfg.validate()
    t0, cpu0 = time.monotonic(), time.process_time()
    files = source_files(cfg.source)
    total_bytes = sum(storage.size(f) for f in files)
    workers = cfg.workers or default_workers()
    if total_bytes <= cfg.block_size:
        workers = 1  # one block: nothing to share
    forced = load_forced_types(cfg.schema_path) if cfg.schema_path else {}
    stack = contextlib.ExitStack()
    with stack:
        runner = OrderedRunner(workers, process_block)
        stack.callback(runner.close)
        first = open_input(files[0], cfg.block_size)
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
            cfg.output,
            overwrite=cfg.overwrite,
            last=(manifest.MANIFEST,),
            inputs=(cfg.source, *files, cfg.schema_path),
        ) as tmp:
            run = _Run(cfg, tmp, header, forced, runner, total_bytes)
            try:
                for i, path in enumerate(files):
                    inp = first if i == 0 else open_input(path, cfg.block_size)
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


def open_input(path: str, block_size: int) -> CsvInput | ParquetInput:
    """The reader for ``path`` by its suffix; it has ``header``, ``blocks()`` and ``close()``."""
    return ParquetInput(path) if is_parquet(path) else CsvInput(path, block_size)


class _Run:
    """The calling thread's side of one run: feeds blocks, writes the results in order."""

    def __init__(self, cfg, tmp, header, forced, runner: OrderedRunner, total_bytes: int) -> None:
        self.cfg, self.tmp, self.header, self.forced = cfg, tmp, header, forced
        self.runner = runner
        self.plan: Plan | None = None
        self.writers = {
            s: SplitWriter(tmp, s, cfg.num_shards, cfg.compression) for s in ("train", "eval")
        }
        self.stats: Stats | None = None
        self.skipped = 0
        self.notes: list[str] = []
        self.crcs: list[tuple[str, str]] = []
        self.bytes_done = 0
        self.bar = progress.Progress(
            "preprocess", total=total_bytes, unit="B", enabled=cfg.progress
        )

    def _make_plan(self, inp, block: Block | None) -> Plan:
        cfg = self.cfg
        if isinstance(inp, ParquetInput):
            types = {f.name: arrow_to_dtype(f.type) for f in inp.schema}
        else:
            types = infer_csv_types(block, self.header)
        types.update({k: v for k, v in self.forced.items() if k in types})
        features = [h for h in self.header if h != cfg.label]
        self.stats = Stats(types, cfg.label)
        return Plan(
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
        return self.stats.n if self.stats else 0

    def _handle(self, res: BlockResult) -> None:
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
        source_hash = fingerprint(self.crcs)
        storage.write_text(os.path.join(self.tmp, layout.SCHEMA), schema.to_json())
        stats = self.stats.to_dict(
            train_rows, eval_rows, list(schema.label_vocabulary), self.skipped
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


def _make_schema(types, feature_names, label, stats: Stats, first_file: str) -> Schema:
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
