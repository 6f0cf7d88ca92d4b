"""train: a graph-mode custom training loop under the strategy the environment asks for.

The split follows orbit: :class:`Trainer` owns what one step does (a ``tf.function`` that runs
K steps per call in a ``tf.range`` loop whose count is a tensor, so it never retraces);
:func:`train` owns the cadence (when to log, checkpoint, evaluate and stop). A second run with
the same model directory resumes from the newest sound checkpoint, data position included, and
ends with the same weights as an uninterrupted run (op determinism, seeded shuffles, the input
position restored).

Where the data position lives: with ``--cache``, batch g is computed inside the step from the
step count, which is the position. Streaming in a single task with one replica (the default
strategy, OneDevice), the tf.data iterator's state is saved in the checkpoint. Otherwise the
pipeline is rebuilt on resume and skips the batches already consumed (the step count says how
many): TensorFlow 2.21 cannot save a distributed iterator (MirroredStrategy on several GPUs),
and under MultiWorkerMirroredStrategy the checkpoint is the chief's, which cannot hold the
other workers' iterators (each worker reads its own shards).

ParameterServerStrategy is dispatched to :mod:`tfpipes.training.ps` (one hook in :func:`train`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time

from tfpipes import manifest as manifest_lib
from tfpipes import progress, storage
from tfpipes import strategy as strategy_lib
from tfpipes.errors import RetryableError, UserError, first_line
from tfpipes.models import ModelSpec
from tfpipes.schema import Schema
from tfpipes.training.config import TrainConfig, TrainResult, precision_policy

log = logging.getLogger("tfpipes.train")

MODEL_CONFIG = "model_config.json"
METRICS = "metrics.json"
GPU_CACHE_BYTES = 1 << 30


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
    """UserError if ``model_dir`` holds checkpoints of another model, data set schema or input
    mode (resuming those would fail, or silently mix two runs)."""
    path = storage.join(model_dir, MODEL_CONFIG)
    if not storage.exists(path):
        return
    old = json.loads(storage.read_text(path))
    for key, what in (
        ("model", "model options"),
        ("schema", "data set schema"),
        ("run", "setting of --cache / --mixed-precision"),
    ):
        if key in old and key in config and old[key] != config[key]:
            raise UserError(
                f"{model_dir}: holds checkpoints of a different {what} "
                f"({json.dumps(old.get(key))[:120]}); use a new --model-dir"
            )


def per_example_loss(classification: bool, y, out):
    """Softmax cross-entropy of logits ``out`` (classification) or squared error, per example,
    in float32 whatever the compute dtype."""
    import tensorflow as tf

    out = tf.cast(out, tf.float32)
    if classification:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
    return tf.square(tf.squeeze(out, axis=-1) - y)


class Trainer:
    """Owns the model, optimizer, step counter and the compiled train and eval functions.

    ``batch`` is the global batch size. ``mixed_precision`` (see :func:`precision_policy`):
    the body computes in float16 or bfloat16 with float32 weights; with float16 the loss is
    scaled against underflow (``LossScaleOptimizer``, its scale saved with the optimizer).
    """

    def __init__(
        self,
        strategy,
        spec: ModelSpec,
        schema: Schema,
        stats: dict,
        opt,
        lr,
        batch,
        *,
        mixed_precision: bool | str = False,
    ):
        import keras
        import tensorflow as tf

        from tfpipes.models import build_model

        self.strategy = strategy
        self.schema = schema
        self.global_batch = batch
        self.classification = schema.task == "classification"
        gpu = bool(tf.config.list_logical_devices("GPU"))
        compute = precision_policy(mixed_precision, gpu)
        policy = f"mixed_{compute}" if compute else None
        previous = keras.config.dtype_policy()
        with strategy.scope():
            try:
                if policy:
                    keras.config.set_dtype_policy(policy)
                self.model = build_model(spec, schema, stats)
            finally:
                keras.config.set_dtype_policy(previous)
            self.optimizer = _make_optimizer(opt, lr)
            if policy == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._train_loop = tf.function(self._loop)

    def per_example_loss(self, y, out):
        return per_example_loss(self.classification, y, out)

    def replica_step(self, batch):
        """One optimizer step on one replica's ``(features, target)``; returns its share of
        the global mean loss (sum over replicas = the loss of the global batch)."""
        import tensorflow as tf

        features, y = batch
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            out = self.model(features, training=True)
            loss = tf.nn.compute_average_loss(
                self.per_example_loss(y, out), global_batch_size=self.global_batch
            )
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(
                    tf.add_n([tf.cast(x, tf.float32) for x in self.model.losses])
                )
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return loss

    def _loop(self, iterator, num_steps):
        import tensorflow as tf

        total = tf.constant(0.0)
        for _ in tf.range(num_steps):
            per_replica = self.strategy.run(self.replica_step, args=(next(iterator),))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self.step.assign_add(1)
        return total / tf.cast(num_steps, tf.float32)

    def _loop_in_memory(self, num_steps):
        import tensorflow as tf

        # Batch g of the in-memory data is a function of g alone; taking g from the loop
        # counter, not from the step variable, lets the next gather overlap this step.
        start = self.step.read_value()
        total = tf.constant(0.0)
        for i in tf.range(num_steps):
            batch = self._memory.batch(start + i)
            per_replica = self.strategy.run(self.replica_step, args=(batch,))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self.step.assign_add(1)
        return total / tf.cast(num_steps, tf.float32)

    def train_steps(self, data, num_steps: int) -> float:
        """Run ``num_steps`` steps; return their mean loss.

        ``data``: an iterator of batches (tf.data or distributed), or an
        ``input_pipeline.InMemoryData`` whose batch g the step computes for global step g (one
        replica per task only).
        """
        import tensorflow as tf

        from tfpipes.input_pipeline import InMemoryData

        n = tf.constant(num_steps, dtype=tf.int64)
        if isinstance(data, InMemoryData):
            if getattr(self, "_memory", None) is not data:
                self._memory = data
                self._memory_loop = tf.function(self._loop_in_memory)
            return float(self._memory_loop(n))
        return float(self._train_loop(data, n))

    @property
    def learning_rate(self) -> float:
        import tensorflow as tf

        return float(tf.convert_to_tensor(self.optimizer.learning_rate))

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


def configure_tensorflow(cfg: TrainConfig) -> bool:
    """Process-wide settings before any op runs: op determinism and XLA. Returns whether ops
    are deterministic."""
    import tensorflow as tf

    deterministic = cfg.deterministic
    if deterministic is None:
        deterministic = not tf.config.list_physical_devices("GPU")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.jit:
        # Auto-clustering compiles the parts of the step XLA supports and leaves the rest
        # (string hashing, the tf.data iterator) to TensorFlow; it acts on GPUs.
        tf.config.optimizer.set_jit("autoclustering")
        on_cpu = "--tf_xla_cpu_global_jit" in os.environ.get("TF_XLA_FLAGS", "")
        if not tf.config.list_physical_devices("GPU") and not on_cpu:
            log.info(
                "--jit: XLA auto-clustering acts on GPUs and no GPU is visible "
                "(TF_XLA_FLAGS=--tf_xla_cpu_global_jit clusters on the CPU too)"
            )
    return deterministic


@contextlib.contextmanager
def _tensorflow_settings_restored():
    """Leave the process as found: op determinism and XLA are process-wide, and a library
    caller (a test, a notebook) may not want them after train() returns."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    determinism, jit = tf_config.is_op_determinism_enabled(), tf.config.optimizer.get_jit()
    try:
        yield
    finally:
        if not determinism and tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()
        tf.config.optimizer.set_jit(jit or False)


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume training) until ``cfg.train_steps``; evaluate; write metrics.

    Raises UserError for a bad data set, an unknown model, or a model dir of another model;
    RetryableError (exit 138) when a peer or the storage is unreachable, or on SIGTERM
    (preemption: a checkpoint is written first, where the strategy allows it).
    """
    cfg.validate()
    res = strategy_lib.resolve_from_environment(cfg.strategy or None)
    if res.kind == "parameter_server":
        # The one dispatch hook: ParameterServerStrategy (ClusterCoordinator, per-worker
        # datasets, serving ps/worker tasks) lives in its own module, returns a TrainResult.
        from tfpipes.training import ps

        return ps.train(cfg, res)
    if res.task_type not in ("chief", "worker"):
        raise UserError(
            f"TF_CONFIG: task type {res.task_type!r} has no role in {res.kind} training"
        )
    with _tensorflow_settings_restored():
        return _train(cfg, res)


def _train(cfg: TrainConfig, res: strategy_lib.Resolution) -> TrainResult:
    import keras
    import tensorflow as tf

    from tfpipes import peers
    from tfpipes.checkpoints import CheckpointStore, restore_latest, warm_start
    from tfpipes.input_pipeline import check_records, load_in_memory, make_dataset
    from tfpipes.models import checkpoint_objects
    from tfpipes.schema import load_schema

    t_start = time.monotonic()
    peers.check_shards(cfg.data, res.num_workers)  # before waiting for anyone
    with peers.rendezvous(res):  # first: MWMS must configure collectives before any op runs
        strategy = strategy_lib.create_strategy(res)
    configure_tensorflow(cfg)
    opt_name, lr = cfg.resolved_optimizer()
    replicas = strategy.num_replicas_in_sync
    precision = precision_policy(cfg.mixed_precision, bool(tf.config.list_logical_devices("GPU")))
    if cfg.batch_size % replicas:
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by the {replicas} replicas"
        )

    with storage.local_dir(cfg.data) as data_root:
        manifest = manifest_lib.verify_dataset(data_root)
        schema = load_schema(data_root)
        stats = json.loads(storage.read_text(os.path.join(data_root, "stats.json")))
        check_records(data_root, manifest, schema)
        config = {
            "model": json.loads(cfg.model_spec.to_json()),
            "schema": json.loads(schema.to_json()),
            "stats": stats,
            "optimizer": {"name": opt_name, "learning_rate": lr},
            # The compute dtype as resolved here: a float16 run's checkpoints hold a loss
            # scale that a bfloat16 or float32 run would not restore.
            "run": {"cache": cfg.cache, "mixed_precision": precision},
        }
        _check_compatible(cfg.model_dir, config)
        if precision:
            scaling = ", dynamic loss scaling" if precision == "float16" else ""
            log.info("mixed precision: %s compute, float32 weights%s", precision, scaling)

        keras.utils.set_random_seed(cfg.seed)
        trainer = Trainer(
            strategy,
            cfg.model_spec,
            schema,
            stats,
            opt_name,
            lr,
            cfg.batch_size,
            mixed_precision=precision,
        )
        # One replica per input pipeline: each task feeds its replica itself, from memory
        # (--cache) or a plain tf.data iterator. Several local replicas need a distributed
        # dataset, whose iterator TF cannot save. The checkpoint is the chief's, so it can hold
        # the iterator of a single task only; other workers' positions follow from the step.
        plain = replicas == res.num_workers
        ctx = tf.distribute.InputContext(res.num_workers, res.input_pipeline_id, replicas)

        def dataset_fn(input_context, skip=0):
            return make_dataset(
                data_root,
                manifest,
                "train",
                schema,
                input_context.get_per_replica_batch_size(cfg.batch_size),
                training=True,
                seed=cfg.seed,
                shuffle_buffer=cfg.shuffle_buffer,
                input_context=input_context,
                cache=cfg.cache,
                skip_batches=skip,
            )

        store = CheckpointStore(cfg.model_dir, writer=res.is_chief, task_index=res.task_index)
        try:
            objects = dict(
                **checkpoint_objects(trainer.model), optimizer=trainer.optimizer, step=trainer.step
            )
            data = None
            if plain and cfg.cache:
                data = load_in_memory(
                    data_root,
                    manifest,
                    "train",
                    schema,
                    ctx.get_per_replica_batch_size(cfg.batch_size),
                    seed=cfg.seed,
                    input_context=ctx,
                    device=_cache_device(manifest),
                )
            elif plain and res.num_workers == 1:
                data = iter(dataset_fn(ctx))
                objects["iterator"] = data
            ckpt = tf.train.Checkpoint(**objects)
            manager = tf.train.CheckpointManager(ckpt, store.local_dir, cfg.max_to_keep)
            restored = restore_latest(ckpt, manager)
            start = int(trainer.step.numpy())
            if restored:
                log.info("resumed from %s at step %d", restored, start)
                if cfg.warm_start_from:
                    log.info("--warm-start-from ignored: resuming this model dir's own run")
            elif cfg.warm_start_from:
                loaded = warm_start(trainer.model, cfg.warm_start_from, config)
                if loaded:
                    log.info("warm start: weights from %s", loaded)
            if data is None and plain:  # MWMS, one replica per worker: skip `start` batches
                data = iter(dataset_fn(ctx, start))
            elif data is None:  # each step takes one per-replica batch per local replica
                skip = start * (replicas // res.num_workers)
                data = iter(
                    strategy.distribute_datasets_from_function(lambda c: dataset_fn(c, skip))
                )
            if not res.is_chief:  # every worker saves (collectives); only the chief's counts
                manager = tf.train.CheckpointManager(ckpt, store.save_dir, max_to_keep=1)
            loop = _Loop(cfg, trainer, data, manager, store, res, config, restored or "")
            steps_run, seconds, last_ckpt = loop.run(start)
            eval_ds = make_dataset(
                data_root, manifest, "eval", schema, max(cfg.batch_size, 256), training=False
            )
            metrics = trainer.evaluate(eval_ds)
            final = int(trainer.step.numpy())
            rate = _rate(steps_run, cfg, seconds)
            metrics.update({"step": final, "train_examples_per_second": rate})
            if res.is_chief:
                loop.write_eval_summaries(metrics)
                storage.write_text(
                    storage.join(cfg.model_dir, METRICS), json.dumps(metrics, indent=2) + "\n"
                )
                store.sync_logs()
        finally:
            store.close()
    return TrainResult.of_run(cfg, start, final, steps_run, t_start, rate, metrics, last_ckpt)


def _cache_device(manifest) -> str:
    """Where --cache keeps the data: on the GPU when one is used and the data is small (the
    gather then runs next to the step), else in host memory."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    small = sum(s.bytes for s in manifest.shards if s.split == "train") < GPU_CACHE_BYTES
    return gpus[0].name if len(gpus) == 1 and small else "/cpu:0"


