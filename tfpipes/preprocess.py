"""preprocess: tabular data (CSV, plain or .gz) into a committed TFRecord data set.

Output layout (written to a staging place, committed with ``manifest.json`` last)::

    <output>/train/part-00000-of-00008.tfrecord[.gz]   one tf.train.Example per row
    <output>/eval/part-00000-of-00008.tfrecord[.gz]
    <output>/schema.json      feature names, dtypes, shapes; label; task
    <output>/stats.json       count/mean/std/min/max per numeric feature, label histogram
    <output>/manifest.json    every file with size and CRC32C, row counts

CSV parsing runs in Arrow's multi-threaded C++ reader, examples are serialized in batches by
:mod:`tfpipes.example_codec`; when Arrow rejects a block, the file is re-read with Python's
``csv`` module to name the exact file, line and column.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
import time

import numpy as np

from tfpipes import example_codec, manifest, progress, storage
from tfpipes.errors import UserError, location
from tfpipes.schema import Feature, Schema, load_forced_types

log = logging.getLogger("tfpipes.preprocess")

SPLIT_BUCKETS = 10_000
MAX_LABEL_CLASSES = 10_000


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What to read, where to write, and how to split.

    source: a CSV file, a glob, a directory or an object-storage prefix (``.csv``/``.csv.gz``).
    output: the data set directory or ``gs://`` prefix to commit.
    label: the label column's name.
    eval_fraction: fraction of rows for the eval split, by a hash of each row's content.
    num_shards: shards per split.
    """

    source: str
    output: str
    label: str
    eval_fraction: float = 0.2
    num_shards: int = 8
    split_seed: int = 0
    compression: str = ""  # "" | "GZIP"
    schema_path: str = ""  # optional {column: dtype} or schema.json forcing column types
    overwrite: bool = False
    block_size: int = 4 << 20
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def validate(self) -> None:
        if not self.label:
            raise UserError("--label is required: the name of the label column")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")
        if self.num_shards < 1:
            raise UserError(f"--num-shards must be at least 1, got {self.num_shards}")
        if self.compression not in ("", "GZIP"):
            raise UserError(f"--compression must be GZIP or empty, got {self.compression!r}")


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    output: str
    rows: int
    train_rows: int
    eval_rows: int
    seconds: float
    schema: Schema
    source_hash: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# ----------------------------------------------------------------------------- type inference


def _arrow_to_dtype(t) -> str:
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float32"
    return "string"


def _open_stream(path: str):
    """An Arrow input stream for a local or remote file, decompressing ``.gz``."""
    import pyarrow as pa

    comp = "gzip" if path.lower().endswith(".gz") else None
    if storage.is_remote(path):
        raw = storage.open_read(path).__enter__()  # closed with the Arrow stream
        return (
            pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), comp)
            if comp
            else (pa.PythonFile(raw, mode="r"))
        )
    return pa.input_stream(storage.normalize(path), compression=comp)


def _read_header(path: str) -> list[str]:
    with storage.open_read(path) as raw:
        f = (
            gzip.open(raw, "rt", newline="")
            if path.lower().endswith(".gz")
            else io.TextIOWrapper(raw, encoding="utf-8", newline="")
        )
        try:
            header = next(csv.reader(f), None)
        except (UnicodeDecodeError, csv.Error, OSError) as e:
            raise UserError(f"{location(path, 1)}: cannot read the header ({e})") from None
    if not header or all(not h.strip() for h in header):
        raise UserError(f"{path}: the file is empty; expected a header line with column names")
    seen = set()
    for i, name in enumerate(header):
        if not name.strip():
            raise UserError(f"{location(path, 1, i + 1)}: empty column name in the header")
        if name in seen:
            raise UserError(f"{location(path, 1, name)}: duplicate column name in the header")
        seen.add(name)
    return header


