"""The tf.data input pipeline over a committed data set.

Files are listed from the manifest (never by globbing, so a stray file cannot sneak in). Every
batch is ``(packed features, target)``: the features of one dtype stacked into one
``[batch, k]`` tensor (``packed_key``), which ``models.FeatureEncoder`` reads directly. A
feature absent from a record (a missing value, schema.json v2) parses as its dtype's
:data:`MISSING` value, which the encoder imputes; so both input modes, every strategy and the
exported model see missing values the same way. Two ways to feed training, both
deterministic for a given seed:

- streaming (the default): a parallel deterministic interleave over the shards, a shuffle of
  the serialized records, ``batch`` and then one vectorized ``tf.io.parse_example`` per batch,
  then ``prefetch``. Its position is the tf.data iterator's state, saved in the checkpoint
  (or, where a strategy's iterator cannot be saved, rebuilt with ``skip_batches``).
- in memory (``--cache``, :class:`InMemoryData`): the split is read and parsed once; batch g
  is a ``tf.gather`` of rows picked by ``index_shuffle``, a stateless permutation of each
  epoch. The trainer computes it inside its step from the step count (no iterator, no
  hand-over between threads: the input costs a few ops per step), or tf.data does
  (:meth:`InMemoryData.dataset`) where several replicas need a distributed dataset.
"""

from __future__ import annotations

import logging
import math
import os

import tensorflow as tf

from tfpipes.errors import UserError, first_line
from tfpipes.layout import tf_dtype
from tfpipes.manifest import DatasetManifest
from tfpipes.schema import Schema

log = logging.getLogger("tfpipes.input_pipeline")

# --cache keeps the parsed split in memory; refuse rather than swap when it cannot fit.
CACHE_MEMORY_FRACTION = 0.5
LOAD_BATCH = 8192


# What parsing puts in place of an absent feature (a missing value, schema.json v2), per
# dtype. The model's FeatureEncoder treats these values as missing wherever they come from, so
# a raw ``predict`` request says "missing" with them too: NaN; the smallest int64 (pandas'
# NaT); the empty string. Preprocess never writes them as values (NaN/inf cells are an error
# unless declared missing; an empty cell is missing).
MISSING = {"float32": math.nan, "int64": -(2**63), "string": ""}


def accepts_missing(schema: Schema) -> bool:
    """Whether the data set's records may lack features: a v2 schema (with kinds). A v1
    data set has every feature in every record, and a record without one is an error."""
    return any(f.kind for f in (*schema.features, schema.label))


def feature_spec(schema: Schema, with_label: bool = True, missing: bool | None = None) -> dict:
    """``tf.io.parse_example`` spec for the schema's features (and label).

    missing: an absent feature parses as its dtype's :data:`MISSING` value (default: when
    :func:`accepts_missing`; serving always). The label is always required: preprocess drops
    the rows without one.
    """
    if missing is None:
        missing = accepts_missing(schema)

    def spec(f, optional):
        if optional:
            return tf.io.FixedLenFeature(f.shape, tf_dtype(f.dtype), MISSING[f.dtype])
        return tf.io.FixedLenFeature(f.shape, tf_dtype(f.dtype))

    out = {f.name: spec(f, missing) for f in schema.features}
    if with_label:
        out[schema.label.name] = spec(schema.label, False)
    return out


def label_transform(schema: Schema):
    """A function mapping the raw label tensor to the training target (class id or float)."""
    if schema.task == "regression":
        return lambda y: tf.cast(y, tf.float32)
    if schema.label_vocabulary:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(schema.label_vocabulary)),
                tf.range(len(schema.label_vocabulary), dtype=tf.int64),
            ),
            default_value=-1,
        )
        return lambda y: table.lookup(y)
    return lambda y: tf.cast(y, tf.int64)


def _options() -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.autotune.enabled = True
    opts.experimental_optimization.map_and_batch_fusion = True
    opts.experimental_optimization.parallel_batch = True
    opts.experimental_optimization.inject_prefetch = True
    return opts


def packed_key(dtype: str) -> str:
    """The features-dict key under which a pipeline passes every feature of ``dtype`` as one
    ``[batch, k]`` tensor, in schema order (``models.FeatureEncoder`` reads it)."""
    return f"__{dtype}__"