def _rate(steps: int, cfg: TrainConfig, seconds: float) -> float:
    return steps * cfg.batch_size / seconds if seconds > 0 else 0.0


class _Loop:
    """The cadence: chunks of steps up to the next log or checkpoint boundary, log lines and
    summaries, checkpoints (committed to object storage), a progress bar, SIGTERM."""

    def __init__(self, cfg, trainer, data, manager, store, res, config: dict, restored: str):
        import tensorflow as tf

        self.cfg, self.trainer, self.data = cfg, trainer, data
        self.manager, self.store, self.res, self.config = manager, store, res, config
        self.chief = res.is_chief
        if self.chief:
            logs = store.logs_dir
            self.train_writer = tf.summary.create_file_writer(os.path.join(logs, "train"))
            self.eval_writer = tf.summary.create_file_writer(os.path.join(logs, "eval"))
        else:
            self.train_writer = self.eval_writer = tf.summary.create_noop_writer()
        # The same on every worker (each must join every save): the restored checkpoint.
        self.last_ckpt = restored
        self.saved_step = _step_of(restored)
        self._wrote_config = False
        self._preempted = threading.Event()

    def save(self, step: int) -> None:
        if self.chief and not self._wrote_config:
            # With the first checkpoint, not before: a run that fails early leaves no trace.
            storage.write_text(
                storage.join(self.cfg.model_dir, MODEL_CONFIG),
                json.dumps(self.config, indent=2) + "\n",
            )
            self._wrote_config = True
        self.train_writer.flush()
        with self._errors_named():  # under MWMS a save runs collectives: a peer may be gone
            path = self.manager.save(checkpoint_number=step)
        if self.chief:
            self.store.commit(path)
            self.last_ckpt = path
        self.saved_step = step

    def run(self, start: int) -> tuple[int, float, str]:
        """Train from ``start`` to the target. Returns (steps run, seconds in steps, newest
        checkpoint)."""
        import tensorflow as tf

        cfg = self.cfg
        step, target = start, cfg.train_steps
        bar = progress.Progress("train", total=target, unit="step", enabled=cfg.progress)
        bar.update_to(step)
        spent = 0.0
        since_steps, since_t = 0, time.monotonic()
        with self._sigterm():
            while step < target:
                n = min(
                    cfg.steps_per_loop,
                    target - step,
                    cfg.checkpoint_every - step % cfg.checkpoint_every,
                    cfg.log_every - step % cfg.log_every,
                )
                t = time.monotonic()
                loss = self._steps(n)
                spent += time.monotonic() - t
                step += n
                since_steps += n
                bar.update_to(step, loss=f"{loss:.4f}")
                if step % cfg.log_every == 0 or step == target:
                    now = time.monotonic()
                    eps = since_steps * cfg.batch_size / max(now - since_t, 1e-9)
                    lr = self.trainer.learning_rate
                    line = "step %d/%d loss %.5f lr %.3g examples/s %.0f"
                    (log.debug if bar._bar else log.info)(line, step, target, loss, lr, eps)
                    with self.train_writer.as_default(step=step):
                        tf.summary.scalar("loss", loss)
                        tf.summary.scalar("learning_rate", lr)
                        tf.summary.scalar("examples_per_second", eps)
                    since_steps, since_t = 0, now
                if step % cfg.checkpoint_every == 0 or step == target:
                    self.save(step)
                if self._preempted.is_set():
                    if self.saved_step != step:
                        self.save(step)
                    raise RetryableError(
                        f"stopped by SIGTERM (preemption) at step {step}; checkpoint "
                        f"{self.last_ckpt or '(none)'} saved: run again to resume"
                    )
            if self.saved_step != step:
                self.save(step)  # nothing to train (target reached): still leave a checkpoint
        bar.close()
        self.train_writer.flush()
        return step - start, spent, self.last_ckpt

    def _steps(self, n: int) -> float:
        with self._errors_named():
            return self.trainer.train_steps(self.data, n)

    @contextlib.contextmanager
    def _errors_named(self):
        """TensorFlow's errors from a step or a save, as the user-facing errors they mean."""
        import tensorflow as tf

        try:
            yield
        except tf.errors.InvalidArgumentError as e:
            if "Feature" in str(e) or "Key:" in str(e) or "parse" in str(e).lower():
                raise UserError(
                    f"{self.cfg.data}: records do not match the data set's schema.json "
                    f"({first_line(e)})"
                ) from None
            raise
        except tf.errors.DataLossError as e:
            raise UserError(f"{self.cfg.data}: a shard is corrupt ({first_line(e)})") from None
        except (
            tf.errors.UnavailableError,
            tf.errors.DeadlineExceededError,
            tf.errors.AbortedError,
            tf.errors.CancelledError,
        ) as e:
            resume = self.last_ckpt or "the start (no checkpoint yet)"
            raise RetryableError(
                f"a peer of the cluster became unreachable ({type(e).__name__}: "
                f"{first_line(e)}); run again to resume from {resume}"
            ) from None

    @contextlib.contextmanager
    def _sigterm(self):
        # Kubernetes preempts with SIGTERM and a grace period: finish the running chunk, save,
        # exit 138 (retryable). Not under MWMS: a save needs every worker, which may already be
        # gone; there the last periodic checkpoint is the resume point.
        main = threading.current_thread() is threading.main_thread()
        if self.res.kind == "multi_worker" or not main:
            yield
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: self._preempted.set())
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def write_eval_summaries(self, metrics: dict) -> None:
        import tensorflow as tf

        with self.eval_writer.as_default(step=int(metrics["step"])):
            for k, v in metrics.items():
                if k not in ("step", "examples") and isinstance(v, (int, float)):
                    tf.summary.scalar(k, v)
        self.eval_writer.flush()


def _step_of(prefix: str) -> int:
    try:
        return int(prefix.rsplit("-", 1)[-1]) if prefix else -1
    except ValueError:
        return -1
