"""Where things live: the file names of a data set, a model directory and an export, in one place.

A data set (``tfpipes preprocess`` output)::

    <data>/manifest.json    written last; every file with size and CRC32C (tfpipes.manifest)
    <data>/schema.json      features, label, task (tfpipes.schema)
    <data>/stats.json       statistics per feature
    <data>/train/, eval/    TFRecord shards, in one of two record layouts (``RECORD_LAYOUTS``):
                            "blocks" (the default): one tf.train.Example per block of up to
                            ``BLOCK_ROWS`` rows, column by column; "rows": one per row

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

# The record layouts of a data set's shards (manifest.json ``layout``; absent = "rows"):
# "rows" holds one tf.train.Example per row, its missing cells left out; "blocks" holds one
# tf.train.Example per block of up to BLOCK_ROWS consecutive rows of one shard: each column a
# feature of that name whose list holds one value per row (MISSING_VALUES in a missing cell),
# BLOCK_ROWS_KEY the row count, and BLOCK_MISSING_KEY, when a cell is missing, the flat
# indices ``row * columns + column`` of the missing cells (columns: the features in schema
# order, then the label). Parsing then costs per block, not per row.
RECORD_LAYOUTS = ("blocks", "rows")
DEFAULT_RECORD_LAYOUT = "blocks"
BLOCK_ROWS = 512
BLOCK_ROWS_KEY = "tfpipes:rows"
BLOCK_MISSING_KEY = "tfpipes:missing"

# What stands for a missing value once parsed, per dtype (the model's FeatureEncoder treats
# these values as missing wherever they come from): NaN; the smallest int64 (pandas' NaT); the
# empty string. Preprocess never writes them as values (NaN/inf cells are an error unless
# declared missing; an empty cell is missing).
MISSING_VALUES = {"float32": float("nan"), "int64": -(2**63), "string": ""}

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
