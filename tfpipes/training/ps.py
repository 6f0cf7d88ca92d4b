"""ParameterServerStrategy training: the chief coordinates, workers compute, ps hold variables.

:func:`train` is what ``tfpipes train`` runs when ``TF_CONFIG`` names ``ps`` tasks
(``train.train`` hands over to it). Workers and parameter servers start a gRPC server and serve
until they are stopped (the Training Operator's ``cleanPodPolicy: Running``, or
``local-cluster``); the chief creates the strategy with a ``ClusterCoordinator`` and drives
training:

- variables are created under ``strategy.scope()``: ``MinSizePartitioner`` (see
  ``strategy.py``) splits each variable of at least 512 KiB into one shard per ps along its
  first axis; the chief logs where every shard lives (``partitioned ... ps:0 [7, 16384], ...``);
- each worker reads its own files of the train split (FILE sharding by worker index) through
  ``create_per_worker_dataset``; the chief schedules closures of ``--steps-per-loop`` steps of
  ``--batch-size`` examples and ``join``\\ s at every log and checkpoint boundary;
- a worker that dies: the coordinator runs its closures on the others and uses it again when
  it is back (a closure that ran partly may be applied twice: steps may end past the target);
- a ps that dies: its variables are gone, so the chief stops with a :class:`RetryableError`
  (exit 138) naming the ps; run the job again and it resumes from the last checkpoint.

Only the chief writes checkpoints, ``model_config.json``, ``metrics.json`` and TensorBoard logs.
A checkpoint holds each partitioned variable whole, under the same name a single-process run
uses, so it restores into a plain model (``tfpipes export``, and the evaluation at the end,
which runs on such a model in the chief). The input position is not checkpointed: a resumed
run reshuffles with the seed offset by the restored step.

Data on ``gs://``: workers run the shards' reads inside TensorFlow, so they need a path they
can open, and TensorFlow's own GCS filesystem is not our storage layer (it has no retries of
ours, no CRC checks, and cannot reach an emulator). So each worker first copies the data set
through the storage layer into :func:`worker_data_dir` (verified against the manifest,
committed by a rename, reused when already there), then starts its server; the chief names
that same local path in the workers' input pipelines. The directory is keyed by the data set's
location and manifest, under ``$TFPIPES_WORKER_DATA`` (default ``<tmp>/tfpipes-data``), which
must be the same path in every task.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import NoReturn

from tfpipes import manifest as manifest_lib
from tfpipes import peers, storage
from tfpipes import strategy as strategy_lib
from tfpipes.errors import RetryableError, UserError, first_line
from tfpipes.strategy import Resolution
from tfpipes.training import worker_data

log = logging.getLogger("tfpipes.ps_train")


def train(cfg, res: Resolution):
    """Run this task's part of a parameter-server job: serve (worker, ps) or coordinate (chief).

    ``cfg`` is a ``tfpipes.training.TrainConfig``. The chief returns a ``TrainResult``; a worker
    or ps serves until the process is stopped. Raises UserError for a bad data set or flags
    and RetryableError when a peer is unreachable at the start or a ps fails during training.
    """
    cfg.validate()
    if res.task_type in ("worker", "ps"):
        if res.task_type == "worker" and storage.is_remote(cfg.data):
            local, fetched = worker_data.fetch_worker_data(cfg.data)
            how = "copied to" if fetched else "already copied to"
            log.info("%s:%d data %s %s %s", res.task_type, res.task_index, cfg.data, how, local)
        serve(res)
    for flag, value in (
        ("--mixed-precision", cfg.mixed_precision),
        ("--warm-start-from", cfg.warm_start_from),
    ):
        if value:
            raise UserError(f"{flag} is not supported with parameter servers")
    if res.task_type != "chief":
        raise UserError(f"TF_CONFIG: task type {res.task_type!r} has no role in ps training")
    return coordinate(cfg, res)


def serve(res: Resolution) -> NoReturn:
    """Start this worker's or ps's gRPC server and serve until the process is stopped."""
    # Report a dead peer to the caller at once instead of retrying the connection for ever.
    os.environ["GRPC_FAIL_FAST"] = "use_caller"
    import tensorflow as tf

    server = tf.distribute.Server(
        tf.train.ClusterSpec(res.cluster),
        job_name=res.task_type,
        task_index=res.task_index,
        protocol="grpc",
        start=True,
    )
    log.info("%s:%d serving at %s", res.task_type, res.task_index, server.target)
    server.join()
    raise RuntimeError("tf.distribute.Server.join() returned")


class PSTrainer:
    """The model, optimizer and step counter on the parameter servers, and the worker step.

    Keras 3 cannot update a partitioned (``ShardedVariable``) weight through its optimizer, so
    the optimizer updates each shard as a variable of its own: ``targets`` are Keras variables
    wrapping the shards (and the unpartitioned weights themselves), ``sources`` the TensorFlow
    variables the gradients are taken with respect to, in the same order.
    """

    def __init__(self, strategy, spec, schema, stats, opt_name: str, lr: float, batch: int):
        import keras
        import tensorflow as tf

        from tfpipes.models import build_model
        from tfpipes.training.loop import _make_optimizer

        self.strategy = strategy
        self.batch = batch
        self.classification = schema.task == "classification"
        with strategy.scope():
            self.model = build_model(spec, schema, stats)
            self.optimizer = _make_optimizer(opt_name, lr)
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

    def _replica_step(self, batch):
        import tensorflow as tf

        from tfpipes.training.loop import per_example_loss

        features, y = batch
        with tf.GradientTape() as tape:
            out = self.model(features, training=True)
            per_example = per_example_loss(self.classification, y, out)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.batch)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        grads = tape.gradient(loss, self.sources)
        self.optimizer.apply_gradients(zip(grads, self.targets))
        return loss

    def _loop(self, iterator, num_steps):
        """``num_steps`` steps on one worker; returns (last loss, that worker's index)."""
        import tensorflow as tf

        loss = tf.constant(0.0)
        for _ in tf.range(num_steps):
            per_replica = self.strategy.run(self._replica_step, args=(next(iterator),))
            loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self.step.assign_add(1)
        return loss, tf.distribute.coordinator.experimental_get_current_worker_index()


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


def coordinate(cfg, res: Resolution):
    """The chief: connect, build, restore, train, checkpoint, evaluate. Returns a TrainResult."""
    peers.check_shards(cfg.data, res.num_workers)  # before waiting for anyone
    peers.wait_for_peers(res)
    os.environ["GRPC_FAIL_FAST"] = "use_caller"
    import keras
    import tensorflow as tf

    from tfpipes.checkpoints import CheckpointStore, restore_latest
    from tfpipes.input_pipeline import make_dataset
    from tfpipes.models import checkpoint_objects
    from tfpipes.schema import load_schema
    from tfpipes.training.config import TrainResult
    from tfpipes.training.loop import METRICS, MODEL_CONFIG, _check_compatible, _rate

    t_start = time.monotonic()
    opt_name, lr = cfg.resolved_optimizer()
    with storage.local_dir(cfg.data) as data_root:
        manifest = manifest_lib.verify_dataset(data_root)
        schema = load_schema(data_root)
        stats = json.loads(storage.read_text(os.path.join(data_root, "stats.json")))
        config = {
            "model": json.loads(cfg.model_spec.to_json()),
            "schema": json.loads(schema.to_json()),
            "stats": stats,
            "optimizer": {"name": opt_name, "learning_rate": lr},
        }
        _check_compatible(cfg.model_dir, config)
        # Workers read the shards themselves, from a path they can open: their own copy of a
        # remote data set (fetched before they started serving), else the shared directory.
        worker_root = data_root
        if storage.is_remote(cfg.data):
            manifest_text = storage.read_text(os.path.join(data_root, manifest_lib.MANIFEST))
            worker_root = worker_data.worker_data_dir(cfg.data, manifest_text)

        strategy = strategy_lib.create_strategy(res)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        keras.utils.set_random_seed(cfg.seed)
        trainer = PSTrainer(strategy, cfg.model_spec, schema, stats, opt_name, lr, cfg.batch_size)
        _log_placement(trainer)

        store = CheckpointStore(cfg.model_dir, writer=True)
        try:
            ckpt = tf.train.Checkpoint(
                **checkpoint_objects(trainer.model), optimizer=trainer.optimizer, step=trainer.step
            )
            manager = tf.train.CheckpointManager(ckpt, store.local_dir, cfg.max_to_keep)
            try:
                restored = restore_latest(ckpt, manager)
                start = int(trainer.step.numpy())
            except tf.errors.OpError as e:
                raise _failure(res, e, manager) from None
            if restored:
                log.info("resumed from %s at step %d", restored, start)

            def save(step: int) -> str:
                if not manager.latest_checkpoint:  # with the first checkpoint, not before
                    storage.write_text(
                        storage.join(cfg.model_dir, MODEL_CONFIG),
                        json.dumps(config, indent=2) + "\n",
                    )
                path = manager.save(checkpoint_number=step)
                store.commit(path)
                return path

            def dataset_fn(_):
                index = tf.distribute.coordinator.experimental_get_current_worker_index()
                ctx = tf.distribute.InputContext(res.num_workers, index, 1)
                return make_dataset(
                    worker_root,
                    manifest,
                    "train",
                    schema,
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

            iterator = iter(coordinator.create_per_worker_dataset(per_worker_dataset))
            try:
                steps_run, seconds, last_ckpt = _run_loop(
                    cfg,
                    trainer,
                    coordinator,
                    iterator,
                    save,
                    store,
                    start,
                    restored,
                    res.num_workers,
                )
            except tf.errors.OpError as e:
                raise _failure(res, e, manager) from None
            metrics = _evaluate(cfg, trainer, last_ckpt, data_root, manifest, schema, stats)
        finally:
            store.close()
    final = int(metrics["step"])
    rate = _rate(steps_run, cfg, seconds)
    metrics["train_examples_per_second"] = rate
    storage.write_text(storage.join(cfg.model_dir, METRICS), json.dumps(metrics, indent=2) + "\n")
    return TrainResult.of_run(cfg, start, final, steps_run, t_start, rate, metrics, last_ckpt)


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


def _run_loop(cfg, trainer, coordinator, iterator, save, store, start, restored, num_workers):
    """Schedule closures up to each log or checkpoint boundary, join, log, checkpoint
    (``save(step)`` -> path). Returns (steps run, seconds training, newest checkpoint)."""
    import tensorflow as tf

    step = start
    target = cfg.train_steps
    summary = tf.summary.create_file_writer(os.path.join(store.logs_dir, "train"))
    last_ckpt = restored or ""
    spent = 0.0
    next_log = (step // cfg.log_every + 1) * cfg.log_every
    next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    since_log_steps, since_log_t = 0, time.monotonic()
    by_worker = [0] * num_workers
    while step < target:
        boundary = min(target, next_log, next_ckpt)
        t = time.monotonic()
        todo, scheduled = boundary - step, []
        # At least two closures per worker between joins, so that none of them idles.
        size = max(1, min(cfg.steps_per_loop, todo // (2 * num_workers)))
        while todo > 0:
            n = min(size, todo)
            result = coordinator.schedule(
                trainer.worker_loop, args=(iterator, tf.constant(n, dtype=tf.int64))
            )
            scheduled.append((n, result))
            todo -= n
        coordinator.join()
        for n, result in scheduled:
            loss, worker = result.fetch()
            by_worker[int(worker)] += n
        spent += time.monotonic() - t
        done = int(trainer.step.numpy())
        since_log_steps += done - step
        step = done
        if step >= next_log or step >= target:
            now = time.monotonic()
            eps = since_log_steps * cfg.batch_size / max(now - since_log_t, 1e-9)
            # Which workers ran the steps: a worker that died and came back shows up again.
            workers = ", ".join(f"worker:{i} {n}" for i, n in enumerate(by_worker))
            log.info(
                "step %d/%d loss %.5f examples/s %.0f (steps by %s)",
                step,
                target,
                loss,
                eps,
                workers,
            )
            by_worker = [0] * len(by_worker)
            with summary.as_default(step=step):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("examples_per_second", eps)
            since_log_steps, since_log_t = 0, now
            next_log = (step // cfg.log_every + 1) * cfg.log_every
        if step >= next_ckpt or step >= target:
            last_ckpt = save(step)
            next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    if not last_ckpt:
        last_ckpt = save(step)  # a fresh run with nothing to do still leaves a checkpoint
    summary.flush()
    store.sync_logs()
    return step - start, spent, last_ckpt


def _evaluate(cfg, trainer: PSTrainer, checkpoint: str, data_root, manifest, schema, stats):
    """Evaluate the checkpoint just written on a plain model in this process: proves that the
    checkpoint restores without the cluster, and reads each variable from the ps once."""
    import tensorflow as tf

    from tfpipes.input_pipeline import make_dataset
    from tfpipes.models import checkpoint_objects
    from tfpipes.training.loop import Trainer

    opt_name, lr = cfg.resolved_optimizer()
    with tf.device("/job:chief/replica:0/task:0/device:CPU:0"):
        local = Trainer(
            tf.distribute.get_strategy(), cfg.model_spec, schema, stats, opt_name, lr, 1
        )
        status = tf.train.Checkpoint(**checkpoint_objects(local.model), step=local.step)
        status = status.restore(checkpoint)
        status.assert_existing_objects_matched()
        status.expect_partial()  # the optimizer's shard slots have no place in a plain model
        eval_ds = make_dataset(
            data_root, manifest, "eval", schema, max(cfg.batch_size, 256), training=False
        )
        metrics = local.evaluate(eval_ds)
    metrics["step"] = int(local.step.numpy())
    return metrics


def _failure(res: Resolution, error: Exception, manager) -> Exception:
    """A RetryableError naming the parameter servers that went away, or ``error`` itself."""
    import tensorflow as tf

    text = getattr(error, "message", None) or str(error)
    first = first_line(error)
    # A ps is gone if it no longer answers, or if TensorFlow's error names its address (a
    # restarted ps answers again at once, but the variables it held are lost all the same).
    gone = [
        p
        for p in peers.cluster_peers(res)
        if p.task_type == "ps" and (p.address in text or peers.probe(p))
    ]
    resume = manager.latest_checkpoint
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
