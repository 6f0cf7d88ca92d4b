"""export: the newest checkpoint -> a verified SavedModel in TF Serving's layout.

The SavedModel goes to ``<base>/<version>/`` with two signatures:

* ``serving_default``: ``examples`` (serialized ``tf.train.Example`` strings) -> outputs;
* ``predict``: one tensor per raw feature -> the same outputs. A missing value is sent as the
  dtype's missing value (``input_pipeline.MISSING``): NaN for a float32 feature, the smallest
  int64 (-9223372036854775808) for an int64 one, the empty string for a string one.

A serialized Example that lacks a feature is a missing value too: the model imputes and
encodes it exactly as in training (``models.FeatureEncoder``).

Outputs are ``logits``, ``probabilities`` and ``class_ids`` (plus ``classes`` for string
labels) for classification, ``predictions`` for regression. Before publishing, the SavedModel
is reloaded from its staging place and both signatures must reproduce the checkpoint model's
outputs on the eval split, and on the same rows with one feature removed from each (a
missing cell in every row, each feature missing in some); only then is the version directory
committed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from tfpipes import layout, storage
from tfpipes.errors import UserError

log = logging.getLogger("tfpipes.export")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """model_dir: a ``tfpipes train`` model directory. export_base: ``<base>`` of the layout.
    version: a positive integer (default: seconds since the epoch, so newer sorts higher).
    data: the data set whose eval split verifies the export (default: none, a synthetic batch).
    model: the user model module (``package.module:build_fn``) the model dir was trained with,
    as the user names it (``--model``); required to import one, never read from the model dir
    (see :func:`model_spec`). Empty for the built-in models.
    """

    model_dir: str
    export_base: str
    version: int = 0
    data: str = ""
    verify_examples: int = 1000
    tolerance: float = 1e-5
    overwrite: bool = False
    model: str = ""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str  # <base>/<version>
    version: int
    checkpoint: str
    verified_examples: int
    max_abs_diff: float
    signatures: tuple[str, ...]


def _serving_module(model, schema):
    import tensorflow as tf

    from tfpipes.input_pipeline import feature_spec
    from tfpipes.layout import tf_dtype

    spec = feature_spec(schema, with_label=False, missing=True)
    vocab = list(schema.label_vocabulary)

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.vocab = tf.constant(vocab) if vocab else None

        def _outputs(self, features):
            out = self.model(features, training=False)
            if schema.task == "regression":
                return {"predictions": tf.squeeze(out, axis=-1)}
            result = {
                "logits": out,
                "probabilities": tf.nn.softmax(out),
                "class_ids": tf.argmax(out, axis=-1),
            }
            if self.vocab is not None:
                result["classes"] = tf.gather(self.vocab, result["class_ids"])
            return result

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            return self._outputs(tf.io.parse_example(examples, spec))

        @tf.function(
            input_signature=[
                {
                    f.name: tf.TensorSpec([None], tf_dtype(f.dtype), name=f.name)
                    for f in schema.features
                }
            ]
        )
        def predict(self, features):
            return self._outputs(features)

    return ServingModule()


def _predict_signature(loaded, features: dict):
    # Signature functions take keyword arguments named after the input specs.
    return loaded.signatures["predict"](**features)


def export(cfg: ExportConfig) -> ExportResult:
    """Restore, export, verify, publish. Raises UserError if there is no checkpoint, or if the
    reloaded SavedModel disagrees with the checkpoint (nothing is published then)."""
    import numpy as np
    import tensorflow as tf

    from tfpipes import manifest as manifest_lib
    from tfpipes.input_pipeline import make_dataset
    from tfpipes.layout import MODEL_CONFIG
    from tfpipes.models import ModelSpec, build_model, checkpoint_objects
    from tfpipes.schema import Schema
    from tfpipes.training.compat import load_model_config

    config = load_model_config(cfg.model_dir)
    where = storage.join(cfg.model_dir, MODEL_CONFIG)
    schema = Schema.from_json(json.dumps(config["schema"]), where=where)
    spec = model_spec(ModelSpec.from_json(json.dumps(config["model"])), cfg.model, where)
    model = build_model(spec, schema, config["stats"])
    from tfpipes.checkpoints import CheckpointStore, verify_checkpoint

    store = CheckpointStore(cfg.model_dir, writer=False)
    try:
        latest = tf.train.latest_checkpoint(store.local_dir)
        if not latest:
            raise UserError(f"{cfg.model_dir}: no checkpoint to export; run `tfpipes train` first")
        problem = verify_checkpoint(latest)
        if problem:
            raise UserError(f"{latest}: checkpoint is corrupt ({problem})")
        status = tf.train.Checkpoint(**checkpoint_objects(model)).restore(latest)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as e:
            raise UserError(f"{latest}: does not match the model in {MODEL_CONFIG} ({e})") from None
        status.expect_partial()  # the optimizer and data position are not needed here
    finally:
        store.close()

    # Verification inputs: serialized examples of the eval split, or a synthetic batch.
    records, features = _verification_batch(cfg, schema, make_dataset, manifest_lib)
    expected = _serving_module(model, schema)._outputs(features)
    expected = {k: v.numpy() for k, v in expected.items()}

    version = cfg.version or int(time.time())
    if version < 1:
        raise UserError(f"--version must be a positive integer, got {version}")
    final = storage.join(cfg.export_base, str(version))
    module = _serving_module(model, schema)
    with storage.staged_dir(
        final, overwrite=cfg.overwrite, last=(layout.SAVED_MODEL_PB,), inputs=(cfg.model_dir,)
    ) as tmp:
        tf.saved_model.save(
            module,
            tmp,
            signatures={"serving_default": module.serve_examples, "predict": module.predict},
        )
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, layout.SCHEMA), "w") as f:
            f.write(schema.to_json())
        loaded = tf.saved_model.load(tmp)
        got_ex = loaded.signatures["serving_default"](examples=tf.constant(records))
        got_pr = _predict_signature(loaded, features)
        worst = 0.0
        for name, want in expected.items():
            for got in (got_ex[name].numpy(), got_pr[name].numpy()):
                if want.dtype.kind in "fc":
                    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
                    worst = max(worst, diff)
                    # relative as well as absolute: one float32 rounding step of a logit near
                    # 100 is already 1.5e-5
                    ok = bool(np.all(np.abs(got - want) <= cfg.tolerance * (1 + np.abs(want))))
                else:
                    ok = np.array_equal(got, want)
                if not ok:
                    raise UserError(
                        f"export verification failed: output {name!r} of the SavedModel differs "
                        f"from the checkpoint model's; nothing was published to {final}"
                    )
        from tfpipes.warmup import write_warmup_requests  # TF Serving replays them on load

        write_warmup_requests(tmp, records, features)
    log.debug("verified %d examples, max abs diff %.3g", len(records), worst)
    return ExportResult(final, version, latest, len(records), worst, ("serving_default", "predict"))


def model_spec(trained, given: str, where: str):
    """The model to rebuild: ``trained`` (the ``ModelSpec`` in ``where``, a model dir's
    ``model_config.json``), checked against ``given`` (the user's ``--model``, "" if none).

    A model directory is data, not code: a user module it names is imported only when the user
    names the same one. UserError (nothing imported) when it names one and ``given`` is empty
    or another, or when ``given`` differs from a built-in model it names.
    """
    from tfpipes.models import is_user_model

    if is_user_model(trained.name) and not given:
        raise UserError(
            f"{where}: the model is user code ({trained.name}); a model directory does not "
            f"choose what to import: pass --model {trained.name} to import it"
        )
    if given and given != trained.name:
        raise UserError(f"--model {given}: {where} was trained with {trained.name}")
    return trained


def _verification_batch(cfg: ExportConfig, schema, make_dataset, manifest_lib):
    """(serialized examples, parsed feature dict) from the eval split, or synthetic."""
    import numpy as np
    import tensorflow as tf

    from tfpipes.input_pipeline import feature_spec

    if cfg.data:
        with storage.local_dir(cfg.data) as root:
            from tfpipes.records import read_row_records

            m = manifest_lib.verify_dataset(root)
            split = "eval" if m.shard_paths("eval") else "train"
            records = read_row_records(root, m, schema, split, cfg.verify_examples)
    else:
        rng = np.random.default_rng(0)
        records = []
        for _ in range(64):
            feats = {}
            for f in schema.features:
                if f.dtype == "float32":
                    feats[f.name] = tf.train.Feature(
                        float_list=tf.train.FloatList(value=[rng.normal()])
                    )
                elif f.dtype == "int64":
                    feats[f.name] = tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(rng.integers(0, 10))])
                    )
                else:
                    feats[f.name] = tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[str(rng.integers(0, 5)).encode()])
                    )
            records.append(
                tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()
            )
    if not records:
        raise UserError(f"{cfg.data}: no examples to verify the export with")
    records = records + _with_missing_cells(records, schema)
    spec = feature_spec(schema, with_label=False, missing=True)
    parsed = tf.io.parse_example(tf.constant(records), spec)
    return records, dict(parsed)


def _with_missing_cells(records: list[bytes], schema) -> list[bytes]:
    """The same rows with feature ``i mod n`` removed from row ``i``: every feature missing
    in some rows, whether the data set had missing values or not."""
    import tensorflow as tf

    names = schema.feature_names
    out = []
    for i, record in enumerate(records):
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        name = names[i % len(names)]
        if name in feature:
            del feature[name]
        out.append(example.SerializeToString())
    return out
