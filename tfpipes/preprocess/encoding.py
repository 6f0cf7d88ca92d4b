"""Encoding a block's rows: ``tf.train.Example`` records (:mod:`.example_codec`, one per row;
or :mod:`.block_codec`, one per block of rows), the train/eval split by a hash of each row's
values, and each split cut into ``num_shards`` chunks.

The split hashes the row's values (:mod:`.row_hash`), so the same row always lands in the same
split whatever the file order, block size, worker count or record layout. With ``--compression
GZIP`` each chunk is one gzip member; TensorFlow reads a shard of such members as one stream.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from tfpipes.layout import BLOCK_ROWS
from tfpipes.preprocess import block_codec, example_codec, row_hash
from tfpipes.preprocess.blocks import Plan

SPLIT_BUCKETS = 10_000
GZIP_LEVEL = 1  # zlib level for --compression GZIP: 3x faster than 6, files ~20% larger


@dataclasses.dataclass
class Chunks:
    """One split of one block, cut into ``num_shards`` chunks of whole records (a GZIP member
    each with compression)."""

    data: list  # a uint8 array per chunk
    rows: list  # rows per chunk


def encode_splits(plan: Plan, cols: dict, present: dict | None = None) -> dict[str, Chunks]:
    """The framed TFRecords of a block's columns (``plan.order``), split into train and eval
    and each cut into ``plan.num_shards`` chunks: ``{"train": Chunks, "eval": Chunks}``.
    ``present`` (column -> bool mask or None) leaves missing cells out of their Example."""
    present = present or {}
    columns = [(c, plan.types[c], cols[c], present.get(c)) for c in plan.order]
    # The block layout writes no per-row records; the rows layout frames them for its shards.
    batch = None if plan.layout == "blocks" else example_codec.ExampleBatch(columns)
    is_eval = split_mask(row_hash.row_hashes(columns), plan.eval_fraction, plan.split_seed)
    splits = {}
    for split, sel in (("train", ~is_eval), ("eval", is_eval)):
        rows = np.flatnonzero(sel)
        if batch is None:
            splits[split] = _block_chunks(columns, rows, plan.num_shards, plan.compression)
        else:
            frames, starts = batch.frames(rows)
            splits[split] = cut_chunks(frames, starts, plan.num_shards, plan.compression)
    return splits


def _block_chunks(columns: list, rows: np.ndarray, k: int, compression: str) -> Chunks:
    """The split's ``rows`` cut into k chunks as :func:`cut_chunks` cuts them, each chunk's
    rows written as block records (:mod:`.block_codec`)."""
    taken = [
        (name, dt, _take(values, rows), None if present is None else present[rows])
        for name, dt, values, present in columns
    ]
    data = block_codec.encode_blocks(taken, _chunk_bounds(len(rows), k), BLOCK_ROWS)
    return Chunks([_compressed(d, compression) for d in data], _chunk_rows(len(rows), k))


def _take(values, rows: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[rows]
    import pyarrow as pa

    return values.take(pa.array(rows, type=pa.int64()))


def _chunk_bounds(n: int, k: int) -> list[int]:
    # The first n % k chunks get the extra row; the writer sends chunk i to shard
    # (i + rows so far) % k, so the extra rows go round-robin and shards stay within one row.
    q, r = divmod(n, k)
    return [i * q + min(i, r) for i in range(k + 1)]


def _chunk_rows(n: int, k: int) -> list[int]:
    b = _chunk_bounds(n, k)
    return [hi - lo for lo, hi in zip(b[:-1], b[1:])]


def _compressed(piece: np.ndarray, compression: str) -> np.ndarray:
    if len(piece) and compression == "GZIP":
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # one gzip member per chunk
        return np.frombuffer(z.compress(piece) + z.flush(), dtype=np.uint8)
    return piece


def split_mask(hashes: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """True for eval rows, by each row's hash (:mod:`.row_hash`: of its values, so identical
    rows stay together) mixed with the seed."""
    seeded = np.uint64(seed % (1 << 64))
    with np.errstate(over="ignore"):
        h = row_hash.mix(hashes ^ row_hash.mix(np.array([seeded], dtype=np.uint64)))
    return (h % np.uint64(SPLIT_BUCKETS)) < np.uint64(round(eval_fraction * SPLIT_BUCKETS))


def cut_chunks(frames: np.ndarray, starts: np.ndarray, k: int, compression: str) -> Chunks:
    """Cut n records into k contiguous chunks of n // k or n // k + 1 records."""
    bounds = _chunk_bounds(len(starts) - 1, k)
    data, rows = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        # a view: written out without a copy
        data.append(_compressed(frames[starts[lo] : starts[hi]], compression))
        rows.append(hi - lo)
    return Chunks(data, rows)
