"""Which files preprocess reads: the one table of input suffixes, and how a source is matched.

``INPUT_SUFFIXES`` is the only list of what preprocess reads; the cache fingerprint
(:mod:`tfpipes.cache`, the pipeline's ``fingerprint_op``) matches files with it too, so every
file that can change the output changes the cache key.
"""

from __future__ import annotations

from tfpipes import storage
from tfpipes.errors import UserError

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
INPUT_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES
TSV_SUFFIXES = (".tsv", ".tsv.gz")  # tab-separated; the other CSV suffixes are comma-separated


def match_inputs(source: str) -> list[str]:
    """The input files at ``source`` (a file, glob, directory or ``gs://`` prefix), sorted;
    files with other suffixes are ignored. May be empty."""
    return storage.match_files(source, INPUT_SUFFIXES)


def source_files(source: str) -> list[str]:
    """:func:`match_inputs`, or UserError when ``source`` holds no input file."""
    files = match_inputs(source)
    if not files:
        looked_for = ", ".join("*" + s for s in INPUT_SUFFIXES)
        raise UserError(f"{source}: no input files found (looked for {looked_for})")
    return files


def is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def delimiter(path: str) -> str:
    return "\t" if path.lower().endswith(TSV_SUFFIXES) else ","