def dtype_groups(schema: Schema) -> dict[str, list[str]]:
    """Feature names by dtype, in schema order: the columns of each packed tensor."""
    groups: dict[str, list[str]] = {}
    for f in schema.features:
        groups.setdefault(f.dtype, []).append(f.name)
    return groups


def _parse_fn(schema: Schema):
    """serialized records [n] -> (packed features, target [n]).

    Features of one dtype are stacked into one tensor: a batch is then a few tensors instead
    of one per feature, and each tensor costs the step's iterator a hand-over per batch.
    """
    spec = feature_spec(schema)
    to_target = label_transform(schema)
    label = schema.label.name
    groups = dtype_groups(schema)
    for f in schema.features:
        if f.shape:
            raise UserError(f"feature {f.name!r} has shape {list(f.shape)}; only scalars")

    def parse(records):
        feats = tf.io.parse_example(records, spec)
        y = to_target(feats.pop(label))
        packed = {
            packed_key(dtype): tf.stack([feats[n] for n in names], axis=1)
            for dtype, names in groups.items()
        }
        return packed, y

    return parse


def shard_files(root, manifest: DatasetManifest, split: str, input_context=None, repeat=False):
    """The local paths of the ``split`` shards: files under the directory ``root``, or, for a
    remote data set (``root`` a :mod:`tfpipes.stream` source), the paths its shard cache
    fetches them to (``repeat``: the pipeline reads them once per epoch)."""
    if isinstance(root, str):
        return [os.path.join(root, p) for p in manifest.shard_paths(split)]
    return root.shard_files(split, input_context, repeat)


def _shard_reader(files, compression):
    """The function from a shard's path to the dataset of its records: a streamed shard
    (``files`` from a shard cache) is read once the cache has it (``stream.read_shard``)."""
    reader = getattr(files, "reader", None)
    if reader is not None:
        return lambda f: reader(f, compression)
    return lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=1 << 20)


