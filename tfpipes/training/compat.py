"""What a model directory's checkpoints hold (``model_config.json``), and whether a run fits it.

Every runner builds its config with :func:`model_config` and checks it with
:func:`check_compatible`, so a resume is refused on the same grounds whatever the strategy:
another model, another data set schema, or another input mode or compute dtype (the ``run``
key: ``--cache``, ``--mixed-precision``).
"""

from __future__ import annotations

import json

from tfpipes import layout, storage
from tfpipes.errors import UserError

# The keys a resume must match, and how the refusal names them.
CHECKED = (
    ("model", "model options"),
    ("schema", "data set schema"),
    ("run", "setting of --cache / --mixed-precision"),
)


def model_config(cfg, schema, stats: dict, precision: str) -> dict:
    """The ``model_config.json`` content of a run of ``cfg`` (a ``TrainConfig``) on a data set
    with ``schema`` and ``stats``; ``precision``: the compute dtype as resolved for this run
    ("" for float32: a float16 run's checkpoints hold a loss scale another run would not
    restore)."""
    opt_name, lr = cfg.resolved_optimizer()
    return {
        "model": json.loads(cfg.model_spec.to_json()),
        "schema": json.loads(schema.to_json()),
        "stats": stats,
        "optimizer": {"name": opt_name, "learning_rate": lr},
        "run": {"cache": cfg.cache, "mixed_precision": precision},
    }


def load_model_config(model_dir: str) -> dict:
    """The ``model_config.json`` of ``model_dir``; UserError naming the file when there is
    none or it is not the shape :func:`model_config` writes (``model``: an object with a string
    ``name``, integer ``hidden`` sizes and a number ``dropout``; ``schema`` and ``stats``:
    objects, ``stats`` as :func:`~tfpipes.training.data.check_stats` wants)."""
    from tfpipes.training.data import check_stats

    path = storage.join(model_dir, layout.MODEL_CONFIG)
    if not storage.exists(path):
        raise UserError(
            f"{model_dir}: no {layout.MODEL_CONFIG}; is it a `tfpipes train` model dir?"
        )
    config = layout.read_json_object(path, layout.MODEL_CONFIG)
    for key in ("model", "schema", "stats"):
        if not isinstance(config.get(key), dict):
            raise UserError(f"{path}: {key!r} must be a JSON object")
    model = config["model"]
    hidden = model.get("hidden", [])
    if not isinstance(model.get("name"), str) or not model["name"]:
        raise UserError(f"{path}: model 'name' must be a model name string")
    if not isinstance(hidden, list) or not all(_is_int(h) for h in hidden):
        raise UserError(f"{path}: model 'hidden' must be a list of integers")
    if not _is_number(model.get("dropout", 0.0)):
        raise UserError(f"{path}: model 'dropout' must be a number")
    check_stats(config["stats"], path)
    return config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_compatible(model_dir: str, config: dict) -> None:
    """UserError if ``model_dir`` holds checkpoints of another model, data set schema or input
    mode (resuming those would fail, or silently mix two runs). A model dir without
    ``model_config.json`` fits any run."""
    if not storage.exists(storage.join(model_dir, layout.MODEL_CONFIG)):
        return
    old = load_model_config(model_dir)
    for key, what in CHECKED:
        if key in old and key in config and old[key] != config[key]:
            raise UserError(
                f"{model_dir}: holds checkpoints of a different {what} "
                f"({json.dumps(old.get(key))[:120]}); use a new --model-dir"
            )


def write_model_config(model_dir: str, config: dict) -> None:
    """Write ``model_config.json`` (the chief does, with its first checkpoint)."""
    storage.write_text(
        storage.join(model_dir, layout.MODEL_CONFIG), json.dumps(config, indent=2) + "\n"
    )
