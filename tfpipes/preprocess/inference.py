"""Column types and kinds from the whole input: the first pass, a sample of every CSV block.

Each block's head (its first ``SAMPLE_BYTES``, cut at a row end the way blocks are cut), and
the tail of a file's last block (its rows from the last ``SAMPLE_BYTES``; a short last block
whole), is parsed by Arrow with type inference (missing tokens are nulls, so an empty cell
never makes a column a string) and summarized per column as a *family* — null, int, float,
boolean, timestamp or string — with its count of present values (:func:`profile_block`, on a
worker). :class:`ColumnInference` folds the profiles in input order:

- null + X = X; int + float = float (a column of integers with one ``2.5`` is float32);
  Arrow's ``true/false`` and our boolean words (true/false, yes/no, t/f, y/n in any case) are
  boolean; ISO 8601 dates and date-times are timestamps.
- Any other mix is a string column — unless the column held only numbers for its first
  ``LEAD_VALUES`` present values (counted in input order, across blocks): then it stays numeric
  and the first value that is not a number is reported by the main pass as
  ``file:line: column 'c': 'x' is not a number`` (declare the column string with ``--schema``
  to keep such values as text). A value that breaks the type late is an error, never a silent
  string.

The same pass collects the label's distinct values (for the task). A sample is enough because
the main pass validates every value against the inferred type; where the whole input could
have decided otherwise (a value the type rejects, present values in a column the sample saw
empty, more label values than the sample's, a string decision the unsampled rows could have
reversed — :attr:`ColumnInference.uncertain`), the pipeline runs this pass over every whole
block and, if that changes the plan, writes the data set again with it.
String columns are told apart as categorical or id after the main pass, from their statistics
(``ID_MIN_UNIQUE`` distinct values and more than ``ID_MIN_FRACTION`` of the present values).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfpipes.preprocess.blocks import Block
from tfpipes.preprocess.cell_kinds import BOOL_WORDS
from tfpipes.preprocess.csv_blocks import row_end
from tfpipes.preprocess.csv_reader import arrow_read
from tfpipes.preprocess.validation import FLOAT_RE, INT_RE, NONFINITE_RE

SAMPLE_BYTES = 256 << 10  # the head of each block the first pass parses (blocks are ~4 MB)
LEAD_VALUES = 1_000  # a column numeric for this many present values stays numeric
ID_MIN_UNIQUE = 1_000  # a string column with more distinct values than this ...
ID_MIN_FRACTION = 0.5  # ... and more than this fraction of its present values is an id
LONG_CELL = 1 << 20  # bytes: a column with a longer cell is read as text, not inferred
MAX_BOOL_CELL = 64  # bytes: a longer cell (even with blanks around a word) is never boolean
MAX_LABEL_VALUES = 10_001  # the label's distinct values tracked (classes beyond are too many)
NUMERIC = ("int", "float")
ISO_RE = (
    r"^[ \t]*[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?[ \t]*$"
)
_NUMBER_RE = f"(?:{FLOAT_RE})|(?:{NONFINITE_RE})"


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    """What the first pass needs: the header, the missing tokens and the label column."""

    header: tuple[str, ...]
    na_values: tuple[str, ...]
    label: str
    sample_bytes: int = 0  # parse only the head of a block (0: all of it)


@dataclasses.dataclass
class BlockProfile:
    """One block's summary: rows, and per column (family, present values, leading numbers:
    (count, family) of the present values before the first non-number, for string blocks)."""

    rows: int = 0
    columns: dict | None = None  # name -> (family, present, lead, lead_family)
    labels: list | None = None  # the label's distinct present values
    failed: bool = False  # Arrow could not read it: the main pass reports why
    sampled: bool = False  # only the block's head was read


def block_head(block: Block, nbytes: int) -> Block | None:
    """The first rows of a CSV block, at most ``nbytes`` (cut after the last row end outside
    quotes in them, as blocks are cut: ``\\n``, ``\\r\\n`` or a lone ``\\r``), or None when
    the block is no longer or has no row end that early."""
    data = block.data
    if not nbytes or len(data) <= nbytes:
        return None
    end = row_end(data[:nbytes], ord(block.delimiter), eof=False)
    if not end:
        return None
    return dataclasses.replace(block, data=data[:end])


def block_tail(block: Block, nbytes: int) -> Block | None:
    """The last rows of a CSV block, from the first row start in its last ``nbytes`` (found
    with the quote scan from the block's start, as blocks are cut), or None when the block is
    no longer than twice ``nbytes`` (its head and tail would overlap: read it whole)."""
    data = block.data
    if not nbytes or len(data) <= 2 * nbytes:
        return None
    start = row_end(data[: len(data) - nbytes], ord(block.delimiter), eof=False)
    if not start:
        return None
    return dataclasses.replace(block, data=data[start:])


def _family(arr) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_null(t) or arr.null_count == len(arr):
        return "null"
    if not pa.types.is_string(t):
        # what Arrow's CSV inference yields besides text (no decimal, no dictionary): as a
        # Parquet column's; binary (not UTF-8, which the main pass reports) is "string"
        return arrow_family(t)
    present = arr.drop_null()
    # A column with a cell longer than any boolean word and some blanks is text: found without
    # copying its cells (trimmed, then lowered), which would cost a huge cell several times
    # its size.
    if pc.max(pc.binary_length(present)).as_py() <= MAX_BOOL_CELL:
        words = pc.unique(pc.utf8_lower(pc.utf8_trim_whitespace(present)))
        if len(words) <= len(BOOL_WORDS) and set(words.to_pylist()) <= BOOL_WORDS:
            return "boolean"
    if pc.all(pc.match_substring_regex(present, ISO_RE)).as_py():
        return "timestamp"  # dates and date-times mixed, which Arrow's inference takes as text
    return "string"


def _leading_numbers(arr) -> tuple[int, str]:
    """(count, int|float) of the present values of a text column before the first non-number."""
    import pyarrow.compute as pc

    present = arr.drop_null()
    is_num = pc.match_substring_regex(present, _NUMBER_RE, ignore_case=True)
    is_num = is_num.to_numpy(zero_copy_only=False)
    lead = int(np.argmin(is_num)) if not is_num.all() else len(is_num)
    if lead == 0:
        return 0, "null"
    is_int = pc.match_substring_regex(present.slice(0, lead), INT_RE).to_numpy(zero_copy_only=False)
    return lead, "int" if is_int.all() else "float"


def profile_block(plan: ScanPlan, block: Block) -> BlockProfile:
    """Arrow's inference on one CSV block (its head when ``plan.sample_bytes`` is set),
    summarized per column (runs on a worker)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    head = block_head(block, plan.sample_bytes)
    sampled = head is not None
    block = head or block
    try:
        types = _long_text_columns(plan, block)
        table = arrow_read(block, plan.header, plan.na_values, lambda row: "skip", types)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return BlockProfile(failed=True)
    cols = {}
    for name in plan.header:
        arr = table.column(name).combine_chunks()
        fam = _family(arr)
        present = len(arr) - arr.null_count
        lead, lead_fam = _leading_numbers(arr) if fam == "string" else (0, "null")
        cols[name] = (fam, present, lead, lead_fam)
    labels = pc.unique(table.column(plan.label).drop_null())
    labels = labels.slice(0, MAX_LABEL_VALUES).to_pylist()
    return BlockProfile(rows=table.num_rows, columns=cols, labels=labels, sampled=sampled)


def _long_text_columns(plan: ScanPlan, block: Block) -> dict | None:
    """Text type for the columns holding a cell longer than ``LONG_CELL``, None if there are
    none (the usual case, found with one numpy pass over the bytes).

    Arrow's type inference costs a huge cell many times its size (a 64 MB cell: ~780 MB, where
    reading it as text costs ~70 MB); no such cell is a number, a boolean or a date anyway."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = block.data
    if len(data) <= LONG_CELL:
        return None
    a = np.frombuffer(data, dtype=np.uint8)
    cuts = np.flatnonzero((a == 10) | (a == 13) | (a == ord(block.delimiter)))
    if np.diff(cuts, prepend=-1, append=len(a)).max() <= LONG_CELL:
        return None  # no run of bytes without a delimiter or line end is that long
    text = {name: pa.string() for name in plan.header}
    table = arrow_read(block, plan.header, plan.na_values, lambda row: "skip", text)
    long = [
        n
        for n in plan.header
        if (pc.max(pc.binary_length(table.column(n))).as_py() or 0) > LONG_CELL
    ]
    return {n: pa.string() for n in long} or None


def widen(a: str, b: str) -> str | None:
    """The family holding both ``a`` and ``b``, or None when they do not mix."""
    if a == "null" or a == b:
        return b
    if b == "null":
        return a
    if a in NUMERIC and b in NUMERIC:
        return "float"
    return None


class ColumnInference:
    """Block profiles folded in input order into each column's family (see the module doc)."""

    def __init__(self, header, label: str) -> None:
        self.label = label
        self.rows = 0
        self.family = {h: "null" for h in header}
        self.present = {h: 0 for h in header}
        self.locked: set[str] = set()  # numeric for LEAD_VALUES values, then broken
        self.labels: set = set()
        self.exact = True  # every row so far was read: the decisions are the whole input's
        self.uncertain = False  # a string decision that rows not read could have reversed

    def merge(self, p: BlockProfile) -> None:
        if p.failed:
            return
        self.rows += p.rows
        exact_before = self.exact
        self.exact = self.exact and not p.sampled
        for name, (fam, present, lead, lead_fam) in p.columns.items():
            cur = self.family[name]
            if name in self.locked or cur == "string":
                pass
            elif fam != "string" and (w := widen(cur, fam)) is not None:
                self.family[name] = w
            else:
                num = widen(cur, lead_fam) if fam == "string" else cur
                if num in NUMERIC and self.present[name] + lead >= LEAD_VALUES:
                    self.family[name] = num
                    self.locked.add(name)
                else:
                    # Rows skipped before here may have held the numbers that would lock it.
                    self.uncertain |= num in NUMERIC and not exact_before
                    self.family[name] = "string"
            self.present[name] += present
        if len(self.labels) < MAX_LABEL_VALUES:
            self.labels.update(p.labels)


def family_type(family: str) -> tuple[str, str]:
    """(dtype, kind) a column family is stored as."""
    return {
        "int": ("int64", "numeric"),
        "float": ("float32", "numeric"),
        "boolean": ("int64", "boolean"),
        "timestamp": ("int64", "timestamp"),
    }.get(family, ("string", "categorical"))


def arrow_family(t) -> str:
    """The family of a Parquet column's Arrow type."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "timestamp"
    return "string"


def string_kind(unique: int, present: int) -> str:
    """categorical or id for a string column, from its distinct and present value counts."""
    return "id" if unique > ID_MIN_UNIQUE and unique > ID_MIN_FRACTION * present else "categorical"
