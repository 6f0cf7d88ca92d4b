"""Preprocess fanned out over N processes: the plan, and the staging place it lives in.

Three steps, each a plain function any engine can run (the KFP pipeline's ParallelFor, the
CLI's ``preprocess-plan | preprocess-part | preprocess-commit``, a shell loop):

1. :func:`plan_fanout` reads the input once the way single-process preprocess reads it first:
   the same sampled first pass (:func:`.pipeline._scan`) decides the columns, and the same
   block cutter (:class:`.csv_blocks.CsvInput`, quote-aware, at row ends) records where each
   block of a plain CSV file starts (byte offset, line) and how long it is. A compressed CSV or
   a Parquet file is one unit. The units are dealt out in input order into N contiguous,
   byte-balanced parts. The plan (a JSON file, ``_fanout/plan.json`` in the staging place)
   holds the column plan, the input's content hash and each part's byte ranges.
2. :func:`tfpipes.preprocess.fanout_part.run_part` preprocesses one part: exactly the blocks
   single-process preprocess would cut there, so every row gets the same split (a hash of its
   example) and the same statistics-sample hash (of its line), whatever N.
3. :func:`tfpipes.preprocess.fanout_commit.commit_fanout` verifies and merges the parts and
   commits one data set, manifest last.

Shards: part p writes ``k = ceil(num_shards / N)`` shards per split, numbered ``p*k .. p*k+k-1``
of ``N*k``; with N = 1 that is single-process preprocess's layout, file for file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import google_crc32c

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.preprocess.blocks import Plan
from tfpipes.preprocess.config import PreprocessConfig
from tfpipes.preprocess.csv_blocks import CsvInput
from tfpipes.preprocess.fanout_scan import load_scans
from tfpipes.preprocess.fingerprint import crc_hex, file_crc_hex, fingerprint
from tfpipes.preprocess.inputs import source_files
from tfpipes.preprocess.parallel import default_workers
from tfpipes.preprocess.pipeline import _full_plan, _make_plan, _scan, read_header
from tfpipes.preprocess.places import read_doc, write_marked
from tfpipes.schema import load_overrides

FORMAT = "tfpipes.fanout-plan/v1"
PLAN_FILE = "_fanout/plan.json"  # in the staging place; its presence marks the place ours
MAX_PARTS = 10_000


@dataclasses.dataclass(frozen=True)
class FanoutPlan:
    """What every part and the commit need; :func:`load_plan` reads it back."""

    id: str  # sha256 of the rest: a part records it, the commit checks it
    staging: str
    config: PreprocessConfig
    files: list
    crcs: list  # [path, crc hex] per file: the data set's source_hash
    sizes: list  # bytes per file: a part checks its inputs did not change
    total_bytes: int
    header: list
    overrides: dict
    plan: Plan
    task: str
    inference: dict  # the first pass's exact, uncertain and family, for the commit's check
    # per part: {"bytes": n, "ranges": [{"path", "whole", "offset", "line", "lengths", "crcs"}]}
    # (a plain CSV range: its blocks' lengths and CRC32Cs; a whole file: {"path", "whole"})
    parts: list
    shards_per_part: int

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    def shard_names(self, part: int, split: str) -> list[str]:
        """The data set names of part ``part``'s shards of ``split``, in order."""
        k, ext = self.shards_per_part, ".tfrecord.gz" if self.plan.compression else ".tfrecord"
        total = k * self.num_parts
        return [f"{split}/part-{part * k + i:05d}-of-{total:05d}{ext}" for i in range(k)]


def default_staging(output: str) -> str:
    """The staging place beside ``output``: ``<parent>/.<name>.fanout`` (a local directory) or
    ``<output>.fanout`` (a prefix in the same bucket)."""
    output = storage.normalize(output).rstrip("/")
    if storage.is_remote(output):
        return output + ".fanout"
    output = os.path.abspath(output)
    return os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.fanout")


def partial_name(part: int) -> str:
    """A part's partial statistics, written last by the part: its presence marks it done."""
    return f"_fanout/part-{part:05d}.npz"


