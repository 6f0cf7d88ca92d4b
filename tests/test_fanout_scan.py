"""The fan-out plan's first pass in parallel ranges (tfpipes.preprocess.fanout_scan): the plan
made from the scans is the plan made by one serial read, for any ranges and block size."""

import json
import os
import random

import google_crc32c
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import run_tfpipes
from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.preprocess import PreprocessConfig
from tfpipes.preprocess.crc32c import crc32c_combine
from tfpipes.preprocess.fanout import plan_fanout
from tfpipes.preprocess.fanout_scan import list_scans, range_name, run_scan


def _plan_doc(staging: str) -> dict:
    doc = json.loads(storage.read_text(storage.join(staging, "_fanout/plan.json")))
    return {k: v for k, v in doc.items() if k not in ("id", "staging")}


def _both(src: str, d: str, block: int, ranges: int, parts: int = 3, full_scan: bool = False):
    """(serial plan, plan from scans, the scans' results)."""
    cfg = PreprocessConfig(src, "", "label", block_size=block, workers=2)
    serial = plan_fanout(cfg, parts, os.path.join(d, "a"), full_scan=full_scan)
    scans = os.path.join(d, "scans")
    lst = list_scans(cfg, ranges, scans, full_scan=full_scan)
    results = [run_scan(scans, i) for i in range(len(lst["ranges"]))]
    scanned = plan_fanout(cfg, parts, os.path.join(d, "b"), full_scan=full_scan, scans=scans)
    return serial, scanned, results


def _row(rnd: random.Random, quotes) -> str:
    """quotes: False, "inline" (quoted fields within their line: the scans cut those files)
    or True (some quoted fields hold a line end, a \\r, or sit mid-field)."""
    x = rnd.choice(["", f"{rnd.gauss(0, 3):.3f}", str(rnd.randint(-9, 99))])
    city = rnd.choice(["oslo", "rome", "", "NA", "lima" * rnd.randint(1, 30)])
    if quotes and rnd.random() < 0.2:
        inline = [
            '"a, b"',
            '"say ""hi"""',
            '""',
            '"NA"',
            'x"y',
            '"lima' + "," * rnd.randint(0, 9) + '"',
        ]
        city = rnd.choice(inline + ([] if quotes == "inline" else ['"two\nlines"', '"c\rr"']))
    return f"{x},{city},{rnd.choice('pq')}"


def _csv(seed: int, rows: int, quotes: bool, ends: str, blank: bool, final: bool) -> bytes:
    rnd = random.Random(seed)
    eol = {"lf": lambda: "\n", "crlf": lambda: "\r\n", "mixed": lambda: rnd.choice(["\n", "\r\n"])}
    eol["cr"] = lambda: rnd.choice(["\n", "\r\n", "\r"])
    text = ("\n" if blank else "") + "x,city,label" + eol[ends]()
    for i in range(rows):
        text += _row(rnd, quotes) + (eol[ends]() if final or i < rows - 1 else "")
        if blank and rnd.random() < 0.05:
            text += eol[ends]()
    return text.encode()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10**6),
    rows=st.integers(0, 120),
    quotes=st.sampled_from([False, "inline", True]),
    ends=st.sampled_from(["lf", "crlf", "mixed", "cr"]),
    blank=st.booleans(),
    final=st.booleans(),
    block=st.integers(8, 400),
    ranges=st.integers(1, 9),
    full=st.booleans(),
)
def test_the_plan_from_scans_is_the_serial_plan(
    tmp_path_factory, seed, rows, quotes, ends, blank, final, block, ranges, full
):
    d = str(tmp_path_factory.mktemp("scan"))
    os.makedirs(os.path.join(d, "in"))
    with open(os.path.join(d, "in", "a.csv"), "wb") as f:
        f.write(_csv(seed, max(rows, 2), quotes, ends, blank, final))
    with open(os.path.join(d, "in", "b.csv"), "wb") as f:  # a second file, other ranges
        f.write(_csv(seed + 1, rows // 2 + 1, False, "lf", False, True))
    serial, scanned, _ = _both(os.path.join(d, "in"), d, block, ranges, full_scan=full)
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10**6),
    rows=st.integers(100, 250),
    ends=st.sampled_from(["lf", "crlf", "mixed", "cr"]),
    bom=st.booleans(),
    exact=st.booleans(),
    block=st.integers(160, 700),
    ranges=st.integers(1, 9),
    quotes=st.sampled_from([False, "inline"]),
)
def test_quote_free_inputs_are_cut_by_the_scans_into_the_serial_plan(
    tmp_path_factory, seed, rows, ends, bom, exact, block, ranges, quotes
):
    """Rows shorter than a block, quoted fields (if any) within their line: the scans cut
    every range (no fallback), with or without a byte-order mark, and for a file an exact
    multiple of the block size."""
    d = str(tmp_path_factory.mktemp("fast"))
    os.makedirs(os.path.join(d, "in"))
    data = (b"\xef\xbb\xbf" if bom else b"") + _csv(seed, rows, quotes, ends, False, True)
    if exact:  # rows added to make the size a multiple of the block size
        data += b"1," + b"c" * 50 + b",p\n"  # 55 bytes
        pad, rows_ = -len(data) % block, []
        while pad >= 5:
            n = min(pad, 55)
            n = n if pad - n == 0 or pad - n >= 5 else n - 5
            rows_.append(b"1," + b"c" * (n - 5) + b",p\n")
            pad -= n
        data = data[:-4] + b"c" * pad + data[-4:] + b"".join(rows_)
        assert len(data) % block == 0
    assume(len(data) > 2 * block)  # files of one block are left to the plan
    with open(os.path.join(d, "in", "a.csv"), "wb") as f:
        f.write(data)
    serial, scanned, results = _both(os.path.join(d, "in"), d, block, ranges)
    reasons = [r["why"] for r in results if not r["fast"]]
    if ends != "cr":  # every read holds a \n: every range is cut by the scans
        assert not reasons and len(data) > block
    else:  # a read of lone \r line ends only is left to the plan
        assert all("line end" in w for w in reasons)
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)


