"""The unit of work and what comes back: a :class:`Block` of input, the :class:`Plan` every
worker shares, a :class:`BlockResult`; and the helpers both readers share."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Block:
    """A unit of work: CSV bytes starting at ``first`` (a line number) or a Parquet batch
    starting at row ``first``."""

    path: str
    first: int
    data: object  # bytes | pyarrow.RecordBatch
    delimiter: str
    parquet: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
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
    kinds: dict = dataclasses.field(default_factory=dict)  # column -> schema kind ("" = by dtype)
    formats: dict = dataclasses.field(default_factory=dict)  # timestamp column -> strptime format
    na_values: tuple[str, ...] = ()  # cells that are missing values
    on_missing_label: str = "drop"
    layout: str = "rows"  # the shards' record layout (tfpipes.layout.RECORD_LAYOUTS)

    def kind(self, name: str) -> str:
        return self.kinds.get(name, "")


@dataclasses.dataclass
class BlockResult:
    """One block's outcome: an error message (fail mode), or its rows, skipped rows, the first
    skipped row's location, partial statistics and per-split shard chunks."""

    error: str | None = None
    rows: int = 0
    skipped: int = 0
    missing_label: int = 0  # rows dropped for a missing label
    parsed: int = 0  # rows read, before dropping bad or unlabeled ones
    skip_note: str | None = None
    stats: dict | None = None
    splits: dict | None = None  # split -> encoding.Chunks


def arrow_to_dtype(t) -> str:
    """The schema dtype (int64, float32 or string) an Arrow type is read as."""
    import pyarrow as pa

    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int64"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float32"
    return "string"


def filter_rows(values, keep: np.ndarray):
    """The rows of a column (numpy array or Arrow array) where ``keep`` is True."""
    if isinstance(values, np.ndarray):
        return values[keep]
    import pyarrow as pa

    return values.filter(pa.array(keep))
