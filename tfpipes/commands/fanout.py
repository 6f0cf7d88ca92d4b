"""``tfpipes preprocess-plan | preprocess-part | preprocess-commit``: preprocess fanned out over
N processes on any engine that can run them (the KFP pipeline's ParallelFor is one); and
``preprocess-scan-list | preprocess-scan``, the plan's read of the input in parallel ranges."""

from __future__ import annotations

import json
import logging

from tfpipes.commands import add_command
from tfpipes.commands.steps import add_preprocess_flags, log_result, preprocess_config
from tfpipes.layout import DEFAULT_RECORD_LAYOUT, RECORD_LAYOUTS

log = logging.getLogger("tfpipes")

_STEPS = (
    "  tfpipes preprocess-plan --source big/ --output out/data --label y --parts 8\n"
    "  for i in 0 1 2 3 4 5 6 7; do tfpipes preprocess-part --staging out/.data.fanout \\\n"
    "      --part $i & done; wait      # any N machines that see the staging place\n"
    "  tfpipes preprocess-commit --staging out/.data.fanout"
)
_SCANS = (
    "  tfpipes preprocess-scan-list --source big/ --label y --scans out/scans --ranges 8\n"
    "  for i in 0 1 2 3 4 5 6 7; do tfpipes preprocess-scan --scans out/scans --range $i & \\\n"
    "      done; wait                # any N machines that see the input and the scan place\n"
    "  tfpipes preprocess-plan --source big/ --output out/data --label y --parts 8 \\\n"
    "      --scans out/scans         # then preprocess-part and preprocess-commit as above"
)


