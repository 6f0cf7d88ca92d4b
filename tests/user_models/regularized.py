"""A user model with regularization losses: an activity regularizer (computed on the layer's
output, so in the compute dtype under mixed precision) and a kernel regularizer."""

import keras


def build_fn(num_outputs, hidden=(16,), **_):
    width = hidden[0] if hidden else 16
    return [
        keras.layers.Dense(
            width,
            activation="relu",
            kernel_regularizer=keras.regularizers.L2(1e-4),
            activity_regularizer=keras.regularizers.L2(1e-3),
        ),
        keras.layers.Dense(num_outputs),
    ]