class _Listing:
    """Told of every block and file by the first pass: the units the parts are cut from."""

    def __init__(self) -> None:
        self.units: list[dict] = []  # in input order
        self.crcs: list[list[str]] = []
        self.sizes: list[int] = []

    def block(self, inp, block) -> None:
        if inp.path.lower().endswith(".gz"):
            return  # a compressed file has no byte ranges: it is one unit (added by file())
        self.units.append(
            {"path": inp.path, "offset": inp.offset, "line": block.first, "len": len(block.data)}
            | {"crc": google_crc32c.value(block.data)}  # the part checks what it reads
        )

    def file(self, inp) -> None:
        if isinstance(inp, CsvInput):
            self.crcs.append([inp.path, crc_hex(inp.tap.crc)])
            whole = inp.path.lower().endswith(".gz")
        else:
            self.crcs.append([inp.path, file_crc_hex(inp.path)])
            whole = True
        self.sizes.append(storage.size(inp.path))
        if whole:
            self.units.append({"path": inp.path, "whole": True, "len": storage.size(inp.path)})

    def scanned(self, path: str, scan) -> None:
        """A plain CSV file whose blocks the parallel scans found (:mod:`.fanout_scan`)."""
        self.units += scan.units
        self.crcs.append([path, scan.crc_hex])
        self.sizes.append(scan.size)


