"""preprocess: outputs, statistics, split, and clear errors that commit nothing."""

import json
import os

import numpy as np
import pytest

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
    assert schema["label"] == {"name": "label", "dtype": "int64", "shape": []}
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


@pytest.mark.parametrize(
    "text, label, message",
    [
        ("a,b\n1,2\n", "y", "no label column 'y'"),
        ("a,b,y\n1,2,0\n3,4\n5,6,1\n", "y", "data.csv:3: expected 3 fields, got 2"),
        ("", "y", "the file is empty"),
        ("a,b,y\n", "y", "no data rows"),
        ("a,b,y\n1,2.5,0\n1,x,1\n", "y", "data.csv:3: column 'b': 'x' is not a number"),
        ("a,b,y\n1,2,0\n1,2.5,1\n", "y", "data.csv:3: column 'b': '2.5' is not an integer"),
        ("a,b,y\n1,2.5,0\n1,nan,1\n", "y", "data.csv:3: column 'b': 'nan' is not a finite"),
        ("a,b,y\n1,2.5,0\n1,inf,1\n", "y", "data.csv:3: column 'b'"),
        ("a,a,y\n1,2,0\n", "y", "duplicate column name"),
        ("a,b,y\n1,2,cat\n1,3,\n", "y", "data.csv:3: column 'y': missing label"),
        ("a,b,y\n1,2,0\n1,,1\n", "y", "data.csv:3: column 'b': empty value"),
        ('a,b,y\n1,2,0\n1,"2\n', "y", "data.csv:3"),
    ],
)
def test_bad_input_names_the_place_and_commits_nothing(tmp_path, text, label, message):
    # A tiny block size: types are inferred from the first row, the bad row is in a later block,
    # as it would be in a large file.
    with pytest.raises(UserError) as e:
        _run(tmp_path, text, label=label, block_size=16)
    assert message in str(e.value)
    _assert_nothing_written(tmp_path)


def test_existing_output_is_not_clobbered(tmp_path):
    _run(tmp_path, "a,y\n1,0\n2,1\n")
    with pytest.raises(UserError, match="already exists"):
        preprocess(PreprocessConfig(str(tmp_path / "data.csv"), str(tmp_path / "out"), "y"))
    assert manifest.verify_dataset(str(tmp_path / "out"))


def test_cli_errors_are_one_line_and_nonzero(outside_dir):
    (outside_dir / "bad.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    p = run_tfpipes(
        "preprocess",
        "--source",
        "bad.csv",
        "--output",
        "out",
        "--label",
        "label",
        cwd=str(outside_dir),
        timeout=120,
    )
    assert p.returncode != 0
    assert "bad.csv:3: expected 3 fields, got 2" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (outside_dir / "out").exists()
    missing = run_tfpipes(
        "preprocess",
        "--source",
        "nope.csv",
        "--output",
        "out",
        "--label",
        "label",
        cwd=str(outside_dir),
        timeout=120,
    )
    assert missing.returncode != 0 and "nope.csv: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_forced_types(tmp_path):
    (tmp_path / "types.json").write_text('{"b": "float32"}')
    with pytest.raises(UserError, match="data.csv:3: column 'b': 'x' is not a number"):
        _run(tmp_path, "a,b,y\n1,2,0\n1,x,1\n", schema_path=str(tmp_path / "types.json"))
    _assert_nothing_written(tmp_path)
