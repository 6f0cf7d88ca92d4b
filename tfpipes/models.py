"""Models: the built-in ``linear`` and ``mlp``, and user models from ``package.module:build_fn``.

Every model is ``FeatureEncoder`` (raw feature dict -> dense float matrix: numeric features
standardized with the data set's statistics, string features hashed and embedded) followed by a
body. The encoder is part of the model, so the exported SavedModel takes raw features and
serving never drifts from training.

A user's ``build_fn(num_outputs: int, **options)`` returns a Keras layer, model or list of
layers (stacked into a ``Sequential``) that maps the encoded ``[batch, width]`` float matrix to
``[batch, num_outputs]``; ``hidden`` and ``dropout`` are passed when it accepts them. Custom
layers with their own ``build``/``call``/``add_weight`` work as in any Keras code. The loss
follows the task (see ``train.Trainer``): logits for classification, one value for regression.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json

import keras
import tensorflow as tf

from tfpipes.errors import UserError, first_line
from tfpipes.input_pipeline import dtype_groups, packed_key
from tfpipes.layout import tf_dtype
from tfpipes.schema import Schema

HASH_BUCKETS = 1000
EMBED_DIM = 8


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the same model for training, resuming and export."""

    name: str  # "linear" | "mlp" | "package.module:build_fn"
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self) | {"hidden": list(self.hidden)})

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        return cls(d["name"], tuple(d.get("hidden", ())), float(d.get("dropout", 0.0)))


class FeatureEncoder(keras.layers.Layer):
    """Raw features -> ``[batch, width]`` float32: standardized numbers, embedded strings.

    Takes either one tensor per feature (``{name: [batch]}``, what serving passes) or the
    packed form of the input pipeline (``{"__float32__": [batch, k], ...}``, features of one
    dtype stacked in schema order); both give the same output. The columns of the output are
    the float features, then the integer features (standardized with the data set's mean and
    std), then one embedding of each string feature (hashed into ``HASH_BUCKETS``).
    """

    def __init__(self, schema: Schema, stats: dict, **kwargs):
        kwargs.setdefault("dtype", "float32")  # standardization stays float32 under mixed precision
        super().__init__(**kwargs)
        feats = stats.get("features", {})
        self.groups = dtype_groups(schema)
        self.strings = self.groups.get("string", [])
        self.moments = {}
        for dtype in ("float32", "int64"):
            names = self.groups.get(dtype, [])
            if names:
                mean = [float(feats.get(n, {}).get("mean", 0.0)) for n in names]
                std = [float(feats.get(n, {}).get("std", 1.0)) or 1.0 for n in names]
                self.moments[dtype] = (mean, std)
        # Attributes, not a dict: Keras 3 does not track layers in containers for checkpoints.
        for i, name in enumerate(self.strings):
            setattr(
                self,
                f"embed_{i}",
                keras.layers.Embedding(
                    HASH_BUCKETS, EMBED_DIM, name=f"embed_{name}", dtype="float32"
                ),
            )

    def _block(self, features, dtype):
        key = packed_key(dtype)
        if key in features:
            return features[key]
        return tf.stack([features[n] for n in self.groups[dtype]], axis=1)

    def call(self, features):
        parts = []
        for dtype, (mean, std) in self.moments.items():
            x = tf.cast(self._block(features, dtype), tf.float32)
            parts.append((x - tf.constant(mean)) / tf.constant(std))
        if self.strings:
            ids = tf.strings.to_hash_bucket_fast(self._block(features, "string"), HASH_BUCKETS)
            for i in range(len(self.strings)):
                parts.append(getattr(self, f"embed_{i}")(ids[:, i]))
        return tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]


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
    model = TabularModel(FeatureEncoder(schema, stats), body, name="tabular_model")
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
