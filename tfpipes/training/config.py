"""The training run's parameters (:class:`TrainConfig`) and its result (:class:`TrainResult`).

Each parameter is written once, here: its name, type and default are the dataclass field's; its
help text, bounds, text syntax and whether the pipelines expose it are the field's metadata
(:func:`param`). Every front door (``tfpipes train``'s flags, the KFP components and pipelines,
the argument list a launcher passes) is generated from this or checked against it by a test
(see :mod:`tfpipes.training.params`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tfpipes import storage
from tfpipes.errors import UserError

if TYPE_CHECKING:  # tfpipes.models imports TensorFlow; the parameters must not (CLI --help)
    from tfpipes.models import ModelSpec

OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")
IMPUTE = ("mean", "median")  # tfpipes.models.IMPUTE (that module imports TensorFlow)
CLASS_WEIGHTS = ("", "balanced")
PRECISIONS = ("auto", "float16", "bfloat16")

_REQUIRED = dataclasses.MISSING


def param(
    default: Any = _REQUIRED,
    help: str = "",
    *,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[str], Any] | None = None,
    text: Callable[[Any], str] | None = None,
    pipeline: str = "",
    cli: dict | None = None,
) -> Any:
    """A :class:`TrainConfig` field with its metadata.

    help: the flag's help; ``{default}`` in it is replaced by the default's text form.
    check: the value's bounds: returns what is wrong (``"must be at least 1"``, shown after the
    flag) or None. parse / text: the parameter's text syntax where it is not a plain number or
    string (``hidden``: ``"64,32"``); front doors that pass text (the CLI, KFP parameters) go
    through ``parse``, so a bad value is the same one-line UserError everywhere. pipeline: the
    parameter's name in the KFP components and both pipelines (empty: not exposed there).
    cli: extra ``argparse.add_argument`` keywords (``nargs``, ``const``, ``metavar``).
    """
    meta = {"help": help, "check": check, "parse": parse, "text": text, "pipeline": pipeline}
    meta["cli"] = cli or {}
    return dataclasses.field(default=default, metadata=meta)


def at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: f"must be at least {low}" if v < low else None


def _parse_hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--hidden {text!r}: expected comma-separated integers") from None


def _hidden_text(sizes) -> str:
    return ",".join(str(s) for s in sizes)


def _check_hidden(sizes) -> str | None:
    return "sizes must be positive integers" if any(h < 1 for h in sizes) else None


def _check_optimizer(name: str) -> str | None:
    return (
        f"{name!r}: choose one of {', '.join(OPTIMIZERS)}"
        if name not in ("", *OPTIMIZERS)
        else None
    )


def _parse_precision(text: str) -> bool | str:
    # "true"/"false": what a boolean pipeline parameter of older versions was given.
    return {"true": "auto", "false": ""}.get(text.strip().lower(), text.strip())


def _precision_text(value: bool | str) -> str:
    return {True: "auto", False: ""}.get(value, value) if isinstance(value, bool) else value


def _check_precision(value: bool | str) -> str | None:
    if isinstance(value, bool) or value in ("", "off", *PRECISIONS):
        return None
    return f"{value!r}: choose one of {', '.join(PRECISIONS)}"


def _parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # 0 is the field's "not set"; on a command line it is a mistake
        raise UserError("--peer-timeout must be a positive number of seconds")
    return seconds


def _check_seconds(value: float) -> str | None:
    return None if value >= 0 else "must be a positive number of seconds"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Each field's help, bounds and text syntax are in its metadata.

    data: a committed data set (``tfpipes preprocess`` output). model_dir: where checkpoints,
    ``model_config.json``, ``metrics.json`` and TensorBoard logs go (local or ``gs://``); a run
    with an existing model_dir resumes. train_steps: the global step to stop at.
    steps_per_loop: steps per ``tf.function`` call (any value gives the same weights).
    cache: parse the train split once and feed it from memory (see ``input_pipeline``).
    mixed_precision: "" (off), "auto" or True (float16 with a GPU, else bfloat16), "float16"
    (dynamic loss scaling) or "bfloat16"; weights stay float32 (see ``precision_policy``). jit: XLA
    auto-clustering (GPU). deterministic: op determinism (None: on unless a GPU is visible), what
    makes a resumed run bit-identical. warm_start_from: initial weights from another run's
    model dir or checkpoint, or an exported SavedModel (ignored when model_dir has a checkpoint).
    peer_timeout: seconds a distributed task waits for the others (0: ``TFPIPES_PEER_TIMEOUT``,
    else 300).
    """

    data: str = param(help="data set written by `tfpipes preprocess`")
    model_dir: str = param(help="checkpoints, metrics, logs (local or gs://)")
    model: str = param(
        "mlp", "linear | mlp | package.module:build_fn ({default})", pipeline="model_name"
    )
    hidden: tuple[int, ...] = param(
        (64, 32),
        "mlp hidden sizes ({default})",
        check=_check_hidden,
        parse=_parse_hidden,
        text=_hidden_text,
        pipeline="hidden",
    )
    dropout: float = param(
        0.0,
        "mlp dropout rate ({default})",
        check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
    )
    optimizer: str = param(
        "",  # default: sgd for linear, adam otherwise
        " | ".join(OPTIMIZERS),
        check=_check_optimizer,
        pipeline="optimizer",
    )
    learning_rate: float = param(
        0.0,  # default: 0.05 for sgd, 0.001 otherwise
        "(0.05 for sgd, else 0.001)",
        check=lambda v: "must be positive" if v < 0 else None,
        pipeline="learning_rate",
    )
    batch_size: int = param(
        64, "global batch size ({default})", check=at_least(1), pipeline="batch_size"
    )
    train_steps: int = param(
        1000,
        "global step to stop at ({default})",
        check=lambda v: "must be >= 0" if v < 0 else None,
        pipeline="train_steps",
    )
    steps_per_loop: int = param(
        50,
        "steps per tf.function call ({default}); any value gives the same weights",
        check=at_least(1),
        pipeline="steps_per_loop",
    )
    checkpoint_every: int = param(
        200, "steps between checkpoints ({default})", check=at_least(1), pipeline="checkpoint_every"
    )
    max_to_keep: int = param(3, "checkpoints kept ({default})", check=at_least(1))
    log_every: int = param(100, "steps between log lines ({default})", check=at_least(1))
    seed: int = param(42, "random seed ({default})", pipeline="seed")
    shuffle_buffer: int = param(
        10_000, "shuffle buffer in rows ({default}; 4x that in the block layout)", check=at_least(1)
    )
    strategy: str = param(
        "",  # the environment's choice
        "force default | one_device | mirrored | multi_worker | parameter_server",
    )
    cache: bool = param(False, "parse the train split once and train from memory", pipeline="cache")
    progress: bool | None = param(None, "progress bar (default: when stderr is a terminal)")
    mixed_precision: bool | str = param(
        False,
        "compute in 16 bits, weights in float32: float16 with dynamic loss scaling, or "
        "bfloat16; alone (auto): float16 with a GPU, bfloat16 without",
        check=_check_precision,
        parse=_parse_precision,
        text=_precision_text,
        pipeline="mixed_precision",
        cli={"nargs": "?", "const": "auto", "metavar": "DTYPE"},
    )
    jit: bool = param(False, "XLA compilation (GPU)")
    deterministic: bool | None = param(
        None, "op determinism: bit-identical resumes (default: on without a GPU)"
    )
    warm_start_from: str = param(
        "",
        "initial weights: another model dir, a checkpoint, an exported SavedModel, "
        "or latest:<export base> (its newest version)",
        pipeline="warm_start_from",
    )
    impute: str = param(
        "mean",
        "what a missing numeric, boolean or timestamp value becomes: mean | median ({default})",
        check=lambda v: None if v in IMPUTE else f"{v!r}: choose one of {', '.join(IMPUTE)}",
    )
    class_weights: str = param(
        "",
        "balanced: weigh each class's loss by rows / (classes * its rows in the train split's "
        "label histogram); default: every row alike",
        check=lambda v: (
            None if v in CLASS_WEIGHTS else f"{v!r}: choose balanced (or leave it unset)"
        ),
    )
    peer_timeout: float = param(
        0.0,
        "how long a distributed task waits for the others in TF_CONFIG before it exits "
        "with 138 naming them (default: $TFPIPES_PEER_TIMEOUT, else 300)",
        check=_check_seconds,
        parse=_parse_seconds,
        cli={"metavar": "SECONDS"},
    )

    def validate(self) -> None:
        """UserError ``--flag what is wrong`` for the first field out of its bounds."""
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                raise UserError(f"--{f.name.replace('_', '-')} {problem}")

    @property
    def model_spec(self) -> ModelSpec:
        from tfpipes.models import ModelSpec

        return ModelSpec(self.model, tuple(self.hidden), self.dropout, self.impute)

    def resolved_optimizer(self) -> tuple[str, float]:
        opt = self.optimizer or ("sgd" if self.model == "linear" else "adam")
        lr = self.learning_rate or (0.05 if opt == "sgd" else 0.001)
        return opt, lr


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_dir: str
    start_step: int  # the step restored from a checkpoint (0 for a fresh start)
    final_step: int
    steps_run: int  # steps this run performed
    seconds: float
    examples_per_second: float
    metrics: dict
    checkpoint: str
    logs: str = ""  # TensorBoard log directory (next to the checkpoints)

    @classmethod
    def of_run(cls, cfg, start, final, steps_run, t_start, rate, metrics, last_ckpt):
        """The result of a run that began at ``time.monotonic()`` ``t_start``."""
        logs = storage.join(cfg.model_dir, "logs")
        seconds = time.monotonic() - t_start
        return cls(cfg.model_dir, start, final, steps_run, seconds, rate, metrics, last_ckpt, logs)


def precision_policy(mixed_precision: bool | str, gpu: bool) -> str:
    """The compute dtype of a run: "" (float32), "float16" or "bfloat16".

    ``mixed_precision``: False/"" (off), True/"auto" (float16 on a GPU, bfloat16 without one),
    or a dtype. float16 comes with dynamic loss scaling; it also runs on a CPU (slowly), which
    is how the GPU's code path is tested here.
    """
    if mixed_precision is True:
        mixed_precision = "auto"
    if mixed_precision in (False, "", "off"):
        return ""
    problem = _check_precision(mixed_precision)
    if problem:
        raise UserError(f"--mixed-precision {problem}")
    if mixed_precision == "auto":
        return "float16" if gpu else "bfloat16"
    return mixed_precision