def _deal(units: list[dict], n: int) -> list[dict]:
    """Units into ``n`` contiguous parts of about equal bytes (by where each unit starts)."""
    total = sum(u["len"] for u in units) or 1
    parts: list[dict] = [{"bytes": 0, "ranges": []} for _ in range(n)]
    start = 0
    for u in units:
        p = parts[min(n - 1, start * n // total)]
        start += u["len"]
        p["bytes"] += u["len"]
        ranges = p["ranges"]
        if u.get("whole"):
            ranges.append({"path": u["path"], "whole": True})
            continue
        prev = ranges[-1] if ranges else None
        if prev and not prev["whole"] and prev["path"] == u["path"]:
            prev["lengths"].append(u["len"])  # the next block of the same file: contiguous
            prev["crcs"].append(u["crc"])
        else:
            ranges.append(
                {"path": u["path"], "whole": False, "offset": u["offset"], "line": u["line"]}
                | {"lengths": [u["len"]], "crcs": [u["crc"]]}
            )
    return parts


def plan_fanout(
    cfg: PreprocessConfig,
    parts: int,
    staging: str = "",
    full_scan: bool = False,
    scans: str = "",
) -> FanoutPlan:
    """Plan ``parts`` parts of preprocessing ``cfg.source`` into ``cfg.output`` (empty: the
    commit names the output) and write the plan into ``staging`` (default
    :func:`default_staging`; an earlier plan's staging place there is replaced).

    One read of the input (the first pass, the same sample as single-process preprocess;
    ``full_scan``: every whole block, for inputs whose sample misleads). ``scans``: the scan
    place of :mod:`.fanout_scan`, whose ranges did that read in parallel for the plain CSV
    files they could cut; the plan reads only the others, and is the same plan. Raises
    UserError for bad arguments or input, naming the flag or file.
    """
    cfg.validate()
    if not 1 <= parts <= MAX_PARTS:
        raise UserError(f"--parts must be between 1 and {MAX_PARTS}, got {parts}")
    if not staging and not cfg.output:
        raise UserError("--staging or --output is needed: where the parts write")
    staging = storage.normalize(staging or default_staging(cfg.output)).rstrip("/")
    files = source_files(cfg.source)
    storage.check_output_location(staging, (cfg.source, *files))
    if cfg.output:
        storage.check_output_location(cfg.output, (cfg.source, *files, staging))
        if storage.exists(storage.join(cfg.output, "manifest.json")) and not cfg.overwrite:
            raise UserError(f"{cfg.output}: already exists; pass --overwrite to replace it")
    overrides = load_overrides(cfg.schema_path) if cfg.schema_path else {}
    header = read_header(cfg, files)
    workers = cfg.workers or default_workers()
    listing = _Listing()
    scanned = load_scans(scans, cfg, files, header, full_scan) if scans else None
    inference = _scan(
        cfg, files, header, workers, sample=not full_scan, listing=listing, scanned=scanned
    )
    plan, task = _make_plan(cfg, header, overrides, inference)
    doc = {
        "format": FORMAT,
        "staging": staging,
        "config": _config_doc(cfg),
        "files": files,
        "crcs": listing.crcs,
        "sizes": listing.sizes,
        "total_bytes": sum(u["len"] for u in listing.units),
        "header": list(header),
        "overrides": overrides,
        "plan": dataclasses.asdict(plan),
        "task": task,
        "inference": {
            "exact": inference.exact,
            "uncertain": inference.uncertain,
            "family": dict(inference.family),
        },
        "parts": _deal(listing.units, parts),
        "shards_per_part": -(-cfg.num_shards // parts),
    }
    text = json.dumps(doc, sort_keys=True)
    doc["id"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    _fresh_staging(staging)
    _write_plan(staging, json.dumps(doc, indent=1) + "\n")
    return _from_doc(doc)


def _write_plan(staging: str, text: str) -> None:
    """The plan file, marked as the staging place's (so that only ours is ever removed)."""
    write_marked(staging, PLAN_FILE, text, storage.owner_mark(staging))


def _config_doc(cfg: PreprocessConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["na_values"] = list(cfg.na_values)
    d["progress"] = False
    return d


def _fresh_staging(staging: str) -> None:
    """Empty the staging place, which must be new, empty, or an earlier plan's (ours)."""
    if storage.is_remote(staging):
        mark = storage.owner_mark(staging)
        owners = storage.list_owners(staging)
        foreign = sorted(n for n, o in owners.items() if o != mark)
        if foreign:
            raise UserError(
                f"{staging}: holds objects that are not a fan-out's staging (e.g. {foreign[0]});"
                " choose another --staging"
            )
        storage.delete_objects(staging, sorted(owners))
        return
    if os.path.isdir(staging) and os.listdir(staging):
        if not os.path.isfile(os.path.join(staging, *PLAN_FILE.split("/"))):
            raise UserError(
                f"{staging}: exists and is not a fan-out's staging directory; choose another "
                "--staging"
            )
        remove_local_staging(load_plan(staging))
    os.makedirs(os.path.join(staging, "_fanout"), exist_ok=True)


def remove_local_staging(fp: FanoutPlan) -> None:
    """Delete what the fan-out of ``fp`` wrote into its local staging directory: the
    ``_fanout`` folder (plan, partial statistics, the parts' attempt folders) and the shards
    the plan names, then the folders that leaves empty. Anything else stays, with the folders
    that hold it: we delete only what we provably wrote."""
    staging = fp.staging
    storage.rmtree(os.path.join(staging, "_fanout"))
    for part in range(fp.num_parts):
        for split in ("train", "eval"):
            for name in fp.shard_names(part, split):
                try:
                    os.remove(os.path.join(staging, *name.split("/")))
                except FileNotFoundError:
                    pass
    for folder, _, _ in os.walk(staging, topdown=False):
        if not os.listdir(folder):
            os.rmdir(folder)


def load_plan(staging: str) -> FanoutPlan:
    """The plan in the staging place ``staging``; UserError when there is none or it is not
    a plan."""
    staging = storage.normalize(staging).rstrip("/")
    doc, fp = read_doc(staging, PLAN_FILE, FORMAT, "fan-out plan", "preprocess-plan", _from_doc)
    if storage.normalize(doc["staging"]).rstrip("/") != staging:
        fp = dataclasses.replace(fp, staging=staging)  # the place was moved: trust where it is
    return fp


def _from_doc(doc: dict) -> FanoutPlan:
    c = dict(doc["config"])
    c["na_values"] = tuple(c["na_values"])
    p = dict(doc["plan"])
    for key in ("header", "order", "na_values"):
        p[key] = tuple(p[key])
    return FanoutPlan(
        id=doc["id"],
        staging=doc["staging"],
        config=PreprocessConfig(**c),
        files=list(doc["files"]),
        crcs=[tuple(x) for x in doc["crcs"]],
        sizes=[int(x) for x in doc["sizes"]],
        total_bytes=int(doc["total_bytes"]),
        header=list(doc["header"]),
        overrides=doc["overrides"],
        plan=Plan(**p),
        task=doc["task"],
        inference=doc["inference"],
        parts=doc["parts"],
        shards_per_part=int(doc["shards_per_part"]),
    )


def check_whole_input(fp: FanoutPlan, why: str) -> None:
    """When the rows show the sampled first pass may mislead (``why``), read the whole input
    as single-process preprocess does then; UserError when it decides the columns otherwise
    (the parts were written with the wrong plan: plan again with --full-scan)."""
    cfg = fp.config
    full = _full_plan(cfg, fp.files, fp.header, fp.overrides, cfg.workers or default_workers())
    if full != (fp.plan, fp.task):
        changed = [n for n in fp.header if full[0].types[n] != fp.plan.types[n]]
        what = f"column {changed[0]!r}" if changed else "the label's task"
        raise UserError(
            f"{cfg.source}: the whole input decides {what} otherwise than the plan's sample "
            f"did ({why}); plan again with `preprocess-plan --full-scan`"
        )


def source_hash(fp: FanoutPlan) -> str:
    """The data set's ``source_hash``, as single-process preprocess records it."""
    return fingerprint([tuple(x) for x in fp.crcs])
