"""Preprocess fanned out: a scan listing -> ``dsl.ParallelFor`` over its ranges ->
``dsl.Collected`` into the plan -> ``dsl.ParallelFor`` over the parts -> ``dsl.Collected`` into
the commit; as steps of another pipeline (:func:`fanout_steps`, what the training pipelines
run above their ``fanout_bytes`` threshold) or as a pipeline of its own
(:func:`fanout_preprocess`).

Each part task is retried by KFP (``PART_RETRIES``) and rewrites only its own files; the
commit fails naming a part whose output is missing or corrupt. Nothing here is cached: a
plan's staging place is used once (its commit removes it).
"""

from collections.abc import Callable

from kfp import dsl
from kfp.dsl import Dataset
from tfpipes_components.fanout import commit_op, part_op, plan_op, scan_list_op, scan_op

PART_RETRIES = 2


def fanout_steps(
    source, label, parts, eval_fraction, num_shards, block_size=4 << 20, wrap: Callable = None
):
    """The fan-out's tasks in the current pipeline; returns the commit task (its output
    ``examples`` is the data set). ``wrap``: applied to every task (credentials, placement)."""
    wrap = wrap or (lambda task: task)
    # The plan's read of the input, in about ``parts`` ranges read in parallel (plain CSV)
    listing = wrap(scan_list_op(source=source, label=label, ranges=parts, block_size=block_size))
    listing.set_caching_options(False)
    with dsl.ParallelFor(listing.outputs["Output"], name="scans") as r:
        scan = wrap(scan_op(scans=listing.outputs["scans"], index=r))
        scan.set_caching_options(False)
        scan.set_retry(PART_RETRIES)
    plan = wrap(
        plan_op(
            source=source,
            label=label,
            parts=parts,
            scans=listing.outputs["scans"],
            scanned=dsl.Collected(scan.output),
            eval_fraction=eval_fraction,
            num_shards=num_shards,
            block_size=block_size,
        )
    )
    plan.set_caching_options(False)
    with dsl.ParallelFor(plan.outputs["Output"], name="parts") as i:
        part = wrap(part_op(staging=plan.outputs["staging"], part=i))
        part.set_caching_options(False)
        part.set_retry(PART_RETRIES)
    commit = wrap(commit_op(staging=plan.outputs["staging"], done=dsl.Collected(part.output)))
    commit.set_caching_options(False)
    return commit


@dsl.pipeline(
    name="tfpipes-preprocess-fanout",
    description="CSV -> TFRecords (schema, stats, split), preprocessed in parallel parts",
)
def fanout_preprocess(
    source: str,
    label: str,
    parts: int = 8,
    eval_fraction: float = 0.2,
    num_shards: int = 16,
    block_size: int = 4 << 20,
) -> Dataset:
    """The data set of ``source``, preprocessed in ``parts`` parallel tasks: the same data set
    ``preprocess_op`` writes (``ceil(num_shards / parts)`` shards per split per part)."""
    commit = fanout_steps(source, label, parts, eval_fraction, num_shards, block_size)
    return commit.outputs["examples"]
