"""The runner for ParameterServerStrategy: the chief coordinates, workers compute, ps hold
the variables.

- variables are created under ``strategy.scope()``: ``MinSizePartitioner`` (see
  ``strategy.py``) splits each variable of at least 512 KiB into one shard per ps along its
  first axis; the chief logs where every shard lives (``partitioned ... ps:0 [7, 16384], ...``);
- each worker reads its own files of the train split (FILE sharding by worker index) through
  ``create_per_worker_dataset``; :meth:`PSRunner.train` schedules closures of
  ``--steps-per-loop`` steps of ``--batch-size`` examples and ``join``\\ s (the controller asks
  for the steps up to each log and checkpoint boundary);
- a worker that dies: the coordinator runs its closures on the others and uses it again when
  it is back (a closure that ran partly may be applied twice: steps may end past the target);
- a ps that dies: its variables are gone, so the chief stops with a :class:`RetryableError`
  (exit 138) naming the ps; run the job again and it resumes from the last checkpoint.

A checkpoint holds each partitioned variable whole, under the same name a single-process run
uses, so it restores into a plain model (``tfpipes export``, and the evaluation at the end,
which runs on such a model in the chief). The input position is not checkpointed: a resumed
run reshuffles with the seed offset by the restored step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from tfpipes import peers, stream
from tfpipes import strategy as strategy_lib
from tfpipes.errors import RetryableError, UserError, first_line
from tfpipes.strategy import Resolution
from tfpipes.training import step as step_lib
from tfpipes.training.config import TrainConfig
from tfpipes.training.data import TrainingData
from tfpipes.training.runner import ResumeFrom, Runner

log = logging.getLogger("tfpipes.ps_train")

# Seconds the chief keeps probing the parameter servers after an error that names none of them.
GONE_WINDOW = 3.0


def check_role(cfg: TrainConfig, res: Resolution) -> None:
    """UserError for flags parameter servers do not support, or a task that is not the chief
    (workers and ps serve: :mod:`~tfpipes.training.ps_serve`)."""
    for flag, value in (
        ("--mixed-precision", cfg.mixed_precision),
        ("--warm-start-from", cfg.warm_start_from),
    ):
        if value:
            raise UserError(f"{flag} is not supported with parameter servers")
    if res.task_type != "chief":
        raise UserError(f"TF_CONFIG: task type {res.task_type!r} has no role in ps training")


@dataclasses.dataclass(frozen=True)
class Connection:
    """The strategy and its coordinator, created once every worker and ps answers."""

    strategy: object
    coordinator: object
    precision: str = ""  # parameter servers train in float32


def connect(cfg: TrainConfig, res: Resolution, timeout: float) -> Connection:
    """Wait (``timeout`` seconds) until every worker and ps accepts connections, then create
    the strategy and its ``ClusterCoordinator``. UserError for too few shards (checked before
    any wait); RetryableError naming a peer that never came."""
    import tensorflow as tf

    peers.check_shards(cfg.data, res.num_workers)  # before waiting for anyone
    peers.wait_for_peers(res, timeout)
    strategy = strategy_lib.create_strategy(res)
    return Connection(strategy, tf.distribute.coordinator.ClusterCoordinator(strategy))


def open_runner(
    cfg: TrainConfig, res: Resolution, conn: Connection, data: TrainingData, config: dict, store
) -> PSRunner:
    """Build the model on the parameter servers, restore the newest checkpoint of ``store``,
    and create the workers' input pipelines."""
    return PSRunner(cfg, res, conn, data, store)


