"""train: a graph-mode custom training loop under the strategy the environment asks for.

The split follows orbit: :class:`Trainer` owns what one step does (a ``tf.function`` that runs
K steps per call in a ``tf.range`` loop whose count is a tensor, so it never retraces);
:func:`train` owns the cadence (when to log, checkpoint, evaluate and stop). A second run with
the same model directory resumes from the newest sound checkpoint, data position included.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from tfpipes import manifest as manifest_lib
from tfpipes import progress, storage
from tfpipes import strategy as strategy_lib
from tfpipes.errors import UserError
from tfpipes.models import ModelSpec
from tfpipes.schema import Schema

log = logging.getLogger("tfpipes.train")

MODEL_CONFIG = "model_config.json"
METRICS = "metrics.json"
OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    data: a committed data set (``tfpipes preprocess`` output). model_dir: where checkpoints,
    ``model_config.json``, ``metrics.json`` and TensorBoard logs go (local or ``gs://``); a run
    with an existing model_dir resumes. train_steps: the global step to stop at.
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

    def validate(self) -> None:
        for name in (
            "batch_size",
            "steps_per_loop",
            "checkpoint_every",
            "log_every",
            "max_to_keep",
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
        if any(h < 1 for h in self.hidden):
            raise UserError("--hidden sizes must be positive integers")

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


def _make_optimizer(name: str, lr: float):
    import keras

    return {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
    }[name](learning_rate=lr)


def load_model_config(model_dir: str) -> dict:
    path = storage.join(model_dir, MODEL_CONFIG)
    if not storage.exists(path):
        raise UserError(f"{model_dir}: no {MODEL_CONFIG}; is it a `tfpipes train` model dir?")
    return json.loads(storage.read_text(path))


def _check_compatible(model_dir: str, config: dict) -> None:
    path = storage.join(model_dir, MODEL_CONFIG)
    if not storage.exists(path):
        return
    old = json.loads(storage.read_text(path))
    for key, what in (("model", "model options"), ("schema", "data set schema")):
        if old.get(key) != config[key]:
            raise UserError(
                f"{model_dir}: holds checkpoints of a different {what} "
                f"({json.dumps(old.get(key))[:120]}); use a new --model-dir"
            )


class Trainer:
    """Owns the model, optimizer, step counter and the compiled train and eval functions."""

    def __init__(self, strategy, spec: ModelSpec, schema: Schema, stats: dict, opt, lr, batch):
        import tensorflow as tf

        from tfpipes.models import build_model

        self.strategy = strategy
        self.schema = schema
        self.global_batch = batch
        self.classification = schema.task == "classification"
        with strategy.scope():
            self.model = build_model(spec, schema, stats)
            self.optimizer = _make_optimizer(opt, lr)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._train_loop = tf.function(self._loop)

    def per_example_loss(self, y, out):
        import tensorflow as tf

        if self.classification:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
        return tf.square(tf.squeeze(out, axis=-1) - y)

    def _replica_step(self, batch):
        import tensorflow as tf

        features, y = batch
        with tf.GradientTape() as tape:
            out = self.model(features, training=True)
            loss = tf.nn.compute_average_loss(
                self.per_example_loss(y, out), global_batch_size=self.global_batch
            )
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def _loop(self, iterator, num_steps):
        import tensorflow as tf

        loss = tf.constant(0.0)
        for _ in tf.range(num_steps):
            per_replica = self.strategy.run(self._replica_step, args=(next(iterator),))
            loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self.step.assign_add(1)
        return loss

    def train_steps(self, iterator, num_steps: int) -> float:
        import tensorflow as tf

        return float(self._train_loop(iterator, tf.constant(num_steps, dtype=tf.int64)))

    def evaluate(self, dataset) -> dict:
        """Loss and accuracy (classification) or MSE (regression) over one pass of ``dataset``."""
        import numpy as np
        import tensorflow as tf

        @tf.function
        def batch_sums(features, y):
            out = self.model(features, training=False)
            loss = tf.reduce_sum(self.per_example_loss(y, out))
            if self.classification:
                hit = tf.reduce_sum(tf.cast(tf.argmax(out, axis=-1) == y, tf.float32))
            else:
                hit = tf.constant(0.0)
            return loss, hit, tf.shape(y)[0]

        loss_sum = hit_sum = 0.0
        n = 0
        labels = []
        for features, y in dataset:
            loss, hit, count = batch_sums(features, y)
            loss_sum += float(loss)
            hit_sum += float(hit)
            n += int(count)
            labels.append(y.numpy())
        if n == 0:
            return {"examples": 0}
        y_all = np.concatenate(labels)
        metrics = {"examples": n, "loss": loss_sum / n}
        if self.classification:
            metrics["accuracy"] = hit_sum / n
            metrics["majority_baseline_accuracy"] = float(np.bincount(y_all).max() / n)
        else:
            metrics["mse"] = loss_sum / n
            metrics["mean_baseline_mse"] = float(np.var(y_all))
        return metrics


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume training) until ``cfg.train_steps``; evaluate; write metrics.

    Raises UserError for a bad data set, an unknown model, or a model dir of another model.
    """
    cfg.validate()
    import keras
    import tensorflow as tf

    from tfpipes.checkpoints import CheckpointStore, restore_latest
    from tfpipes.input_pipeline import make_dataset
    from tfpipes.models import checkpoint_objects
    from tfpipes.schema import load_schema

    t_start = time.monotonic()
    res = strategy_lib.resolve_from_environment(cfg.strategy or None)
    strategy = strategy_lib.create_strategy(res)
    opt_name, lr = cfg.resolved_optimizer()

    with storage.local_dir(cfg.data) as data_root:
        manifest = manifest_lib.verify_dataset(data_root)
        schema = load_schema(data_root)
        stats = json.loads(storage.read_text(os.path.join(data_root, "stats.json")))
        if cfg.batch_size % strategy.num_replicas_in_sync:
            raise UserError(
                f"--batch-size {cfg.batch_size} is not divisible by the "
                f"{strategy.num_replicas_in_sync} replicas"
            )
        config = {
            "model": json.loads(cfg.model_spec.to_json()),
            "schema": json.loads(schema.to_json()),
            "stats": stats,
            "optimizer": {"name": opt_name, "learning_rate": lr},
        }
        _check_compatible(cfg.model_dir, config)

        keras.utils.set_random_seed(cfg.seed)
        tf.config.experimental.enable_op_determinism()
        trainer = Trainer(strategy, cfg.model_spec, schema, stats, opt_name, lr, cfg.batch_size)

        def dataset_fn(ctx):
            return make_dataset(
                data_root,
                manifest,
                "train",
                schema,
                ctx.get_per_replica_batch_size(cfg.batch_size),
                training=True,
                seed=cfg.seed,
                shuffle_buffer=cfg.shuffle_buffer,
                input_context=ctx,
                cache=cfg.cache,
            )

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        store = CheckpointStore(cfg.model_dir, writer=res.is_chief)
        try:
            ckpt = tf.train.Checkpoint(
                **checkpoint_objects(trainer.model),
                optimizer=trainer.optimizer,
                step=trainer.step,
                iterator=iterator,
            )
            manager = tf.train.CheckpointManager(ckpt, store.local_dir, cfg.max_to_keep)
            restored = restore_latest(ckpt, manager)
            start = int(trainer.step.numpy())
            if restored:
                log.info("resumed from %s at step %d", restored, start)
            if res.is_chief:
                storage.write_text(
                    storage.join(cfg.model_dir, MODEL_CONFIG), json.dumps(config, indent=2) + "\n"
                )
            result = _run_loop(cfg, trainer, iterator, manager, store, start, res.is_chief)
            steps_run, seconds, last_ckpt = result
            eval_ds = make_dataset(
                data_root, manifest, "eval", schema, max(cfg.batch_size, 256), training=False
            )
            metrics = trainer.evaluate(eval_ds)
        finally:
            store.close()
    final = int(trainer.step.numpy())
    metrics.update({"step": final, "train_examples_per_second": _rate(steps_run, cfg, seconds)})
    if res.is_chief:
        storage.write_text(
            storage.join(cfg.model_dir, METRICS), json.dumps(metrics, indent=2) + "\n"
        )
    return TrainResult(
        cfg.model_dir,
        start,
        final,
        steps_run,
        time.monotonic() - t_start,
        _rate(steps_run, cfg, seconds),
        metrics,
        last_ckpt,
    )


