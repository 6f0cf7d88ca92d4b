"""What a worker thread does with one block: parse, validate, summarize, encode.

:func:`process_block` is the function the ordered runner (:mod:`.parallel`) maps over the
blocks; it touches no shared state, so blocks may run in any order on any thread.
"""

from __future__ import annotations

from tfpipes.preprocess.blocks import Block, BlockResult, Plan, filter_rows
from tfpipes.preprocess.csv_reader import csv_columns
from tfpipes.preprocess.encoding import encode_splits
from tfpipes.preprocess.parquet_reader import parquet_columns
from tfpipes.preprocess.statistics import block_stats
from tfpipes.preprocess.validation import BadBlock


def process_block(plan: Plan, block: Block, limit: int | None = None) -> BlockResult:
    """Parse, validate, summarize and encode one block (runs on a worker thread). ``limit``:
    a statistics sample threshold at or above the final one (None: keep every value).

    Returns the error message for bad input instead of raising, so that the caller reports
    the first problem in input order.
    """
    try:
        c = parquet_columns(plan, block) if block.parquet else csv_columns(plan, block)
    except BadBlock as e:
        return BlockResult(error=str(e))
    cols, present = c.values, c.present
    parsed = len(cols[plan.label])
    if c.keep is not None:
        cols = {k: filter_rows(v, c.keep) for k, v in cols.items()}
        present = {k: None if v is None else v[c.keep] for k, v in present.items()}
    n = len(cols[plan.label])
    result = BlockResult(
        rows=n, skipped=c.skipped, skip_note=c.note, missing_label=c.missing_label, parsed=parsed
    )
    if n == 0:
        return result
    result.stats = block_stats(plan, block, cols, present, n, limit)
    result.splits = encode_splits(plan, cols, present)
    return result
