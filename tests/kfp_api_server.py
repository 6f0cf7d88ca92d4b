"""A local Kubeflow Pipelines API server (REST, v2beta1) that holds both sides to the contract.

``kfp.Client`` reaches a cluster only through this REST API, so a fake that accepted whatever it
was sent would hide exactly the bugs that matter: a field the real server rejects, an enum spelled
wrong, an int64 that is not a string, a recurring run without a pipeline reference. This server
therefore checks every request body it accepts and every response body it returns against the
official contract (``kfp_api_v2beta1.swagger.json`` and ``pipeline_upload_v2beta1.swagger.json``,
swagger 2.0), converted to JSON Schema:

- Requests are read with protojson's rules, as grpc-gateway reads them: a field may be spelled
  with its proto name or its lowerCamelCase JSON name, an int64 may be a JSON number or a decimal
  string, an enum its name or its number; an unknown field anywhere in a message is an error
  (400 with a ``google.rpc.Status`` body), a date-time must be RFC 3339 with a zone.
- Responses are held to what protojson writes: proto field names, int64 as decimal strings,
  enums by name, date-times in UTC ending in ``Z``, no field the contract does not name. A
  response that breaks the contract is a bug in this server: it is recorded in
  ``server.contract_violations`` and answered with a 500, and the ``kfp_server`` fixture fails
  the test at teardown unless that list is empty.

Beyond the schema it rejects what the real API server rejects (messages as the real server words
them where known): a run or recurring run with no pipeline source, an unknown experiment, pipeline
or version (404), a runtime parameter the pipeline does not declare, a cron expression that
``robfig/cron`` v1 (KFP's parser: 5 or 6 fields, seconds first; descriptors such as ``@daily``)
cannot parse, a periodic interval under 1 s, ``max_concurrency`` outside 1-10, two triggers at
once, duplicate pipeline or version names (409), an uploaded package that is not a pipeline spec.
With ``server.require_token("...")`` every route, healthz included, wants ``Authorization: Bearer
<token>``: none gives 401, a wrong one 403.

Runs advance one state per GET: PENDING -> RUNNING -> SUCCEEDED, or FAILED when a runtime
parameter has the value ``FAIL_RUN_VALUE`` or a parameter does not fit its declared type (as the
root driver of a real run would fail). Unknown query parameters are ignored, as grpc-gateway does.

Use the ``kfp_server`` fixture (register this module as a pytest plugin), or ``KfpApiServer()``
directly. Where the contract files live: ``TFPIPES_KFP_API_CONTRACT`` (a folder), else
``/work/shared/kfp-api``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import email.parser
import email.policy
import functools
import http.client
import http.server
import json
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest
import yaml

from tests.json_http import reply_json

if TYPE_CHECKING:
    from typing import Self

CONTRACT_DIR_ENV = "TFPIPES_KFP_API_CONTRACT"
# CI lays shared/ beside the repository clone.
DEFAULT_CONTRACT_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "kfp-api")
MAIN_CONTRACT = "kfp_api_v2beta1.swagger.json"
UPLOAD_CONTRACT = "pipeline_upload_v2beta1.swagger.json"

#: A runtime parameter with this value makes the run end FAILED.
FAIL_RUN_VALUE = "kfp-test:fail"

# google.rpc.Code values and the HTTP status grpc-gateway maps each to.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED = 3, 5, 6, 7
UNIMPLEMENTED, INTERNAL, UNAUTHENTICATED = 12, 13, 16
HTTP_STATUS = {3: 400, 5: 404, 6: 409, 7: 403, 12: 501, 13: 500, 16: 401}

# filter.proto's numbering is not the enum's list order in the swagger file (4 is unused).
PREDICATE_OPERATIONS = {
    0: "OPERATION_UNSPECIFIED",
    1: "EQUALS",
    2: "NOT_EQUALS",
    3: "GREATER_THAN",
    5: "GREATER_THAN_EQUALS",
    6: "LESS_THAN",
    7: "LESS_THAN_EQUALS",
    8: "IN",
    9: "IS_SUBSTRING",
}

API = "/apis/v2beta1"
UTC = dt.timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; setup.py allows 3.10)


class ApiError(Exception):
    """An error answer: a google.rpc code and the message the client sees."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------
# The contract as JSON Schema


def contract_dir() -> Path:
    return Path(os.environ.get(CONTRACT_DIR_ENV, DEFAULT_CONTRACT_DIR))


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_RFC3339_UTC_OUT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.(\d{3}|\d{6}|\d{9}))?Z$")


def _is_timestamp(value: object, pattern: re.Pattern[str]) -> bool:
    if not isinstance(value, str):
        return True  # "type" judges non-strings
    if not pattern.match(value):
        return False
    try:
        dt.datetime.fromisoformat(re.sub(r"\.(\d{6})\d+", r".\1", value.replace("Z", "+00:00")))
    except ValueError:
        return False
    return True


