"""preprocess: tabular data (CSV, plain or .gz, or Parquet) into a committed TFRecord data set.

Output layout (written to a staging place, committed with ``manifest.json`` last)::

    <output>/train/part-00000-of-00008.tfrecord[.gz]   one tf.train.Example per block of rows
                                                       (``--layout rows``: per row)
    <output>/eval/part-00000-of-00008.tfrecord[.gz]
    <output>/schema.json      feature names, dtypes, kinds, shapes; label; task (v2)
    <output>/stats.json       per feature count/missing and quantiles or top values; label
                              histogram; rows skipped or dropped for a missing label
    <output>/manifest.json    every file with size and CRC32C, row counts

The public pieces are here: :class:`PreprocessConfig`, :func:`preprocess`,
:class:`PreprocessResult`, :func:`source_fingerprint` (the cache key's content hash) and
``INPUT_SUFFIXES`` (what is read). The rest of the package is one file per job:

- ``inputs.py``: the input suffix table; matching a source to files.
- ``inference.py``: the first pass, column families from every block of the input;
  ``columns.py``: each column's dtype and kind, the label's task, the schema, the table;
  ``cell_kinds.py``: boolean and timestamp cells.
- ``csv_blocks.py``: streaming a CSV input and cutting it into row-aligned blocks
  (quote-aware, so a quoted field with newlines is never cut).
- ``csv_reader.py`` / ``parquet_reader.py``: a block into typed columns (Arrow).
- ``validation.py``: bad cells and the one-line file:line: column message.
- ``statistics.py``: per-block statistics folded into ``stats.json``.
- ``encoding.py`` (with ``example_codec.py``): rows into framed ``tf.train.Example`` records,
  split into train/eval and cut into shard chunks.
- ``worker.py``: the work on one block; ``parallel.py``: the ordered thread pool running it.
- ``shard_writer.py``: the shard files, written in block order; ``crc32c.py``: their checksums.
- ``fingerprint.py``: the content hash of the inputs.
- ``pipeline.py``: the orchestration (plan -> blocks -> write -> stats -> commit).
- ``fanout.py`` / ``fanout_part.py`` / ``fanout_commit.py``: the same data set written by N
  processes (plan, one part each, the commit); ``partials.py``: a part's statistics and their
  merge.

Why the output does not depend on the worker count: block boundaries depend on the input bytes
and the block size only; workers parse, validate, summarize and encode blocks in any order; the
calling thread writes their chunks and folds their statistics in block order.

Missing cells (``--na-values``) are absent features; rows without a label are dropped and
counted (or, ``--on-missing-label fail``, an error).

Bad input: in ``fail`` mode the first problem (wrong field count, unparseable number, NaN or
infinity, bad UTF-8) stops the run with one line naming file,
line and column — found by re-reading just that block with Python's ``csv`` module — and
nothing is committed. In ``skip`` mode such rows are dropped, counted in ``stats.json``
(``skipped_rows``) and reported.
"""

from tfpipes.preprocess.config import PreprocessConfig, PreprocessResult
from tfpipes.preprocess.fingerprint import source_fingerprint
from tfpipes.preprocess.inputs import CSV_SUFFIXES, INPUT_SUFFIXES, PARQUET_SUFFIXES
from tfpipes.preprocess.pipeline import preprocess

__all__ = [
    "CSV_SUFFIXES",
    "INPUT_SUFFIXES",
    "PARQUET_SUFFIXES",
    "PreprocessConfig",
    "PreprocessResult",
    "preprocess",
    "source_fingerprint",
]
