"""Data set manifests: a data set is complete only when its manifest exists and matches.

``manifest.json`` is written last, after every shard, the schema and the statistics; it lists
each file with its size and CRC32C, and the row counts. Readers call :func:`verify_dataset`
before using a data set and refuse one without a manifest or with a file that does not match.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import google_crc32c

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.layout import RECORD_LAYOUTS

MANIFEST = "manifest.json"
FORMAT = storage.DATASET_FORMAT


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the data set root, with "/" separators
    split: str  # "train" | "eval" | "" for metadata files
    rows: int
    bytes: int
    crc32c: str  # hex


@dataclasses.dataclass(frozen=True)
class DatasetManifest:
    shards: tuple[ShardInfo, ...]
    files: tuple[ShardInfo, ...]  # schema.json, stats.json
    rows: dict
    compression: str  # "" or "GZIP"
    created: str
    source_hash: str = ""
    layout: str = "rows"  # the shards' record layout (tfpipes.layout.RECORD_LAYOUTS)

    def shard_paths(self, split: str) -> list[str]:
        return [s.path for s in self.shards if s.split == split]

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["format"] = FORMAT
        return json.dumps(d, indent=2) + "\n"


def file_crc32c(path: str) -> tuple[int, str]:
    """(size, hex CRC32C) of a local file, read in 4 MiB chunks."""
    crc = google_crc32c.Checksum()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            crc.update(chunk)
            size += len(chunk)
    return size, crc.hexdigest().decode()


def write_manifest(
    local_root: str,
    shards: list[tuple[str, str, int]],
    meta_files: list[str],
    rows: dict,
    compression: str,
    source_hash: str = "",
    checksums: dict[str, tuple[int, str]] | None = None,
    layout: str = "rows",
) -> DatasetManifest:
    """Checksum every listed file under ``local_root`` and write ``manifest.json`` there.

    ``shards``: (relative path, split, rows). ``checksums``: (size, hex CRC32C) already known
    for some relative paths (computed while writing them), which are then not read again; a
    size that differs from the file on disk is a bug and raises ValueError. Call this last,
    after every file is closed.
    """
    known = checksums or {}

    def info(rel: str, split: str, n: int) -> ShardInfo:
        path = os.path.join(local_root, rel)
        if rel in known:
            size, crc = known[rel]
            # A known file may be elsewhere already (a fan-out's shards, in object storage).
            if os.path.exists(path) and os.path.getsize(path) != size:
                raise ValueError(f"{path}: {os.path.getsize(path)} bytes, expected {size}")
        else:
            size, crc = file_crc32c(path)
        return ShardInfo(rel, split, n, size, crc)

    m = DatasetManifest(
        shards=tuple(info(p, s, n) for p, s, n in shards),
        files=tuple(info(p, "", 0) for p in meta_files),
        rows=rows,
        compression=compression,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source_hash=source_hash,
        layout=layout,
    )
    storage.write_text(os.path.join(local_root, MANIFEST), m.to_json())
    return m


def read_manifest(root: str) -> DatasetManifest:
    path = storage.join(root, MANIFEST)
    if not storage.exists(path):
        raise UserError(
            f"{root}: not a committed tfpipes data set (no {MANIFEST}); it is incomplete or was "
            "not written by `tfpipes preprocess`"
        )
    try:
        d = json.loads(storage.read_text(path))
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, expected an object")
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        m = DatasetManifest(
            shards=tuple(_entry(s) for s in d["shards"]),
            files=tuple(_entry(s) for s in d["files"]),
            rows=d["rows"],
            compression=d["compression"],
            created=d["created"],
            source_hash=d.get("source_hash", ""),
            layout=d.get("layout", "rows"),  # written before the block layout: per-row records
        )
        if not isinstance(m.rows, dict) or m.compression not in ("", "GZIP"):
            raise ValueError("rows or compression of an unknown shape")
        if m.layout not in RECORD_LAYOUTS:
            raise ValueError(f"layout {m.layout!r}, expected one of {', '.join(RECORD_LAYOUTS)}")
        return m
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt manifest ({e})") from None


def _entry(d) -> ShardInfo:
    """One file entry; its path must stay inside the data set (relative, no ``..``)."""
    info = ShardInfo(**d)
    parts = str(info.path).replace("\\", "/").split("/")
    if (
        not isinstance(info.path, str)
        or info.path.startswith("/")
        or ".." in parts
        or not info.path
    ):
        raise ValueError(f"file {info.path!r} is not a relative path inside the data set")
    if not (isinstance(info.bytes, int) and isinstance(info.rows, int) and info.bytes >= 0):
        raise ValueError(f"file {info.path!r}: bytes and rows must be integers")
    return info


def verify_dataset(root: str, check_crc: bool = True) -> DatasetManifest:
    """Check that every file the manifest lists exists with its size (and CRC32C).

    ``root`` must be a local directory (remote data sets are downloaded first by the storage
    layer). Raises UserError naming the first file that is missing or does not match.
    """
    m = read_manifest(root)
    for s in (*m.shards, *m.files):
        p = os.path.join(root, s.path)
        if not os.path.exists(p):
            raise UserError(f"{p}: listed in {MANIFEST} but missing; the data set is incomplete")
        if os.path.getsize(p) != s.bytes:
            raise UserError(
                f"{p}: size {os.path.getsize(p)} does not match {MANIFEST} ({s.bytes}); "
                "the shard is truncated or was changed"
            )
        if check_crc and file_crc32c(p)[1] != s.crc32c:
            raise UserError(f"{p}: CRC32C does not match {MANIFEST}; the shard is corrupt")
    return m
