"""Checkpoints in a local directory or object storage, verified before they are trusted.

TensorFlow writes checkpoints to a local directory. For a ``gs://`` model directory that local
directory is a mirror: existing checkpoints are downloaded before resuming, and each new one is
uploaded data files first, its ``.index`` next and the ``checkpoint`` state file last, so a
reader (or a resumed, preempted pod) never sees a partial checkpoint; checkpoints the state no
longer lists are deleted after it. TensorBoard logs are written next to the mirror and uploaded
to ``<model_dir>/logs`` at each commit. Checkpoints never live only inside a KFP output
artifact: KFP uploads outputs after the container exits, and a preempted pod would lose them.

Under MultiWorkerMirroredStrategy every worker must take part in ``save()``; only the chief's
copy counts, the others write theirs to a throwaway directory (:attr:`CheckpointStore.save_dir`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile

import tensorflow as tf

from tfpipes import layout, storage
from tfpipes.errors import UserError, first_line

log = logging.getLogger("tfpipes.checkpoints")

INDEX = "checkpoint"


class CheckpointStore:
    """Where one training run's checkpoints (``<model_dir>/checkpoints``) and logs live.

    ``local_dir``: the directory checkpoints are restored from (the model dir's own, or a
    downloaded mirror of a ``gs://`` one). ``save_dir``: where this task saves: ``local_dir``
    for the writer (the chief), a throwaway directory for any other task. ``logs_dir``: where
    TensorBoard summaries are written locally (``<model_dir>/logs`` itself when local).
    """

    def __init__(self, model_dir: str, writer: bool = True, task_index: int = 0):
        self.remote_dir = storage.join(model_dir, layout.CHECKPOINTS)
        self.remote_logs = storage.join(model_dir, layout.LOGS)
        self.remote = storage.is_remote(model_dir)
        self.writer = writer
        self._tmp: list[str] = []
        self._uploaded_logs: dict[str, int] = {}
        try:
            if self.remote:
                root = self._mkdtemp("tfpipes-model-")
                self.local_dir = os.path.join(root, "checkpoints")
                self.logs_dir = os.path.join(root, "logs")
                os.makedirs(self.local_dir)
                if storage.exists(storage.join(self.remote_dir, INDEX)):
                    with storage.local_dir(self.remote_dir) as d:
                        shutil.copytree(d, self.local_dir, dirs_exist_ok=True)
            else:
                self.local_dir = storage.normalize(self.remote_dir)
                self.logs_dir = storage.normalize(self.remote_logs)
                if writer:
                    os.makedirs(self.local_dir, exist_ok=True)
            if writer:
                _remove_interrupted_saves(self.local_dir)
            self.save_dir = (
                self.local_dir if writer else self._mkdtemp(f"_tmp_worker_{task_index}-")
            )
        except BaseException:
            self.close()  # a run that fails at start-up leaves no local mirror behind
            raise

    def _mkdtemp(self, prefix: str) -> str:
        d = tempfile.mkdtemp(prefix=prefix)
        self._tmp.append(d)
        return d

    def commit(self, prefix: str) -> None:
        """Publish a checkpoint just written locally (data files, its index, then the state
        file); then drop remote checkpoints the state no longer lists. Logs go up too."""
        if not (self.remote and self.writer):
            return
        name = os.path.basename(prefix)
        files = sorted(f for f in os.listdir(self.local_dir) if f.startswith(name + "."))
        # Data first, its index after them, the state file (which lists it) last.
        last = (f"{name}.index", INDEX)
        mark = storage.owner_mark(self.remote_dir)
        storage.commit_files(
            self.local_dir, self.remote_dir, [*files, INDEX], last=last, owner=mark
        )
        # Checkpoints the state file no longer lists: ours only (never another tool's files).
        kept = set(os.listdir(self.local_dir))
        owners = storage.list_owners(self.remote_dir)
        gone = [n for n, o in owners.items() if o == mark and n not in kept]
        storage.delete_objects(self.remote_dir, gone)
        self.sync_logs()

    def sync_logs(self) -> None:
        """Upload TensorBoard event files that grew since the last upload (gs:// model dirs)."""
        if not (self.remote and self.writer) or not os.path.isdir(self.logs_dir):
            return
        grown = {}
        for name in storage.files_under(self.logs_dir):
            size = os.path.getsize(os.path.join(self.logs_dir, name))
            if self._uploaded_logs.get(name) != size:
                grown[name] = size
        storage.commit_files(
            self.logs_dir,
            self.remote_logs,
            sorted(grown),
            owner=storage.owner_mark(self.remote_logs),
        )
        self._uploaded_logs.update(grown)

    def close(self) -> None:
        """Remove the local mirror and any throwaway save directory."""
        for d in self._tmp:
            shutil.rmtree(d, ignore_errors=True)


# TensorFlow writes the state file as ``checkpoint.tmp<uuid4 hex>`` and renames it over
# ``checkpoint`` (file_io.atomic_write_string_to_file): a kill in between leaves the first.
_STATE_TEMP = re.compile(re.escape(INDEX) + r"\.tmp[0-9a-f]{32}")


def _remove_interrupted_saves(directory: str) -> None:
    """Remove what a save cut short leaves: TensorFlow writes a sharded checkpoint into
    ``<prefix>_temp/`` and renames its files out at the end (the state file never lists it),
    and writes the state file itself through a temporary one (:data:`_STATE_TEMP`)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith("_temp") and name.startswith("ckpt-") and os.path.isdir(path):
            log.info("removing %s, left by an interrupted checkpoint save", path)
            shutil.rmtree(path, ignore_errors=True)
        elif _STATE_TEMP.fullmatch(name) and os.path.isfile(path):
            log.info("removing %s, left by an interrupted checkpoint save", path)
            os.remove(path)


def verify_checkpoint(prefix: str) -> str | None:
    """Read every tensor of a checkpoint; return None if sound, else what is wrong."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.variant:  # the tf.data iterator state has no numpy form
                reader.get_tensor(name)
    except Exception as e:  # any failure to read it back (truncated: IndexError) = corrupt
        text = str(e).strip()
        return f"{e.__class__.__name__}: {text.splitlines()[0] if text else ''}"
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
            raise UserError(
                f"{prefix}: checkpoint does not match this model ({first_line(e)}); use a new "
                "--model-dir or the same model and input options as the run that wrote it"
            ) from None
        return prefix
    raise UserError(
        f"{manager.directory}: every checkpoint is corrupt; move them aside to start afresh"
    )


LATEST_PREFIX = "latest:"


def latest_published_version(base: str) -> str | None:
    """``<base>/<N>`` for the highest version N holding a SavedModel (TF Serving's choice), or
    None when ``base`` has none (or does not exist yet)."""
    if not storage.is_dir(base):
        return None
    versions = sorted((int(n) for n in storage.listdir(base) if n.isdigit()), reverse=True)
    for v in versions:
        path = storage.join(base, str(v))
        if storage.exists(storage.join(path, layout.SAVED_MODEL_PB)):
            return path
    return None


def warm_start(model, source: str, config: dict | None = None) -> str:
    """Load every weight of ``model`` from ``source``; return what was loaded.

    ``source``: another run's model directory (its newest sound checkpoint), a checkpoint
    prefix, or an exported SavedModel directory (``<base>/<version>``); local or ``gs://``.
    ``latest:<base>`` takes the newest published version under ``<base>`` and, when nothing is
    published yet (a recurring retrain's first run), loads nothing and returns "".
    Only the weights are taken: the optimizer, step and data position start afresh. ``config``
    (this run's ``model_config.json`` content) is compared with a model directory's to name a
    mismatch plainly. Raises UserError when ``source`` holds no model or one of another shape.
    """
    where = f"--warm-start-from {source}"
    if source.startswith(LATEST_PREFIX):
        base = source[len(LATEST_PREFIX) :]
        newest = latest_published_version(base)
        if newest is None:
            log.info("%s: nothing published yet; starting from fresh weights", where)
            return ""
        source = newest
    if storage.exists(storage.join(source, layout.SAVED_MODEL_PB)):
        with storage.local_dir(source) as d:
            _restore_weights(model, os.path.join(d, "variables", "variables"), where, True)
        return source
    if storage.exists(storage.join(source, layout.MODEL_CONFIG)) and config is not None:
        other = layout.read_json_object(storage.join(source, layout.MODEL_CONFIG), "model config")
        for key, what in (("schema", "data set schema"), ("model", "model options")):
            if other.get(key) != config.get(key):
                raise UserError(
                    f"{where}: trained with a different {what} ({json.dumps(other.get(key))[:120]})"
                )
    if storage.exists(storage.join(source, "checkpoints", INDEX)):
        store = CheckpointStore(source, writer=False)
        try:
            prefix = _newest_sound(store.local_dir, where)
            _restore_weights(model, prefix, where, False)
        finally:
            store.close()
        return prefix
    local = storage.normalize(source)
    if not storage.is_remote(local):
        if os.path.isdir(local) and tf.train.latest_checkpoint(local):
            local = _newest_sound(local, where)
        if os.path.exists(local + ".index"):
            problem = verify_checkpoint(local)
            if problem:
                raise UserError(f"{where}: checkpoint is corrupt ({problem})")
            _restore_weights(model, local, where, False)
            return local
    raise UserError(
        f"{where}: not a model directory, checkpoint or SavedModel (no checkpoints/, "
        "<prefix>.index or saved_model.pb)"
    )


def _newest_sound(directory: str, where: str) -> str:
    state = tf.train.get_checkpoint_state(directory)
    prefixes = list(reversed(state.all_model_checkpoint_paths)) if state else []
    for prefix in prefixes:
        if not os.path.isabs(prefix):
            prefix = os.path.join(directory, prefix)
        problem = verify_checkpoint(prefix)
        if not problem:
            return prefix
        log.warning("checkpoint %s is corrupt (%s); trying the previous one", prefix, problem)
    raise UserError(f"{where}: no sound checkpoint")


def _restore_weights(model, prefix: str, where: str, saved_model: bool) -> None:
    """Read the model's weights only; UserError unless every weight was found, same shape."""
    from tfpipes.models import checkpoint_objects

    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    if saved_model:
        # An export's variables are keyed by object path (model/body/...), not by position.
        root = tf.train.Checkpoint(model=model)
        saved = [reader.get_tensor(k) for k in shapes if k.endswith("VARIABLE_VALUE")]
    else:
        variables = checkpoint_objects(model)["model_variables"]
        for i, v in enumerate(variables):
            key = f"model_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"
            if key not in shapes or list(shapes[key]) != list(v.shape):
                got = shapes.get(key)
                raise UserError(
                    f"{where}: holds a different model (weight {v.path}: shape "
                    f"{list(v.shape)} here, {got if got is None else list(got)} there)"
                )
        root = tf.train.Checkpoint(model_variables=variables)
        saved = None
    try:
        root.read(prefix).expect_partial()
    except (ValueError, tf.errors.OpError) as e:
        raise UserError(f"{where}: does not fit this model ({first_line(e)})") from None
    if saved is not None:
        import numpy as np

        for v in model.variables:
            value = np.asarray(v.numpy())
            if not any(s.shape == value.shape and np.array_equal(s, value) for s in saved):
                raise UserError(f"{where}: holds no weight for {v.path} {list(v.shape)}")