def _rate(steps: int, cfg: TrainConfig, seconds: float) -> float:
    return steps * cfg.batch_size / seconds if seconds > 0 else 0.0


def _run_loop(cfg, trainer: Trainer, iterator, manager, store, start: int, is_chief: bool):
    """The cadence: chunks of steps, log lines, checkpoints, a progress bar. Returns
    (steps run, seconds spent in steps, newest checkpoint path)."""
    import tensorflow as tf

    step = start
    target = cfg.train_steps
    bar = progress.Progress("train", total=target, unit="step", enabled=cfg.progress)
    bar.update_to(step)
    summary = (
        tf.summary.create_file_writer(
            storage.normalize(os.path.join(store.local_dir, "..", "logs"))
        )
        if is_chief and not store.remote
        else tf.summary.create_noop_writer()
    )
    spent = 0.0
    since_log_steps, since_log_t = 0, time.monotonic()
    last_ckpt = manager.latest_checkpoint or ""
    while step < target:
        n = min(
            cfg.steps_per_loop,
            target - step,
            cfg.checkpoint_every - step % cfg.checkpoint_every,
            cfg.log_every - step % cfg.log_every,
        )
        t = time.monotonic()
        loss = trainer.train_steps(iterator, n)
        spent += time.monotonic() - t
        step += n
        since_log_steps += n
        bar.update_to(step, loss=f"{loss:.4f}")
        if step % cfg.log_every == 0 or step == target:
            now = time.monotonic()
            eps = since_log_steps * cfg.batch_size / max(now - since_log_t, 1e-9)
            log.debug("step %d loss %.5f examples/s %.0f", step, loss, eps)
            if not bar._bar:
                log.info("step %d/%d loss %.5f examples/s %.0f", step, target, loss, eps)
            with summary.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("examples_per_second", eps)
            since_log_steps, since_log_t = 0, now
        if step % cfg.checkpoint_every == 0 or step == target:
            last_ckpt = manager.save(checkpoint_number=step)
            store.commit(last_ckpt)
    bar.close()
    summary.flush()
    return step - start, spent, last_ckpt
