"""Models: the built-in ``linear`` and ``mlp``, and user models from ``package.module:build_fn``.

Every model is ``FeatureEncoder`` (raw feature dict -> dense float matrix: numeric features
standardized with the data set's statistics, string features hashed and embedded) followed by a
body. The encoder is part of the model, so the exported SavedModel takes raw features and
serving never drifts from training.

A user's ``build_fn(num_outputs: int, **options)`` returns a Keras layer or model that maps the
encoded ``[batch, width]`` float matrix to ``[batch, num_outputs]``; custom layers with their
own ``build``/``call``/``add_weight`` work as in any Keras code.
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import keras
import tensorflow as tf

from tfpipes.errors import UserError
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
    """Raw features -> ``[batch, width]`` float32: standardized numbers, embedded strings."""

    def __init__(self, schema: Schema, stats: dict, **kwargs):
        super().__init__(**kwargs)
        self.numeric = []
        self.strings = []
        feats = stats.get("features", {})
        for f in schema.features:
            if f.dtype == "string":
                self.strings.append(f.name)
            else:
                s = feats.get(f.name, {})
                std = float(s.get("std", 1.0)) or 1.0
                self.numeric.append((f.name, float(s.get("mean", 0.0)), std))
        # Attributes, not a dict: Keras 3 does not track layers in containers for checkpoints.
        for i, name in enumerate(self.strings):
            setattr(
                self,
                f"embed_{i}",
                keras.layers.Embedding(HASH_BUCKETS, EMBED_DIM, name=f"embed_{name}"),
            )

    def call(self, features):
        parts = []
        if self.numeric:
            cols = [(tf.cast(features[n], tf.float32) - m) / s for n, m, s in self.numeric]
            parts.append(tf.stack(cols, axis=1))
        for i, name in enumerate(self.strings):
            ids = tf.strings.to_hash_bucket_fast(features[name], HASH_BUCKETS)
            parts.append(getattr(self, f"embed_{i}")(ids))
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
    """``linear``, ``mlp`` or ``package.module:function`` -> the body builder. UserError if not."""
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
        raise UserError(f"--model {name!r}: cannot import {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError(f"--model {name!r}: {mod_name} has no function {fn_name!r}")
    return fn


def num_outputs(schema: Schema) -> int:
    return schema.num_classes if schema.task == "classification" else 1


def build_model(spec: ModelSpec, schema: Schema, stats: dict) -> TabularModel:
    """Build (and create the variables of) the model for ``schema``."""
    fn = resolve_build_fn(spec.name)
    kwargs = {"hidden": spec.hidden, "dropout": spec.dropout} if spec.name == "mlp" else {}
    try:
        body = fn(num_outputs(schema), **kwargs)
    except TypeError as e:
        raise UserError(f"--model {spec.name!r}: build_fn(num_outputs) failed: {e}") from None
    model = TabularModel(FeatureEncoder(schema, stats), body, name="tabular_model")
    dummy = {f.name: tf.zeros([1], _dummy_dtype(f.dtype)) for f in schema.features}
    out = model(dummy)
    if out.shape[-1] != num_outputs(schema):
        raise UserError(
            f"--model {spec.name!r}: outputs {out.shape[-1]} values per example, "
            f"the task needs {num_outputs(schema)}"
        )
    return model


def checkpoint_objects(model) -> dict:
    """What a checkpoint holds of a model: the model, and every variable by position.

    Keras 3 does not expose layers kept in lists or dicts (a Sequential's layers, a user
    model's containers) to ``tf.train.Checkpoint``; listing ``model.variables`` makes every
    weight part of the checkpoint whatever the model's structure.
    """
    return {"model": model, "model_variables": list(model.variables)}


def _dummy_dtype(dtype: str):
    return {"float32": tf.float32, "int64": tf.int64, "string": tf.string}[dtype]