def infer_types(path: str, header: list[str], forced: dict[str, str], block_size: int):
    """Column dtypes from Arrow's inference on the first block, overridden by ``forced``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(
            _open_stream(path),
            read_options=pcsv.ReadOptions(block_size=block_size),
            convert_options=pcsv.ConvertOptions(
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
        types = {f.name: _arrow_to_dtype(f.type) for f in reader.schema}
        reader.close()
    except pa.ArrowInvalid:
        # The first block itself is malformed: let the precise scanner name the place.
        types = {h: "string" for h in header}
        _locate_error(path, header, types, label=None)
        raise
    types.update({k: v for k, v in forced.items() if k in types})
    return types


# ----------------------------------------------------------------------------- precise errors


def _check_cell(value: str, dtype: str) -> str | None:
    if dtype == "string":
        return None
    if value.strip() == "":
        return "empty value"
    try:
        x = int(value) if dtype == "int64" else float(value)
    except ValueError:
        return f"{value!r} is not {'an integer' if dtype == 'int64' else 'a number'}"
    if dtype == "float32" and not math.isfinite(x):
        return f"{value!r} is not a finite number (NaN and infinity are not allowed)"
    if dtype == "float32" and abs(x) > 3.4e38:
        return f"{value!r} overflows float32"
    if dtype == "int64" and not -(2**63) <= x < 2**63:
        return f"{value!r} overflows int64"
    return None


def _locate_error(path: str, header: list[str], types: dict, label: str | None) -> None:
    """Re-read ``path`` with Python's csv module and raise UserError at the first bad cell."""
    with storage.open_read(path) as raw:
        f = (
            gzip.open(raw, "rt", newline="")
            if path.lower().endswith(".gz")
            else io.TextIOWrapper(raw, encoding="utf-8", newline="")
        )
        reader = csv.reader(f, strict=True)
        try:
            next(reader)
            for row in reader:
                line = reader.line_num
                if len(row) != len(header):
                    raise UserError(
                        f"{location(path, line)}: expected {len(header)} fields, got {len(row)}"
                    )
                for name, value in zip(header, row):
                    if label is not None and name == label and value.strip() == "":
                        raise UserError(f"{location(path, line, name)}: missing label")
                    problem = _check_cell(value, types[name])
                    if problem:
                        raise UserError(f"{location(path, line, name)}: {problem}")
        except csv.Error as e:
            raise UserError(f"{location(path, reader.line_num)}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


# ----------------------------------------------------------------------------- reading


def _iter_batches(path: str, header: list[str], types: dict, label: str, block_size: int):
    """Yield dicts {column: numpy array} for each block of ``path``, validated."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    arrow_types = {
        n: {"int64": pa.int64(), "float32": pa.float64(), "string": pa.string()}[t]
        for n, t in types.items()
    }
    try:
        reader = pcsv.open_csv(
            _open_stream(path),
            read_options=pcsv.ReadOptions(block_size=block_size),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types=arrow_types,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        if reader.schema.names != header:
            raise UserError(f"{path}: header {reader.schema.names} differs from the first file's")
        for batch in reader:
            cols = {}
            for name in header:
                arr = batch.column(name)
                if types[name] == "float32":
                    a = arr.to_numpy()
                    if not np.isfinite(a).all() or (np.abs(a) > 3.4e38).any():
                        _locate_error(path, header, types, label)
                    cols[name] = a.astype(np.float32)
                elif types[name] == "int64":
                    cols[name] = arr.to_numpy()
                else:
                    cols[name] = np.asarray(arr.to_pylist(), dtype=object)
            if types[label] == "string" and (cols[label] == "").any():
                _locate_error(path, header, types, label)
            yield cols
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError):
        _locate_error(path, header, types, label)
        raise  # the scanner found nothing more precise: a bug or an I/O problem


def _source_files(source: str) -> list[str]:
    files = storage.match_files(source, (".csv", ".csv.gz", ".txt", ".tsv"))
    if not files:
        raise UserError(f"{source}: no CSV files found (looked for *.csv, *.csv.gz)")
    return files


def source_fingerprint(files: list[str]) -> str:
    """A content hash of the inputs (name, size, CRC32C of the bytes): the cache key."""
    import google_crc32c

    h = hashlib.sha256()
    for path in files:
        crc = google_crc32c.Checksum()
        with storage.open_read(path) as f:
            while chunk := f.read(8 << 20):
                crc.update(chunk)
        h.update(f"{os.path.basename(path)}\0{crc.hexdigest().decode()}\0".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- statistics


class _Stats:
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
        self.label_hist: dict = {}

    def update(self, cols: dict[str, np.ndarray]) -> None:
        self.n += len(next(iter(cols.values())))
        for k, acc in self.num.items():
            a = cols[k].astype(np.float64)
            acc[0] += len(a)
            acc[1] += float(a.sum())
            acc[2] += float(np.square(a).sum())
            if len(a):
                acc[3] = min(acc[3], float(a.min()))
                acc[4] = max(acc[4], float(a.max()))
        for k, u in self.str_unique.items():
            if len(u) <= MAX_LABEL_CLASSES or k == self.label:
                u.update(np.unique(cols[k]).tolist())
        if self.types[self.label] != "float32":
            vals, counts = np.unique(cols[self.label], return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist()):
                self.label_hist[v] = self.label_hist.get(v, 0) + c

    def to_dict(self, train_rows: int, eval_rows: int, vocab: list) -> dict:
        feats = {}
        for k, (c, s, ss, lo, hi) in self.num.items():
            mean = s / c if c else 0.0
            var = max(ss / c - mean * mean, 0.0) if c else 0.0
            feats[k] = {"count": c, "mean": mean, "std": math.sqrt(var), "min": lo, "max": hi}
        for k, u in self.str_unique.items():
            feats[k] = {"count": self.n, "unique": len(u)}
        out = {"num_rows": self.n, "train_rows": train_rows, "eval_rows": eval_rows}
        out["skipped_rows"] = 0
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
    """N shard files of one split; each batch is spread in N contiguous, balanced chunks."""

    def __init__(self, root: str, split: str, num_shards: int, compression: str):
        os.makedirs(os.path.join(root, split))
        ext = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
        self.rel = [f"{split}/part-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]
        opener = (
            (lambda p: gzip.open(p, "wb", compresslevel=6))
            if compression
            else (lambda p: open(p, "wb"))
        )
        self.files = [opener(os.path.join(root, r)) for r in self.rel]
        self.rows = [0] * num_shards
        self.next = 0  # rotates which shard gets the larger chunk, keeping shards within 1 row

    def write(self, frames: bytes, starts: np.ndarray) -> None:
        n = len(starts) - 1
        k = len(self.files)
        bounds = [(n * i) // k for i in range(k + 1)]
        for i in range(k):
            shard = (i + self.next) % k
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                self.files[shard].write(frames[starts[lo] : starts[hi]])
                self.rows[shard] += hi - lo
        self.next = (self.next + n) % k

    def close(self) -> None:
        for f in self.files:
            f.close()


def _split_mask(data_crc: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """True for eval rows: a hash of the serialized example, so identical rows stay together."""
    h = (data_crc.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(
        0xFFFFFFFF
    )
    h ^= h >> np.uint64(16)
    return (h % np.uint64(SPLIT_BUCKETS)) < np.uint64(round(eval_fraction * SPLIT_BUCKETS))


def preprocess(cfg: PreprocessConfig) -> PreprocessResult:
    """Read ``cfg.source``, write and commit the data set at ``cfg.output``.

    Raises UserError for bad input (naming file, line and column); nothing is committed then.
    """
    cfg.validate()
    t0 = time.monotonic()
    files = _source_files(cfg.source)
    header = _read_header(files[0])
    for f in files[1:]:
        if _read_header(f) != header:
            raise UserError(f"{f}: header differs from {files[0]}'s")
    if cfg.label not in header:
        raise UserError(
            f"{files[0]}: no label column {cfg.label!r}; columns are: {', '.join(header)}"
        )
    if len(header) < 2:
        raise UserError(f"{files[0]}: only the label column; at least one feature is needed")
    forced = load_forced_types(cfg.schema_path) if cfg.schema_path else {}
    types = infer_types(files[0], header, forced, cfg.block_size)
    feature_names = [h for h in header if h != cfg.label]
    # examples carry the label under its own name, like the features
    columns_order = feature_names + [cfg.label]
    total_bytes = sum(storage.size(f) for f in files)
    source_hash = source_fingerprint(files)

    with storage.staged_dir(cfg.output, overwrite=cfg.overwrite, last=(manifest.MANIFEST,)) as tmp:
        writers = {
            s: _SplitWriter(tmp, s, cfg.num_shards, cfg.compression) for s in ("train", "eval")
        }
        stats = _Stats(types, cfg.label)
        bar = progress.Progress("preprocess", total=total_bytes, unit="B", enabled=cfg.progress)
        try:
            for path in files:
                done_before = bar.done
                for cols in _iter_batches(path, header, types, cfg.label, cfg.block_size):
                    n = len(cols[cfg.label])
                    if n == 0:
                        continue
                    stats.update(cols)
                    flat, offsets = example_codec.encode_examples(
                        [(c, types[c], cols[c]) for c in columns_order]
                    )
                    crc = example_codec.data_crcs(flat, offsets)
                    is_eval = _split_mask(crc, cfg.eval_fraction, cfg.split_seed)
                    for split, sel in (("train", ~is_eval), ("eval", is_eval)):
                        idx = np.nonzero(sel)[0]
                        if len(idx) == 0:
                            continue
                        sub_flat, sub_off = _take_records(flat, offsets, idx)
                        frames, starts = example_codec.frame_records(sub_flat, sub_off, crc[idx])
                        writers[split].write(frames, starts)
                    bar.update_to(done_before + _approx_bytes_done(path, stats.n), rows=stats.n)
                bar.update_to(done_before + storage.size(path), rows=stats.n)
        finally:
            for w in writers.values():
                w.close()
            bar.close()
        if stats.n == 0:
            raise UserError(f"{cfg.source}: no data rows after the header")
        train_rows, eval_rows = sum(writers["train"].rows), sum(writers["eval"].rows)
        if train_rows == 0:
            raise UserError("every row went to the eval split; lower --eval-fraction")
        schema = _make_schema(types, feature_names, cfg.label, stats, files[0])
        vocab = list(schema.label_vocabulary)
        storage.write_text(os.path.join(tmp, "schema.json"), schema.to_json())
        storage.write_text(
            os.path.join(tmp, "stats.json"),
            json.dumps(stats.to_dict(train_rows, eval_rows, vocab), indent=2) + "\n",
        )
        shards = [
            (rel, split, rows) for split, w in writers.items() for rel, rows in zip(w.rel, w.rows)
        ]
        manifest.write_manifest(
            tmp,
            shards,
            ["schema.json", "stats.json"],
            {"train": train_rows, "eval": eval_rows},
            cfg.compression,
            source_hash,
        )
    secs = time.monotonic() - t0
    return PreprocessResult(cfg.output, stats.n, train_rows, eval_rows, secs, schema, source_hash)


def _approx_bytes_done(path: str, rows: int) -> int:
    return 0  # refined per file at its end; Arrow does not expose its read offset


def _take_records(flat: np.ndarray, offsets: np.ndarray, idx: np.ndarray):
    if len(idx) == len(offsets) - 1:
        return flat, offsets
    lens = offsets[idx + 1] - offsets[idx]
    new_off = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    src = np.repeat(offsets[idx] - new_off[:-1], lens) + np.arange(int(new_off[-1]))
    return flat[src], new_off


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
    return Schema(
        features=tuple(Feature(n, types[n]) for n in feature_names),
        label=Feature(label, lt),
        task=task,
        num_classes=num_classes,
        label_vocabulary=vocab,
    )
