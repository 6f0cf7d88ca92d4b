"""Where things live: the file names of a data set, a model directory and an export, in one place.

A data set (``tfpipes preprocess`` output)::

    <data>/manifest.json    written last; every file with size and CRC32C (tfpipes.manifest)
    <data>/schema.json      features, label, task (tfpipes.schema)
    <data>/stats.json       statistics per feature
    <data>/train/, eval/    TFRecord shards

A model directory (``tfpipes train`` output)::

    <model_dir>/model_config.json   what the checkpoints hold (written with the first checkpoint)
    <model_dir>/metrics.json        eval metrics of the last run
    <model_dir>/checkpoints/        tf.train.Checkpoint files, the index committed last
    <model_dir>/logs/train, eval    TensorBoard

A KFP model artifact holds the model directory itself, or only a ``MODEL_DIR`` file naming it
(when checkpoints live elsewhere, ``--checkpoint-dir``). A published export is
``<base>/<version>/saved_model.pb`` (TF Serving's layout).
"""

from __future__ import annotations

import json

from tfpipes import storage
from tfpipes.errors import UserError

MANIFEST = "manifest.json"
SCHEMA = "schema.json"
STATS = "stats.json"

MODEL_CONFIG = "model_config.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
MODEL_DIR_POINTER = "MODEL_DIR"

SAVED_MODEL_PB = "saved_model.pb"

# The feature dtypes a schema may name, and their TensorFlow types (see tf_dtype).
DTYPES = ("float32", "int64", "string")


def tf_dtype(name: str):
    """The ``tf.DType`` of a schema dtype name (``float32``, ``int64``, ``string``)."""
    import tensorflow as tf

    return {"float32": tf.float32, "int64": tf.int64, "string": tf.string}[name]


def read_json_object(path: str, what: str) -> dict:
    """The JSON object in ``path`` (local or gs://); UserError naming the file when it is
    missing, not JSON, or not an object."""
    if not storage.exists(path):
        raise UserError(f"{path}: no {what}")
    try:
        value = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_stats(data_dir: str) -> dict:
    """The data set's ``stats.json``."""
    return read_json_object(storage.join(data_dir, STATS), f"{STATS}; is {data_dir} a data set?")


def write_model_dir_pointer(artifact_dir: str, model_dir: str) -> None:
    """Make a KFP model artifact name the model directory that holds the checkpoints."""
    storage.write_text(storage.join(artifact_dir, MODEL_DIR_POINTER), model_dir + "\n")


def resolve_model_dir(artifact_dir: str) -> str:
    """The model directory a KFP model artifact stands for: itself, or the one its
    ``MODEL_DIR`` file names."""
    pointer = storage.join(artifact_dir, MODEL_DIR_POINTER)
    if storage.exists(pointer):
        return storage.read_text(pointer).strip()
    return artifact_dir


def version_dir(base: str, version: int | str) -> str:
    """``<base>/<version>``: where TF Serving looks for one version of a model."""
    return storage.join(base, str(version))
