"""A user model with a custom layer, as in Keras' "making new layers" guide.

``tfpipes train --model tests.user_models.custom_layer:build_fn`` imports this module (from
``PYTHONPATH`` or the current directory) and calls ``build_fn(num_outputs)``.
"""

import keras
from keras import ops


class Linear(keras.layers.Layer):
    """``y = x @ w + b``, with its weights created in ``build`` by ``add_weight``."""

    def __init__(self, units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True
        )
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b


class ScaledResidual(keras.layers.Layer):
    """A block holding its sub-layers in a list (which Keras 3 hides from tf.train.Checkpoint)
    and a non-trainable weight, to check that every weight is checkpointed."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.parts = [Linear(width), Linear(width)]

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="scale")

    def call(self, inputs):
        h = ops.relu(self.parts[0](inputs))
        return inputs + self.scale * self.parts[1](h)


def build_fn(num_outputs, hidden=(32,), **_):
    """A list of layers: tfpipes stacks it into a Sequential body."""
    width = hidden[0] if hidden else 32
    return [Linear(width), keras.layers.ReLU(), ScaledResidual(width), Linear(num_outputs)]


def wrong_outputs(num_outputs):
    """A body with the wrong number of outputs, to check the error message."""
    return Linear(num_outputs + 1)
