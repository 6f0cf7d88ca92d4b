"""Models: the built-in ``linear`` and ``mlp``, and user models from ``package.module:build_fn``.

Every model is ``FeatureEncoder`` (raw features -> dense float matrix, computed from the data
set's ``stats.json`` the way tf.Transform's analyzers would, without Beam: see the encoder's
docstring) followed by a body. The encoder is part of the model, so the exported SavedModel
takes raw features, missing ones included, and serving never drifts from training.

A user's ``build_fn(num_outputs: int, **options)`` returns a Keras layer, model or list of
layers (stacked into a ``Sequential``) that maps the encoded ``[batch, width]`` float matrix to
``[batch, num_outputs]``; ``hidden`` and ``dropout`` are passed when it accepts them. Custom
layers with their own ``build``/``call``/``add_weight`` work as in any Keras code. The loss
follows the task (see ``training.step``): logits for classification, one value for regression.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math

import keras
import tensorflow as tf

from tfpipes.errors import UserError, first_line
from tfpipes.input_pipeline import MISSING, dtype_groups, packed_key
from tfpipes.layout import tf_dtype
from tfpipes.schema import Schema

HASH_BUCKETS = 1000  # v1 string features (no vocabulary in the stats): hashed, then embedded
EMBED_DIM = 8
ID_BUCKETS = 1000  # kind "id": hashed into this many buckets (+1 for missing), embedded
MAX_VOCABULARY = 1000  # categorical: the stats' top values kept (stats hold at most 1,000)
OOV_BUCKETS = 1  # categorical: values outside the vocabulary share this many buckets
ONE_HOT_MAX = 32  # categorical with at most this many indices (vocab + oov + missing): one-hot
IMPUTE = ("mean", "median")

_DAY = 86400.0
_YEAR = 365.2425 * _DAY  # the mean Gregorian year: day-of-year phase without a calendar


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the same model for training, resuming and export."""

    name: str  # "linear" | "mlp" | "package.module:build_fn"
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    impute: str = "mean"  # numeric features: what a missing value becomes (IMPUTE)

    def to_json(self) -> str:
        d = dataclasses.asdict(self) | {"hidden": list(self.hidden)}
        if self.impute == "mean":  # the default: model dirs written before it existed still match
            del d["impute"]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        return cls(
            d["name"],
            tuple(d.get("hidden", ())),
            float(d.get("dropout", 0.0)),
            str(d.get("impute", "mean")),
        )


def is_missing(x, dtype: str):
    """Where a raw feature tensor of schema dtype ``dtype`` holds the missing value: what
    parsing fills in for an absent feature (``input_pipeline.MISSING``: NaN, the smallest
    int64, the empty string), also what a raw ``predict`` request sends for one."""
    if dtype == "float32":
        return tf.math.is_nan(x)
    return tf.equal(x, tf.constant(MISSING[dtype], tf_dtype(dtype)))