def test_no_file_to_cut_lists_one_empty_range_and_odd_labels_are_left_to_the_plan(tmp_path):
    import gzip

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv.gz").write_bytes(gzip.compress(_csv(8, 500, False, "lf", False, True)))
    serial, scanned, results = _both(str(src), str(tmp_path / "gz"), 1024, 4)
    assert [r["fast"] for r in results] == [False] and "no plain CSV" in results[0]["why"]
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)
    dates = b"x,label\n" + b"".join(b"%d,2024-01-%02d\n" % (i, 1 + i % 28) for i in range(400))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_bytes(dates)
    serial, scanned, results = _both(str(tmp_path / "d"), str(tmp_path / "dd"), 1024, 2)
    assert any("label value of type date" in (r.get("why") or "") for r in results)
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)


def test_a_quote_free_file_is_cut_by_its_ranges_alone(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_bytes(_csv(7, 3000, False, "crlf", True, False))
    import tfpipes.preprocess.pipeline as pipeline

    serial, _, results = _both(str(src), str(tmp_path), 1024, 5)
    assert len(results) == 5 and all(r["fast"] for r in results)
    assert sum(len(r["variants"][0]["units"]) for r in results) > 30  # blocks of every range
    assert all(len(r["variants"]) == 1 for r in results)  # no quotes: one place to start
    real = pipeline.open_input
    opened = []
    monkeypatch.setattr(pipeline, "open_input", lambda p, b: opened.append(p) or real(p, b))
    cfg = PreprocessConfig(str(src), "", "label", block_size=1024, workers=2)
    scanned = plan_fanout(cfg, 3, str(tmp_path / "c"), scans=str(tmp_path / "scans"))
    assert opened == [str(src / "a.csv")]  # its header only (read_header): not its rows
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)
    crc = google_crc32c.value((src / "a.csv").read_bytes())
    assert scanned.crcs == [(str(src / "a.csv"), f"{crc:08x}")]


def test_a_range_says_why_it_could_not_cut_and_the_plan_reads_that_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "b.csv").write_bytes(b"x,city,label\n" + b"1,%s,p\n" % (b"o" * 3000) + b"2,a,q\n" * 50)
    (src / "c.csv").write_bytes(_csv(2, 400, False, "lf", False, True))
    # a quoted field left open at the end: the serial reader's error, so the plan's
    (src / "e.csv").write_bytes(_csv(3, 300, "inline", "lf", False, True) + b'1,"open,p\n')
    serial_err = None
    try:
        _both(str(src), str(tmp_path), 1024, 6)
    except UserError as e:
        serial_err = str(e)
    assert serial_err and "e.csv" in serial_err and "unterminated quoted field" in serial_err
    (src / "e.csv").unlink()
    serial, scanned, results = _both(str(src), str(tmp_path / "2"), 1024, 6)
    reasons = [r["why"] for r in results if not r["fast"]]
    assert any("holds no line end" in w for w in reasons)
    assert any(r["fast"] for r in results)  # c.csv
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)


