"""The cadence of a training run, for every strategy: when to train, log, write summaries,
checkpoint, evaluate, stop, and what SIGTERM does.

:func:`run` connects a runner (:mod:`~tfpipes.training.runner`), loads and checks the data
set, refuses a model dir of another run, and drives the runner: chunks of steps up to the next
log or checkpoint boundary, a log line and train summaries (loss, learning_rate,
examples_per_second) at each log boundary, a checkpoint at each checkpoint boundary and at the
end (``model_config.json`` written by the chief with this run's first one), a progress bar,
then the eval, its summaries and ``metrics.json``. Only the chief writes what counts; the
other tasks get a writer that writes nothing (:class:`MetricWriter`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import threading
import time
from types import ModuleType

from tfpipes import layout, progress, storage
from tfpipes.errors import RetryableError
from tfpipes.strategy import Resolution
from tfpipes.training import compat
from tfpipes.training.config import TrainConfig, TrainResult
from tfpipes.training.data import TrainingData, open_training_data
from tfpipes.training.runner import Runner

log = logging.getLogger("tfpipes.train")


def run(cfg: TrainConfig, res: Resolution, runners: ModuleType, timeout: float) -> TrainResult:
    """Train with the runner module ``runners`` (``connect``, ``open_runner``) until
    ``cfg.train_steps``; evaluate; write metrics. ``timeout``: seconds to wait for peers.

    Raises UserError for a bad data set or a model dir of another run (before anything is
    written), RetryableError when a peer or storage fails, or on SIGTERM (after a checkpoint,
    where the runner allows one).
    """
    from tfpipes.checkpoints import CheckpointStore

    t_start = time.monotonic()
    connection = runners.connect(cfg, res, timeout)
    with open_training_data(cfg.data) as data:
        config = compat.model_config(cfg, data.schema, data.stats, connection.precision)
        compat.check_compatible(cfg.model_dir, config)
        if connection.precision:
            scaling = ", dynamic loss scaling" if connection.precision == "float16" else ""
            log.info(
                "mixed precision: %s compute, float32 weights%s", connection.precision, scaling
            )
        store = CheckpointStore(cfg.model_dir, writer=res.is_chief, task_index=res.task_index)
        try:
            runner = runners.open_runner(cfg, res, connection, data, config, store)
            start = runner.step
            checkpoints = Checkpoints(cfg.model_dir, config, runner, store, res.is_chief)
            if runner.restored:
                log.info("resumed from %s at step %d", checkpoints.location(runner.restored), start)
            writer = MetricWriter(store.logs_dir if res.is_chief else None)
            cadence = Cadence(cfg, runner, writer, checkpoints, agree=runner.agree_to_stop)
            steps_run, spent = cadence.run()
            with runner.errors(checkpoints.resume_point):
                metrics = runner.evaluate(checkpoints.last)
            rate = steps_run * cfg.batch_size / spent if spent > 0 else 0.0
            metrics["train_examples_per_second"] = rate
            metrics.update(_label_balance(cfg, data))
            if res.is_chief:
                writer.eval(metrics)
                storage.write_text(
                    storage.join(cfg.model_dir, layout.METRICS),
                    json.dumps(metrics, indent=2) + "\n",
                )
                store.sync_logs()
        finally:
            store.close()
    final = int(metrics["step"])
    last = checkpoints.location(checkpoints.last)
    return TrainResult.of_run(cfg, start, final, steps_run, t_start, rate, metrics, last)


def _label_balance(cfg: TrainConfig, data: TrainingData) -> dict:
    """The class imbalance a classification run reports (``metrics.json``): the label
    histogram of the data set's stats and, with ``--class-weights``, the weights used."""
    from tfpipes.training.step import class_weights, label_histogram

    counts = label_histogram(data.schema, data.stats)
    if not counts:
        return {}
    total = sum(counts) or 1
    log.info(
        "labels: %s",
        ", ".join(f"class {i}: {c} ({100 * c / total:.1f}%)" for i, c in enumerate(counts)),
    )
    out: dict = {"label_histogram": counts}
    weights = class_weights(cfg.class_weights, data.schema, data.stats)
    if weights:
        out["class_weights"] = weights
    return out


