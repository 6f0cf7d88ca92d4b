"""The contract between the cadence (:mod:`~tfpipes.training.controller`) and a strategy.

A runner decides *what* training is under one strategy (how a step runs, where variables and
data live, how TensorFlow's failures read); the controller alone decides *when* to train, log,
checkpoint, evaluate, write summaries and stop. Every runner therefore gets every summary,
check and resume rule of the controller by construction. Two runners implement it:
:class:`~tfpipes.training.default_runner.DefaultRunner` (default, OneDevice, Mirrored,
MultiWorkerMirrored) and :class:`~tfpipes.training.ps_runner.PSRunner` (ParameterServer).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator

#: What a runner's messages say a rerun resumes from: a checkpoint, or a function that finds
#: the newest one when a message needs it (the controller's ``Checkpoints.resume_point``).
ResumeFrom = str | Callable[[], str]


class Runner(abc.ABC):
    """One strategy's training, driven by the controller.

    Built by its module's ``open_runner(cfg, res, data, config, store, timeout)`` with the
    model restored from the newest checkpoint (``restored``, "" if none) and its input ready
    at that step. Then the controller calls :meth:`train` repeatedly, :meth:`save` at each
    checkpoint boundary, and :meth:`evaluate` once at the end, each inside :meth:`errors`.
    """

    #: the checkpoint this run resumed from ("" for a fresh start)
    restored: str = ""
    #: most steps per :meth:`train` call (None: as many as the controller asks, to the next
    #: log or checkpoint boundary)
    chunk: int | None = None
    #: whether SIGTERM may be answered with a checkpoint (under MWMS a save needs every
    #: worker: :meth:`agree_to_stop` makes them all stop, and save, at the same step)
    saves_on_sigterm: bool = True

    @property
    @abc.abstractmethod
    def step(self) -> int:
        """The global step now (after :meth:`train`, possibly past what was asked: PS)."""

    @property
    @abc.abstractmethod
    def learning_rate(self) -> float:
        """The optimizer's learning rate now."""

    @abc.abstractmethod
    def train(self, num_steps: int) -> float:
        """Train ``num_steps`` steps; return their loss (mean, or the last one's)."""

    @abc.abstractmethod
    def save(self, step: int) -> str:
        """Write a checkpoint numbered ``step`` to local disk; return its path prefix (the
        controller commits the chief's to the model dir)."""

    @abc.abstractmethod
    def evaluate(self, checkpoint: str) -> dict:
        """Eval metrics of the trained model (``checkpoint``: the newest one saved), with
        ``step``: the step they were measured at."""

    def agree_to_stop(self, requested: bool) -> bool:
        """Whether training stops after this chunk, given whether SIGTERM reached this task
        (``requested``). The controller calls it after every chunk, on every task that runs
        the cadence; a runner whose tasks must stop together (a save runs collectives) makes
        them agree. Default: this task decides alone."""
        return requested

    def log_suffix(self) -> str:
        """Extra text for the next log line (e.g. which workers ran the steps since the last)."""
        return ""

    @contextlib.contextmanager
    def errors(self, resume_from: ResumeFrom) -> Iterator[None]:
        """Turn TensorFlow's errors from a step, save or eval into user-facing ones;
        ``resume_from``: the newest checkpoint ("" if none), or a function returning it, for
        messages that say where a rerun resumes (see :func:`resume_point`)."""
        yield


def resume_point(resume_from: ResumeFrom) -> str:
    """The text after "run again to resume from": the checkpoint, or the start."""
    text = resume_from() if callable(resume_from) else resume_from
    return text or "the start (no checkpoint yet)"