def _format_checker(mode: str) -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    pattern = _RFC3339 if mode == "request" else _RFC3339_UTC_OUT

    @checker.checks("date-time")
    def _date_time(value: object) -> bool:
        return _is_timestamp(value, pattern)

    return checker


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _convert(node: dict, mode: str) -> dict:
    """One swagger 2.0 schema node -> JSON Schema (2020-12), read as protojson reads (request)
    or writes (response)."""
    if "$ref" in node:
        return {"$ref": "#/$defs/" + node["$ref"].rsplit("/", 1)[1]}
    kind, fmt = node.get("type"), node.get("format")
    if "enum" in node:
        names = {"enum": list(node["enum"])}
        # proto3 enums are open: protojson accepts any number.
        return {"anyOf": [names, {"type": "integer"}]} if mode == "request" else names
    if kind == "string" and fmt in ("int64", "uint64"):
        digits = {"type": "string", "pattern": r"^-?[0-9]+$"}
        return {"anyOf": [digits, {"type": "integer"}]} if mode == "request" else digits
    if kind == "integer":
        if mode == "request":
            return {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^-?[0-9]+$"}]}
        return {"type": "integer"}
    if kind == "number":
        return {"type": ["number", "string"]} if mode == "request" else {"type": "number"}
    if kind == "string" and fmt == "date-time":
        return {"type": "string", "format": "date-time"}
    if kind == "string" and fmt == "byte":
        return {"type": "string", "pattern": r"^[A-Za-z0-9+/_-]*={0,2}$"}
    if kind in ("string", "boolean"):
        return {"type": kind}
    if kind == "array":
        return {"type": "array", "items": _convert(node.get("items", {}), mode)}
    if kind == "object" or "properties" in node:
        out: dict[str, Any] = {"type": "object"}
        props = node.get("properties")
        if props is not None:
            converted = {name: _convert(sub, mode) for name, sub in props.items()}
            if mode == "request":
                for name in list(converted):
                    converted.setdefault(_camel(name), converted[name])
            out["properties"] = converted
        extra = node.get("additionalProperties")
        if extra is not None:
            out["additionalProperties"] = True if extra == {} else _convert(extra, mode)
        elif props is not None:
            # A message: protojson (and so grpc-gateway) rejects fields it does not know.
            out["additionalProperties"] = False
        # else: google.protobuf.Struct (pipeline_spec, ...): any JSON object.
        return out
    return {}


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    template: str
    pattern: re.Pattern[str]
    query: dict[str, str]  # name -> swagger type
    body_param: str | None
    body_schema: dict | None
    response_schema: dict
    multipart: bool


class Contract:
    """The operations and definitions of the contract, with cached validators."""

    def __init__(self, folder: Path) -> None:
        main_path, upload_path = folder / MAIN_CONTRACT, folder / UPLOAD_CONTRACT
        for path in (main_path, upload_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"KFP API contract {path} is missing; set {CONTRACT_DIR_ENV} to the folder "
                    f"holding {MAIN_CONTRACT} and {UPLOAD_CONTRACT}"
                )
        main = json.loads(main_path.read_text(encoding="utf-8"))
        upload = json.loads(upload_path.read_text(encoding="utf-8"))
        # The main file's definitions are authoritative (the upload file carries an older
        # protobufAny); the upload file's paths say how the upload routes take their file.
        self.definitions: dict[str, dict] = main["definitions"]
        paths = dict(main["paths"])
        paths.update(upload["paths"])
        self.operations: list[Operation] = []
        for template, methods in paths.items():
            for method, op in methods.items():
                self.operations.append(self._operation(template, method.upper(), op))
        # Literal routes (".../pipelines/upload") before templated ones (".../{pipeline_id}").
        self.operations.sort(key=lambda o: o.template.count("{"))
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _operation(template: str, method: str, op: dict) -> Operation:
        regex = "^"
        for literal, name in re.findall(r"([^{]*)(?:\{([^}]+)\})?", template):
            regex += re.escape(literal)
            if name:
                regex += f"(?P<{name.replace('.', '__')}>[^/:]+)"
        params = op.get("parameters", [])
        body = next((p for p in params if p["in"] == "body"), None)
        return Operation(
            operation_id=op["operationId"],
            method=method,
            template=template,
            pattern=re.compile(regex + "$"),
            query={p["name"]: p.get("type", "string") for p in params if p["in"] == "query"},
            body_param=body["name"] if body else None,
            body_schema=body["schema"] if body else None,
            response_schema=op["responses"]["200"]["schema"],
            multipart="multipart/form-data" in op.get("consumes", []),
        )

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """(operation, path parameters, whether the path exists under another method)."""
        path_known = False
        for op in self.operations:
            found = op.pattern.match(path)
            if found:
                if op.method == method:
                    args = {k.replace("__", "."): v for k, v in found.groupdict().items()}
                    return op, {k: urllib.parse.unquote(v) for k, v in args.items()}, True
                path_known = True
        return None, {}, path_known

    def validator(self, schema: dict, mode: str) -> jsonschema.protocols.Validator:
        key = (json.dumps(schema, sort_keys=True), mode)
        with self._lock:
            if key not in self._validators:
                defs = {name: _convert(d, mode) for name, d in self.definitions.items()}
                root = dict(_convert(schema, mode), **{"$defs": defs})
                jsonschema.Draft202012Validator.check_schema(root)
                self._validators[key] = jsonschema.Draft202012Validator(
                    root, format_checker=_format_checker(mode)
                )
            return self._validators[key]

    def errors(self, schema: dict, mode: str, instance: Any) -> list[str]:
        """Every way ``instance`` breaks ``schema``, as 'at <json path>: <reason>' lines."""
        found = sorted(
            self.validator(schema, mode).iter_errors(instance), key=lambda e: list(e.path)
        )
        return [f"at {e.json_path}: {_best(e).message}" for e in found]

    def definition(self, name: str) -> dict:
        return {"$ref": f"#/definitions/{name}"}


def _best(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For an anyOf (enum name or number, int64 string or number) the branch that explains."""
    for sub in error.context or ():
        if sub.validator in ("enum", "pattern"):
            return sub
    return error


@functools.cache
def load_contract(folder: str | None = None) -> Contract:
    return Contract(Path(folder) if folder else contract_dir())


# --------------------------------------------------------------------------------------------
# robfig/cron v1, the parser the KFP API server checks recurring runs with


_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()  # noqa: SIM905
_DAYS = "sun mon tue wed thu fri sat".split()  # noqa: SIM905
_CRON_FIELDS = [  # name, low, high, names
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 6, {d: i for i, d in enumerate(_DAYS)}),
]
_CRON_DESCRIPTORS = {
    *("@yearly", "@annually", "@monthly", "@weekly"),
    *("@daily", "@midnight", "@hourly"),
}
_GO_DURATION = re.compile(r"^([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")


def robfig_cron_error(spec: str) -> str | None:
    """None if ``cron.Parse(spec)`` (robfig/cron v1.2, KFP's parser) accepts it, else the reason."""
    if spec.startswith("@"):
        if spec in _CRON_DESCRIPTORS:
            return None
        if spec.startswith("@every "):
            duration = spec[len("@every ") :]
            if _GO_DURATION.match(duration):
                return None
            return f"Failed to parse duration {spec}: time: invalid duration {duration}"
        return f"Unrecognized descriptor: {spec}"
    fields = spec.split()
    if not 5 <= len(fields) <= 6:
        return f"Expected 5 to 6 fields, found {len(fields)}: {spec}"
    for text, (_, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            error = _cron_range_error(part, low, high, names)
            if error:
                return error
    return None


def _cron_range_error(expr: str, low: int, high: int, names: dict[str, int]) -> str | None:
    range_and_step = expr.split("/")
    if len(range_and_step) > 2:
        return f"Too many slashes: {expr}"
    bounds = range_and_step[0].split("-")

    def number(text: str) -> int | None:
        if text.lower() in names:
            return names[text.lower()]
        return int(text) if text.isdigit() else None

    if bounds[0] in ("*", "?"):
        start, end = low, high
        if len(bounds) > 1:
            return f"Failed to parse int from {bounds[1]}"
    else:
        start = number(bounds[0])
        if start is None:
            return f"Failed to parse int from {bounds[0]}: invalid syntax"
        if len(bounds) == 1:
            end = start
        elif len(bounds) == 2:
            end = number(bounds[1])
            if end is None:
                return f"Failed to parse int from {bounds[1]}: invalid syntax"
        else:
            return f"Too many hyphens: {expr}"
    if len(range_and_step) == 2:
        if not range_and_step[1].isdigit():
            return f"Failed to parse int from {range_and_step[1]}: invalid syntax"
        if int(range_and_step[1]) == 0:
            return f"Step of range should be a positive number: {expr}"
        if len(bounds) == 1 and bounds[0] not in ("*", "?"):
            end = high
    if start < low:
        return f"Beginning of range ({start}) below minimum ({low}): {expr}"
    if end > high:
        return f"End of range ({end}) above maximum ({high}): {expr}"
    if start > end:
        return f"Beginning of range ({start}) beyond end of range ({end}): {expr}"
    return None


# --------------------------------------------------------------------------------------------
# The API's behaviour


def _now() -> str:
    return dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _snake(name: str) -> str:
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _proto_names(value: Any, schema: dict, definitions: dict) -> Any:
    """``value`` with every message field under its proto name, whichever spelling the client
    used; map keys and google.protobuf.Struct contents (parameters, pipeline specs) untouched."""
    while "$ref" in schema:
        schema = definitions[schema["$ref"].rsplit("/", 1)[1]]
    if isinstance(value, list):
        return [_proto_names(v, schema.get("items", {}), definitions) for v in value]
    if not isinstance(value, dict):
        return value
    props, extra = schema.get("properties"), schema.get("additionalProperties")
    if props is None:
        if extra:  # a map: keys are data
            return {k: _proto_names(v, extra, definitions) for k, v in value.items()}
        return value  # a Struct
    out = {}
    for key, sub in value.items():
        name = key if key in props else _snake(key)
        out[name] = _proto_names(sub, props.get(name, {}), definitions)
    return out


def _int64(value: Any, default: int = 0) -> int:
    return default if value is None else int(value)


def _enum_name(value: Any, names: list[str]) -> str:
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else str(value)
    return value or names[0]


class KfpState:
    """In-memory experiments, pipelines, versions, runs and recurring runs; one lock for all."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.lock = threading.RLock()
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._order: dict[str, int] = {}  # creation sequence: created_at can tie
        self._create_experiment({"display_name": "Default"}, "")

    def _stamp(self, key: str) -> str:
        self._order[key] = len(self._order)
        return _now()

    # ---- experiments
    def _create_experiment(self, body: dict, namespace: str) -> dict:
        exp_id = str(uuid.uuid4())
        exp = {
            "experiment_id": exp_id,
            "display_name": body["display_name"],
            "created_at": self._stamp(exp_id),
            "storage_state": "AVAILABLE",
        }
        if body.get("description"):
            exp["description"] = body["description"]
        if namespace:
            exp["namespace"] = namespace
        self.experiments[exp_id] = exp
        return exp

    def create_experiment(self, body: dict) -> dict:
        name = body.get("display_name", "")
        if not name:
            raise ApiError(INVALID_ARGUMENT, "Experiment name cannot be empty")
        namespace = body.get("namespace", "")
        for exp in self.experiments.values():
            if exp["display_name"] == name and exp.get("namespace", "") == namespace:
                raise ApiError(
                    ALREADY_EXISTS,
                    f"Failed to create an experiment: experiment with name {name!r} already exists",
                )
        return self._create_experiment(body, namespace)

    def experiment(self, exp_id: str) -> dict:
        if exp_id not in self.experiments:
            raise ApiError(NOT_FOUND, f"Failed to get experiment: experiment {exp_id} not found")
        return self.experiments[exp_id]

    def experiment_for(self, exp_id: str) -> str:
        """The experiment a run goes to: the given one (which must exist) or 'Default'."""
        if exp_id:
            return self.experiment(exp_id)["experiment_id"]
        return next(
            e["experiment_id"] for e in self.experiments.values() if e["display_name"] == "Default"
        )

    # ---- pipelines
    def upload_pipeline(self, filename: str, package: bytes, query: dict) -> dict:
        name = query.get("name") or query.get("display_name") or _strip_ext(filename)
        namespace = query.get("namespace", "")
        spec = _parse_package(filename, package)
        for pipe in self.pipelines.values():
            if pipe["name"] == name and pipe.get("namespace", "") == namespace:
                raise ApiError(
                    ALREADY_EXISTS,
                    f"Failed to create a pipeline and a pipeline version: The pipeline name {name}"
                    " already exist. Please specify a new name",
                )
        pipe_id = str(uuid.uuid4())
        pipe = {
            "pipeline_id": pipe_id,
            "name": name,
            "display_name": query.get("display_name") or name,
            "created_at": self._stamp(pipe_id),
        }
        if query.get("description"):
            pipe["description"] = query["description"]
        if namespace:
            pipe["namespace"] = namespace
        self.pipelines[pipe_id] = pipe
        self._add_version(pipe_id, name, query.get("description", ""), spec)
        return pipe

    def upload_version(self, filename: str, package: bytes, query: dict) -> dict:
        pipe_id = query.get("pipelineid", "")
        if not pipe_id:
            raise ApiError(
                INVALID_ARGUMENT,
                "Failed to create a pipeline version due to missing pipeline id",
            )
        self.pipeline(pipe_id)
        spec = _parse_package(filename, package)
        name = query.get("name") or query.get("display_name") or _strip_ext(filename)
        if any(v["pipeline_id"] == pipe_id and v["name"] == name for v in self.versions.values()):
            raise ApiError(
                ALREADY_EXISTS,
                f"Failed to create a pipeline version: version name {name} already exists in"
                f" pipeline {pipe_id}",
            )
        return self._add_version(pipe_id, name, query.get("description", ""), spec)

    def _add_version(self, pipe_id: str, name: str, description: str, spec: dict) -> dict:
        ver_id = str(uuid.uuid4())
        ver = {
            "pipeline_id": pipe_id,
            "pipeline_version_id": ver_id,
            "name": name,
            "display_name": name,
            "created_at": self._stamp(ver_id),
            "pipeline_spec": spec,
        }
        if description:
            ver["description"] = description
        self.versions[ver_id] = ver
        return ver

    def pipeline(self, pipe_id: str) -> dict:
        if pipe_id not in self.pipelines:
            raise ApiError(NOT_FOUND, f"Failed to get pipeline: pipeline {pipe_id} not found")
        return self.pipelines[pipe_id]

    def version(self, pipe_id: str, ver_id: str) -> dict:
        self.pipeline(pipe_id)
        ver = self.versions.get(ver_id)
        if ver is None or ver["pipeline_id"] != pipe_id:
            raise ApiError(
                NOT_FOUND, f"Failed to get pipeline version: pipeline version {ver_id} not found"
            )
        return ver

    def resolve_source(self, body: dict, what: str) -> tuple[dict | None, dict]:
        """(the version reference as stored, the pipeline spec) of a run or recurring run."""
        ref = body.get("pipeline_version_reference")
        spec = body.get("pipeline_spec")
        legacy = body.get("pipeline_version_id")
        if sum(x is not None for x in (ref, spec, legacy)) > 1:
            raise ApiError(INVALID_ARGUMENT, f"{what}: more than one pipeline source is set")
        if spec is not None:
            return None, spec
        if legacy:
            ver = self.versions.get(legacy)
            if ver is None:
                raise ApiError(NOT_FOUND, f"{what}: pipeline version {legacy} not found")
            ref = {"pipeline_id": ver["pipeline_id"], "pipeline_version_id": legacy}
        if not ref or not ref.get("pipeline_id"):
            raise ApiError(
                INVALID_ARGUMENT,
                f"{what}: a pipeline spec or a pipeline version reference with a pipeline id"
                " is required",
            )
        self.pipeline(ref["pipeline_id"])
        if ref.get("pipeline_version_id"):
            ver = self.version(ref["pipeline_id"], ref["pipeline_version_id"])
        else:  # the latest version
            candidates = [
                v for v in self.versions.values() if v["pipeline_id"] == ref["pipeline_id"]
            ]
            ver = max(candidates, key=lambda v: self._order[v["pipeline_version_id"]])
        stored = {
            "pipeline_id": ref["pipeline_id"],
            "pipeline_version_id": ver["pipeline_version_id"],
        }
        return stored, ver["pipeline_spec"]

    # ---- runs
    def create_run(self, body: dict, query: dict) -> dict:
        what = "Failed to create a run"
        if not body.get("display_name"):
            raise ApiError(INVALID_ARGUMENT, f"{what}: run name cannot be empty")
        ref, spec = self.resolve_source(body, what)
        exp_id = self.experiment_for(body.get("experiment_id") or query.get("experiment_id", ""))
        params = _check_parameters(spec, body.get("runtime_config") or {}, what)
        run_id = str(uuid.uuid4())
        now = self._stamp(run_id)
        run: dict[str, Any] = {
            "experiment_id": exp_id,
            "run_id": run_id,
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "created_at": now,
            "scheduled_at": now,
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        _store_source(run, body, ref, spec)
        run["_failure"] = _run_failure(spec, params)
        self.runs[run_id] = run
        return run

    def get_run(self, run_id: str) -> dict:
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(NOT_FOUND, f"Failed to get a run: run {run_id} not found")
        nxt = {"PENDING": "RUNNING", "RUNNING": "FAILED" if run["_failure"] else "SUCCEEDED"}
        if run["state"] in nxt:
            run["state"] = nxt[run["state"]]
            status: dict[str, Any] = {"update_time": _now(), "state": run["state"]}
            if run["state"] == "FAILED":
                status["error"] = {"code": 2, "message": run["_failure"]}
                run["error"] = dict(status["error"])
            if run["state"] in ("SUCCEEDED", "FAILED"):
                run["finished_at"] = status["update_time"]
            run["state_history"].append(status)
        return run

    # ---- recurring runs
    def create_recurring_run(self, body: dict) -> dict:
        what = "Failed to create a recurring run"
        if not body.get("display_name"):
            raise ApiError(INVALID_ARGUMENT, f"{what}: Recurring run's name cannot be empty")
        ref, spec = self.resolve_source(body, what)
        max_concurrency = _int64(body.get("max_concurrency"))
        if not 1 <= max_concurrency <= 10:
            raise ApiError(
                INVALID_ARGUMENT,
                "Max concurrency of a recurring run must be at least 1 and at most 10."
                f" Received {max_concurrency}",
            )
        trigger = body.get("trigger") or {}
        cron, periodic = trigger.get("cron_schedule"), trigger.get("periodic_schedule")
        if cron is not None and periodic is not None:
            raise ApiError(
                INVALID_ARGUMENT, f"{what}: trigger has both a cron and a periodic schedule"
            )
        stored_trigger: dict[str, Any] = {}
        if cron is not None:
            error = robfig_cron_error(cron.get("cron", ""))
            if error:
                raise ApiError(
                    INVALID_ARGUMENT,
                    "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron)."
                    f" Error: {error}",
                )
            stored_trigger["cron_schedule"] = _times(cron, {"cron": cron["cron"]})
        if periodic is not None:
            interval = _int64(periodic.get("interval_second"))
            if interval < 1:
                raise ApiError(
                    INVALID_ARGUMENT,
                    f"Found invalid period schedule interval {interval}. Set at interval to least 1"
                    " second",
                )
            stored_trigger["periodic_schedule"] = _times(
                periodic, {"interval_second": str(interval)}
            )
        exp_id = self.experiment_for(body.get("experiment_id", ""))
        _check_parameters(spec, body.get("runtime_config") or {}, what)
        enabled = (
            _enum_name(body.get("mode"), ["MODE_UNSPECIFIED", "ENABLE", "DISABLE"]) == "ENABLE"
        )
        rr_id = str(uuid.uuid4())
        now = self._stamp(rr_id)
        rr: dict[str, Any] = {
            "recurring_run_id": rr_id,
            "display_name": body["display_name"],
            "max_concurrency": str(max_concurrency),
            "mode": "ENABLE" if enabled else "DISABLE",
            "status": "ENABLED" if enabled else "DISABLED",
            "created_at": now,
            "updated_at": now,
            "no_catchup": bool(body.get("no_catchup", False)),
            "experiment_id": exp_id,
        }
        if self.experiments[exp_id].get("namespace"):
            rr["namespace"] = self.experiments[exp_id]["namespace"]
        if stored_trigger:
            rr["trigger"] = stored_trigger
        if ref and not (body.get("pipeline_version_reference") or {}).get("pipeline_version_id"):
            # A pipeline without a version: the recurring run follows the latest version at
            # each run (KFP >= 2.5, kubeflow/pipelines#11560), so only the pipeline is stored.
            ref = {"pipeline_id": ref["pipeline_id"]}
        _store_source(rr, body, ref, spec)
        self.recurring_runs[rr_id] = rr
        return rr

    def recurring_run(self, rr_id: str) -> dict:
        if rr_id not in self.recurring_runs:
            raise ApiError(
                NOT_FOUND, f"Failed to get a recurring run: recurring run {rr_id} not found"
            )
        return self.recurring_runs[rr_id]

    def set_recurring_run_enabled(self, rr_id: str, enabled: bool) -> dict:
        rr = self.recurring_run(rr_id)
        rr["mode"], rr["status"] = ("ENABLE", "ENABLED") if enabled else ("DISABLE", "DISABLED")
        rr["updated_at"] = _now()
        return {}

    # ---- listing
    def page(
        self, items: list[dict], query: dict, keys: set[str], id_key: str
    ) -> tuple[list[dict], str]:
        """Filter, sort and page ``items`` as List* calls do; returns (page, next token)."""
        predicates = _parse_filter(query.get("filter", ""), self.contract)
        selected = [i for i in items if _matches(i, predicates, keys)]
        sort_by = (query.get("sort_by") or "").strip()
        field, _, direction = sort_by.partition(" ")
        if field and field not in keys:
            raise ApiError(INVALID_ARGUMENT, f"Invalid sorting field: {field!r} on listable object")
        if direction not in ("", "desc", "asc"):
            raise ApiError(INVALID_ARGUMENT, f"Invalid sorting order: {sort_by!r}")
        selected.sort(key=lambda i: self._order[i[id_key]])
        if field and field != "created_at":
            selected.sort(key=lambda i: str(i.get(field, "")))
        if direction == "desc":
            selected.reverse()
        size = int(query.get("page_size") or 0) or 20
        if size < 0:
            raise ApiError(INVALID_ARGUMENT, f"Invalid page size: {size}")
        token = query.get("page_token") or ""
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError as e:
            raise ApiError(INVALID_ARGUMENT, f"Invalid page token: {token!r}") from e
        chunk = selected[start : start + size]
        more = start + size < len(selected)
        return chunk, base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else ""


def _times(schedule: dict, out: dict) -> dict:
    for key in ("start_time", "end_time"):
        if schedule.get(key):
            stamp = dt.datetime.fromisoformat(
                re.sub(r"\.(\d{6})\d+", r".\1", schedule[key].replace("Z", "+00:00"))
            )
            out[key] = stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def _strip_ext(filename: str) -> str:
    for ext in (".tar.gz", ".tgz", ".zip", ".yaml", ".yml", ".json"):
        if filename.endswith(ext):
            return filename[: -len(ext)]
    return filename


def _parse_package(filename: str, package: bytes) -> dict:
    """The pipeline spec in an uploaded YAML package, checked as the server checks it: by
    parsing it into the PipelineSpec proto (unknown fields are errors)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not filename.endswith((".yaml", ".yml", ".json")):
        raise ApiError(
            INVALID_ARGUMENT,
            f"Failed to upload a pipeline: unexpected file {filename!r}; this test server takes"
            " .yaml, .yml or .json packages",
        )
    try:
        docs = [d for d in yaml.safe_load_all(package.decode("utf-8")) if d is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ApiError(INVALID_ARGUMENT, f"Failed to upload a pipeline: invalid YAML: {e}") from e
    if not docs or not isinstance(docs[0], dict):
        raise ApiError(INVALID_ARGUMENT, "Failed to upload a pipeline: the package is empty")
    if "pipeline_spec" in docs[0]:  # the {pipeline_spec, platform_spec} form
        spec, platform = docs[0]["pipeline_spec"], docs[0].get("platform_spec")
    else:
        spec, platform = docs[0], (docs[1] if len(docs) > 1 else None)
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
        if platform:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    except (json_format.ParseError, TypeError, AttributeError) as e:
        raise ApiError(
            INVALID_ARGUMENT, f"Failed to upload a pipeline: invalid pipeline spec: {e}"
        ) from e
    if not spec.get("pipelineInfo", {}).get("name") or "root" not in spec:
        raise ApiError(
            INVALID_ARGUMENT, "Failed to upload a pipeline: pipeline spec has no name or no root"
        )
    return {"pipeline_spec": spec, "platform_spec": platform} if platform else spec


def _declared_parameters(spec: dict) -> dict[str, dict]:
    spec = spec.get("pipeline_spec", spec)
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def _store_source(stored: dict, body: dict, ref: dict | None, spec: dict) -> None:
    """What a run and a recurring run keep of their request ``body``: the pipeline version
    reference ``ref`` (else the inline ``spec``), the runtime config, description and service
    account when given."""
    if ref:
        stored["pipeline_version_reference"] = ref
    else:
        stored["pipeline_spec"] = spec
    if body.get("runtime_config"):
        stored["runtime_config"] = copy.deepcopy(body["runtime_config"])
    for key in ("description", "service_account"):
        if body.get(key):
            stored[key] = body[key]


def _check_parameters(spec: dict, runtime_config: dict, what: str) -> dict:
    params = runtime_config.get("parameters") or {}
    declared = _declared_parameters(spec)
    for name in params:
        if name not in declared:
            raise ApiError(
                INVALID_ARGUMENT,
                f"{what}: Invalid input error: Unrecognized input parameter: {name}",
            )
    return params


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "STRING": lambda v: isinstance(v, str),
    "NUMBER_INTEGER": lambda v: (
        isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
    ),
    "NUMBER_DOUBLE": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "LIST": lambda v: isinstance(v, list),
    "STRUCT": lambda v: isinstance(v, dict),
}


def _run_failure(spec: dict, params: dict) -> str:
    """Why the run will fail ('' if it succeeds): what a real root driver would trip on."""
    for name, decl in _declared_parameters(spec).items():
        if name not in params:
            if not decl.get("isOptional") and "defaultValue" not in decl:
                return f"root driver: required input parameter {name!r} has no value"
            continue
        kind = decl.get("parameterType", "STRING")
        if not _TYPE_CHECKS.get(kind, lambda v: True)(params[name]):
            return f"root driver: input parameter {name!r} is not a {kind}: {params[name]!r}"
    if FAIL_RUN_VALUE in [v for v in params.values() if isinstance(v, str)]:
        return f"a parameter asked for failure ({FAIL_RUN_VALUE})"
    return ""


def _parse_filter(text: str, contract: Contract) -> list[dict]:
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except ValueError as e:
        raise ApiError(INVALID_ARGUMENT, f"Invalid filter: not JSON: {e}") from e
    schema = contract.definition("v2beta1Filter")
    errors = contract.errors(schema, "request", parsed)
    if errors:
        raise ApiError(INVALID_ARGUMENT, f"Invalid filter: {errors[0]}")
    predicates = _proto_names(parsed, schema, contract.definitions).get("predicates", [])
    for p in predicates:
        op = p.get("operation", 0)
        p["operation"] = PREDICATE_OPERATIONS.get(op, str(op)) if isinstance(op, int) else op
        if (
            p["operation"] not in PREDICATE_OPERATIONS.values()
            or p["operation"] == "OPERATION_UNSPECIFIED"
        ):
            raise ApiError(INVALID_ARGUMENT, f"Invalid filter operation: {op!r}")
    return predicates


def _matches(item: dict, predicates: list[dict], keys: set[str]) -> bool:
    for p in predicates:
        key = p.get("key", "")
        if key not in keys:
            raise ApiError(INVALID_ARGUMENT, f"Invalid filter: key {key!r} is not supported")
        have = item.get(key, "")
        values = [
            p[k]["values"] if k.endswith("_values") else p[k]
            for k in (
                "string_value",
                "int_value",
                "long_value",
                "timestamp_value",
                "string_values",
                "int_values",
                "long_values",
            )
            if k in p
        ]
        if len(values) != 1:
            raise ApiError(
                INVALID_ARGUMENT, f"Invalid filter: predicate on {key!r} needs one value"
            )
        want = values[0]
        op = p["operation"]
        if op == "IN":
            ok = str(have) in [str(w) for w in want]
        elif op == "IS_SUBSTRING":
            ok = str(want) in str(have)
        else:
            a, b = str(have), str(want)
            ok = {
                "EQUALS": a == b,
                "NOT_EQUALS": a != b,
                "GREATER_THAN": a > b,
                "GREATER_THAN_EQUALS": a >= b,
                "LESS_THAN": a < b,
                "LESS_THAN_EQUALS": a <= b,
            }[op]
        if not ok:
            return False
    return True


def _public(resource: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in resource.items() if not k.startswith("_")}


_EXPERIMENT_KEYS = {"experiment_id", "display_name", "created_at", "namespace", "storage_state"}
_PIPELINE_KEYS = {"pipeline_id", "name", "display_name", "created_at", "namespace"}
_VERSION_KEYS = {"pipeline_version_id", "name", "display_name", "created_at"}
_RUN_KEYS = {"run_id", "display_name", "created_at", "state", "experiment_id", "storage_state"}
_RR_KEYS = {"recurring_run_id", "display_name", "created_at", "status", "experiment_id"}


class Handlers:
    """One method per implemented operationId: (path args, query, body) -> response body."""

    def __init__(self, state: KfpState) -> None:
        self.s = state

    def HealthzService_GetHealthz(self, args, query, body):
        return {"multi_user": False, "pipeline_store": "database"}

    def ExperimentService_CreateExperiment(self, args, query, body):
        return _public(self.s.create_experiment(body))

    def ExperimentService_GetExperiment(self, args, query, body):
        return _public(self.s.experiment(args["experiment_id"]))

    def ExperimentService_ListExperiments(self, args, query, body):
        ns = query.get("namespace", "")
        items = [e for e in self.s.experiments.values() if not ns or e.get("namespace", "") == ns]
        chunk, token = self.s.page(items, query, _EXPERIMENT_KEYS, "experiment_id")
        return _listing("experiments", chunk, len(items), token)

    def UploadPipeline(self, args, query, body):
        return _public(self.s.upload_pipeline(body[0], body[1], query))

    def UploadPipelineVersion(self, args, query, body):
        return _public(self.s.upload_version(body[0], body[1], query))

    def PipelineService_ListPipelines(self, args, query, body):
        ns = query.get("namespace", "")
        items = [p for p in self.s.pipelines.values() if p.get("namespace", "") == ns]
        chunk, token = self.s.page(items, query, _PIPELINE_KEYS, "pipeline_id")
        return _listing("pipelines", chunk, len(items), token)

    def PipelineService_GetPipeline(self, args, query, body):
        return _public(self.s.pipeline(args["pipeline_id"]))

    def PipelineService_ListPipelineVersions(self, args, query, body):
        self.s.pipeline(args["pipeline_id"])
        items = [v for v in self.s.versions.values() if v["pipeline_id"] == args["pipeline_id"]]
        chunk, token = self.s.page(items, query, _VERSION_KEYS, "pipeline_version_id")
        return _listing("pipeline_versions", chunk, len(items), token)

    def PipelineService_GetPipelineVersion(self, args, query, body):
        return _public(self.s.version(args["pipeline_id"], args["pipeline_version_id"]))

    def RunService_CreateRun(self, args, query, body):
        return _public(self.s.create_run(body, query))

    def RunService_GetRun(self, args, query, body):
        return _public(self.s.get_run(args["run_id"]))

    def RunService_ListRuns(self, args, query, body):
        exp = query.get("experiment_id", "")
        items = [r for r in self.s.runs.values() if not exp or r["experiment_id"] == exp]
        chunk, token = self.s.page(items, query, _RUN_KEYS, "run_id")
        return _listing("runs", [_public(r) for r in chunk], len(items), token)

    def RecurringRunService_CreateRecurringRun(self, args, query, body):
        return _public(self.s.create_recurring_run(body))

    def RecurringRunService_GetRecurringRun(self, args, query, body):
        return _public(self.s.recurring_run(args["recurring_run_id"]))

    def RecurringRunService_ListRecurringRuns(self, args, query, body):
        exp, ns = query.get("experiment_id", ""), query.get("namespace", "")
        items = [
            r
            for r in self.s.recurring_runs.values()
            if (not exp or r["experiment_id"] == exp) and (not ns or r.get("namespace", "") == ns)
        ]
        chunk, token = self.s.page(items, query, _RR_KEYS, "recurring_run_id")
        # The proto field is literally named recurringRuns, so that is its JSON name too.
        return _listing("recurringRuns", chunk, len(items), token)

    def RecurringRunService_EnableRecurringRun(self, args, query, body):
        return self.s.set_recurring_run_enabled(args["recurring_run_id"], True)

    def RecurringRunService_DisableRecurringRun(self, args, query, body):
        return self.s.set_recurring_run_enabled(args["recurring_run_id"], False)

    def RecurringRunService_DeleteRecurringRun(self, args, query, body):
        self.s.recurring_run(args["recurring_run_id"])
        del self.s.recurring_runs[args["recurring_run_id"]]
        return {}


def _listing(key: str, chunk: list[dict], total: int, token: str) -> dict:
    out: dict[str, Any] = {"total_size": total}
    if chunk:
        out[key] = [_public(c) for c in chunk]
    if token:
        out["next_page_token"] = token
    return out


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Exchange:
    """One request as the server saw it, and its answer (for assertions in tests)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    response: Any = None
    # As sent, for the credential checks: the headers, and the body (an upload's whole form).
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    raw: bytes = b""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        api: KfpApiServer = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        exchange = Exchange(method, url.path, query, raw, headers=dict(self.headers), raw=raw)
        status, payload = api.handle(method, url.path, query, dict(self.headers), raw, exchange)
        exchange.status, exchange.response = status, payload
        with api._lock:
            api.exchanges.append(exchange)
        reply_json(self, status, payload)


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    api: KfpApiServer


class KfpApiServer:
    """The server, started on 127.0.0.1 at a free port in a background thread.

    ``url`` is what ``kfp.Client(host=...)`` takes. ``contract_violations`` lists responses of
    this server that broke the contract (must stay empty); ``rejected_requests`` lists requests
    answered 400 for breaking it; ``exchanges`` every request with its answer.
    """

    def __init__(self, contract: Contract | None = None) -> None:
        self.contract = contract or load_contract()
        self.state = KfpState(self.contract)
        self.handlers = Handlers(self.state)
        self.token: str | None = None
        self.contract_violations: list[str] = []
        self.rejected_requests: list[str] = []
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._http = _HttpServer(("127.0.0.1", 0), _Handler)
        self._http.api = self
        self.port = self._http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long shutdown() waits
            name="kfp-api-server",
            daemon=True,
        )
        self._thread.start()

    def require_token(self, token: str | None) -> None:
        """From now on, every request needs ``Authorization: Bearer <token>`` (None: no auth)."""
        self.token = token

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- one request
    def handle(
        self, method: str, path: str, query: dict, headers: dict, raw: bytes, exchange: Exchange
    ) -> tuple[int, dict]:
        op: Operation | None = None
        try:
            self._authorize(headers)
            op, args, path_known = self.contract.match(method, path)
            if op is None:
                if path_known:
                    raise ApiError(UNIMPLEMENTED, "Method Not Allowed")
                raise ApiError(NOT_FOUND, "Not Found")
            handler = getattr(self.handlers, op.operation_id, None)
            if handler is None:
                raise ApiError(
                    UNIMPLEMENTED, f"{op.operation_id} is not implemented by this test server"
                )
            self._check_query(op, query)
            body = self._read_body(op, headers, raw)
            exchange.body = body if not op.multipart else {"file": body[0], "bytes": len(body[1])}
            with self.state.lock:
                result = handler(args, query, body)
            return self._answer(op, 200, result)
        except ApiError as e:
            if e.code == INVALID_ARGUMENT:
                with self._lock:
                    self.rejected_requests.append(f"{method} {path}: {e.message}")
            return self._answer(
                op, HTTP_STATUS[e.code], {"code": e.code, "message": e.message, "details": []}
            )

    def _authorize(self, headers: dict) -> None:
        if self.token is None:
            return
        given = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if not given:
            raise ApiError(
                UNAUTHENTICATED, "Request header error: there is no user identity header."
            )
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or token != self.token:
            raise ApiError(
                PERMISSION_DENIED, "Failed to authorize with API: the token is not valid"
            )

    def _check_query(self, op: Operation, query: dict) -> None:
        for name, value in query.items():
            kind = op.query.get(name)
            if kind == "integer" and value != "" and not re.fullmatch(r"-?[0-9]+", value):
                raise ApiError(INVALID_ARGUMENT, f"{name}: invalid integer {value!r}")
            if kind == "boolean" and value not in ("", "true", "false"):
                raise ApiError(INVALID_ARGUMENT, f"{name}: invalid boolean {value!r}")

    def _read_body(self, op: Operation, headers: dict, raw: bytes) -> Any:
        lower = {k.lower(): v for k, v in headers.items()}
        if op.multipart:
            return _read_upload(lower.get("content-type", ""), raw)
        if op.body_schema is None:
            return None
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise ApiError(INVALID_ARGUMENT, f"invalid JSON in request body: {e}") from e
        errors = self.contract.errors(op.body_schema, "request", body)
        if errors:
            raise ApiError(
                INVALID_ARGUMENT,
                f"invalid {op.body_param} for {op.operation_id}: " + "; ".join(errors),
            )
        return _proto_names(body, op.body_schema, self.contract.definitions)

    def _answer(self, op: Operation | None, status: int, payload: dict) -> tuple[int, dict]:
        schema = (
            op.response_schema
            if status == 200 and op
            else {"$ref": "#/definitions/googleRpcStatus"}
        )
        errors = self.contract.errors(schema, "response", payload)
        if errors:
            name = op.operation_id if op else "error"
            problem = f"{name} response ({status}) breaks the contract: " + "; ".join(errors)
            with self._lock:
                self.contract_violations.append(problem)
            return 500, {"code": INTERNAL, "message": problem, "details": []}
        return status, payload

    # ---- for tests
    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        """Send one raw request (``body``: a dict to send as JSON, or bytes); (status, JSON)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            if self.token and not any(k.lower() == "authorization" for k in hdrs):
                hdrs["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            text = resp.read()
            return resp.status, json.loads(text) if text else None
        finally:
            conn.close()

    def requests_to(self, operation_path: str, method: str = "POST") -> list[Exchange]:
        """The exchanges whose path ends with ``operation_path`` (e.g. '/recurringruns')."""
        return [e for e in self.exchanges if e.method == method and e.path.endswith(operation_path)]


def _read_upload(content_type: str, raw: bytes) -> tuple[str, bytes]:
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            INVALID_ARGUMENT, "Failed to upload a pipeline: expected multipart/form-data"
        )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_filename() or "pipeline.yaml", part.get_payload(decode=True) or b""
    raise ApiError(
        INVALID_ARGUMENT,
        "Failed to create a pipeline: Failed to read pipeline spec file from multipart form:"
        " http: no such file (uploadfile)",
    )


# --------------------------------------------------------------------------------------------
# pytest


@pytest.fixture
def kfp_server():
    """A running ``KfpApiServer``; the test fails if any of its responses broke the contract."""
    server = KfpApiServer()
    try:
        yield server
    finally:
        server.stop()
    assert not server.contract_violations, "\n".join(server.contract_violations)