def _records(files: list[str], compression: str | None, input_context) -> tf.data.Dataset:
    """Serialized records of ``files``, this input pipeline's share of them."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    by_file = pipelines > 1 and len(files) >= pipelines
    if by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.interleave(
        _shard_reader(files, compression),
        cycle_length=max(1, min(len(files), getattr(files, "cycle", 8))),  # see stream.py
        block_length=16,  # fewer switches between files; the shuffle mixes them anyway
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if pipelines > 1 and not by_file:
        # Fewer files than input pipelines: every pipeline reads everything and keeps its rows.
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    return ds


def make_dataset(
    root: str,
    manifest: DatasetManifest,
    split: str,
    schema: Schema,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool = False,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """(features dict, label) batches from the ``split`` shards of a local data set.

    training=True: rows split across input pipelines (``input_context``: by file, or by row when
    there are fewer files than pipelines), shuffled with ``seed``, repeated forever, partial
    batches dropped; ``cache`` keeps the parsed split in memory (:class:`InMemoryData`; inside
    a ``tf.function``, tf.data's own ``cache()``); ``skip_batches`` starts that many batches
    in. training=False: one ordered pass.

    Raises UserError when the split has no files, or ``cache`` is asked for a split that does
    not fit in memory.
    """
    if training and cache and tf.executing_eagerly():
        data = load_in_memory(
            root, manifest, split, schema, batch_size, seed=seed, input_context=input_context
        )
        return data.dataset(skip_batches)
    files = shard_files(root, manifest, split, input_context if training else None, training)
    if not files:
        raise UserError(f"{root}: the data set has no {split!r} shards")
    compression = manifest.compression or None
    parse = _parse_fn(schema)
    if not training:
        ds = _records(files, compression, None).batch(batch_size)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
    ds = _records(files, compression, input_context)
    if cache:  # inside a tf.function (a per-worker dataset): tf.data's own cache
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    if skip_batches:
        ds = ds.skip(skip_batches)  # before parsing: skipped batches are only read
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _check_fits(manifest: DatasetManifest, split: str) -> None:
    # Parsed rows take less memory than their serialized records (a float is 4 bytes, its
    # Example encoding more), so the shard bytes bound the cache from above (uncompressed).
    need = sum(s.bytes for s in manifest.shards if s.split == split)
    if manifest.compression:
        need *= 4
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > CACHE_MEMORY_FRACTION * avail:
        raise UserError(
            f"--cache: the {split} split ({need / 2**30:.1f} GiB) does not fit in half of the "
            f"available memory ({avail / 2**30:.1f} GiB); train without --cache"
        )


def load_columns(files, compression, schema: Schema, input_context=None):
    """Read and parse ``files`` once: (packed features ``{key: [rows, k]}``, targets [rows])."""
    parse = _parse_fn(schema)
    ds = _records(files, compression, input_context).batch(LOAD_BATCH)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    parts, labels = [], []
    for feats, y in ds.prefetch(2):
        parts.append(feats)
        labels.append(y)
    if not labels:
        raise UserError("the train split has no rows for this input pipeline")
    packed = {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]}
    return packed, tf.concat(labels, axis=0)


class InMemoryData:
    """A split parsed once into memory; :meth:`batch` ``g`` is batch g of an endless sequence.

    Epoch e is a permutation of the rows drawn from ``(seed, e)`` with
    ``index_shuffle`` (stateless, random access), and batches run across epoch boundaries like
    ``shuffle().repeat().batch()``: batch g is a pure function of g, so the data position is
    just the step count, and any split of the steps into calls gives the same batches.
    """

    def __init__(self, packed: dict, labels, batch_size: int, seed: int):
        self.packed, self.labels = packed, labels
        self.batch_size, self.seed = batch_size, seed
        self.rows = int(labels.shape[0])

    def batch(self, g):
        """(packed features, targets) of batch ``g`` (an int64 scalar tensor)."""
        b, rows = self.batch_size, self.rows
        pos = g * b + tf.range(b, dtype=tf.int64)
        epoch, within = pos // rows, pos % rows
        salt = tf.fill([b], tf.constant(self.seed, tf.int64))
        seeds = tf.stack([salt, epoch, tf.zeros_like(epoch)], axis=1)
        # The raw op: the public wrapper mis-pads a per-element [n, 3] seed in TF 2.21.
        idx = tf.raw_ops.RandomIndexShuffle(
            index=within, seed=seeds, max_index=tf.constant(rows - 1, tf.int64), rounds=4
        )
        return {k: tf.gather(v, idx) for k, v in self.packed.items()}, tf.gather(self.labels, idx)

    def dataset(self, start: int = 0) -> tf.data.Dataset:
        """The same batches as a tf.data pipeline, from batch ``start`` on."""
        ds = tf.data.Dataset.range(start, tf.int64.max)
        ds = ds.map(self.batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def load_in_memory(
    root: str,
    manifest: DatasetManifest,
    split: str,
    schema: Schema,
    batch_size: int,
    *,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    device: str = "/cpu:0",
) -> InMemoryData:
    """Read and parse this input pipeline's share of ``split`` into memory on ``device``.

    Raises UserError if it cannot fit in half the available memory or has less than a batch.
    """
    files = shard_files(root, manifest, split, input_context)
    if not files:
        raise UserError(f"{root}: the data set has no {split!r} shards")
    _check_fits(manifest, split)
    with tf.device("/cpu:0"):
        packed, labels = load_columns(files, manifest.compression or None, schema, input_context)
    if device != "/cpu:0":
        with tf.device(device):
            packed = {k: tf.identity(v) for k, v in packed.items()}
            labels = tf.identity(labels)
    rows = int(labels.shape[0])
    if rows < batch_size:
        raise UserError(f"the {split} split has {rows} rows, fewer than one batch ({batch_size})")
    log.debug("%d rows of %s in memory on %s", rows, split, device)
    return InMemoryData(packed, labels, batch_size, seed)


def check_records(root: str, manifest: DatasetManifest, schema: Schema) -> None:
    """Parse the first record of every shard with the schema; UserError naming a shard that
    does not match (a data set whose records are not what its schema.json says)."""
    spec = feature_spec(schema)
    compression = manifest.compression or None
    for rel in manifest.shard_paths("train") + manifest.shard_paths("eval"):
        path = os.path.join(root, rel)
        try:
            for rec in tf.data.TFRecordDataset(path, compression_type=compression).take(1):
                tf.io.parse_single_example(rec, spec)
        except tf.errors.InvalidArgumentError as e:
            raise UserError(f"{path}: records do not match schema.json ({first_line(e)})") from None
        except tf.errors.DataLossError as e:
            raise UserError(f"{path}: corrupt shard ({first_line(e)})") from None
