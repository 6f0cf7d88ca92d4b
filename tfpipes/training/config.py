"""The training run's parameters (:class:`TrainConfig`) and its result (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import time

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.models import ModelSpec

OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

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
    """

    data: str
    model_dir: str
    model: str = "mlp"
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    optimizer: str = ""  # default: sgd for linear, adam otherwise
    learning_rate: float = 0.0  # default: 0.05 for sgd, 0.001 otherwise
    batch_size: int = 64  # global batch
    train_steps: int = 1000
    steps_per_loop: int = 50
    checkpoint_every: int = 200
    max_to_keep: int = 3
    log_every: int = 100
    seed: int = 42
    shuffle_buffer: int = 10_000
    strategy: str = ""  # override the environment's choice
    cache: bool = False
    progress: bool | None = None
    mixed_precision: bool | str = False
    jit: bool = False
    deterministic: bool | None = None
    warm_start_from: str = ""
    peer_timeout: float = 0.0  # seconds to wait for other tasks (0: TFPIPES_PEER_TIMEOUT or 300)

    def validate(self) -> None:
        for name in (
            "batch_size",
            "steps_per_loop",
            "checkpoint_every",
            "log_every",
            "max_to_keep",
            "shuffle_buffer",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.train_steps < 0:
            raise UserError("--train-steps must be >= 0")
        if self.optimizer and self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.learning_rate < 0:
            raise UserError("--learning-rate must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError("--dropout must be in [0, 1)")
        if any(h < 1 for h in self.hidden):
            raise UserError("--hidden sizes must be positive integers")
        precision_policy(self.mixed_precision, gpu=False)  # a bad value is an error anywhere

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.model, tuple(self.hidden), self.dropout)

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


PRECISIONS = ("auto", "float16", "bfloat16")


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
    if mixed_precision not in PRECISIONS:
        raise UserError(
            f"--mixed-precision {mixed_precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    if mixed_precision == "auto":
        return "float16" if gpu else "bfloat16"
    return mixed_precision
