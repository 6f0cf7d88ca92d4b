"""Published versions and their lineage: what each one was made from, and the run records.

A publish base (the folder TF Serving watches) holds::

    <base>/<N>/                                  a SavedModel (TF Serving serves the highest N)
    <base>/<N>/assets.extra/tfpipes_lineage.json what version N was made from (LINEAGE_FORMAT)
    <base>/<N>/assets.extra/schema.json          the training data set's schema (the export's)
    <base>/<N>/assets.extra/stats.json           ... and its statistics: the data check's reference
    <base>/_tfpipes_runs/<time>-<id>.json        a run that published nothing, and why

TF Serving ignores the non-numeric ``_tfpipes_runs`` folder and every ``assets.extra`` file.
A published version is never replaced, edited or deleted: :func:`publish_version` commits a new
version directory through :func:`tfpipes.storage.staged_dir` without overwrite (a version that
exists is a UserError), and a rollback (:func:`rollback`) republishes an earlier version's
files under a new, higher number.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import uuid

from tfpipes import __version__, layout, storage
from tfpipes.errors import UserError

log = logging.getLogger("tfpipes.lineage")

LINEAGE_FORMAT = "tfpipes.lineage/v1"
EXTRA = "assets.extra"
LINEAGE = f"{EXTRA}/tfpipes_lineage.json"
REF_SCHEMA = f"{EXTRA}/{layout.SCHEMA}"
REF_STATS = f"{EXTRA}/{layout.STATS}"
RUNS = "_tfpipes_runs"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def versions(base: str) -> list[int]:
    """The published versions under ``base`` (those holding a SavedModel), ascending; [] when
    ``base`` does not exist."""
    if not base or not storage.is_dir(base):
        return []
    found = (int(n) for n in storage.listdir(base) if n.strip("/").isdigit())
    return sorted(
        v for v in found if storage.exists(storage.join(base, str(v), layout.SAVED_MODEL_PB))
    )


def newest_version(base: str) -> int | None:
    """The version TF Serving serves (the highest), or None."""
    vs = versions(base)
    return vs[-1] if vs else None


def read_lineage(base: str, version: int) -> dict:
    """The lineage record of ``<base>/<version>``; ``{}`` for a version published without one
    (by hand, or before lineage existed). UserError when the version does not exist."""
    if version not in versions(base):
        raise UserError(f"{layout.version_dir(base, version)}: no such published version")
    path = storage.join(base, str(version), LINEAGE)
    if not storage.exists(path):
        return {}
    return layout.read_json_object(path, "lineage record")


def reference_documents(base: str, version: int) -> tuple[dict, dict] | None:
    """(schema.json, stats.json) of the data set ``<base>/<version>`` was trained on, or None
    when the version stores no statistics."""
    d = layout.version_dir(base, version)
    schema, stats = storage.join(d, REF_SCHEMA), storage.join(d, REF_STATS)
    if not (storage.exists(schema) and storage.exists(stats)):
        return None
    return layout.read_json_object(schema, "schema"), layout.read_json_object(stats, "statistics")


def lineage_record(
    *,
    version: int,
    data: str = "",
    fingerprint: str = "",
    parent: str = "",
    image: str = "",
    training: dict | None = None,
    metrics: dict | None = None,
    data_check: dict | None = None,
    gate: dict | None = None,
    forced: bool = False,
    rollback_of: int | None = None,
) -> dict:
    """The lineage document of one published version (see the module docstring)."""
    return {
        "format": LINEAGE_FORMAT,
        "version": version,
        "published_at": now(),
        "data": {"location": data, "fingerprint": fingerprint},
        "parent": parent,
        "tfpipes": {"version": __version__, "image": image},
        "training": training or {},
        "metrics": metrics or {},
        "data_check": data_check or {},
        "gate": gate or {},
        "forced": forced,
        "rollback_of": rollback_of,
    }


def publish_version(saved_model: str, base: str, version: int, record: dict, data: str = "") -> str:
    """Commit a copy of the SavedModel directory ``saved_model`` as ``<base>/<version>`` with
    ``record`` (its ``version`` set to ``version``) and, from the data set ``data`` when given,
    its schema.json and stats.json in ``assets.extra/``. ``version`` 0: one above the newest.
    Returns the version directory. UserError when that version exists (never replaced)."""
    if version <= 0:
        version = (newest_version(base) or 0) + 1
    final = layout.version_dir(base, version)
    record = {**record, "version": version}
    with storage.local_dir(saved_model) as src:
        with storage.staged_dir(final, last=(layout.SAVED_MODEL_PB,), inputs=(src,)) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            extra = os.path.join(tmp, EXTRA)
            os.makedirs(extra, exist_ok=True)
            if data:
                for name in (layout.SCHEMA, layout.STATS):
                    with open(os.path.join(extra, name), "w") as f:
                        f.write(storage.read_text(storage.join(data, name)))
            with open(os.path.join(tmp, *LINEAGE.split("/")), "w") as f:
                json.dump(record, f, indent=2, sort_keys=True)
    log.info("published %s", final)
    return final


def record_run(base: str, record: dict) -> str:
    """Keep the record of a run that published nothing (its verdicts and why) under
    ``<base>/_tfpipes_runs/``; returns the file written. Nothing is written when ``base`` is
    empty."""
    if not base:
        return ""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = storage.join(base, RUNS, f"{stamp}-{uuid.uuid4().hex[:6]}.json")
    storage.write_text(path, json.dumps({"recorded_at": now(), **record}, sort_keys=True))
    return path


def runs(base: str) -> list[dict]:
    """The run records under ``base``, oldest first."""
    folder = storage.join(base, RUNS)
    if not base or not storage.is_dir(folder):
        return []
    names = sorted(n for n in storage.listdir(folder) if n.endswith(".json"))
    return [layout.read_json_object(storage.join(folder, n), "run record") for n in names]


def rollback(base: str, to: int | None = None, image: str = "") -> tuple[int, str]:
    """Republish version ``to`` (default: the one before the newest) of ``base`` as a new,
    highest version whose lineage is ``to``'s with ``rollback_of`` set. Returns (new version,
    its directory). Nothing is deleted or edited. UserError when there is nothing to roll
    back to."""
    vs = versions(base)
    if not vs:
        raise UserError(f"--base {base}: no published versions")
    if to is None:
        if len(vs) < 2:
            raise UserError(f"--base {base}: only version {vs[0]} is published; nothing earlier")
        to = vs[-2]
    if to not in vs:
        raise UserError(f"--to {to}: not a published version of {base} ({_span(vs)})")
    old = read_lineage(base, to)
    record = {**old, **lineage_record(version=0, rollback_of=to, image=image)}
    for key in ("data", "parent", "training", "metrics", "data_check", "gate"):
        if key in old:
            record[key] = old[key]
    record["rolled_back_from"] = vs[-1]
    src = layout.version_dir(base, to)
    final = publish_version(src, base, vs[-1] + 1, record)
    return vs[-1] + 1, final


def _span(vs: list[int]) -> str:
    return ", ".join(str(v) for v in vs[-10:])


def table(base: str) -> list[dict]:
    """One row per published version (with its lineage) and per unpublished run, in time
    order: what ``tfpipes models list`` shows."""
    rows = []
    for v in versions(base):
        rec = read_lineage(base, v)
        rows.append(
            {
                "when": rec.get("published_at", ""),
                "version": v,
                "outcome": _outcome(rec),
                "parent": rec.get("parent", ""),
                "metrics": rec.get("metrics", {}),
                "reason": (rec.get("gate") or {}).get("reason", ""),
            }
        )
    for run in runs(base):
        rows.append(
            {
                "when": run.get("recorded_at", ""),
                "version": None,
                "outcome": run.get("outcome", "not published"),
                "parent": "",
                "metrics": (run.get("gate") or {}).get("challenger", {}),
                "reason": run.get("reason", ""),
            }
        )
    return sorted(rows, key=lambda r: r["when"])


def _outcome(rec: dict) -> str:
    if not rec:
        return "published (no lineage)"
    if rec.get("rollback_of") is not None:
        return f"rollback to {rec['rollback_of']}"
    if rec.get("forced"):
        return "published (forced)"
    return "published"
