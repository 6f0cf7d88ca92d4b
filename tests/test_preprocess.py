"""preprocess: outputs, statistics, split, and clear errors that commit nothing."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_tfpipes
from tfpipes import manifest
from tfpipes.errors import UserError
from tfpipes.preprocess import PreprocessConfig, preprocess
from tfpipes.sample_data import write_csv


def _run(tmp_path, text: str, **kw):
    src = tmp_path / "data.csv"
    src.write_text(text)
    out = tmp_path / "out"
    cfg = PreprocessConfig(source=str(src), output=str(out), label=kw.pop("label", "y"), **kw)
    return preprocess(cfg), out


def _assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")], os.listdir(tmp_path)


def test_schema_stats_manifest_and_split(tmp_path):
    src = tmp_path / "d.csv"
    write_csv(str(src), 2000, "classification", seed=1)
    out = tmp_path / "ds"
    r = preprocess(PreprocessConfig(str(src), str(out), "label", eval_fraction=0.25, num_shards=4))
    assert r.rows == 2000 and r.train_rows + r.eval_rows == 2000
    assert 0.2 < r.eval_rows / 2000 < 0.3
    schema = json.loads((out / "schema.json").read_text())
    assert [(f["name"], f["dtype"]) for f in schema["features"]] == [
        ("x1", "float32"),
        ("x2", "float32"),
        ("x3", "float32"),
        ("x4", "float32"),
        ("count", "int64"),
        ("color", "string"),
    ]
    # schema.json v2 (issue 11): the label has a kind too
    assert schema["label"] == {
        "name": "label",
        "dtype": "int64",
        "shape": [],
        "kind": "categorical",
    }
    assert schema["task"] == "classification" and schema["num_classes"] == 3
    stats = json.loads((out / "stats.json").read_text())
    import csv

    with open(src) as f:
        rows = list(csv.DictReader(f))
    x1 = np.array([float(r["x1"]) for r in rows])
    s = stats["features"]["x1"]
    assert s["count"] == 2000
    assert s["mean"] == pytest.approx(x1.mean(), abs=1e-5)
    assert s["std"] == pytest.approx(x1.std(), abs=1e-4)
    assert s["min"] == pytest.approx(x1.min(), abs=1e-5) and s["max"] == pytest.approx(x1.max())
    hist = stats["label"]["histogram"]
    assert sum(hist.values()) == 2000
    assert hist == {k: sum(r["label"] == k for r in rows) for k in ("0", "1", "2")}
    m = manifest.verify_dataset(str(out))
    assert len(m.shard_paths("train")) == 4 and m.rows == {
        "train": r.train_rows,
        "eval": r.eval_rows,
    }
    rows_per_shard = [s.rows for s in m.shards if s.split == "train"]
    assert max(rows_per_shard) - min(rows_per_shard) <= 1  # balanced


def test_split_is_deterministic_and_seeded(tmp_path):
    src = tmp_path / "d.csv"
    write_csv(str(src), 1000, seed=2)
    a = preprocess(PreprocessConfig(str(src), str(tmp_path / "a"), "label", num_shards=2))
    b = preprocess(PreprocessConfig(str(src), str(tmp_path / "b"), "label", num_shards=2))
    c = preprocess(
        PreprocessConfig(str(src), str(tmp_path / "c"), "label", num_shards=2, split_seed=7)
    )
    for split in ("train", "eval"):
        for i in range(2):
            name = f"{split}/part-{i:05d}-of-00002.tfrecord"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.eval_rows == b.eval_rows
    assert (tmp_path / "a/eval/part-00000-of-00002.tfrecord").read_bytes() != (
        tmp_path / "c/eval/part-00000-of-00002.tfrecord"
    ).read_bytes() or a.eval_rows != c.eval_rows


def test_regression_and_string_labels(tmp_path):
    r, out = _run(tmp_path, "a,y\n1.5,2.5\n2,3.25\n3,4\n4,5.5\n", eval_fraction=0.0)
    assert r.schema.task == "regression" and r.schema.label.dtype == "float32"
    r2 = preprocess(
        PreprocessConfig(str(tmp_path / "data.csv"), str(tmp_path / "o2"), "a", eval_fraction=0.0)
    )
    assert r2.schema.task == "regression"  # a float label column
    src = tmp_path / "s.csv"
    src.write_text("x,species\n1,setosa\n2,virginica\n3,setosa\n")
    r3 = preprocess(PreprocessConfig(str(src), str(tmp_path / "o3"), "species", eval_fraction=0))
    assert r3.schema.label_vocabulary == ("setosa", "virginica") and r3.schema.num_classes == 2


def test_gzip_input_and_output(tmp_path):
    import gzip

    src = tmp_path / "d.csv.gz"
    with gzip.open(src, "wt") as f:
        f.write("a,b,y\n" + "".join(f"{i},{i * 2.5},{i % 2}\n" for i in range(100)))
    r = preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "y", compression="GZIP"))
    assert r.rows == 100
    m = manifest.verify_dataset(str(tmp_path / "o"))
    assert m.compression == "GZIP" and all(
        p.endswith(".tfrecord.gz") for p in m.shard_paths("train")
    )


_LATE_X = "a,b,y\n" + "1,2.5,0\n" * 1001 + "1,x,1\n"  # numeric for 1,001 values, then not


@pytest.mark.parametrize(
    "text, label, message, kw",
    [
        ("a,b\n1,2\n", "y", "no label column 'y'", {}),
        ("a,b,y\n1,2,0\n3,4\n5,6,1\n", "y", "data.csv:3: expected 3 fields, got 2", {}),
        ("", "y", "the file is empty", {}),
        ("a,b,y\n", "y", "no data rows", {}),
        # Issue 11: types come from the whole input; a column numeric for LEAD_VALUES values
        # that turns to text is an error where it turns (a 1-row lead is a string column now).
        (_LATE_X, "y", "data.csv:1003: column 'b': 'x' is not a number", {}),
        # ... an integer column with a 2.5 is float32 now: declared int64 it is an error
        (
            "a,b,y\n1,2,0\n1,2.5,1\n",
            "y",
            "data.csv:3: column 'b': '2.5' is not an integer",
            {"schema": {"b": "int64"}},
        ),
        # ... nan is a missing token by default: not when --na-values leaves it out
        (
            "a,b,y\n1,2.5,0\n1,nan,1\n",
            "y",
            "data.csv:3: column 'b': 'nan' is not a finite",
            {"na_values": ("",)},
        ),
        ("a,b,y\n1,2.5,0\n1,inf,1\n", "y", "data.csv:3: column 'b'", {}),
        ("a,a,y\n1,2,0\n", "y", "duplicate column name", {}),
        # ... a missing label drops the row by default: an error with --on-missing-label=fail
        (
            "a,b,y\n1,2,cat\n1,3,\n",
            "y",
            "data.csv:3: column 'y': missing label",
            {"on_missing_label": "fail"},
        ),
        # ... an empty cell is missing by default: an error when --na-values leaves it out
        (
            "a,b,y\n1,2,0\n1,,1\n",
            "y",
            "data.csv:3: column 'b': empty value",
            {"na_values": ("NA",), "schema": {"b": "int64"}},
        ),
        ('a,b,y\n1,2,0\n1,"2\n', "y", "data.csv:3", {}),
    ],
)
def test_bad_input_names_the_place_and_commits_nothing(tmp_path, text, label, message, kw):
    # A tiny block size: the bad row is in a later block, as it would be in a large file.
    if "schema" in kw:
        (tmp_path / "types.json").write_text(json.dumps(kw.pop("schema")))
        kw["schema_path"] = str(tmp_path / "types.json")
    with pytest.raises(UserError) as e:
        _run(tmp_path, text, label=label, block_size=16, **kw)
    assert message in str(e.value)
    _assert_nothing_written(tmp_path)


def test_existing_output_is_not_clobbered(tmp_path):
    _run(tmp_path, "a,y\n1,0\n2,1\n")
    with pytest.raises(UserError, match="already exists"):
        preprocess(PreprocessConfig(str(tmp_path / "data.csv"), str(tmp_path / "out"), "y"))
    assert manifest.verify_dataset(str(tmp_path / "out"))


def preprocess_cli(d, source: str):
    """`tfpipes preprocess` of ``source`` into ``out`` (label ``label``), run in ``d``."""
    args = ["--source", source, "--output", "out", "--label", "label"]
    return run_tfpipes("preprocess", *args, cwd=str(d), timeout=120)


def test_cli_errors_are_one_line_and_nonzero(outside_dir):
    (outside_dir / "bad.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    p = preprocess_cli(outside_dir, "bad.csv")
    assert p.returncode != 0
    assert "bad.csv:3: expected 3 fields, got 2" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (outside_dir / "out").exists()
    missing = preprocess_cli(outside_dir, "nope.csv")
    assert missing.returncode != 0 and "nope.csv: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_a_bad_row_that_is_not_utf8_is_one_line_without_a_traceback(outside_dir, mode):
    """A row of a wrong field count whose bytes are not UTF-8: Arrow decodes a bad row's text
    for its callback and, when that fails, prints a traceback it cannot raise (seen on stderr
    by a user, under the one-line error). Checked on the real stderr of the command."""
    (outside_dir / "bad.csv").write_bytes(b"a,b,label\n1,2,0\n3,\xb2\xb2,4,5\n5,6,1\n")
    args = ["--source", "bad.csv", "--output", "out", "--label", "label", "--on-bad-row", mode]
    p = run_tfpipes("preprocess", *args, cwd=str(outside_dir), timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [
        "tfpipes preprocess: error: bad.csv:3: not UTF-8 text (invalid start byte)"
    ]
    assert not (outside_dir / "out").exists()


def test_forced_types(tmp_path):
    (tmp_path / "types.json").write_text('{"b": "float32"}')
    with pytest.raises(UserError, match="data.csv:3: column 'b': 'x' is not a number"):
        _run(tmp_path, "a,b,y\n1,2,0\n1,x,1\n", schema_path=str(tmp_path / "types.json"))
    _assert_nothing_written(tmp_path)


# ----------------------------------------------------------------------------- formats


def _records(out) -> dict[str, list[bytes]]:
    """Serialized per-row examples per split, read with the TFRecord framing checked (no
    TensorFlow), rebuilt from their blocks in the block layout."""
    import gzip
    import struct

    import google_crc32c

    from tfpipes.preprocess.example_codec import _mask_crc

    m = manifest.verify_dataset(str(out))
    got = {}
    for split in ("train", "eval"):
        recs = []
        for rel in m.shard_paths(split):
            data = (out / rel).read_bytes()
            if m.compression:
                data = gzip.decompress(data)  # every gzip member
            pos = 0
            while pos < len(data):
                (n,) = struct.unpack_from("<Q", data, pos)
                body = data[pos + 12 : pos + 12 + n]
                (crc,) = struct.unpack_from("<I", data, pos + 12 + n)
                assert crc == int(_mask_crc(np.array([google_crc32c.value(body)]))[0])
                recs.append(body)
                pos += 16 + n
        if m.layout == "blocks" and recs:  # the per-row records the blocks hold
            import tensorflow as tf

            from tfpipes.records import rows_of_blocks
            from tfpipes.schema import load_schema

            recs = rows_of_blocks(tf.constant(recs), load_schema(str(out)))
        got[split] = recs
    return got


def _parse(record: bytes) -> dict:
    """A tf.train.Example's features as {name: value}, with protobuf (TensorFlow's own class)."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example.FromString(record)
    out = {}
    for k, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        out[k] = getattr(f, kind).value[0]
    return out


