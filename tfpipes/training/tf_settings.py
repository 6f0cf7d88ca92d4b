"""Process-wide TensorFlow settings a run asks for (op determinism, XLA), and their undoing."""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("tfpipes.train")


def configure_tensorflow(cfg) -> bool:
    """Process-wide settings before any op runs, from a ``TrainConfig``: op determinism and
    XLA. Returns whether ops are deterministic."""
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
def settings_restored():
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