class PSTrainer:
    """The model, optimizer and step counter on the parameter servers, and the worker step.

    Keras 3 cannot update a partitioned (``ShardedVariable``) weight through its optimizer, so
    the optimizer updates each shard as a variable of its own: ``targets`` are Keras variables
    wrapping the shards (and the unpartitioned weights themselves), ``sources`` the TensorFlow
    variables the gradients are taken with respect to, in the same order.
    """

    def __init__(
        self, strategy, spec, schema, stats, opt_name: str, lr: float, batch: int, weights=None
    ):
        import keras
        import tensorflow as tf

        from tfpipes.models import build_model

        self.strategy = strategy
        self.batch = batch
        self.classification = schema.task == "classification"
        self.class_weights = None if weights is None else tf.constant(weights)
        with strategy.scope():
            self.model = build_model(spec, schema, stats)
            self.optimizer = step_lib.make_optimizer(opt_name, lr)
            self.sources, self.targets = [], []
            for v in self.model.trainable_variables:
                shards = v.value.variables if _is_sharded(v) else None
                if shards is None:
                    self.sources.append(v.value)
                    self.targets.append(v)
                    continue
                for i, shard in enumerate(shards):
                    self.sources.append(shard)
                    self.targets.append(keras.Variable(shard, name=f"{v.name}_shard_{i}"))
            self.optimizer.build(self.targets)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        for v in self.model.variables:
            if _is_sharded(v):
                _checkpoint_whole(v)
        self.worker_loop = tf.function(self._loop)

    def placement(self) -> list[tuple[str, list[int], list[tuple[str, list[int]]]]]:
        """(variable path, shape, [(task, shard shape)]) for every model variable."""
        out = []
        for v in self.model.variables:
            parts = v.value.variables if _is_sharded(v) else [v.value]
            out.append(
                (v.path, list(v.shape), [(_task_name(p.device), list(p.shape)) for p in parts])
            )
        return out

    def replica_step(self, batch):
        """One optimizer step on one worker's batch; returns its loss."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = step_lib.replica_loss(
                self.model, self.classification, batch, self.batch, self.class_weights
            )
        grads = tape.gradient(loss, self.sources)
        self.optimizer.apply_gradients(zip(grads, self.targets))
        return loss

    def _loop(self, iterator, num_steps):
        """``num_steps`` steps on one worker; returns (last loss, that worker's index)."""
        import tensorflow as tf

        loss = tf.constant(0.0)
        for _ in tf.range(num_steps):
            per_replica = self.strategy.run(self.replica_step, args=(next(iterator),))
            loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self.step.assign_add(1)
        return loss, tf.distribute.coordinator.experimental_get_current_worker_index()


class PSRunner(Runner):
    """Closures of :class:`PSTrainer` steps scheduled on the workers by the coordinator."""

    chunk = None  # the closures are sized here, between two joins
    saves_on_sigterm = True  # only the chief saves: nothing else needs to be up

    def __init__(self, cfg, res: Resolution, conn: Connection, data: TrainingData, store):
        import keras
        import tensorflow as tf

        from tfpipes.checkpoints import restore_latest
        from tfpipes.input_pipeline import make_dataset
        from tfpipes.models import checkpoint_objects

        self.cfg, self.res, self.data = cfg, res, data
        self.coordinator = conn.coordinator
        strategy = conn.strategy
        # Workers read the shards themselves, from a path they can open: the shared directory,
        # or for a remote data set the files their own shard caches fetch (ps_serve).
        worker_root = data.root
        if data.streamed:
            worker_root = stream.WorkerShards(
                cfg.data, data.manifest, stream.shared_dir(cfg.data, cfg.model_dir)
            )
        opt_name, lr = cfg.resolved_optimizer()
        keras.utils.set_random_seed(cfg.seed)
        weights = step_lib.class_weights(cfg.class_weights, data.schema, data.stats)
        self.trainer = trainer = PSTrainer(
            strategy, cfg.model_spec, data.schema, data.stats, opt_name, lr, cfg.batch_size, weights
        )
        _log_placement(trainer)
        ckpt = tf.train.Checkpoint(
            **checkpoint_objects(trainer.model), optimizer=trainer.optimizer, step=trainer.step
        )
        self.manager = tf.train.CheckpointManager(ckpt, store.local_dir, cfg.max_to_keep)
        with self.errors(""):
            self.restored = restore_latest(ckpt, self.manager) or ""
            start = self.step

        def dataset_fn(_):
            index = tf.distribute.coordinator.experimental_get_current_worker_index()
            ctx = tf.distribute.InputContext(res.num_workers, index, 1)
            return make_dataset(
                worker_root,
                data.manifest,
                "train",
                data.schema,
                cfg.batch_size,
                training=True,
                seed=cfg.seed + start,
                shuffle_buffer=cfg.shuffle_buffer,
                input_context=ctx,
                cache=cfg.cache,
            )

        @tf.function
        def per_worker_dataset():
            return strategy.distribute_datasets_from_function(dataset_fn)

        self.iterator = iter(self.coordinator.create_per_worker_dataset(per_worker_dataset))
        self.by_worker = [0] * res.num_workers

    @property
    def step(self) -> int:
        return int(self.trainer.step.numpy())

    @property
    def learning_rate(self) -> float:
        import tensorflow as tf

        return float(tf.convert_to_tensor(self.trainer.optimizer.learning_rate))

    def train(self, num_steps: int) -> float:
        """Schedule ``num_steps`` steps as closures and join; the last closure's loss."""
        import tensorflow as tf

        todo, scheduled = num_steps, []
        # At least two closures per worker between joins, so that none of them idles.
        size = max(1, min(self.cfg.steps_per_loop, todo // (2 * self.res.num_workers)))
        while todo > 0:
            n = min(size, todo)
            result = self.coordinator.schedule(
                self.trainer.worker_loop, args=(self.iterator, tf.constant(n, dtype=tf.int64))
            )
            scheduled.append((n, result))
            todo -= n
        self.coordinator.join()
        loss = 0.0
        for n, result in scheduled:
            loss, worker = result.fetch()
            self.by_worker[int(worker)] += n
        return float(loss)

    def log_suffix(self) -> str:
        # Which workers ran the steps: a worker that died and came back shows up again.
        workers = ", ".join(f"worker:{i} {n}" for i, n in enumerate(self.by_worker))
        self.by_worker = [0] * len(self.by_worker)
        return f" (steps by {workers})"

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)

    def evaluate(self, checkpoint: str) -> dict:
        """Evaluate ``checkpoint`` on a plain model in this process: proves that the checkpoint
        restores without the cluster, and reads each variable from the ps once."""
        import tensorflow as tf

        from tfpipes.input_pipeline import make_dataset
        from tfpipes.models import checkpoint_objects
        from tfpipes.training.trainer import Trainer

        cfg, d = self.cfg, self.data
        opt_name, lr = cfg.resolved_optimizer()
        with tf.device("/job:chief/replica:0/task:0/device:CPU:0"):
            local = Trainer(
                tf.distribute.get_strategy(), cfg.model_spec, d.schema, d.stats, opt_name, lr, 1
            )
            status = tf.train.Checkpoint(**checkpoint_objects(local.model), step=local.step)
            status = status.restore(checkpoint)
            status.assert_existing_objects_matched()
            status.expect_partial()  # the optimizer's shard slots have no place in a plain model
            eval_ds = make_dataset(
                d.root, d.manifest, "eval", d.schema, max(cfg.batch_size, 256), training=False
            )
            metrics = local.evaluate(eval_ds)
        metrics["step"] = int(local.step.numpy())
        return metrics

    @contextlib.contextmanager
    def errors(self, resume_from: ResumeFrom) -> Iterator[None]:
        """A failed op as a RetryableError naming the parameter servers that went away."""
        import tensorflow as tf

        try:
            yield
        except tf.errors.OpError as e:
            # The controller's resume point names the model dir the user gave (gs://, not the
            # local mirror); before the cadence starts, the manager's is all there is.
            resume = resume_from() if callable(resume_from) else resume_from
            raise _failure(self.res, e, resume or self.manager.latest_checkpoint) from None


def _is_sharded(variable) -> bool:
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    return isinstance(variable.value, ShardedVariable)


def _checkpoint_whole(variable) -> None:
    """Save a Keras variable backed by a ShardedVariable as one tensor under its usual key.

    Keras 3 variables hand their TensorFlow variable to the checkpoint, which cannot save a
    ShardedVariable through a Keras wrapper; saving the concatenated value (and splitting it
    on restore) also makes the checkpoint readable by a plain, unpartitioned model.
    """
    import tensorflow as tf

    def serialize():
        return {"VARIABLE_VALUE": tf.convert_to_tensor(variable.value)}

    def restore(tensors):
        return variable.value.assign(tensors["VARIABLE_VALUE"])

    # TensorFlow's checkpointer looks for these on the instance before the class.
    variable._serialize_to_tensors = serialize
    variable._restore_from_tensors = restore


def _task_name(device: str) -> str:
    m = peers.TF_TASK.search(device or "")
    return f"{m.group(1)}:{m.group(2)}" if m else device


def _log_placement(trainer: PSTrainer) -> None:
    partitioned = 0
    for path, shape, parts in trainer.placement():
        where = ", ".join(f"{task} {shard}" for task, shard in parts)
        if len(parts) > 1:
            partitioned += 1
            log.info("partitioned %s %s across %s", path, shape, where)
        else:
            log.debug("variable %s %s on %s", path, shape, where)
    if not partitioned:
        log.info("no variable is large enough to be partitioned across the parameter servers")


def _failure(res: Resolution, error: Exception, resume: str | None) -> Exception:
    """A RetryableError naming the parameter servers that went away, or ``error`` itself."""
    import tensorflow as tf

    streamed = stream.error_from_tf(error)
    if isinstance(streamed, RetryableError):
        where = f"from {resume}" if resume else "from the start (no checkpoint yet)"
        return RetryableError(f"{streamed}; run the job again to resume {where}")
    if streamed is not None:
        return streamed
    text = getattr(error, "message", None) or str(error)
    first = first_line(error)
    # A ps is gone if it no longer answers, or if TensorFlow's error names its address (a
    # restarted ps answers again at once, but the variables it held are lost all the same).
    servers = [p for p in peers.cluster_peers(res) if p.task_type == "ps"]
    named = [p for p in servers if p.address in text]
    rest = [p for p in servers if p not in named]
    gone = named + peers.gone_within(rest, 0.0 if named else GONE_WINDOW)
    where = f"from {resume}" if resume else "from the start (no checkpoint yet)"
    if gone:
        who = ", ".join(f"{p.name} at {p.address}" for p in gone)
        return RetryableError(
            f"parameter server {who} failed: its variables are lost; run the job again to "
            f"resume {where} ({type(error).__name__}: {first})"
        )
    if isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError)):
        return RetryableError(
            f"the cluster became unavailable; run the job again to resume {where} "
            f"({type(error).__name__}: {first})"
        )
    return error
