"""Preprocess fanned out as KFP components: scan listing -> ParallelFor(scan) -> Collected ->
plan -> ParallelFor(part) -> Collected -> commit.

(No ``from __future__ import annotations`` here: kfp reads the annotations as types.)

The scan tasks read the input's plain CSV files in parallel byte ranges
(:mod:`tfpipes.preprocess.fanout_scan`), so the plan does not read them alone on one machine;
each writes its result into the listing's ``scans`` artifact, as the parts write into the
staging place. The DAG (scans, plan, ParallelFor over the parts, the commit over
``dsl.Collected``) is
:mod:`tfpipes_pipelines.fanout`'s. Thin adapters over :mod:`tfpipes.preprocess.fanout` and
its part and commit modules, like :mod:`tfpipes_components.steps`. The plan's ``staging``
artifact is the staging place: every part task writes its shards and partial statistics
into it (the part tasks see it as an input artifact, a prefix or directory in the pipeline
root; a ``gs://`` one is used through the storage layer, not a FUSE mount), and
the commit task verifies them and commits the ``examples`` data set — the same data set
``preprocess_op`` writes, with ``ceil(num_shards / parts)`` shards per split per part. A
retried part rewrites only its own files; a part whose output is missing or corrupt fails
the commit with its number.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output
from tfpipes_components.steps import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def input_bytes_op(source: str) -> int:
    """The bytes preprocess would read at ``source``: what the pipeline compares with its
    fan-out threshold."""
    from tfpipes import storage
    from tfpipes.errors import exit_on_error
    from tfpipes.preprocess.inputs import source_files

    with exit_on_error("input-bytes"):
        total = sum(storage.size(f) for f in source_files(source))
    print(f"input-bytes: {total}")
    return total


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def scan_list_op(
    source: str,
    label: str,
    ranges: int,
    scans: Output[Artifact],
    na_values: str = "",
    block_size: int = 4 << 20,
) -> List[int]:
    """List about ``ranges`` byte ranges of ``source``'s plain CSV files into the ``scans``
    artifact; returns the range numbers for ``dsl.ParallelFor``."""
    from tfpipes.errors import exit_on_error
    from tfpipes.preprocess.config import component_config
    from tfpipes.preprocess.fanout_scan import list_scans

    with exit_on_error("preprocess-scan-list"):
        cfg = component_config(source, "", label, na_values, block_size=block_size)
        place = scans.uri if scans.uri.startswith("gs://") else scans.path
        n = len(list_scans(cfg, ranges, place)["ranges"])
    scans.metadata.update({"ranges": n})
    print(f"preprocess-scan-list: {n} ranges")
    return list(range(n))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def scan_op(scans: Input[Artifact], index: int) -> str:
    """Read range ``index`` of the listing in ``scans`` into it; returns its name for the
    plan's ``dsl.Collected`` (which makes the plan wait for every range)."""
    from tfpipes.errors import exit_on_error
    from tfpipes.preprocess.fanout_scan import run_scan, scan_summary

    with exit_on_error(f"preprocess-scan {index}"):
        r = run_scan(scans.uri if scans.uri.startswith("gs://") else scans.path, index)
    how = scan_summary(r)
    print(f"preprocess-scan {index}: {how}")
    return f"range-{index:05d}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_op(
    source: str,
    label: str,
    parts: int,
    scans: Input[Artifact],
    scanned: List[str],
    staging: Output[Artifact],
    eval_fraction: float = 0.2,
    num_shards: int = 16,
    compression: str = "",
    na_values: str = "",
    task: str = "",
    on_missing_label: str = "drop",
    block_size: int = 4 << 20,
) -> List[int]:
    """Plan ``parts`` parts of preprocessing ``source`` into the ``staging`` artifact, from the
    scans in ``scans`` (``scanned``: their names, collected) and a read of what they could not
    cut; returns the part numbers for ``dsl.ParallelFor``. Parameters as ``preprocess_op``'s."""
    from tfpipes.errors import UserError, exit_on_error
    from tfpipes.preprocess.config import component_config
    from tfpipes.preprocess.fanout import plan_fanout

    with exit_on_error("preprocess-plan"):
        if len(set(scanned)) != len(scanned):
            raise UserError(f"a scan reported twice: {sorted(scanned)}")
        fp = plan_fanout(
            component_config(
                source,
                "",  # the commit task's examples artifact
                label,
                na_values,
                eval_fraction=eval_fraction,
                num_shards=num_shards,
                compression=compression,
                task=task,
                on_missing_label=on_missing_label,
                block_size=block_size,
            ),
            parts,
            # gs://: the parts upload, the commit copies server side (no bytes through FUSE)
            staging.uri if staging.uri.startswith("gs://") else staging.path,
            scans=scans.uri if scans.uri.startswith("gs://") else scans.path,
        )
    staging.metadata.update({"parts": fp.num_parts, "bytes": fp.total_bytes, "plan": fp.id})
    print(f"preprocess-plan: {fp.num_parts} parts of {fp.total_bytes} bytes")
    return list(range(fp.num_parts))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def part_op(staging: Input[Artifact], part: int) -> str:
    """Preprocess part ``part`` of the plan in ``staging``; returns its name for the commit's
    ``dsl.Collected`` (which also makes the commit wait for every part)."""
    from tfpipes.errors import exit_on_error
    from tfpipes.preprocess.fanout_part import run_part

    with exit_on_error(f"preprocess-part {part}"):
        r = run_part(staging.uri if staging.uri.startswith("gs://") else staging.path, part)
    print(f"preprocess-part {part}: {r.rows} rows in {r.seconds:.1f} s")
    return f"part-{part:05d}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def commit_op(staging: Input[Artifact], done: List[str], examples: Output[Dataset]) -> str:
    """Verify every part of the plan in ``staging`` (``done``: the parts' names, collected),
    merge their statistics and commit the ``examples`` data set, manifest last; returns its
    URI (as ``preprocess_op`` does)."""
    from tfpipes.errors import UserError, exit_on_error
    from tfpipes.preprocess.fanout_commit import commit_fanout

    with exit_on_error("preprocess-commit"):
        if len(set(done)) != len(done):
            raise UserError(f"a part reported twice: {sorted(done)}")
        remote = staging.uri.startswith("gs://")
        r = commit_fanout(
            staging.uri if remote else staging.path,
            examples.uri if remote else examples.path,
            overwrite=True,  # a retried commit replaces its own output
        )
    examples.metadata.update(
        {
            "rows": r.rows,
            "missing_label_rows": r.missing_label_rows,
            "train_rows": r.train_rows,
            "eval_rows": r.eval_rows,
            "task": r.schema.task,
            "source_hash": r.source_hash,
            "parts": len(done),
        }
    )
    print(f"preprocess-commit: {r.rows} rows from {len(done)} parts -> {examples.path}")
    return examples.uri
