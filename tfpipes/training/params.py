"""Every front door's view of :class:`TrainConfig`'s parameters, derived from its fields.

The parameters are written once, as the fields of :class:`TrainConfig` with their metadata
(``tfpipes.training.config.param``). From them come:

- ``tfpipes train``'s flags (:func:`add_train_flags`, :func:`config_from_args`);
- the pipeline parameters (:data:`PIPELINE_PARAMS`: KFP name, type and default): both
  pipelines' signatures are built from them (``tfpipes.pipeline_params``); the KFP
  components write them out (KFP ships a component's source, so they are typed by hand;
  ``tests/test_params.py`` compares each with this); and run-local's flags
  (:func:`add_pipeline_flags`);
- a config from pipeline or component values (:func:`from_params`), parsing text values such
  as ``hidden="64,32"`` with the same parser as the CLI, so a bad value is the same one-line
  UserError wherever it is entered;
- the ``tfpipes train`` argument list a launcher (a TFJob, a local cluster) passes to every
  task (:func:`to_argv`).

Cheap to import (no TensorFlow): the CLI's ``--help`` uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from tfpipes.errors import UserError
from tfpipes.training.config import TrainConfig

PATHS = ("data", "model_dir")  # where, not how: required, and never a pipeline parameter


class Param(NamedTuple):
    """One training parameter as the front doors see it.

    name: the TrainConfig field; flag: ``--name-with-dashes``; kind: ``value``, ``switch``
    (a flag that turns it on), or ``tristate`` (``--x``/``--no-x``, default None: automatic).
    pipeline: the KFP name ("" when the pipelines do not expose it), kfp_type and
    kfp_default: the KFP parameter's type and default (text where the value has a syntax).
    """

    name: str
    flag: str
    help: str
    kind: str
    default: Any
    pipeline: str
    kfp_type: type
    kfp_default: Any
    field: dataclasses.Field

    def text(self, value: Any) -> str:
        """The value as a command-line or KFP text parameter."""
        to_text = self.field.metadata["text"]
        if to_text:
            return to_text(value)
        return repr(float(value)) if self.kfp_type is float else str(value)

    def parse(self, value: Any) -> Any:
        """A front door's value as the field's: text through the field's parser (or as a
        number, for a number field), anything else checked against the field's type. UserError
        naming the flag for a value of another type (a list for ``--train-steps``), an integer
        beyond int64, a float that is not finite, or text with control characters."""
        parse = self.field.metadata["parse"]
        if parse and isinstance(value, str):
            return parse(value)
        return _typed(self, value)


def _typed(p: Param, value: Any) -> Any:
    # The field's type: the default's (None: a tristate switch, or a required path).
    if p.default is not None:
        want = type(p.default)
    else:
        want = bool if p.kind == "tristate" else str
    if value is None and p.kind == "tristate":
        return None
    text = value.strip() if isinstance(value, str) else None
    if want is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in ("true", "false"):
            return text.lower() == "true"
        expected = "true or false"
    elif want is int:
        number = _number(text, value, int)
        if isinstance(number, int) and not isinstance(number, bool) and -(2**63) <= number < 2**63:
            return number
        expected = "an integer (int64)"
    elif want is float:
        number = _number(text, value, float)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if math.isfinite(number):
                return float(number)
        expected = "a finite number"
    elif want is tuple:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**31 for v in value
        ):
            return tuple(value)
        expected = "a list of integers"
    else:
        if isinstance(value, str) and value.isprintable():
            return value
        expected = "text without control characters"
    shown = json.dumps(value, default=repr)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise UserError(f"{p.flag} {shown}: expected {expected}")


def _number(text: str | None, value: Any, convert: type) -> Any:
    # Text through ``convert`` (None when it is not a number); any other value as it is.
    if text is None:
        return value
    try:
        return convert(text)
    except ValueError:
        return None


def _param(f: dataclasses.Field) -> Param:
    default = None if f.default is dataclasses.MISSING else f.default
    if f.metadata["parse"] or default is None and f.default is not None:
        kind, typ = "value", str  # text with a syntax (hidden "64,32"), or a path
    elif isinstance(default, bool):
        kind, typ = "switch", bool
    elif default is None:
        kind, typ = "tristate", bool
    else:
        kind, typ = "value", type(default)
    p = Param(f.name, "--" + f.name.replace("_", "-"), "", kind, default, "", typ, default, f)
    if f.metadata["parse"] and default is not None:
        p = p._replace(kfp_default=p.text(default))
    shown = f"{default:g}" if isinstance(default, float) else p.text(default)
    return p._replace(
        help=f.metadata["help"].replace("{default}", shown), pipeline=f.metadata["pipeline"]
    )


PARAMS: tuple[Param, ...] = tuple(_param(f) for f in dataclasses.fields(TrainConfig))
PIPELINE_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.pipeline)
_BY_NAME = {p.name: p for p in PARAMS} | {p.pipeline: p for p in PIPELINE_PARAMS}


def pipeline_defaults() -> dict[str, Any]:
    """{KFP name: default} of the parameters the components and pipelines expose."""
    return {p.pipeline: p.kfp_default for p in PIPELINE_PARAMS}


def pick(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline parameters in ``namespace`` (a component's or pipeline's ``locals()``)."""
    return {p.pipeline: namespace[p.pipeline] for p in PIPELINE_PARAMS if p.pipeline in namespace}


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; read them back with :func:`config_from_args`.

    A flag not given is absent from the parsed namespace (the field's default applies), so
    defaults live only in the dataclass.
    """
    for p in PARAMS:
        kw: dict[str, Any] = {"help": p.help, "default": argparse.SUPPRESS}
        if p.name in PATHS:
            kw["required"] = True
        elif p.kind == "switch":
            kw["action"] = "store_true"
        elif p.kind == "tristate":
            kw["action"] = argparse.BooleanOptionalAction
        elif p.kfp_type is not str:
            kw["type"] = p.kfp_type
        parser.add_argument(p.flag, **kw, **p.field.metadata["cli"])


def config_from_args(args: argparse.Namespace, **fields: Any) -> TrainConfig:
    """The validated TrainConfig of :func:`add_train_flags`' flags; ``fields`` override."""
    given = {p.name: getattr(args, p.name) for p in PARAMS if hasattr(args, p.name)}
    return from_params(given | fields)


def from_params(values: Mapping[str, Any], **fields: Any) -> TrainConfig:
    """A validated TrainConfig from front-door values, keyed by KFP name (``model_name``) or
    field name, text values parsed as the CLI parses them; ``fields``: the rest (``data``,
    ``model_dir``, ``progress``; the paths default to "", for an argument list without them).

    Raises UserError (one line naming the flag) for a bad value; an unknown name is a bug
    (KeyError).
    """
    config: dict[str, Any] = {"data": "", "model_dir": ""}
    for key, value in {**values, **fields}.items():
        p = _BY_NAME[key]
        config[p.name] = p.parse(value)
    cfg = TrainConfig(**config)
    cfg.validate()
    return cfg


def to_argv(values: TrainConfig | Mapping[str, Any]) -> list[str]:
    """The ``tfpipes train`` arguments that make the same config: ``--data`` and
    ``--model-dir`` when set, then every parameter that differs from its default.

    ``values``: a TrainConfig, or pipeline values for :func:`from_params` (validated here, so
    a launcher refuses a bad value before it starts anything).
    """
    cfg = values if isinstance(values, TrainConfig) else from_params(values)
    argv: list[str] = []
    for p in PARAMS:
        value = getattr(cfg, p.name)
        if p.name in PATHS:
            argv += [p.flag, value] if value else []
        elif value is None or p.text(value) == p.text(p.default):
            continue
        elif p.kind == "switch":
            argv.append(p.flag)
        elif p.kind == "tristate":
            argv.append(p.flag if value else "--no-" + p.flag[2:])
        else:
            argv += [p.flag, p.text(value)]
    return argv


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for the pipeline's training parameters (``tfpipes run-local``): the same flag
    names and help as ``tfpipes train``, stored under the KFP names with the KFP defaults."""
    for p in PIPELINE_PARAMS:
        kw: dict[str, Any] = {"dest": p.pipeline, "default": p.kfp_default, "help": p.help}
        if p.kind == "switch" and p.kfp_type is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = p.kfp_type
            kw.update(p.field.metadata["cli"])
        parser.add_argument(p.flag, **kw)
