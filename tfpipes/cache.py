"""Content-addressed caching of preprocess outputs.

KFP's cache key covers a task's parameters and its component spec, not the bytes behind a
``source`` path nor whether the cached output still exists. :func:`cache_key` hashes the input
*content* (every file's CRC32C) with the preprocess parameters; the pipeline passes it to the
cached preprocess task, so new data means a new key. An index (``<index>/<key>.json`` in
object storage) records where each key's output landed; :func:`lookup_key` salts the key when
that output is gone, which forces KFP to run preprocess again instead of reusing a dangling
artifact.

The files hashed are the ones preprocess reads: the fingerprint step matches them with
preprocess's own suffix table (``tfpipes.preprocess.INPUT_SUFFIXES``) and hashes them with
:func:`tfpipes.preprocess.source_fingerprint`, the value preprocess records as ``source_hash``,
so a change to any input preprocess would read changes the key.
"""

from __future__ import annotations

import datetime
import hashlib
import json

from tfpipes import layout, manifest, storage
from tfpipes.errors import UserError


def cache_key(files_fingerprint: str, params: dict) -> str:
    """sha256 of the input content fingerprint and the preprocess parameters."""
    h = hashlib.sha256(files_fingerprint.encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:32]


def record(index_dir: str, key: str, output_uri: str) -> None:
    """Remember that ``key``'s committed output is at ``output_uri``."""
    if index_dir:
        entry = {"key": key, "output": output_uri, "written": _now()}
        storage.write_text(storage.join(index_dir, f"{key}.json"), json.dumps(entry) + "\n")


def output_exists(uri: str) -> bool:
    """A committed data set is still there: its manifest exists."""
    try:
        return storage.exists(storage.join(uri, manifest.MANIFEST))
    except Exception:  # an unreadable location counts as gone
        return False


def lookup_key(index_dir: str, key: str) -> tuple[str, str]:
    """(key to give KFP, reason). The key is salted when the indexed output no longer exists.

    UserError naming the index entry when it is not the JSON object :func:`record` writes."""
    if not index_dir:
        return key, "no cache index: content hash only"
    path = storage.join(index_dir, f"{key}.json")
    if not storage.exists(path):
        return key, "new content"
    entry = layout.read_json_object(path, "cache index entry")
    uri = entry.get("output", "")
    if not isinstance(uri, str):
        raise UserError(f"{path}: 'output' must be a path string, got {type(uri).__name__}")
    # KFP stores artifacts under gs:// but mounts them at /gcs/ inside tasks.
    local_view = uri.replace("gs://", "/gcs/", 1) if uri.startswith("gs://") else uri
    if output_exists(uri) or (local_view != uri and output_exists(local_view)):
        return key, f"cached output exists at {uri}"
    return f"{key}-rerun-{_now().replace(':', '')}", f"cached output {uri} is gone: recompute"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
