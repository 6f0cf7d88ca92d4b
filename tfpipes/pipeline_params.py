"""The pipelines' parameters, written once: each pipeline function's signature is built from
these tables, and its body passes them on by name.

KFP reads a pipeline's parameters from ``inspect.signature`` of its function and, unlike a
lightweight component, never ships the function's source, so a pipeline function need not
spell them out: :func:`pipeline_signature` gives a body that takes the parameters as keywords
the signature of these tables. The training parameters are TrainConfig's
(:data:`tfpipes.training.params.PIPELINE_PARAMS`), so both pipelines expose the same ones; the
tables below hold the pipelines' own. The components' signatures stay written out (KFP ships
their source); ``tests/test_params.py`` checks them against these.

No kfp here, and no TensorFlow: run-local's flags take their types and defaults from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tfpipes.training.params import PIPELINE_PARAMS

REQUIRED = inspect.Parameter.empty


def params(*rows: tuple[str, type, Any]) -> tuple[inspect.Parameter, ...]:
    """Pipeline parameters from ``(name, type, default)`` rows (default ``REQUIRED``: none)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return tuple(inspect.Parameter(n, kind, annotation=t, default=d) for n, t, d in rows)


INPUT = params(("source", str, REQUIRED), ("label", str, REQUIRED))
TRAINING = params(*((p.pipeline, p.kfp_type, p.kfp_default) for p in PIPELINE_PARAMS))
SPLIT = params(("eval_fraction", float, 0.2), ("num_shards", int, 16))
CACHE = params(("cache_index", str, ""))
DATA_STEPS = INPUT + SPLIT + CACHE  # what fingerprint_op and preprocess_op take
# Above ``fanout_bytes`` of input, preprocess runs fanned out in ``fanout_parts`` parallel
# tasks (tfpipes_pipelines.fanout); at or below it, in one task.
FANOUT = params(("fanout_bytes", int, 1 << 30), ("fanout_parts", int, 8))
OUTPUT = params(("model_version", str, ""), ("publish_base", str, ""))
# The data check's thresholds (``tfpipes check-data``; check_data_op's parameters).
DATA_CHECK = params(
    ("numeric_js", float, 0.1),
    ("categorical_linf", float, 0.1),
    ("missing_rise", float, 0.05),
    ("label_shift", float, 0.1),
    ("feature_thresholds", str, ""),
    ("on_drift", str, "warn"),
)
GATE = params(("require", str, ""), ("force_publish", bool, False))
# The single-pod pipeline's own (pipelines/training.py); the distributed one's are beside it.
SINGLE_POD = params(
    ("checkpoint_dir", str, ""),
    ("train_cpu_request", str, "1"),
    ("train_memory_request", str, "2Gi"),
)


def pick(values: Mapping[str, Any], table: Iterable[inspect.Parameter]) -> dict[str, Any]:
    """The values of ``table``'s parameters, by name."""
    return {q.name: values[q.name] for q in table}


def pipeline_signature(own: Iterable[inspect.Parameter], returns: Any) -> Callable:
    """A decorator: ``body(**values)`` becomes a function whose signature, as ``@dsl.pipeline``
    reads it, is the parameters every pipeline has (INPUT, TRAINING, SPLIT, FANOUT, OUTPUT,
    CACHE, DATA_CHECK, GATE) with the pipeline's ``own`` after INPUT, returning ``returns``. The
    function binds its arguments to that signature (defaults applied) and calls ``body`` with
    them."""
    tables = (INPUT, own, TRAINING, SPLIT, FANOUT, OUTPUT, CACHE, DATA_CHECK, GATE)
    signature = inspect.Signature([q for t in tables for q in t], return_annotation=returns)

    def decorate(body: Callable) -> Callable:
        def pipeline(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return body(**bound.arguments)

        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(pipeline, attr, getattr(body, attr))
        pipeline.__signature__ = signature
        annotations = {q.name: q.annotation for q in signature.parameters.values()}
        pipeline.__annotations__ = annotations | {"return": returns}
        return pipeline

    return decorate