def register(sub) -> None:
    p = add_command(
        sub,
        "preprocess-plan",
        _plan,
        help="fan-out preprocess, step 1: cut the input into N parts and plan the columns",
        description=(
            "Read the input once as `tfpipes preprocess` reads it first: the column types\n"
            "from the same sample, and the row-aligned blocks of each plain CSV file (a\n"
            "compressed CSV or a Parquet file is one unit). Deal the blocks into --parts\n"
            "contiguous parts of about equal bytes and write the plan into the staging place\n"
            "(--staging; default: <parent>/.<name>.fanout beside --output, or\n"
            "<output>.fanout for gs://). Prints the staging place and the part numbers (JSON).\n"
            "The data set the three steps commit is the one `tfpipes preprocess` writes, with\n"
            "ceil(num-shards / parts) shards per split per part. See docs/preprocess.md.\n\n"
            "steps:\n" + _STEPS
        ),
    )
    add_preprocess_flags(p)
    p.add_argument("--parts", type=int, required=True, help="number of parts (1-10000)")
    p.add_argument("--staging", default="", help="where the parts write (default: beside output)")
    p.add_argument(
        "--block-size", type=int, default=4 << 20, help="bytes per block (4 MiB, as preprocess)"
    )
    p.add_argument(
        "--full-scan",
        action="store_true",
        help="decide the column types from every row, not a sample (when the commit asks)",
    )
    p.add_argument(
        "--scans",
        default="",
        help="a scan place whose ranges all ran (preprocess-scan-list, preprocess-scan): the "
        "plan reads only the files they could not cut",
    )

    s = add_command(
        sub,
        "preprocess-scan-list",
        _scan_list,
        help="fan-out preprocess, step 0 (large plain CSV): list the ranges of the plan's read",
        description=(
            "preprocess-plan reads the whole input once, on one machine. For plain CSV files\n"
            "that read can run in parallel: this lists about --ranges byte ranges of whole\n"
            "blocks (each file at least one) into the scan place (--scans); preprocess-scan\n"
            "reads one range anywhere; preprocess-plan --scans joins them into the same plan\n"
            "it makes alone. A file with a row (or quoted field) longer than a block, a\n"
            "compressed CSV or a Parquet file is still read by the plan (each range says\n"
            "why). Prints the scan place and the range numbers (JSON).\n\n"
            "steps:\n" + _SCANS
        ),
    )
    s.add_argument("--source", required=True, help="CSV/Parquet file, glob, directory or gs://")
    s.add_argument("--label", required=True, help="name of the label column")
    s.add_argument("--scans", required=True, help="the scan place: a directory or gs:// prefix")
    s.add_argument("--ranges", type=int, required=True, help="about how many ranges (1-10000)")
    s.add_argument("--na-values", default=None, help="as preprocess-plan's (the same value)")
    s.add_argument(
        "--block-size", type=int, default=4 << 20, help="bytes per block (as preprocess-plan)"
    )
    s.add_argument("--full-scan", action="store_true", help="as preprocess-plan's")
    s.add_argument("--layout", default=DEFAULT_RECORD_LAYOUT, choices=list(RECORD_LAYOUTS))

    r = add_command(
        sub,
        "preprocess-scan",
        _scan,
        help="fan-out preprocess, step 0b: read one range of a scan listing",
        description=(
            "Read range --range of the listing in --scans (its blocks, line ends, CRC32C and\n"
            "the column sample of its blocks) and write the result into the scan place.\n"
            "Running it again replaces that result.\n\nsteps:\n" + _SCANS
        ),
    )
    r.add_argument("--scans", required=True, help="the scan place preprocess-scan-list printed")
    r.add_argument("--range", type=int, required=True, help="the range's number (0 .. ranges-1)")
    r.add_argument("--workers", type=int, default=0, help="parsing threads (0: one per core)")

    q = add_command(
        sub,
        "preprocess-part",
        _part,
        help="fan-out preprocess, step 2: preprocess one part of a plan",
        description=(
            "Preprocess part --part of the plan in --staging: its shards and its partial\n"
            "statistics go into the staging place, the statistics last (they mark the part\n"
            "done). Running a part again rewrites only its own files.\n\nsteps:\n" + _STEPS
        ),
    )
    q.add_argument("--staging", required=True, help="the staging place preprocess-plan printed")
    q.add_argument("--part", type=int, required=True, help="the part's number (0 .. parts-1)")
    q.add_argument("--workers", type=int, default=0, help="parsing threads (0: one per core)")

    c = add_command(
        sub,
        "preprocess-commit",
        _commit,
        help="fan-out preprocess, step 3: verify and merge the parts, commit the data set",
        description=(
            "Check every part of the plan in --staging is whole (a missing or corrupt part\n"
            "stops the commit with its number), merge their statistics and commit the data\n"
            "set (schema.json, stats.json, shards; manifest.json last) at the plan's output\n"
            "(or --output), then remove the staging place.\n\nsteps:\n" + _STEPS
        ),
    )
    c.add_argument("--staging", required=True, help="the staging place preprocess-plan printed")
    c.add_argument("--output", default="", help="the data set to create (default: the plan's)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _plan(args) -> int:
    import dataclasses

    from tfpipes.preprocess.fanout import plan_fanout

    cfg = dataclasses.replace(preprocess_config(args), block_size=args.block_size)
    fp = plan_fanout(cfg, args.parts, args.staging, full_scan=args.full_scan, scans=args.scans)
    log.info(
        "preprocess-plan: %d parts of %s bytes -> %s", fp.num_parts, fp.total_bytes, fp.staging
    )
    print(json.dumps({"staging": fp.staging, "parts": list(range(fp.num_parts))}))
    return 0


def _scan_list(args) -> int:
    from tfpipes.preprocess import PreprocessConfig
    from tfpipes.preprocess.fanout_scan import list_scans

    na = {} if args.na_values is None else {"na_values": tuple(args.na_values.split(","))}
    cfg = PreprocessConfig(
        args.source, "", args.label, block_size=args.block_size, layout=args.layout, **na
    )
    lst = list_scans(cfg, args.ranges, args.scans, full_scan=args.full_scan)
    n = len(lst["ranges"])
    log.info("preprocess-scan-list: %d ranges of %s -> %s", n, args.source, args.scans)
    print(json.dumps({"scans": args.scans, "ranges": list(range(n))}))
    return 0


def _scan(args) -> int:
    from tfpipes.preprocess.fanout_scan import run_scan, scan_summary

    r = run_scan(args.scans, args.range, workers=args.workers)
    how = scan_summary(r)
    log.info("preprocess-scan %d: %s", args.range, how)
    return 0


def _part(args) -> int:
    from tfpipes.preprocess.fanout_part import run_part

    r = run_part(args.staging, args.part, workers=args.workers)
    log.info("preprocess-part %d: %d rows in %.1f s", r.part, r.rows, r.seconds)
    return 0


def _commit(args) -> int:
    from tfpipes.preprocess.fanout_commit import commit_fanout

    log_result(commit_fanout(args.staging, args.output, overwrite=args.overwrite or None))
    return 0
