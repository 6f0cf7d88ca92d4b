"""The parameter-server workers' local copy of a remote data set.

Workers run the shards' reads inside TensorFlow, so they need a path they can open, and
TensorFlow's own GCS filesystem is not our storage layer (no retries of ours, no CRC checks, and
it cannot reach an emulator). So each worker first copies the data set through the storage layer
into :func:`worker_data_dir`, then starts its server; the chief names that same local path in the
workers' input pipelines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile

from tfpipes import manifest as manifest_lib
from tfpipes import storage
from tfpipes.errors import UserError

log = logging.getLogger("tfpipes.ps_train")


WORKER_DATA_ENV = "TFPIPES_WORKER_DATA"


def worker_data_dir(data: str, manifest_text: str) -> str:
    """The local directory where each worker keeps its copy of the remote data set ``data``:
    the same path in every task (the chief names it in the workers' input pipelines), keyed by
    the data set's location and its manifest's content."""
    base = os.environ.get(WORKER_DATA_ENV) or os.path.join(
        tempfile.gettempdir(), f"tfpipes-data-{os.getuid()}"
    )
    key = hashlib.sha256(f"{storage.normalize(data)}\n{manifest_text}".encode()).hexdigest()
    return os.path.join(base, key[:20])


def _private_base(base: str) -> None:
    """Create ``base`` readable by this user only (0700), or check that it already is: a data
    copy in a directory another user can write could be swapped under the trainer."""
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        st = os.stat(base)
    except OSError as e:
        raise UserError(
            f"{base}: cannot create the workers' data directory: {e.strerror}"
        ) from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UserError(
            f"{base}: the workers' data directory must belong to this user with mode 0700 "
            f"(it has owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); set {WORKER_DATA_ENV}"
        )


def fetch_worker_data(data: str) -> tuple[str, bool]:
    """Copy the remote data set ``data`` into :func:`worker_data_dir` unless a verified copy is
    there; return that directory and whether this call copied it. The copy is verified
    against the manifest (sizes, CRC32C) in a staging directory and committed by
    ``storage.staged_dir`` (a rename), so a crash never leaves a partial copy that looks
    complete, and tasks on one machine can fetch at the same time."""
    manifest_text = storage.read_text(storage.join(data, manifest_lib.MANIFEST))
    final = worker_data_dir(data, manifest_text)
    _private_base(os.path.dirname(final))
    if os.path.exists(final):
        try:
            manifest_lib.verify_dataset(final)
            return final, False
        except UserError as e:
            log.warning("%s; fetching the data set again", e)
            shutil.rmtree(final, ignore_errors=True)
    try:
        with storage.staged_dir(final) as tmp:
            storage.download_dir(data, tmp)
            manifest_lib.verify_dataset(tmp)
    except UserError:
        if not os.path.isdir(final):
            raise
        manifest_lib.verify_dataset(final)  # another task on this machine committed it first
    return final, True
