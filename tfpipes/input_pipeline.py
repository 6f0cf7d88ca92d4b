"""The tf.data input pipeline over a committed data set.

Files are listed from the manifest (never by globbing, so a stray file cannot sneak in), read
with a parallel deterministic interleave, shuffled as serialized records, batched, then parsed
with one vectorized ``tf.io.parse_example`` per batch, and prefetched.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tfpipes.manifest import DatasetManifest
from tfpipes.schema import Schema

_TF_DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}


def feature_spec(schema: Schema, with_label: bool = True) -> dict:
    """``tf.io.parse_example`` spec for the schema's features (and label)."""
    spec = {f.name: tf.io.FixedLenFeature(f.shape, _TF_DTYPES[f.dtype]) for f in schema.features}
    if with_label:
        lab = schema.label
        spec[lab.name] = tf.io.FixedLenFeature(lab.shape, _TF_DTYPES[lab.dtype])
    return spec


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
) -> tf.data.Dataset:
    """(features dict, label) batches from the ``split`` shards of a local data set.

    training=True: shards sharded across input pipelines (``input_context``), shuffled with
    ``seed``, repeated forever, partial batches dropped. training=False: one ordered pass.
    """
    files = [os.path.join(root, p) for p in manifest.shard_paths(split)]
    compression = manifest.compression or None
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 8) or 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    spec = feature_spec(schema)
    to_target = label_transform(schema)
    label = schema.label.name

    def parse(records):
        feats = tf.io.parse_example(records, spec)
        y = to_target(feats.pop(label))
        return feats, y

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
