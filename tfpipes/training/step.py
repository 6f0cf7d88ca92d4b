"""What one training step computes, shared by every runner: the optimizer, the loss, the eval.

Both runners (:mod:`~tfpipes.training.default_runner`, :mod:`~tfpipes.training.ps_runner`)
take their loss from :func:`replica_loss`, so a change to the loss (its dtype, the
regularization term, the averaging over the global batch) reaches every strategy at once.
"""

from __future__ import annotations


def make_optimizer(name: str, lr: float):
    """A Keras optimizer by ``TrainConfig.optimizer`` name (sgd, adam, adagrad, rmsprop)."""
    import keras

    return {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "rmsprop": keras.optimizers.RMSprop,
    }[name](learning_rate=lr)


def per_example_loss(classification: bool, y, out):
    """Softmax cross-entropy of logits ``out`` (classification) or squared error, per example,
    in float32 whatever the compute dtype."""
    import tensorflow as tf

    out = tf.cast(out, tf.float32)
    if classification:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out)
    return tf.square(tf.squeeze(out, axis=-1) - y)


def replica_loss(model, classification: bool, batch, global_batch: int):
    """Run ``model`` forward on one replica's ``(features, target)`` (call it inside the
    caller's ``GradientTape``); return that replica's share of the global mean loss, float32.

    The model's regularization losses are cast to float32 before they are summed: under a
    mixed precision policy a layer reports them in its compute dtype (bfloat16, float16), and
    adding those to the float32 data loss fails.
    """
    import tensorflow as tf

    features, y = batch
    out = model(features, training=True)
    loss = tf.nn.compute_average_loss(
        per_example_loss(classification, y, out), global_batch_size=global_batch
    )
    if model.losses:
        loss += tf.nn.scale_regularization_loss(
            tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
        )
    return loss


def evaluate(model, classification: bool, dataset) -> dict:
    """Loss and accuracy (classification) or MSE (regression) of ``model`` over one pass of
    ``dataset`` (batches of ``(features, target)``), with the majority-class or mean baseline;
    ``{"examples": 0}`` for an empty dataset."""
    import numpy as np
    import tensorflow as tf

    @tf.function
    def batch_sums(features, y):
        out = model(features, training=False)
        loss = tf.reduce_sum(per_example_loss(classification, y, out))
        if classification:
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
    if classification:
        metrics["accuracy"] = hit_sum / n
        metrics["majority_baseline_accuracy"] = float(np.bincount(y_all).max() / n)
    else:
        metrics["mse"] = loss_sum / n
        metrics["mean_baseline_mse"] = float(np.var(y_all))
    return metrics
