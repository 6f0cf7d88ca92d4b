"""What one training step computes, shared by every runner: the optimizer, the loss, the eval.

Both runners (:mod:`~tfpipes.training.default_runner`, :mod:`~tfpipes.training.ps_runner`)
take their loss from :func:`replica_loss`, so a change to the loss (its dtype, the
regularization term, the averaging over the global batch) reaches every strategy at once.
"""

from __future__ import annotations

from tfpipes.errors import UserError


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


def label_histogram(schema, stats: dict) -> list[int]:
    """Rows per class id (``stats.json``'s label ``histogram``: class -> count, by label
    vocabulary entry for string labels, else by the integer label); [] when the stats have
    none or the task is regression."""
    label = stats.get("label") if isinstance(stats, dict) else None
    hist = label.get("histogram") if isinstance(label, dict) else None
    if schema.task != "classification" or not isinstance(hist, dict):
        return []
    counts = [0] * schema.num_classes
    vocab = {v: i for i, v in enumerate(schema.label_vocabulary)}
    try:
        for key, count in hist.items():
            cls = vocab[key] if vocab else int(key)
            if 0 <= cls < len(counts):
                counts[cls] = int(count)
    except (KeyError, ValueError, TypeError, OverflowError):
        return []  # a histogram that does not fit the schema: as if there were none
    return counts


def class_weights(mode: str, schema, stats: dict) -> list[float] | None:
    """Per-class loss weights for ``TrainConfig.class_weights``: None (every row alike) or,
    "balanced", rows / (classes * rows of the class), from the label histogram (scikit-learn's
    ``class_weight="balanced"``), so every class weighs the same in the loss; a class with no
    rows gets weight 1. UserError when the data set has no label histogram."""
    if not mode:
        return None
    counts = label_histogram(schema, stats)
    if not counts or not sum(counts):
        raise UserError(
            f"--class-weights {mode}: needs a classification data set whose stats.json has a "
            "label histogram"
        )
    total, k = sum(counts), len(counts)
    return [total / (k * c) if c else 1.0 for c in counts]


def replica_loss(model, classification: bool, batch, global_batch: int, class_weights=None):
    """Run ``model`` forward on one replica's ``(features, target)`` (call it inside the
    caller's ``GradientTape``); return that replica's share of the global mean loss, float32.

    The model's regularization losses are cast to float32 before they are summed: under a
    mixed precision policy a layer reports them in its compute dtype (bfloat16, float16), and
    adding those to the float32 data loss fails. ``class_weights``: a float32 ``[classes]``
    tensor scaling each example's loss by its class's weight (see :func:`class_weights`).
    """
    import tensorflow as tf

    features, y = batch
    out = model(features, training=True)
    per_example = per_example_loss(classification, y, out)
    if class_weights is not None:
        per_example *= tf.gather(class_weights, y)
    loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
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
