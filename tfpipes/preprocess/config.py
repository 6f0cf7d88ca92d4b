"""The preprocess step's contract: :class:`PreprocessConfig` in, :class:`PreprocessResult` out."""

from __future__ import annotations

import dataclasses

from tfpipes.errors import UserError
from tfpipes.layout import DEFAULT_RECORD_LAYOUT, RECORD_LAYOUTS
from tfpipes.schema import Schema

# The cells read as missing values unless --na-values says otherwise ("" is an empty cell).
DEFAULT_NA_VALUES = ("", "NA", "N/A", "null", "NULL", "NaN", "nan", "None")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What to read, where to write, and how to split.

    source: a file, a glob, a directory or a ``gs://`` prefix of ``.csv``, ``.txt`` or
        ``.tsv`` files (each also ``.gz``) or ``.parquet``/``.pq`` files, all with the same
        columns (``INPUT_SUFFIXES``; other files are ignored).
    output: the data set directory or ``gs://`` prefix to commit.
    label: the label column's name.
    eval_fraction: fraction of rows for the eval split, by a hash of each row's content.
    num_shards: shards per split; at least 4 x the workers that will train on it is a good
        default for multi-worker training (each input pipeline gets whole files).
    workers: threads that parse and encode; 0 means one per CPU core. The output is the same
        for any number.
    on_bad_row: "fail" (the first bad row stops the run) or "skip" (bad rows are dropped,
        counted and reported).
    schema_path: optional overrides of some columns: ``{column: dtype}``, ``{column:
        {"dtype": ..., "kind": ..., "format": ...}}`` or a whole ``schema.json``.
    na_values: the cells that are missing values (exact text; a quoted one too).
    task: "" (inferred from the label), "classification" or "regression".
    on_missing_label: "drop" (rows without a label are dropped and counted) or "fail".
    layout: the shards' record layout (``layout.RECORD_LAYOUTS``): "blocks" (one
        ``tf.train.Example`` per block of rows, column by column: what training reads fastest)
        or "rows" (one per row, as other TensorFlow tools and TF Serving requests expect).
        Every tfpipes reader takes either (``tfpipes.records`` yields per-row records of both).
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
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES
    task: str = ""
    on_missing_label: str = "drop"
    layout: str = DEFAULT_RECORD_LAYOUT

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
        if self.task not in ("", "classification", "regression"):
            raise UserError(f"--task must be classification or regression, got {self.task!r}")
        if self.on_missing_label not in ("drop", "fail"):
            raise UserError(
                f"--on-missing-label must be drop or fail, got {self.on_missing_label!r}"
            )
        if isinstance(self.na_values, str) or not all(isinstance(v, str) for v in self.na_values):
            raise UserError(f"--na-values must be a list of strings, got {self.na_values!r}")
        if self.layout not in RECORD_LAYOUTS:
            raise UserError(
                f"--layout must be one of {', '.join(RECORD_LAYOUTS)}, got {self.layout!r}"
            )
        if self.block_size < 1:
            raise UserError(f"block_size must be positive, got {self.block_size}")


def component_config(source: str, output: str, label: str, na_values: str = "", **params):
    """The :class:`PreprocessConfig` a KFP component builds from its parameters: no progress
    bar (a task's log is not a terminal), and ``na_values`` comma-separated as
    ``--na-values`` ("": the default set). ``params``: the other fields, by name."""
    if na_values:
        params["na_values"] = tuple(na_values.split(","))
    return PreprocessConfig(source=source, output=output, label=label, progress=False, **params)


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    """What one run wrote: the committed data set, row counts, its schema and content hash
    (``source_hash``, the fingerprint of the inputs), and how the run went."""

    output: str
    rows: int
    train_rows: int
    eval_rows: int
    seconds: float
    schema: Schema
    source_hash: str
    skipped_rows: int = 0
    missing_label_rows: int = 0  # rows dropped because their label was missing
    column_table: str = ""  # the inferred columns: name, type/kind, missing %, distinct values
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