def test_quoted_fields_holding_line_ends_are_cut_by_the_ranges(tmp_path, monkeypatch):
    """Where a range starts inside a quoted field, its look back tries both quote states;
    the plan keeps the one where the range before ended, and never reads the file."""
    src = tmp_path / "in"
    src.mkdir()
    data = _csv(5, 3000, True, "crlf", False, True)
    assert data.count(b'"two\nlines"') > 50
    (src / "a.csv").write_bytes(data)
    serial, _, results = _both(str(src), str(tmp_path), 1024, 7)
    assert len(results) == 7 and all(r["fast"] for r in results), [r.get("why") for r in results]
    import tfpipes.preprocess.pipeline as pipeline

    real, opened = pipeline.open_input, []
    monkeypatch.setattr(pipeline, "open_input", lambda p, b: opened.append(p) or real(p, b))
    cfg = PreprocessConfig(str(src), "", "label", block_size=1024, workers=2)
    scanned = plan_fanout(cfg, 3, str(tmp_path / "c"), scans=str(tmp_path / "scans"))
    assert opened == [str(src / "a.csv")]  # its header only (read_header): not its rows
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)


@pytest.mark.parametrize(
    "data, block, ranges",
    [
        # a cut at a lone \r in a read before the current one (the \n after it ends no row)
        (b"x,c,label\n0,cc,q\n1,c,q\n2,c,q\r3," + b"c" * 28 + b"\r4,c,q\n5,c,p\n6,c,q\n"
         b"7,c,p\n8,c,q\n9,c,p\n1,p\n", 20, 2),
        # the same at the end of the file, with quoted line ends
        (b'x,c,label\r\n5,,p\n\n\n4,"\r\n",p\r\n5,"\r\n",p\n1,"a,b",q\r\n0,"q""q",p\r3,'
         b'"x\r\ny",q\r', 33, 3),
    ],
)  # fmt: skip
def test_scanned_blocks_are_the_serial_readers_with_lone_cr_row_ends(tmp_path, data, block, ranges):
    """Every block the scans give (offset, line, length, CRC32C) is the serial reader's,
    line numbers included, where a cut falls on a lone \r in an earlier read."""
    from tfpipes.preprocess.csv_blocks import CsvInput
    from tfpipes.preprocess.fanout_scan import load_scans

    (tmp_path / "in").mkdir()
    path = str(tmp_path / "in" / "a.csv")
    open(path, "wb").write(data)
    inp = CsvInput(path, block)
    serial = []
    for blk in inp.blocks():
        serial.append({"path": path, "offset": inp.offset, "line": blk.first, "len": len(blk.data)})
        serial[-1]["crc"] = google_crc32c.value(blk.data)
    inp.close()
    cfg = PreprocessConfig(str(tmp_path / "in"), "", "label", block_size=block, workers=1)
    scans = str(tmp_path / "scans")
    lst = list_scans(cfg, ranges, scans)
    assert len(lst["ranges"]) == ranges
    for i in range(ranges):
        run_scan(scans, i)
    used = load_scans(scans, cfg, [path], list(inp.header), False)
    assert path in used and used[path].units == serial


