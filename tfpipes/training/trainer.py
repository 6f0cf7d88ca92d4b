"""The default trainer: model, optimizer, step counter and the compiled K-steps function.

:class:`Trainer` serves the default, OneDevice, Mirrored and MultiWorkerMirrored strategies
(driven by :mod:`~tfpipes.training.default_runner`) and evaluates a plain model for the
parameter-server runner. As in orbit's ``loop_fns``, K steps run per ``tf.function`` call in
a ``tf.range`` loop whose count is a tensor, so a different K never retraces.
"""

from __future__ import annotations

from tfpipes.models import ModelSpec
from tfpipes.schema import Schema
from tfpipes.training import step as step_lib
from tfpipes.training.config import precision_policy


class Trainer:
    """Owns the model, optimizer, step counter and the compiled train and eval functions.

    ``batch`` is the global batch size. ``mixed_precision`` (see :func:`precision_policy`):
    the body computes in float16 or bfloat16 with float32 weights; with float16 the loss is
    scaled against underflow (``LossScaleOptimizer``, its scale saved with the optimizer).
    ``class_weights``: per-class loss weights (``step.class_weights``), or None.
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
        class_weights: list[float] | None = None,
    ):
        import keras
        import tensorflow as tf

        from tfpipes.models import build_model

        self.strategy = strategy
        self.schema = schema
        self.global_batch = batch
        self.classification = schema.task == "classification"
        self.class_weights = None if class_weights is None else tf.constant(class_weights)
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
            self.optimizer = step_lib.make_optimizer(opt, lr)
            if policy == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._train_loop = tf.function(self._loop)

    def replica_step(self, batch):
        """One optimizer step on one replica's ``(features, target)``; returns its share of
        the global mean loss (sum over replicas = the loss of the global batch)."""
        import tensorflow as tf

        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = step_lib.replica_loss(
                self.model, self.classification, batch, self.global_batch, self.class_weights
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
        """Loss and accuracy (classification) or MSE (regression) over one pass of ``dataset``
        (see :func:`tfpipes.training.step.evaluate`)."""
        return step_lib.evaluate(self.model, self.classification, dataset)