def _median(st: dict) -> float | None:
    if "median" in st:
        return float(st["median"])
    q = st.get("quantiles")
    return float(q[len(q) // 2]) if q else None


class FeatureEncoder(keras.layers.Layer):
    """Raw features -> ``[batch, width]`` float32, each feature by its schema kind, with
    constants from ``stats.json`` (counted on the train split: no eval data leaks in).

    - numeric: a missing value is imputed (``impute``: the mean, or the median) and the value
      standardized with the mean and std; a feature the stats saw missing also gets a 0/1
      missing-indicator column (as scikit-learn's ``SimpleImputer(add_indicator=True)``);
    - boolean (0/1): the value, a missing one imputed with the fraction of ones; indicator;
    - timestamp (epoch seconds, UTC): the standardized time, and the sine and cosine of the day
      of week, the hour of day and the day of year; a missing time imputed before; indicator;
    - categorical with a vocabulary in the stats (``top``): the top values, ``OOV_BUCKETS``
      hashed buckets for the rest and one index for missing; one-hot up to ``ONE_HOT_MAX``
      indices, else an embedding. A v1 string feature (no ``top``): hashed into
      ``HASH_BUCKETS`` and embedded, as before kinds existed;
    - id: hashed into ``ID_BUCKETS`` (one more index for missing) and embedded.

    The columns: numeric float32 features, numeric int64 features (schema order in each), the
    missing indicators of numeric features, booleans, timestamps, then categorical and id
    features in schema order (so a v1 data set keeps the v1 layout).

    Takes either one tensor per feature (``{name: [batch]}``, what serving passes) or the
    packed form of the input pipeline (``{"__float32__": [batch, k], ...}``, features of one
    dtype stacked in schema order); both give the same output. A missing value is the
    dtype's ``MISSING`` value (see :func:`is_missing`); an empty string is missing too.
    """

    def __init__(self, schema: Schema, stats: dict, impute: str = "mean", **kwargs):
        kwargs.setdefault("dtype", "float32")  # standardization stays float32 under mixed precision
        super().__init__(**kwargs)
        if impute not in IMPUTE:
            raise UserError(f"--impute {impute!r}: choose one of {', '.join(IMPUTE)}")
        feats = stats.get("features", {})
        self.groups = dtype_groups(schema)
        index = {n: i for names in self.groups.values() for i, n in enumerate(names)}
        # dtype -> (columns, fill, mean, std, indicator flags); float32 first, as in v1
        self.numeric = {d: ([], [], [], [], []) for d in ("float32", "int64")}
        self.scalars = []  # (kind, dtype, column, fill, mean, std, indicator)
        self.lookups = []  # (mode, dtype, column, size, embedding attribute or "": one-hot)
        self.strings = []  # the v1-hashed string features (layer attributes embed_<i>)
        embedded = 0
        for f in schema.features:
            kind, st = f.effective_kind, feats.get(f.name, {})
            mean, std = float(st.get("mean", 0.0)), float(st.get("std", 1.0)) or 1.0
            fill = mean
            if impute == "median" and _median(st) is not None:
                fill = _median(st)
            indicator = int(st.get("missing", 0)) > 0
            if kind == "numeric":
                for part, v in zip(
                    self.numeric[f.dtype], (index[f.name], fill, mean, std, indicator)
                ):
                    part.append(v)
            elif kind in ("boolean", "timestamp"):
                self.scalars.append((kind, f.dtype, index[f.name], fill, mean, std, indicator))
            else:
                top = [v for v, _ in st.get("top", [])][:MAX_VOCABULARY]
                if kind == "categorical" and top:
                    mode, size = "vocabulary", len(top) + OOV_BUCKETS + 1
                    keys = [str(v) for v in top] if f.dtype == "string" else [int(v) for v in top]
                    table = tf.lookup.StaticVocabularyTable(
                        tf.lookup.KeyValueTensorInitializer(
                            tf.constant(keys, tf_dtype(f.dtype)),
                            tf.range(len(keys), dtype=tf.int64),
                        ),
                        OOV_BUCKETS,
                    )
                    setattr(self, f"vocab_{len(self.lookups)}", table)
                elif kind == "categorical" and f.dtype == "string":
                    mode, size = "v1", HASH_BUCKETS  # no vocabulary (v1 stats): as before kinds
                    self.strings.append(f.name)
                else:  # an id, or integer categories without a vocabulary: hashed
                    mode, size = "hashed", ID_BUCKETS + 1
                layer = ""
                if size > ONE_HOT_MAX:
                    layer = f"embed_{embedded}"
                    embedded += 1
                    # Attributes, not a dict: Keras 3 does not track layers in containers.
                    setattr(
                        self,
                        layer,
                        keras.layers.Embedding(
                            size, EMBED_DIM, name=f"embed_{f.name}", dtype="float32"
                        ),
                    )
                self.lookups.append((mode, f.dtype, index[f.name], size, layer))
        self.numeric = {d: v for d, v in self.numeric.items() if v[0]}

    def _block(self, features, dtype):
        key = packed_key(dtype)
        if key in features:
            return features[key]
        return tf.stack([features[n] for n in self.groups[dtype]], axis=1)

    def call(self, features):
        blocks = {dtype: self._block(features, dtype) for dtype in self.groups}
        parts, indicators = [], []
        for dtype, (cols, fill, mean, std, flags) in self.numeric.items():
            x = blocks[dtype]
            if cols != list(range(len(self.groups[dtype]))):
                x = tf.gather(x, cols, axis=1)
            missing = is_missing(x, dtype)
            x = tf.where(missing, tf.constant(fill), tf.cast(x, tf.float32))
            parts.append((x - tf.constant(mean)) / tf.constant(std))
            for j, flag in enumerate(flags):
                if flag:
                    indicators.append(tf.cast(missing[:, j : j + 1], tf.float32))
        parts += indicators
        for kind, dtype, col, fill, mean, std, indicator in self.scalars:
            x = blocks[dtype][:, col]
            missing = is_missing(x, dtype)
            if kind == "boolean":
                x = tf.where(missing, tf.constant(fill, tf.float32), tf.cast(x, tf.float32))
                parts.append(x[:, None])
            else:
                parts.append(_time_parts(x, missing, fill, mean, std))
            if indicator:
                parts.append(tf.cast(missing, tf.float32)[:, None])
        for i, (mode, dtype, col, size, layer) in enumerate(self.lookups):
            x = blocks[dtype][:, col]
            if mode == "v1":  # exactly as before kinds: "" (missing) hashes like any string
                ids = tf.strings.to_hash_bucket_fast(x, HASH_BUCKETS)
            else:
                missing = is_missing(x, dtype)
                if mode == "vocabulary":
                    ids = getattr(self, f"vocab_{i}").lookup(x)
                else:
                    text = x if dtype == "string" else tf.strings.as_string(x)
                    ids = tf.strings.to_hash_bucket_fast(text, ID_BUCKETS)
                ids = tf.where(missing, tf.constant(size - 1, tf.int64), ids)
            if layer:
                parts.append(getattr(self, layer)(ids))
            else:
                parts.append(tf.one_hot(ids, size, dtype=tf.float32))
        return tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]


def _time_parts(t, missing, fill: float, mean: float, std: float):
    """Epoch seconds [batch] -> [batch, 7]: standardized time; sin and cos of day of week,
    hour of day and day of year. Computed in float64: epoch seconds need 31 bits."""
    t = tf.where(missing, tf.constant(fill, tf.float64), tf.cast(t, tf.float64))
    days = tf.math.floordiv(t, _DAY)
    phases = [
        tf.math.floormod(days + 3.0, 7.0) / 7.0,  # 1970-01-01 was a Thursday: Monday is 0
        tf.math.floormod(t, _DAY) / _DAY,
        tf.math.floormod(t, _YEAR) / _YEAR,
    ]
    cols = [(t - mean) / std]
    for p in phases:
        cols += [tf.sin(2 * math.pi * p), tf.cos(2 * math.pi * p)]
    return tf.cast(tf.stack(cols, axis=1), tf.float32)


class TabularModel(keras.Model):
    """FeatureEncoder followed by a body; output ``[batch, num_outputs]`` (logits or values)."""

    def __init__(self, encoder: FeatureEncoder, body, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.body = body

    def call(self, features, training=False):
        return self.body(self.encoder(features), training=training)

    @property
    def _default_save_signature(self):
        # Keras would trace a float32-only default signature for the dict input, which fails
        # on string features; tfpipes exports its own signatures (tfpipes.export).
        return None


def _mlp(num_outputs: int, hidden=(64, 32), dropout=0.0):
    layers = []
    for i, h in enumerate(hidden):
        layers.append(keras.layers.Dense(h, activation="relu", name=f"hidden_{i}"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_outputs, name="output"))
    return keras.Sequential(layers, name="mlp")


def _linear(num_outputs: int, **_):
    return keras.Sequential([keras.layers.Dense(num_outputs, name="output")], name="linear")


BUILTIN = {"linear": _linear, "mlp": _mlp}


def resolve_build_fn(name: str):
    """``linear``, ``mlp`` or ``package.module:function`` -> the body builder. UserError if not.

    The module is imported from ``sys.path`` as it is (``PYTHONPATH``, or an installed
    package); the current directory is never added to it: a model directory is data, and code
    runs only where the user put it on the path. Only call this with a name the user gave (a
    flag, a pipeline parameter), never with one read from a model directory.
    """
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise UserError(
            f"--model {name!r}: unknown model; use linear, mlp or package.module:build_fn"
        )
    mod_name, fn_name = name.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(
            f"--model {name!r}: cannot import {mod_name!r} ({e}); put its package on "
            "PYTHONPATH or install it"
        ) from None
    except Exception as e:  # the user's module raised while importing
        raise UserError(
            f"--model {name!r}: importing {mod_name!r} failed: {e.__class__.__name__}: {e}"
        ) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError(f"--model {name!r}: {mod_name} has no function {fn_name!r}")
    return fn


def is_user_model(name: str) -> bool:
    """Whether a model name is user code (``package.module:fn``), not a built-in."""
    return name not in BUILTIN


def num_outputs(schema: Schema) -> int:
    return schema.num_classes if schema.task == "classification" else 1


def _build_body(spec: ModelSpec, outputs: int):
    fn = resolve_build_fn(spec.name)
    options = {"hidden": spec.hidden, "dropout": spec.dropout}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    try:
        body = fn(outputs, **options)
    except Exception as e:
        raise UserError(
            f"--model {spec.name!r}: build_fn({outputs}) failed: {e.__class__.__name__}: {e}"
        ) from None
    if isinstance(body, (list, tuple)) and all(isinstance(b, keras.layers.Layer) for b in body):
        body = keras.Sequential(list(body), name="user_body")
    if not isinstance(body, keras.layers.Layer):
        raise UserError(
            f"--model {spec.name!r}: build_fn returned {type(body).__name__}; expected a Keras "
            "layer, model or list of layers"
        )
    return body


def build_model(spec: ModelSpec, schema: Schema, stats: dict) -> TabularModel:
    """Build (and create the variables of) the model for ``schema``.

    Raises UserError for an unknown or failing ``spec.name`` and for a body whose output does
    not fit the task (``num_classes`` logits, or one value for regression).
    """
    outputs = num_outputs(schema)
    body = _build_body(spec, outputs)
    model = TabularModel(FeatureEncoder(schema, stats, spec.impute), body, name="tabular_model")
    dummy = {f.name: tf.zeros([1], tf_dtype(f.dtype)) for f in schema.features}
    try:
        out = model(dummy)
    except Exception as e:
        width = model.encoder(dummy).shape[-1]
        raise UserError(
            f"--model {spec.name!r}: the model fails on this data set's {width} encoded "
            f"features: {e.__class__.__name__}: {first_line(e)}"
        ) from None
    if len(out.shape) != 2 or out.shape[-1] != outputs:
        raise UserError(
            f"--model {spec.name!r}: outputs shape {list(out.shape)} per batch, "
            f"the {schema.task} task needs [batch, {outputs}]"
        )
    return model


def checkpoint_objects(model) -> dict:
    """What a checkpoint holds of a model: the model, and every variable by position.

    Keras 3 does not expose layers kept in lists or dicts (a Sequential's layers, a user
    model's containers) to ``tf.train.Checkpoint``; listing ``model.variables`` makes every
    weight part of the checkpoint whatever the model's structure.
    """
    return {"model": model, "model_variables": list(model.variables)}
