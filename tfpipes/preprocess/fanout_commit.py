"""The fan-in of a fanned-out preprocess: verify every part, merge, commit one data set.

Every part's partial statistics must be there, readable, of this plan, and list exactly the
part's shards, each present with the size (and, in object storage, the CRC32C) the part
recorded; the first part that fails stops the commit with a message naming it. Then the
statistics are merged (:mod:`.partials`) and the data set is committed as single-process
preprocess commits it — ``schema.json``, ``stats.json`` and ``manifest.json`` written by the
same code (:meth:`.pipeline._Run.commit`), the manifest last. The shards are not copied
through this process: hard links in a local staging directory (the commit then renames the
directory into place), server-side copies in object storage. The commit's cost grows with the
number of parts and files, not with the bytes. The staging place is removed afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import types
import zipfile

from tfpipes import manifest, storage
from tfpipes.errors import UserError
from tfpipes.preprocess.config import PreprocessResult
from tfpipes.preprocess.fanout import (
    PLAN_FILE,
    FanoutPlan,
    check_whole_input,
    load_plan,
    partial_name,
    remove_local_staging,
)
from tfpipes.preprocess.parallel import default_workers
from tfpipes.preprocess.partials import merge_partials, read_partial
from tfpipes.preprocess.pipeline import _Run, _sample_may_mislead


class _StagedSplit:
    """One split's shards as the parts wrote them: what :meth:`_Run.commit` asks a writer."""

    def __init__(self) -> None:
        self.rel: list[str] = []
        self.rows: list[int] = []
        self.sums: dict[str, tuple[int, str]] = {}

    def close(self) -> None:
        pass

    def checksums(self) -> dict[str, tuple[int, str]]:
        return self.sums


class _Merged:
    """The parts merged into what a single-process run holds when it commits."""

    commit = _Run.commit  # the very code single-process preprocess commits with

    def __init__(self, cfg, fp: FanoutPlan, partials: list[dict]) -> None:
        self.cfg, self.plan = cfg, fp.plan
        self.stats = merge_partials(fp.plan, partials)
        self.workers = default_workers()  # threads for the statistics at the end
        self.skipped = sum(p["meta"]["skipped"] for p in partials)
        self.notes = [n for p in partials for n in p["meta"]["notes"]][:5]
        self.crcs = [tuple(x) for x in fp.crcs]
        self.bytes_done = fp.total_bytes
        self.tmp = ""
        self.writers = {"train": _StagedSplit(), "eval": _StagedSplit()}
        for i, p in enumerate(partials):
            shards = p["meta"]["shards"]
            for split, w in self.writers.items():
                for name in fp.shard_names(i, split):
                    rows, size, crc = shards[name]
                    w.rel.append(name)
                    w.rows.append(rows)
                    w.sums[name] = (size, crc)

    @property
    def rows(self) -> int:
        return self.stats.n


def commit_fanout(
    staging: str, output: str = "", overwrite: bool | None = None
) -> PreprocessResult:
    """Verify and merge the parts of the plan in ``staging``; commit the data set at ``output``
    (default: the plan's). Returns the :class:`PreprocessResult` single-process preprocess
    would. Raises UserError naming the first part that is missing or corrupt, or as
    preprocess does (no rows, every row in eval); nothing is committed then and the staging
    place is kept, so the failed parts can run again."""
    t0, cpu0 = time.monotonic(), time.process_time()
    fp = load_plan(staging)
    cfg = fp.config
    final = storage.normalize(output or cfg.output)
    if not final:
        raise UserError("--output is needed: the plan names none")
    cfg = dataclasses.replace(
        cfg, output=final, overwrite=cfg.overwrite if overwrite is None else overwrite
    )
    remote = storage.is_remote(fp.staging)
    if remote != storage.is_remote(final):
        raise UserError(
            f"{final}: the output and the staging place {fp.staging} must both be local or "
            "both in object storage (the shards are moved, not copied through here)"
        )
    if storage.overlap(final, fp.staging):
        raise UserError(
            f"{final}: the output and the staging place {fp.staging} must not contain each "
            "other (the staging place is removed after the commit); choose another output"
        )
    listed = storage.list_checksums(fp.staging) if remote else None
    partials = [_verified(fp, i, listed) for i in range(fp.num_parts)]
    merged = _Merged(cfg, fp, partials)
    if _sample_may_mislead(merged, types.SimpleNamespace(**fp.inference), fp.plan, fp.task):
        check_whole_input(fp, "the rows written leave room for it")
    names = [n for w in merged.writers.values() for n in w.rel]
    inputs = (cfg.source, *fp.files)
    last = (manifest.MANIFEST,)
    if remote:
        with tempfile.TemporaryDirectory(prefix="tfpipes-commit-") as meta:
            merged.tmp = meta
            result = merged.commit(fp.files, fp.overrides, fp.task)
            storage.commit_staged_prefix(
                fp.staging, final, names, meta, last=last, overwrite=cfg.overwrite, inputs=inputs
            )
        mark = storage.owner_mark(fp.staging)
        owned = [n for n, o in storage.list_owners(fp.staging).items() if o == mark]
        storage.delete_objects(fp.staging, owned)
    else:
        with storage.staged_dir(final, overwrite=cfg.overwrite, last=last, inputs=inputs) as tmp:
            storage.link_files(fp.staging, tmp, names)
            merged.tmp = tmp
            result = merged.commit(fp.files, fp.overrides, fp.task)
        if os.path.isfile(os.path.join(fp.staging, *PLAN_FILE.split("/"))):
            remove_local_staging(fp)
    secs, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return dataclasses.replace(result, seconds=secs, cpu_seconds=cpu)


def _verified(fp: FanoutPlan, i: int, listed: dict | None) -> dict:
    """Part ``i``'s partial statistics, after checking the part is whole."""
    where = f"part {i} of {fp.num_parts}"
    again = f"run `tfpipes preprocess-part --staging {fp.staging} --part {i}` again"
    path = storage.join(fp.staging, partial_name(i))
    present = partial_name(i) in listed if listed is not None else os.path.isfile(path)
    if not present:
        raise UserError(f"{where}: not done ({path} is missing); {again}")
    try:
        p = read_partial(storage.read_bytes(path))
        meta = p["meta"]
        shards = meta["shards"]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{where}: {path} is corrupt ({type(e).__name__}); {again}") from None
    if meta.get("plan") != fp.id or meta.get("part") != i:
        raise UserError(f"{where}: {path} was written for another plan; {again}")
    expected = fp.shard_names(i, "train") + fp.shard_names(i, "eval")
    if sorted(shards) != sorted(expected):
        raise UserError(f"{where}: {path} lists other shards than the plan's; {again}")
    for name in expected:
        rows, size, crc = shards[name]
        shard = storage.join(fp.staging, name)
        if listed is not None:
            got = listed.get(name)
        else:  # local: the size (reading every byte back would make the commit cost the data)
            got = (os.path.getsize(shard), crc) if os.path.isfile(shard) else None
        if got is None:
            raise UserError(f"{where}: its shard {shard} is missing; {again}")
        if tuple(got) != (size, crc):
            found = f"{got[0]} bytes" + (f", CRC32C {got[1]}" if got[1] != crc else "")
            raise UserError(
                f"{where}: its shard {shard} does not match what the part wrote ({found}; "
                f"expected {size} bytes, CRC32C {crc}); {again}"
            )
    return p
