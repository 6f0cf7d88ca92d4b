"""The tf.data input pipeline over a committed data set.

Files are listed from the manifest (never by globbing, so a stray file cannot sneak in). Every
batch is ``(packed features, target)``: the features of one dtype stacked into one
``[batch, k]`` tensor (``packed_key``), which ``models.FeatureEncoder`` reads directly. A
feature absent from a record (a missing value, schema.json v2) parses as its dtype's
:data:`MISSING` value, which the encoder imputes; so both input modes, every strategy and the
exported model see missing values the same way. Two ways to feed training, both
deterministic for a given seed:

- streaming (the default): a parallel deterministic interleave over the shards, then by the
  manifest's record layout: per-row records are shuffled, batched and parsed by one vectorized
  ``tf.io.parse_example`` per batch; block records (``layout.RECORD_LAYOUTS``) are shuffled
  as blocks, a window of blocks is parsed at once, its rows permuted and cut into batches
  (:func:`_block_batches`). Then ``prefetch``. Its position is the tf.data iterator's state,
  saved in the checkpoint (or, where a strategy's iterator cannot be saved, rebuilt with
  ``skip_batches``).
- in memory (``--cache``, :class:`InMemoryData`): the split is read and parsed once; batch g
  is a ``tf.gather`` of rows picked by ``index_shuffle``, a stateless permutation of each
  epoch. The trainer computes it inside its step from the step count (no iterator, no
  hand-over between threads: the input costs a few ops per step), or tf.data does
  (:meth:`InMemoryData.dataset`) where several replicas need a distributed dataset.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from tfpipes.errors import UserError, first_line
from tfpipes.layout import BLOCK_ROWS, MISSING_VALUES, tf_dtype
from tfpipes.manifest import DatasetManifest
from tfpipes.schema import Schema

log = logging.getLogger("tfpipes.input_pipeline")

# --cache keeps the parsed split in memory; refuse rather than swap when it cannot fit.
CACHE_MEMORY_FRACTION = 0.5
LOAD_BATCH = 8192


# What parsing puts in place of an absent feature (a missing value, schema.json v2), per
# dtype; a raw ``predict`` request says "missing" with them too (see layout.MISSING_VALUES).
MISSING = MISSING_VALUES


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


def block_spec(schema: Schema) -> dict:
    """``tf.io.parse_example`` spec of block records (``layout.RECORD_LAYOUTS``): every
    column a ragged list of one value per row of its block."""
    return {
        f.name: tf.io.RaggedFeature(tf_dtype(f.dtype), row_splits_dtype=tf.int64)
        for f in (*schema.features, schema.label)
    }


def _parse_fn(schema: Schema, layout: str = "rows"):
    """serialized records [n] -> (packed features, target [rows]): n rows, or the rows of n
    blocks in record order (``layout`` "blocks").

    Features of one dtype are stacked into one tensor: a batch is then a few tensors instead
    of one per feature, and each tensor costs the step's iterator a hand-over per batch.
    """
    spec = feature_spec(schema) if layout == "rows" else block_spec(schema)
    flat = layout != "rows"
    to_target = label_transform(schema)
    label = schema.label.name
    groups = dtype_groups(schema)
    for f in schema.features:
        if f.shape:
            raise UserError(f"feature {f.name!r} has shape {list(f.shape)}; only scalars")

    def parse(records):
        feats = tf.io.parse_example(records, spec)
        if flat:  # each block's rows, one after another
            feats = {k: v.flat_values for k, v in feats.items()}
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


def _records(
    files: list[str], compression: str | None, input_context, block_length: int = 16
) -> tf.data.Dataset:
    """Serialized records of ``files``, this input pipeline's share of them."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    by_file = pipelines > 1 and len(files) >= pipelines
    if by_file:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    ds = ds.interleave(
        _shard_reader(files, compression),
        cycle_length=max(1, min(len(files), getattr(files, "cycle", 8))),  # see stream.py
        block_length=block_length,  # fewer switches between files; the shuffle mixes them
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
    batches = _block_batches if manifest.layout == "blocks" else _row_batches
    ds = batches(
        files,
        manifest.compression or None,
        schema,
        batch_size,
        training,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        input_context=input_context,
        cache=cache,
        skip_batches=skip_batches,
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _row_batches(files, compression, schema, batch_size, training, **kw) -> tf.data.Dataset:
    """Per-row records: shuffled one by one, batched, then parsed a batch at a time."""
    parse = _parse_fn(schema)
    if not training:
        ds = _records(files, compression, None).batch(batch_size)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _records(files, compression, kw["input_context"])
    if kw["cache"]:  # inside a tf.function (a per-worker dataset): tf.data's own cache
        ds = ds.cache()
    ds = ds.shuffle(kw["shuffle_buffer"], seed=kw["seed"], reshuffle_each_iteration=True)
    ds = ds.repeat().batch(batch_size, drop_remainder=True)
    if kw["skip_batches"]:
        ds = ds.skip(kw["skip_batches"])  # before parsing: skipped batches are only read
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# Blocks whose rows one permutation mixes, at least: with rows in label order (the worst
# case) a batch's label mix is that of the blocks it draws from, so more blocks mix better
# (bench/train.py's shuffle-tv lines).
WINDOW_BLOCKS = 32
# A block holds a row in about a fifth of the bytes of a per-row record (a float: 4 bytes
# against a key, tags and lengths as well), so a block shuffle buffer of 4 x shuffle_buffer
# rows takes no more memory than the per-row buffer of shuffle_buffer records.
BLOCK_BUFFER_FACTOR = 4


def shuffle_window_blocks(batch_size: int) -> int:
    """Blocks whose rows one permutation mixes: WINDOW_BLOCKS, and 4 batches of rows or more."""
    return max(WINDOW_BLOCKS, -(-4 * batch_size // BLOCK_ROWS))


def _block_batches(files, compression, schema, batch_size, training, **kw) -> tf.data.Dataset:
    """Block records: shuffled block by block (a buffer of BLOCK_BUFFER_FACTOR x
    ``shuffle_buffer`` rows' worth of blocks, at least two windows; the same block order each
    epoch), a window of blocks parsed at once and its rows permuted (stateless, seeded by the
    window's running index: another mix every epoch), then cut into batches of ``batch_size``
    rows. A restored iterator gives exactly the batches the saved one would have."""
    parse = _parse_fn(schema, "blocks")
    if not training:
        per = max(1, batch_size // BLOCK_ROWS)
        ds = _records(files, compression, None).batch(per)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.rebatch(batch_size)
    window = shuffle_window_blocks(batch_size)
    ds = _records(files, compression, kw["input_context"], block_length=1)
    if kw["cache"]:
        ds = ds.cache()
    buffer = max(2 * window, -(-BLOCK_BUFFER_FACTOR * kw["shuffle_buffer"] // BLOCK_ROWS))
    # One block order for every epoch (reshuffle_each_iteration=False); the window's row
    # permutation, seeded by the window's running index, differs from epoch to epoch. TF's
    # reshuffling seed generator did not come back right from a checkpoint once the pipeline
    # had read an epoch ahead (a small data set), and the restored iterator then gave other
    # batches (a per-epoch seed inside flat_map cannot be saved at all).
    ds = ds.shuffle(buffer, seed=kw["seed"], reshuffle_each_iteration=False)
    # Windows end with the epoch (its last one is shorter): every row once per epoch, as
    # with per-row records, however few blocks a pipeline reads.
    ds = ds.batch(window).repeat()
    seed = tf.constant(kw["seed"], tf.int64)

    def parse_window(i, records):
        feats, y = parse(records)
        n = tf.shape(y, out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([seed, i]))
        return {k: tf.gather(v, order) for k, v in feats.items()}, tf.gather(y, order)

    ds = ds.enumerate()
    ds = ds.map(parse_window, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.rebatch(batch_size, drop_remainder=True)
    if kw["skip_batches"]:
        ds = ds.skip(kw["skip_batches"])
    return ds


def label_mix_distance(batches, num_classes: int, reference=None) -> float:
    """Shuffle quality: the mean total-variation distance between each batch's label histogram
    and ``reference`` (class probabilities; default: the histogram of all the batches' labels
    together). 0 is a perfect mix; 1 is every batch of one class the reference lacks.
    ``batches``: an iterable of (features, class ids) batches."""
    import numpy as np

    hists = [np.bincount(np.asarray(y), minlength=num_classes) for _, y in batches]
    h = np.asarray(hists, dtype=np.float64)
    p = h / h.sum(axis=1, keepdims=True)
    ref = h.sum(axis=0) / h.sum() if reference is None else np.asarray(reference, np.float64)
    return float(np.mean(0.5 * np.abs(p - ref[None, :]).sum(axis=1)))


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


def load_columns(files, compression, schema: Schema, input_context=None, layout: str = "rows"):
    """Read and parse ``files`` once: (packed features ``{key: [rows, k]}``, targets [rows])."""
    parse = _parse_fn(schema, layout)
    per = LOAD_BATCH if layout == "rows" else max(1, LOAD_BATCH // BLOCK_ROWS)
    ds = _records(files, compression, input_context).batch(per)
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
        packed, labels = load_columns(
            files, manifest.compression or None, schema, input_context, manifest.layout
        )
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
    spec = feature_spec(schema) if manifest.layout == "rows" else block_spec(schema)
    compression = manifest.compression or None
    for rel in manifest.shard_paths("train") + manifest.shard_paths("eval"):
        path = os.path.join(root, rel)
        try:
            for rec in tf.data.TFRecordDataset(path, compression_type=compression).take(1):
                tf.io.parse_example(tf.reshape(rec, [1]), spec)
        except tf.errors.InvalidArgumentError as e:
            raise UserError(f"{path}: records do not match schema.json ({first_line(e)})") from None
        except tf.errors.DataLossError as e:
            raise UserError(f"{path}: corrupt shard ({first_line(e)})") from None
