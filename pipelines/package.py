"""A compiled KFP v2 pipeline package and its declared parameters, read before anything is sent.

:func:`read_package` reads the YAML that ``kfp.compiler`` wrote; :meth:`PipelinePackage.arguments`
checks ``--param k=v`` pairs against the declared parameters and converts each value to its
declared type. Errors are one-line :class:`tfpipes.errors.UserError` naming the file or the
``--param``. No network, no kfp.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml
from tfpipes_pipelines.schedule_syntax import SCHEDULE_TIME_MACRO, SCHEDULE_TIME_PARAMETER

from tfpipes.errors import UserError

_PARAMETER_TYPES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One pipeline parameter from ``root.inputDefinitions.parameters``."""

    name: str
    type: str  # a key of _PARAMETER_TYPES
    required: bool

    def convert(self, text: str) -> Any:
        """``text`` as a value of this type; UserError naming the ``--param`` otherwise."""
        flag = f"--param {self.name}={text}"
        try:
            if self.type == "NUMBER_INTEGER":
                return int(text)
            if self.type == "NUMBER_DOUBLE":
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError(text)
                return value
            if self.type == "BOOLEAN":
                if text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError(text)
            if self.type in ("LIST", "STRUCT"):
                value = json.loads(text)
                if not isinstance(value, list if self.type == "LIST" else dict):
                    raise ValueError(text)
                return value
        except ValueError:
            raise UserError(
                f"{flag}: expected {_PARAMETER_TYPES[self.type]} ({self.type})"
            ) from None
        return text


@dataclasses.dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its file, name, parameters and content digest."""

    path: Path
    name: str
    parameters: dict[str, Parameter]
    digest: str

    def arguments(
        self, pairs: list[str], base: dict[str, Any] | None = None, check_required: bool = True
    ) -> dict[str, Any]:
        """``base`` updated with ``--param k=v`` pairs, each converted to its declared type.

        Raises UserError for a pair without ``=``, a name given twice, a name the pipeline does
        not declare (listing the valid ones), a value of the wrong type, and (with
        ``check_required``) required parameters left without a value.
        """
        values = dict(base or {})
        seen: set[str] = set()
        for pair in pairs:
            name, sep, text = pair.partition("=")
            name = name.strip()
            if not sep or not name:
                raise UserError(f"--param {pair!r}: expected NAME=VALUE")
            if name in seen:
                raise UserError(f"--param {name} is given twice")
            seen.add(name)
            if name not in self.parameters:
                valid = ", ".join(sorted(self.parameters)) or "none"
                raise UserError(
                    f"--param {name}: pipeline {self.name!r} has no parameter {name!r}"
                    f" (valid: {valid})"
                )
            values[name] = self.parameters[name].convert(text)
            _check_training_value(name, values[name])
        if check_required:
            missing = sorted(
                n for n, p in self.parameters.items() if p.required and n not in values
            )
            if missing:
                flags = " ".join(f"--param {n}=..." for n in missing)
                raise UserError(
                    f"pipeline {self.name!r} needs a value for {', '.join(missing)}: {flags}"
                )
        return values

    def with_schedule_time(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` plus SCHEDULE_TIME_PARAMETER=SCHEDULE_TIME_MACRO if the pipeline declares
        that parameter as a string and no value was given."""
        param = self.parameters.get(SCHEDULE_TIME_PARAMETER)
        if param is None or param.type != "STRING" or SCHEDULE_TIME_PARAMETER in values:
            return values
        return {**values, SCHEDULE_TIME_PARAMETER: SCHEDULE_TIME_MACRO}


def read_package(path: str | os.PathLike) -> PipelinePackage:
    """Read a compiled KFP v2 pipeline YAML; UserError if it is missing or not a pipeline."""
    path = Path(path)
    try:
        data = path.read_bytes()
        docs = [d for d in yaml.safe_load_all(data.decode("utf-8")) if d is not None]
    except OSError as e:
        raise UserError(f"{path}: cannot read the pipeline package: {e.strerror}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not a pipeline YAML: {str(e).splitlines()[0]}") from None
    spec = docs[0] if docs and isinstance(docs[0], dict) else {}
    spec = spec.get("pipeline_spec", spec)
    name = (spec.get("pipelineInfo") or {}).get("name")
    if not name or "root" not in spec:
        raise UserError(f"{path}: not a compiled KFP v2 pipeline (no pipelineInfo.name or root)")
    declared = ((spec["root"].get("inputDefinitions") or {}).get("parameters")) or {}
    parameters = {
        n: Parameter(
            name=n,
            type=d.get("parameterType", "STRING"),
            required=not d.get("isOptional", False) and "defaultValue" not in d,
        )
        for n, d in declared.items()
    }
    return PipelinePackage(path, name, parameters, hashlib.sha256(data).hexdigest())


def _check_training_value(name: str, value: Any) -> None:
    """A training parameter's value is checked here, at submit time, the way `tfpipes train`
    checks it (a bad ``hidden`` would otherwise fail only inside the train step)."""
    from tfpipes.training.params import PIPELINE_PARAMS, from_params

    if any(p.pipeline == name for p in PIPELINE_PARAMS):
        try:
            from_params({name: value})
        except UserError as e:
            raise UserError(f"--param {name}={value}: {e}") from None