class MetricWriter:
    """Every figure of a run goes through here: TensorBoard event files under ``logs_dir``
    (``train/``, ``eval/``), or, with ``logs_dir`` None (a task that is not the chief),
    nowhere."""

    def __init__(self, logs_dir: str | None):
        import tensorflow as tf

        if logs_dir is None:
            self._train = self._eval = tf.summary.create_noop_writer()
        else:
            self._train = tf.summary.create_file_writer(os.path.join(logs_dir, "train"))
            self._eval = tf.summary.create_file_writer(os.path.join(logs_dir, "eval"))

    def train(self, step: int, scalars: dict[str, float]) -> None:
        """Train scalars at ``step``."""
        import tensorflow as tf

        with self._train.as_default(step=step):
            for k, v in scalars.items():
                tf.summary.scalar(k, v)

    def eval(self, metrics: dict) -> None:
        """The numeric eval metrics at ``metrics["step"]`` (not the example count)."""
        import tensorflow as tf

        with self._eval.as_default(step=int(metrics["step"])):
            for k, v in metrics.items():
                if k not in ("step", "examples") and isinstance(v, (int, float)):
                    tf.summary.scalar(k, v)
        self._eval.flush()

    def flush(self) -> None:
        self._train.flush()


class Checkpoints:
    """Saving, one rule for every runner: the runner writes a checkpoint locally, the chief
    commits it to the model dir; ``model_config.json`` is written by the chief right before
    this run's first checkpoint (not earlier: a run that fails before it leaves no trace; not
    later: a checkpoint never exists without the config that says what it holds)."""

    def __init__(self, model_dir: str, config: dict, runner: Runner, store, chief: bool):
        self.model_dir, self.config, self.runner = model_dir, config, runner
        self.store, self.chief = store, chief
        # The same on every worker (each must join every save): the restored checkpoint.
        self.last = runner.restored
        self.saved_step = _step_of(runner.restored)
        self._wrote_config = False

    def location(self, prefix: str) -> str:
        """Where the user finds the checkpoint ``prefix`` (a local path: for a ``gs://``
        model dir, in the local mirror): in the model dir they named; "" for ""."""
        return storage.join(self.store.remote_dir, os.path.basename(prefix)) if prefix else ""

    def resume_point(self) -> str:
        """The newest checkpoint of the model dir, as the user named it ("" when there is
        none), for messages saying where a rerun resumes. The chief knows: it commits them.
        Any other task reads the checkpoint state in the model dir (the chief may be gone),
        and says it does not know when it cannot."""
        if self.chief:
            return self.location(self.last)
        state = storage.join(self.store.remote_dir, "checkpoint")
        try:
            if not storage.exists(state):
                return ""
            newest = re.search(r'^model_checkpoint_path: "([^"]+)"', storage.read_text(state), re.M)
        except Exception:  # only a hint: the failure being reported must not be hidden
            newest = None
        if not newest:
            return (
                f"the newest checkpoint in {self.store.remote_dir} (this task could not read "
                "which one that is)"
            )
        return self.location(newest.group(1))

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (every task calls it: a save may run collectives)."""
        if self.chief and not self._wrote_config:
            compat.write_model_config(self.model_dir, self.config)
            self._wrote_config = True
        with self.runner.errors(self.resume_point), _disk_full_is_retryable(self.store):
            path = self.runner.save(step)
        if self.chief:
            with _disk_full_is_retryable(self.store):
                self.store.commit(path)
            self.last = path
        self.saved_step = step


@contextlib.contextmanager
def _disk_full_is_retryable(store):
    """A checkpoint that cannot be written for a full disk (TensorFlow's error, or ours) is the
    environment failing: RetryableError (exit 138) naming the directory."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.OpError, OSError) as e:
        text = getattr(e, "message", None) or str(e)
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in text:
            raise RetryableError(
                f"{store.local_dir}: no space left on device while writing a checkpoint; free "
                "space and run again to resume from the last checkpoint"
            ) from None
        raise


class Cadence:
    """The loop: chunks of steps up to the next log or checkpoint boundary, then what is due
    there. A boundary is reached when the step is at or past it (a ps runner may overshoot)."""

    def __init__(
        self, cfg: TrainConfig, runner: Runner, writer: MetricWriter, checkpoints, agree=None
    ):
        """``agree(requested) -> bool``: whether to stop after a chunk, given whether SIGTERM
        reached this task (``Runner.agree_to_stop``; default: this task decides alone)."""
        self.cfg, self.runner, self.writer, self.checkpoints = cfg, runner, writer, checkpoints
        self._agree = agree or (lambda requested: requested)
        self._preempted = threading.Event()

    def run(self) -> tuple[int, float]:
        """Train from the runner's step to ``cfg.train_steps``. Returns (steps run, seconds
        spent in steps). RetryableError after a checkpoint when SIGTERM arrived."""
        cfg, runner = self.cfg, self.runner
        self.start = self.step = runner.step
        self.target = cfg.train_steps
        self.bar = progress.Progress("train", total=self.target, unit="step", enabled=cfg.progress)
        self.bar.update_to(min(self.step, self.target))
        self.spent = 0.0
        self.since_step, self.since_t = self.step, time.monotonic()
        self.next_log = _next(self.step, cfg.log_every)
        self.next_ckpt = _next(self.step, cfg.checkpoint_every)
        with self._sigterm():
            while self.step < self.target:
                # Each pass under the runner's error translation: a peer may fail in a step,
                # in reading the step counter or learning rate (PS: on the ps), or in a save.
                with runner.errors(self.checkpoints.resume_point):
                    self._chunk()
            if self.checkpoints.saved_step != self.step:
                self._save(self.step)  # nothing to train (target reached): still save
        self.bar.close()
        self.writer.flush()
        return self.step - self.start, self.spent

    def _chunk(self) -> None:
        """Train up to the next boundary (at most ``runner.chunk`` steps); log, summarize,
        checkpoint or stop when due."""
        cfg, runner, target = self.cfg, self.runner, self.target
        n = min(target, self.next_log, self.next_ckpt) - self.step
        if runner.chunk:
            n = min(n, runner.chunk)
        t = time.monotonic()
        loss = runner.train(n)
        self.spent += time.monotonic() - t
        self.step = step = runner.step
        self.bar.update_to(min(step, target), loss=f"{loss:.4f}")
        if step >= self.next_log or step >= target:
            now = time.monotonic()
            eps = (step - self.since_step) * cfg.batch_size / max(now - self.since_t, 1e-9)
            lr = runner.learning_rate
            line = "step %d/%d loss %.5f lr %.3g examples/s %.0f%s"
            (log.debug if self.bar._bar else log.info)(
                line, step, target, loss, lr, eps, runner.log_suffix()
            )
            self.writer.train(step, {"loss": loss, "learning_rate": lr, "examples_per_second": eps})
            self.since_step, self.since_t = step, now
            self.next_log = _next(step, cfg.log_every)
        if step >= self.next_ckpt or step >= target:
            self._save(step)
            self.next_ckpt = _next(step, cfg.checkpoint_every)
        here = self._preempted.is_set()
        if self._agree(here):
            if self.checkpoints.saved_step != step:
                self._save(step)
            why = "by SIGTERM (preemption)" if here else "with the cluster (a peer got SIGTERM)"
            if self.checkpoints.chief:
                saved = f"checkpoint {self.checkpoints.location(self.checkpoints.last)} saved"
            else:  # the chief commits the checkpoint this task's save took part in
                saved = f"checkpoint of step {step} saved by the chief"
            raise RetryableError(f"stopped {why} at step {step}; {saved}: run again to resume")

    def _save(self, step: int) -> None:
        self.writer.flush()  # the summaries up to a checkpoint survive with it
        self.checkpoints.save(step)

    @contextlib.contextmanager
    def _sigterm(self):
        # Kubernetes preempts with SIGTERM and a grace period: finish the running chunk, save,
        # exit 138 (retryable). Under MWMS the tasks first agree to stop at the same step (a
        # save needs every worker); a peer already gone fails that agreement at once, and the
        # error (138) names the newest checkpoint.
        main = threading.current_thread() is threading.main_thread()
        if not self.runner.saves_on_sigterm or not main:
            yield
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: self._preempted.set())
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _next(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every


def _step_of(prefix: str) -> int:
    try:
        return int(prefix.rsplit("-", 1)[-1]) if prefix else -1
    except ValueError:
        return -1