def test_quoted_fields_tsv_crlf_bom_and_directory_input(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_bytes(
        b'\xef\xbb\xbfx,note,y\r\n1.5,"a, b",0\r\n2.5,"line1\nline2 ""q""",1\r\n\r\n'
    )
    (d / "b.csv").write_bytes(b'x,note,y\n3.5,plain,1\n4.5,"",0\n')
    (d / "ignored.json").write_text("{}")
    r = preprocess(PreprocessConfig(str(d), str(tmp_path / "o"), "y", eval_fraction=0.0))
    assert r.rows == 4 and r.schema.feature_names == ["x", "note"]
    rows = sorted((_parse(b) for b in _records(tmp_path / "o")["train"]), key=lambda e: e["x"])
    assert [e["note"] for e in rows] == [b"a, b", b'line1\nline2 "q"', b"plain", b""]
    assert [e["y"] for e in rows] == [0, 1, 1, 0]

    (tmp_path / "t.tsv").write_text("x\tname\ty\n1\ta,b\t0\n2\tc\t1\n")
    r = preprocess(PreprocessConfig(str(tmp_path / "t.tsv"), str(tmp_path / "t"), "y"))
    assert r.rows == 2 and r.schema.feature_names == ["x", "name"]


def test_header_mismatch_across_files(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,0\n")
    (tmp_path / "b.csv").write_text("x,z\n1,0\n")
    with pytest.raises(UserError, match=r"b\.csv: columns \['x', 'z'\] differ"):
        preprocess(PreprocessConfig(str(tmp_path / "*.csv"), str(tmp_path / "out"), "y"))
    _assert_nothing_written(tmp_path)


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 300
    table = pa.table(
        {
            "f": pa.array(np.linspace(0, 1, n), pa.float64()),
            "i": pa.array(np.arange(n) * 1000, pa.int32()),
            "flag": pa.array(np.arange(n) % 2 == 0),
            "cat": pa.array(["a", "bb", "ccc"] * 100).dictionary_encode(),
            "label": pa.array(np.arange(n) % 3, pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=70)
    r = preprocess(PreprocessConfig(str(tmp_path / "d.parquet"), str(tmp_path / "o"), "label"))
    types = {f.name: f.dtype for f in r.schema.features}
    assert types == {"f": "float32", "i": "int64", "flag": "int64", "cat": "string"}
    assert r.rows == n and r.schema.num_classes == 3
    recs = _records(tmp_path / "o")
    rows = sorted((_parse(b) for b in recs["train"] + recs["eval"]), key=lambda e: e["i"])
    assert [e["i"] for e in rows] == list(range(0, n * 1000, 1000))
    assert rows[5] == pytest.approx(
        {"f": 5 / (n - 1), "i": 5000, "flag": 0, "cat": b"ccc", "label": 2}
    )

    # Issue 11: a null is a missing value (an absent feature); NaN stays an error.
    holes = table.set_column(0, "f", pa.array([1.0] * 99 + [None] + [1.0] * 200, pa.float64()))
    pq.write_table(holes, tmp_path / "holes.parquet", row_group_size=70)
    r = preprocess(PreprocessConfig(str(tmp_path / "holes.parquet"), str(tmp_path / "h"), "label"))
    recs = _records(tmp_path / "h")
    rows = [_parse(b) for b in recs["train"] + recs["eval"]]
    assert r.rows == n and sum("f" not in e for e in rows) == 1
    bad = table.set_column(0, "f", pa.array([1.0] * 99 + [np.nan] + [1.0] * 200, pa.float64()))
    pq.write_table(bad, tmp_path / "bad.parquet", row_group_size=70)
    with pytest.raises(UserError, match=r"bad\.parquet: row 100: column 'f': nan is not a finite"):
        preprocess(PreprocessConfig(str(tmp_path / "bad.parquet"), str(tmp_path / "x"), "label"))
    assert not (tmp_path / "x").exists()
    r = preprocess(
        PreprocessConfig(
            str(tmp_path / "bad.parquet"), str(tmp_path / "x"), "label", on_bad_row="skip"
        )
    )
    assert r.rows == n - 1 and r.skipped_rows == 1


# ----------------------------------------------------------------------------- bad rows


def test_skip_bad_rows_counts_and_reports_them(tmp_path, caplog):
    text = (
        "a,b,y\n"
        "1,2.5,0\n"
        "2,3.5\n"  # too few fields
        "3,x,1\n"  # not a number
        "4,nan,1\n"  # not finite
        "5,1e39,0\n"  # overflows float32
        "6,,1\n"  # empty value
        "7,1.5,\n"  # missing label
        "8,4.5,1,9\n"  # too many fields
        "9,5.5,1\n"
    )
    # Issue 11: b declared float32 and only "NA" missing, so that "", nan and x are bad cells;
    # the row without a label is dropped and counted apart.
    (tmp_path / "types.json").write_text('{"b": "float32"}')
    r, out = _run(
        tmp_path,
        text,
        on_bad_row="skip",
        eval_fraction=0.0,
        block_size=24,
        na_values=("NA",),
        schema_path=str(tmp_path / "types.json"),
    )
    assert (r.rows, r.skipped_rows, r.missing_label_rows) == (2, 6, 1)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped_rows"] == 6 and stats["num_rows"] == 2
    assert stats["missing_label_rows"] == 1
    assert sorted(e["a"] for e in map(_parse, _records(out)["train"])) == [1, 9]
    assert "skipped 6 bad rows" in caplog.text and "data.csv:3" in caplog.text

    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="no data rows after the header .7 bad rows skipped"):
        _run(tmp_path / "b", "a,b,y\n" + "1,2\n" * 7, on_bad_row="skip")


def test_unterminated_quote_and_bad_utf8_are_located(tmp_path):
    with pytest.raises(UserError, match=r"data\.csv:3: unterminated quoted field"):
        _run(tmp_path, 'a,b,y\n1,2,0\n1,"2,0\n3,4,1\n', block_size=8)
    _assert_nothing_written(tmp_path)
    with pytest.raises(UserError, match=r"data\.csv:3: not UTF-8 text"):
        src = tmp_path / "data.csv"
        src.write_bytes(b"a,s,y\n1,ok,0\n2,\xff\xfe,1\n")
        preprocess(PreprocessConfig(str(src), str(tmp_path / "out"), "y", block_size=8))
    _assert_nothing_written(tmp_path)


def test_trainer_refuses_incomplete_or_altered_data_sets(tmp_path):
    src = tmp_path / "d.csv"
    write_csv(str(src), 200, seed=3)
    out = tmp_path / "ds"
    preprocess(PreprocessConfig(str(src), str(out), "label", num_shards=2))
    shard = out / "train" / "part-00001-of-00002.tfrecord"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match=r"part-00001-of-00002\.tfrecord: CRC32C does not match"):
        manifest.verify_dataset(str(out))
    shard.write_bytes(data[:-5])
    with pytest.raises(UserError, match="does not match manifest.json .* truncated"):
        manifest.verify_dataset(str(out))
    (out / "manifest.json").unlink()
    with pytest.raises(UserError, match="not a committed tfpipes data set .no manifest.json"):
        manifest.verify_dataset(str(out))


def test_progress_logs_plain_lines_off_a_terminal(caplog):
    import logging

    from tfpipes.progress import Progress

    caplog.set_level(logging.INFO, logger="tfpipes.progress")
    bar = Progress("preprocess", total=4_000_000, unit="B", enabled=False, interval=0.0)
    bar.update_to(2_000_000, rows=1000)
    bar.close()
    line = caplog.records[-1].getMessage()
    assert line.startswith("preprocess: 2.0 MB/4.0 MB (50%), ") and " MB/s, 1,000 rows, " in line


# ----------------------------------------------------------------------------- fuzzing

_CELLS = ["1", "-2", "3.5", "1e3", "x", "", " ", "nan", "inf", '"', '""', '"a,b"', '"q\nr"', "é"]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(
            st.sampled_from(_CELLS) | st.text(alphabet=',"\n\r xé1.-', max_size=6),
            min_size=1,
            max_size=4,
        ),
        max_size=8,
    ),
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from(["fail", "skip"]),
    st.integers(1, 64),
    st.binary(max_size=3),
)
def test_malformed_csv_never_crashes_or_commits(tmp_path_factory, rows, eol, mode, block, junk):
    """Whatever the bytes: success with a verified data set, or a one-line UserError and
    nothing committed — never another exception, never a staging directory left behind."""
    import contextlib
    import io

    from tfpipes import cli

    d = tmp_path_factory.mktemp("fuzz")
    text = "a,b,y" + eol + eol.join(",".join(r) for r in rows) + eol
    (d / "in.csv").write_bytes(text.encode() + junk)
    out = d / "out"
    cfg = PreprocessConfig(
        str(d / "in.csv"), str(out), "y", on_bad_row=mode, block_size=block, workers=1
    )
    try:
        r = preprocess(cfg)
    except UserError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg
        assert not out.exists()
    else:
        m = manifest.verify_dataset(str(out))
        assert m.rows["train"] + m.rows["eval"] == r.rows > 0
    assert sorted(os.listdir(d)) == (["in.csv", "out"] if out.exists() else ["in.csv"])
    # The command line (its own block size): exit 0 and a data set, or one line and exit 2.
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(
            [
                "preprocess",
                "--source",
                str(d / "in.csv"),
                "--output",
                str(d / "cli"),
                "--label",
                "y",
            ]
            + ["--on-bad-row", mode]
        )
    if code == 0:
        manifest.verify_dataset(str(d / "cli"))
    else:
        assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
        assert not (d / "cli").exists()
    assert not [p for p in os.listdir(d) if p.startswith(".")]
