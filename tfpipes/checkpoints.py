"""Checkpoints in a local directory or object storage, verified before they are trusted.

TensorFlow writes checkpoints to a local directory. For a ``gs://`` model directory that local
directory is a mirror: existing checkpoints are downloaded before resuming, and each new one is
uploaded data files first and the ``checkpoint`` index last, so a reader (or a resumed,
preempted pod) never sees a partial checkpoint. Checkpoints never live only inside a KFP output
artifact: KFP uploads outputs after the container exits, and a preempted pod would lose them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import tensorflow as tf

from tfpipes import storage
from tfpipes.errors import UserError

log = logging.getLogger("tfpipes.checkpoints")

INDEX = "checkpoint"


class CheckpointStore:
    """Where one training run's checkpoints live (``<model_dir>/checkpoints``)."""

    def __init__(self, model_dir: str, writer: bool = True):
        self.remote_dir = storage.join(model_dir, "checkpoints")
        self.remote = storage.is_remote(model_dir)
        self.writer = writer
        if self.remote:
            self.local_dir = tempfile.mkdtemp(prefix="tfpipes-ckpt-")
            if storage.exists(storage.join(self.remote_dir, INDEX)):
                with storage.local_dir(self.remote_dir) as d:
                    shutil.copytree(d, self.local_dir, dirs_exist_ok=True)
        else:
            self.local_dir = storage.normalize(self.remote_dir)
            if writer:
                os.makedirs(self.local_dir, exist_ok=True)

    def commit(self, prefix: str) -> None:
        """Publish a checkpoint just written locally (data files, then the index)."""
        if not (self.remote and self.writer):
            return
        name = os.path.basename(prefix)
        for fname in sorted(os.listdir(self.local_dir)):
            if fname.startswith(name + ".") or fname.startswith(name + "_temp"):
                with open(os.path.join(self.local_dir, fname), "rb") as f:
                    storage.write_bytes(storage.join(self.remote_dir, fname), f.read())
        with open(os.path.join(self.local_dir, INDEX), "rb") as f:
            storage.write_bytes(storage.join(self.remote_dir, INDEX), f.read())

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)


def verify_checkpoint(prefix: str) -> str | None:
    """Read every tensor of a checkpoint; return None if sound, else what is wrong."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.variant:  # the tf.data iterator state has no numpy form
                reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, OSError) as e:
        return f"{e.__class__.__name__}: {str(e).splitlines()[0]}"
    return None


def restore_latest(ckpt: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> str | None:
    """Restore the newest sound checkpoint; a corrupt one is reported and an older one used.

    Returns the restored prefix, or None when there is none (a fresh start). Raises UserError
    when checkpoints exist but none can be restored into this model (an incompatible model).
    """
    candidates = list(reversed(manager.checkpoints))
    if not candidates:
        return None
    for prefix in candidates:
        problem = verify_checkpoint(prefix)
        if problem:
            log.warning("checkpoint %s is corrupt (%s); trying the previous one", prefix, problem)
            continue
        try:
            ckpt.restore(prefix).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise UserError(
                f"{prefix}: checkpoint does not match this model ({first}); use a new "
                "--model-dir or the same model options as the run that wrote it"
            ) from None
        return prefix
    raise UserError(
        f"{manager.directory}: every checkpoint is corrupt; move them aside to start afresh"
    )
