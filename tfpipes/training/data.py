"""The committed data set a run trains on: verified, its schema and statistics read, once."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

from tfpipes import layout, storage
from tfpipes import manifest as manifest_lib
from tfpipes.errors import UserError
from tfpipes.manifest import DatasetManifest
from tfpipes.schema import Schema


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A data set on local disk, or a remote one streamed (``root``: a
    :class:`tfpipes.stream.StreamedDataset`; see :func:`open_training_data`)."""

    root: object
    manifest: DatasetManifest
    schema: Schema
    stats: dict

    @classmethod
    def load(cls, root: str) -> TrainingData:
        """Verify the data set in ``root`` against its manifest and check that its records
        parse with its schema; UserError naming the file otherwise."""
        from tfpipes.input_pipeline import check_records
        from tfpipes.schema import load_schema

        manifest = manifest_lib.verify_dataset(root)
        schema = load_schema(root)
        stats = layout.read_stats(root)
        check_stats(stats, storage.join(root, layout.STATS))
        check_records(root, manifest, schema)
        return cls(root, manifest, schema, stats)

    @property
    def streamed(self) -> bool:
        """Whether the shards are streamed from object storage (not local files)."""
        return not isinstance(self.root, str)


@contextlib.contextmanager
def open_training_data(data: str) -> Iterator[TrainingData]:
    """The data set ``data`` (``--data``) for the length of a run: a local one as it is; a
    remote one streamed, never copied (:mod:`tfpipes.stream`): its manifest, schema and
    stats read, every object it lists checked (size, CRC32C) in one listing, the records of
    its first shards checked, the shard caches removed at the end."""
    if not storage.is_remote(data):
        with storage.local_dir(data) as root:
            yield TrainingData.load(root)
        return
    from tfpipes import stream
    from tfpipes.schema import load_schema

    manifest = _verify_remote(data)
    source = stream.StreamedDataset(data, manifest)
    try:
        schema = load_schema(data)
        stats = layout.read_stats(data)
        check_stats(stats, storage.join(data, layout.STATS))
        _check_first_records(source, manifest, schema)
        yield TrainingData(source, manifest, schema, stats)
    finally:
        source.close()


def _verify_remote(data: str) -> DatasetManifest:
    """The manifest of the remote data set ``data``, each file it lists checked against the
    object's size and CRC32C from one listing; UserError naming the first that differs."""
    manifest = manifest_lib.read_manifest(data)
    objects = storage.object_sizes(data)
    for s in (*manifest.shards, *manifest.files):
        url = storage.join(data, s.path)
        if s.path not in objects:
            raise UserError(
                f"{url}: listed in the manifest but missing; the data set is incomplete"
            )
        size, crc = objects[s.path]
        if size != s.bytes or (crc is not None and crc != s.crc32c):
            raise UserError(f"{url}: size or CRC32C does not match the manifest; it was changed")
    return manifest


def _check_first_records(source, manifest: DatasetManifest, schema: Schema) -> None:
    """Parse the first record of the first train and eval shard (one download each); a
    UserError names the shard's gs:// URL, not the local copy checked."""
    from tfpipes.input_pipeline import check_records

    for split in ("train", "eval"):
        got = source.first_shard(split)
        if got is None:
            continue
        path, url = got
        first = next(s for s in manifest.shards if s.split == split)
        local = dataclasses.replace(manifest, shards=(dataclasses.replace(first, path=path),))
        try:
            check_records("/", local, schema)
        except UserError as e:
            text = str(e)
            if not text.startswith(path):
                raise
            raise UserError(url + text[len(path) :]) from None
        finally:
            os.unlink(path)


def check_stats(stats: dict, where: str) -> None:
    """UserError naming ``where`` unless ``stats`` has the shape the model reads: ``features``
    an object of per-feature objects whose ``mean``, ``std``, ``missing`` and ``median``,
    where present, are numbers, ``quantiles`` a list of numbers and ``top`` a list of
    ``[value, count]`` pairs whose values are strings or integers."""
    features = stats.get("features", {})
    if not isinstance(features, dict):
        raise UserError(f"{where}: 'features' must be a JSON object of per-feature statistics")
    for name, feature in features.items():
        if not isinstance(feature, dict):
            raise UserError(f"{where}: features[{name!r}] must be a JSON object")
        field = f"{where}: features[{name!r}]"
        for key in ("mean", "std", "missing", "median"):
            if key in feature and not _is_number(feature[key]):
                raise UserError(f"{field}[{key!r}] must be a number")
        quantiles = feature.get("quantiles", [])
        if not isinstance(quantiles, list) or not all(map(_is_number, quantiles)):
            raise UserError(f"{field}['quantiles'] must be a list of numbers")
        top = feature.get("top", [])
        if not isinstance(top, list) or not all(_is_top_entry(e) for e in top):
            raise UserError(f"{field}['top'] must be a list of [value, count] pairs")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_top_entry(entry) -> bool:
    if not isinstance(entry, list) or len(entry) != 2:
        return False
    value, count = entry
    ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    return ok and _is_number(count)