def test_a_missing_or_foreign_scan_stops_the_plan_naming_it(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_bytes(_csv(3, 2000, False, "lf", False, True))
    cfg = PreprocessConfig(str(src), "", "label", block_size=1024)
    scans = str(tmp_path / "scans")
    lst = list_scans(cfg, 4, scans)
    for i in (0, 1, 3):
        run_scan(scans, i)
    with pytest.raises(UserError, match=r"scan 2 of 4 is missing .*--range 2"):
        plan_fanout(cfg, 2, str(tmp_path / "st"), scans=scans)
    run_scan(scans, 2)
    other = PreprocessConfig(str(src), "", "city", block_size=1024)
    with pytest.raises(UserError, match="another label"):
        plan_fanout(other, 2, str(tmp_path / "st"), scans=scans)
    # a result of an older tfpipes (blocks without their CRC32C, which the parts check)
    old = json.loads(open(os.path.join(scans, range_name(3))).read())
    (v,) = old.pop("variants")
    old |= {"units": [u[:3] for u in v["units"]], "profiles": v["profiles"]}
    open(os.path.join(scans, range_name(3)), "w").write(json.dumps(old))
    with pytest.raises(
        UserError, match=r"range-00003.json: from an older tfpipes; run scan 3 again"
    ):
        plan_fanout(cfg, 2, str(tmp_path / "st"), scans=scans)
    with open(os.path.join(scans, range_name(1)), "w") as f:
        f.write(json.dumps({"format": lst["format"], "listing": "0" * 16}))
    with pytest.raises(UserError, match=r"range-00001.json: from another listing"):
        plan_fanout(cfg, 2, str(tmp_path / "st"), scans=scans)
    # a place holding other files is refused; an earlier listing's files are replaced
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not a scan listing's directory"):
        list_scans(cfg, 2, str(tmp_path / "theirs"))
    list_scans(cfg, 2, scans)
    assert sorted(os.listdir(os.path.join(scans, "_scan"))) == ["listing.json"]


def test_crc32c_combine_joins_checksums_of_pieces():
    rnd = random.Random(0)
    for n in (0, 1, 3, 100, 70_000):
        for m in (0, 1, 7, 4096, 100_001):
            a, b = rnd.randbytes(n), rnd.randbytes(m)
            got = crc32c_combine(google_crc32c.value(a), google_crc32c.value(b), m)
            assert got == google_crc32c.value(a + b)


def test_cli_scan_list_scan_and_plan(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_bytes(_csv(4, 3000, False, "lf", False, True))
    scans, cwd = str(tmp_path / "scans"), str(tmp_path)
    flags = ["--source", str(src), "--label", "label", "--block-size", "4096"]
    r = run_tfpipes("preprocess-scan-list", *flags, "--scans", scans, "--ranges", "3", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"scans": scans, "ranges": [0, 1, 2]}
    flags_out = [*flags, "--output", str(tmp_path / "data")]
    r = run_tfpipes(
        "preprocess-plan", *flags_out, "--parts", "2", "--staging", str(tmp_path / "st"), cwd=cwd
    )
    assert r.returncode == 0, r.stderr
    serial = _plan_doc(str(tmp_path / "st"))
    r = run_tfpipes(
        "preprocess-plan", *flags_out, "--parts", "2", "--staging", str(tmp_path / "st"),
        "--scans", scans, cwd=str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 2 and "scan 0 of 3 is missing" in r.stderr
    assert "Traceback" not in r.stderr
    for i in range(3):
        r = run_tfpipes("preprocess-scan", "--scans", scans, "--range", str(i), cwd=cwd)
        assert r.returncode == 0, r.stderr
    r = run_tfpipes("preprocess-scan", "--scans", scans, "--range", "3", cwd=cwd)
    assert r.returncode == 2 and "--range must be between 0 and 2" in r.stderr
    r = run_tfpipes(
        "preprocess-plan", *flags_out, "--parts", "2", "--staging", str(tmp_path / "st"),
        "--scans", scans, cwd=str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _plan_doc(str(tmp_path / "st")) == serial


@pytest.mark.gcs
def test_scans_of_a_gcs_input_equal_the_serial_plan(gcs_bucket, tmp_path):
    data = _csv(5, 3000, False, "lf", False, True)
    storage.write_bytes(f"{gcs_bucket}/in/a.csv", data)
    serial, scanned, results = _both(f"{gcs_bucket}/in", str(tmp_path), 2048, 4)
    assert all(r["fast"] for r in results)
    assert _plan_doc(scanned.staging) == _plan_doc(serial.staging)
    cfg = PreprocessConfig(f"{gcs_bucket}/in", "", "label", block_size=2048, workers=2)
    lst = list_scans(cfg, 2, f"{gcs_bucket}/scans")  # a scan place in the bucket too
    for i in range(len(lst["ranges"])):
        run_scan(f"{gcs_bucket}/scans", i)
    remote = plan_fanout(cfg, 3, str(tmp_path / "c"), scans=f"{gcs_bucket}/scans")
    assert _plan_doc(remote.staging) == _plan_doc(serial.staging)
    owners = storage.list_owners(f"{gcs_bucket}/scans")
    assert set(owners.values()) == {storage.owner_mark(f"{gcs_bucket}/scans") + "#scans"}
    # a prefix holding a data set (or anything not a listing's) is refused, and kept
    storage.write_bytes(f"{gcs_bucket}/theirs/manifest.json", b"{}")
    with pytest.raises(UserError, match="not a scan listing's"):
        list_scans(cfg, 2, f"{gcs_bucket}/theirs")
    assert storage.exists(f"{gcs_bucket}/theirs/manifest.json")
