"""The runner for the default, OneDevice, Mirrored and MultiWorkerMirrored strategies.

Where the data position lives: with ``--cache``, batch g is computed inside the step from the
step count, which is the position. Streaming local files in a single task with one replica
(the default strategy, OneDevice), the tf.data iterator's state is saved in the checkpoint.
Otherwise (a remote data set too: its shard cache's files are gone once read) the
pipeline is rebuilt on resume and skips the batches already consumed (the step count says how
many): TensorFlow 2.21 cannot save a distributed iterator (MirroredStrategy on several GPUs),
and under MultiWorkerMirroredStrategy the checkpoint is the chief's, which cannot hold the
other workers' iterators (each worker reads its own shards). Together with op determinism and
seeded shuffles this makes a resumed run end with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from tfpipes import peers
from tfpipes import strategy as strategy_lib
from tfpipes.errors import RetryableError, UserError, first_line
from tfpipes.strategy import Resolution
from tfpipes.training.config import TrainConfig, precision_policy
from tfpipes.training.data import TrainingData
from tfpipes.training.runner import ResumeFrom, Runner, resume_point
from tfpipes.training.step import class_weights
from tfpipes.training.tf_settings import configure_tensorflow
from tfpipes.training.trainer import Trainer

log = logging.getLogger("tfpipes.train")

GPU_CACHE_BYTES = 1 << 30


def check_role(cfg: TrainConfig, res: Resolution) -> None:
    """UserError unless this task trains under ``res.kind`` (chief or worker)."""
    if res.task_type not in ("chief", "worker"):
        raise UserError(
            f"TF_CONFIG: task type {res.task_type!r} has no role in {res.kind} training"
        )


@dataclasses.dataclass(frozen=True)
class Connection:
    """The strategy, created once every peer is there; the compute dtype it runs with."""

    strategy: object
    precision: str


def connect(cfg: TrainConfig, res: Resolution, timeout: float) -> Connection:
    """Wait for the peers (``timeout`` seconds), create the strategy and set up TensorFlow.
    UserError for too few shards (checked before any wait) or a batch the replicas cannot
    split; RetryableError naming a peer that never came."""
    import tensorflow as tf

    peers.check_shards(cfg.data, res.num_workers)  # before waiting for anyone
    with peers.rendezvous(res, timeout):  # first: MWMS configures collectives before any op
        strategy = strategy_lib.create_strategy(res)
    configure_tensorflow(cfg)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by the {replicas} replicas"
        )
    gpu = bool(tf.config.list_logical_devices("GPU"))
    return Connection(strategy, precision_policy(cfg.mixed_precision, gpu))


def open_runner(
    cfg: TrainConfig, res: Resolution, conn: Connection, data: TrainingData, config: dict, store
) -> DefaultRunner:
    """Build the model, restore the newest checkpoint of ``store`` (or warm-start), and
    position the input there."""
    return DefaultRunner(cfg, res, conn, data, config, store)


class DefaultRunner(Runner):
    """:class:`Trainer` fed from memory (``--cache``), a saved tf.data iterator, or a rebuilt
    pipeline that skips to the restored step (see the module docstring)."""

    def __init__(self, cfg, res, conn: Connection, data: TrainingData, config: dict, store):
        import keras
        import tensorflow as tf

        from tfpipes.checkpoints import restore_latest, warm_start
        from tfpipes.input_pipeline import load_in_memory, make_dataset
        from tfpipes.models import checkpoint_objects

        self.cfg, self.data = cfg, data
        strategy = conn.strategy
        opt_name, lr = cfg.resolved_optimizer()
        keras.utils.set_random_seed(cfg.seed)
        self.trainer = trainer = Trainer(
            strategy,
            cfg.model_spec,
            data.schema,
            data.stats,
            opt_name,
            lr,
            cfg.batch_size,
            mixed_precision=conn.precision,
            class_weights=class_weights(cfg.class_weights, data.schema, data.stats),
        )
        self.chunk = cfg.steps_per_loop
        self._agreement = _stop_agreement(strategy) if res.kind == "multi_worker" else None
        replicas = strategy.num_replicas_in_sync
        # One replica per input pipeline: each task feeds its replica itself, from memory
        # (--cache) or a plain tf.data iterator. Several local replicas need a distributed
        # dataset, whose iterator TF cannot save. The checkpoint is the chief's, so it can hold
        # the iterator of a single task only; other workers' positions follow from the step.
        plain = replicas == res.num_workers
        ctx = tf.distribute.InputContext(res.num_workers, res.input_pipeline_id, replicas)

        def dataset_fn(input_context, skip=0):
            return make_dataset(
                data.root,
                data.manifest,
                "train",
                data.schema,
                input_context.get_per_replica_batch_size(cfg.batch_size),
                training=True,
                seed=cfg.seed,
                shuffle_buffer=cfg.shuffle_buffer,
                input_context=input_context,
                cache=cfg.cache,
                skip_batches=skip,
            )

        objects = dict(
            **checkpoint_objects(trainer.model), optimizer=trainer.optimizer, step=trainer.step
        )
        self.input = None
        if plain and cfg.cache:
            # A streamed split is read here, before any step: a storage outage is retryable
            # (exit 138) here too, not a traceback.
            with self.errors("the model dir's newest checkpoint, if any"):
                self.input = load_in_memory(
                    data.root,
                    data.manifest,
                    "train",
                    data.schema,
                    ctx.get_per_replica_batch_size(cfg.batch_size),
                    seed=cfg.seed,
                    input_context=ctx,
                    device=cache_device(data.manifest),
                )
        elif plain and res.num_workers == 1 and not data.streamed:
            self.input = iter(dataset_fn(ctx))
            objects["iterator"] = self.input
        ckpt = tf.train.Checkpoint(**objects)
        manager = tf.train.CheckpointManager(ckpt, store.local_dir, cfg.max_to_keep)
        self.restored = restore_latest(ckpt, manager) or ""
        start = self.step
        if self.restored and cfg.warm_start_from:
            log.info("--warm-start-from ignored: resuming this model dir's own run")
        elif cfg.warm_start_from:
            loaded = warm_start(trainer.model, cfg.warm_start_from, config)
            if loaded:
                log.info("warm start: weights from %s", loaded)
        if self.input is None and plain:  # MWMS, one replica per worker: skip `start` batches
            self.input = iter(dataset_fn(ctx, start))
        elif self.input is None:  # each step takes one per-replica batch per local replica
            skip = start * (replicas // res.num_workers)
            self.input = iter(
                strategy.distribute_datasets_from_function(lambda c: dataset_fn(c, skip))
            )
        if not res.is_chief:  # every worker saves (collectives); only the chief's counts
            manager = tf.train.CheckpointManager(ckpt, store.save_dir, max_to_keep=1)
        self.manager = manager

    @property
    def step(self) -> int:
        return int(self.trainer.step.numpy())

    @property
    def learning_rate(self) -> float:
        return self.trainer.learning_rate

    def train(self, num_steps: int) -> float:
        return self.trainer.train_steps(self.input, num_steps)

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)

    def agree_to_stop(self, requested: bool) -> bool:
        """Under MWMS every worker stops where any got SIGTERM: one all-reduce per chunk, at
        the same step on each (the chunks are the same), so the save that follows runs on all
        of them. A peer already gone fails the all-reduce: see :meth:`errors`."""
        if self._agreement is None:
            return requested
        import tensorflow as tf

        return float(self._agreement(tf.constant(1.0 if requested else 0.0))) > 0

    def evaluate(self, checkpoint: str) -> dict:
        """Every worker evaluates the model it trained (MWMS: they are the same)."""
        from tfpipes.input_pipeline import make_dataset

        d, cfg = self.data, self.cfg
        eval_ds = make_dataset(
            d.root, d.manifest, "eval", d.schema, max(cfg.batch_size, 256), training=False
        )
        metrics = self.trainer.evaluate(eval_ds)
        metrics["step"] = self.step
        return metrics

    @contextlib.contextmanager
    def errors(self, resume_from: ResumeFrom) -> Iterator[None]:
        """TensorFlow's errors from a step or a save, as the user-facing errors they mean
        (under MWMS a save runs collectives too: a peer may be gone)."""
        import tensorflow as tf

        try:
            yield
        except tf.errors.InvalidArgumentError as e:
            streamed = stream_error(e, resume_from)
            if streamed is not None:
                raise streamed from None
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
            raise RetryableError(
                f"a peer of the cluster became unreachable ({type(e).__name__}: "
                f"{first_line(e)}); run again to resume from {resume_point(resume_from)}"
            ) from None


def stream_error(error, resume_from: ResumeFrom):
    """The error a shard cache reported (:mod:`tfpipes.stream`) as a RetryableError saying
    where a rerun resumes, or its UserError; None for any other TensorFlow error."""
    from tfpipes import stream

    found = stream.error_from_tf(error)
    if isinstance(found, RetryableError):
        return RetryableError(f"{found}; run again to resume from {resume_point(resume_from)}")
    return found


def _stop_agreement(strategy):
    """A compiled function: the sum over every worker of a float flag (an all-reduce in the
    replica context, the collective MWMS runs for gradients)."""
    import tensorflow as tf

    @tf.function
    def agree(flag):
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

        return strategy.experimental_local_results(strategy.run(replica_fn))[0]

    return agree


def cache_device(manifest) -> str:
    """Where --cache keeps the data: on the GPU when one is used and the data is small (the
    gather then runs next to the step), else in host memory."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    small = sum(s.bytes for s in manifest.shards if s.split == "train") < GPU_CACHE_BYTES
    return gpus[0].name if len(gpus) == 1 and small else "/cpu:0"
