"""preprocess on real tabular data (issue 11): missing values, booleans, dates, ids, labels,
the inferred schema column by column, absent features, statistics against numpy; and the CSV
bugs found by the fault campaigns (issue 12)."""

import csv
import datetime as dt
import json

import numpy as np
import pytest

from tests.conftest import run_tfpipes
from tfpipes.errors import UserError
from tfpipes.preprocess import PreprocessConfig, preprocess

N = 4000


def _records(out) -> list[dict]:
    """Every Example of both splits as {feature: value} (absent features are absent keys)."""
    import tensorflow as tf

    from tfpipes.records import dataset_row_records

    rows = []
    for split in ("train", "eval"):
        for rec in dataset_row_records(str(out), split):
            ex = tf.train.Example.FromString(rec)
            row = {}
            for k, f in ex.features.feature.items():
                row[k] = getattr(f, f.WhichOneof("kind")).value[0]
            rows.append(row)
    return rows


def _realistic_csv(path, n: int = N, seed: int = 0) -> list[dict]:
    """Missing cells in 5-30 % of numeric and string columns, a boolean, a date, an id, an
    integer code with few values and a label missing in 5 % of the rows; returns the rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r = {
            "height": f"{rng.normal(170, 10):.3f}" if rng.random() > 0.10 else "",
            "weight": str(int(rng.integers(40, 120))) if rng.random() > 0.30 else "NA",
            "color": str(rng.choice(["red", "green", "blue"])) if rng.random() > 0.05 else "null",
            "size": str(rng.choice(["S", "M", "L", "XL"])) if rng.random() > 0.20 else "",
            "member": str(rng.choice(["yes", "no", "Yes", "NO"])) if rng.random() > 0.1 else "",
            "joined": (
                dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 1500)))
            ).isoformat()
            if rng.random() > 0.15
            else "N/A",
            "user_id": f"u{i:06d}x{int(rng.integers(0, 1000))}",
            "code": str(int(rng.integers(0, 4))),
            "label": str(int(rng.integers(0, 3))) if rng.random() > 0.05 else "",
        }
        rows.append(r)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_inferred_schema_absent_features_and_stats(tmp_path):
    src = tmp_path / "real.csv"
    rows = _realistic_csv(src)
    out = tmp_path / "ds"
    r = preprocess(PreprocessConfig(str(src), str(out), "label", block_size=16 << 10, workers=2))
    schema = json.loads((out / "schema.json").read_text())
    assert schema["version"] == 2
    got = {f["name"]: (f["dtype"], f["kind"]) for f in schema["features"]}
    assert got == {
        "height": ("float32", "numeric"),
        "weight": ("int64", "numeric"),
        "color": ("string", "categorical"),
        "size": ("string", "categorical"),
        "member": ("int64", "boolean"),
        "joined": ("int64", "timestamp"),
        "user_id": ("string", "id"),
        "code": ("int64", "numeric"),  # few distinct integers stay numeric
    }
    assert schema["label"]["dtype"] == "int64" and schema["task"] == "classification"
    labelled = [x for x in rows if x["label"] != ""]
    assert r.rows == len(labelled) and r.missing_label_rows == N - len(labelled)
    for col in ("height", "weight", "member", "joined"):
        assert col in r.column_table

    # Missing cells are absent features, never sentinels; values survive exactly.
    recs = _records(out)
    assert len(recs) == len(labelled)
    by_id = {rec["user_id"].decode(): rec for rec in recs}
    missing = {"", "NA", "null", "N/A"}
    for x in labelled:
        rec = by_id[x["user_id"]]
        for col in ("height", "weight", "color", "size", "member", "joined"):
            assert (col in rec) == (x[col] not in missing), (col, x, rec)
        if x["weight"] != "NA":
            assert rec["weight"] == int(x["weight"])
        if x["member"]:
            assert rec["member"] == (x["member"].lower() == "yes")
        if x["joined"] != "N/A":
            d = dt.datetime.fromisoformat(x["joined"]).replace(tzinfo=dt.timezone.utc)
            assert rec["joined"] == int(d.timestamp())

    # Statistics against numpy on the same rows (all rows written: train and eval).
    stats = json.loads((out / "stats.json").read_text())
    assert stats["missing_label_rows"] == N - len(labelled) and stats["num_rows"] == r.rows
    h = np.array([float(x["height"]) for x in labelled if x["height"]], dtype=np.float32)
    h = h.astype(np.float64)
    s = stats["features"]["height"]
    assert s["kind"] == "numeric" and s["count"] == len(h)
    assert s["missing"] == sum(1 for x in labelled if not x["height"])
    assert s["mean"] == pytest.approx(h.mean()) and s["std"] == pytest.approx(h.std())
    assert (s["min"], s["max"]) == (pytest.approx(h.min()), pytest.approx(h.max()))
    assert s["median"] == pytest.approx(np.median(h))
    assert s["quantiles"] == pytest.approx(np.quantile(h, np.linspace(0, 1, 21)).tolist())
    edges = np.linspace(h.min(), h.max(), 11)
    assert s["histogram"]["edges"] == pytest.approx(edges.tolist())
    assert s["histogram"]["counts"] == np.histogram(h, edges)[0].tolist()
    c = stats["features"]["color"]
    colors = [x["color"] for x in labelled if x["color"] != "null"]
    assert c["kind"] == "categorical" and c["count"] == len(colors) and c["unique"] == 3
    assert c["missing"] == len(labelled) - len(colors)
    want = sorted(((v, colors.count(v)) for v in set(colors)), key=lambda t: (-t[1], t[0]))
    assert c["top"] == [list(t) for t in want]
    u = stats["features"]["user_id"]
    assert u["kind"] == "id" and u["unique"] == len(labelled) and "unique_approximate" not in u
    assert stats["label"]["histogram"] == {
        k: sum(x["label"] == k for x in labelled) for k in ("0", "1", "2")
    }


def test_output_does_not_depend_on_the_worker_count(tmp_path):
    src = tmp_path / "real.csv"
    _realistic_csv(src, 1500, seed=3)
    outs = []
    for w in (1, 2):
        out = tmp_path / f"o{w}"
        preprocess(PreprocessConfig(str(src), str(out), "label", block_size=8 << 10, workers=w))
        outs.append({p: (out / p).read_bytes() for p in ("schema.json", "stats.json")})
    assert outs[0] == outs[1]


def test_a_column_numeric_for_100000_rows_then_not(tmp_path):
    src = tmp_path / "late.csv"
    with open(src, "w") as f:
        f.write("a,b,label\n")
        f.writelines(f"{i},{i % 7}.5,{i % 2}\n" for i in range(100_000))
        f.writelines(f"{i},word{i},{i % 2}\n" for i in range(100_000, 100_010))
    with pytest.raises(UserError) as e:
        preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "label"))
    assert str(e.value) == f"{src}:100002: column 'b': 'word100000' is not a number"
    assert not (tmp_path / "o").exists()
    (tmp_path / "types.json").write_text('{"b": "string"}')
    r = preprocess(
        PreprocessConfig(
            str(src), str(tmp_path / "o"), "label", schema_path=str(tmp_path / "types.json")
        )
    )
    assert r.rows == 100_010 and r.schema.features[1].dtype == "string"


def test_integers_then_floats_widen_and_missing_first_block(tmp_path):
    src = tmp_path / "w.csv"
    src.write_text("a,b,label\n" + "1,,0\n" * 50 + "2.5,7,1\n" + "3,8,0\n")
    r = preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "label", block_size=32))
    types = {f.name: (f.dtype, f.kind) for f in r.schema.features}
    assert types == {"a": ("float32", "numeric"), "b": ("int64", "numeric")}


def test_overrides_of_some_columns_kinds_and_formats(tmp_path):
    src = tmp_path / "o.csv"
    src.write_text("code,flag,day,x,label\n1,1,03/02/2024,a,0\n2,0,04/02/2024,b,1\n1,,,c,0\n")
    (tmp_path / "s.json").write_text(
        json.dumps(
            {
                "code": {"kind": "categorical"},
                "flag": {"dtype": "int64", "kind": "boolean"},
                "day": {"kind": "timestamp", "format": "%d/%m/%Y"},
            }
        )
    )
    out = tmp_path / "out"
    r = preprocess(
        PreprocessConfig(
            str(src), str(out), "label", eval_fraction=0, schema_path=str(tmp_path / "s.json")
        )
    )
    f = {x.name: (x.dtype, x.kind, x.format) for x in r.schema.features}
    assert f == {
        "code": ("int64", "categorical", ""),
        "flag": ("int64", "boolean", ""),
        "day": ("int64", "timestamp", "%d/%m/%Y"),
        "x": ("string", "categorical", ""),
    }
    recs = sorted(_records(out), key=lambda e: e["x"])
    day = dt.datetime(2024, 2, 3, tzinfo=dt.timezone.utc).timestamp()
    assert recs[0]["day"] == int(day) and "day" not in recs[2] and "flag" not in recs[2]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["features"]["code"]["top"] == [[1, 2], [2, 1]]
    (tmp_path / "bad.json").write_text('{"flag": {"dtype": "string", "kind": "boolean"}}')
    with pytest.raises(UserError, match="bad.json: column 'flag': kind 'boolean' needs dtype"):
        preprocess(
            PreprocessConfig(
                str(src), str(tmp_path / "x"), "label", schema_path=str(tmp_path / "bad.json")
            )
        )
    src.write_text("day,label\n03/02/2024,0\n31/02/2024,1\n")
    (tmp_path / "d.json").write_text('{"day": {"kind": "timestamp", "format": "%d/%m/%Y"}}')
    with pytest.raises(UserError, match=r"o\.csv:3: column 'day': '31/02/2024' is not a date"):
        preprocess(
            PreprocessConfig(
                str(src), str(tmp_path / "x"), "label", schema_path=str(tmp_path / "d.json")
            )
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "labels, kw, task, dtype",
    [
        (["0.5", "1.5", "2.25"], {}, "regression", "float32"),
        ([str(i) for i in range(150)], {}, "regression", "float32"),  # many integers
        (["0", "1", "2"], {"task": "regression"}, "regression", "float32"),
        (["0.5", "1.5", "2.25"], {"task": "classification"}, "classification", "string"),
        (["yes", "no", "Yes"], {}, "classification", "string"),
    ],
)
def test_task_is_inferred_and_overridden(tmp_path, labels, kw, task, dtype):
    src = tmp_path / "t.csv"
    src.write_text("a,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels * 2)))
    r = preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "label", eval_fraction=0, **kw))
    assert (r.schema.task, r.schema.label.dtype) == (task, dtype)


def test_text_label_cannot_be_a_regression_target(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("a,label\n1,x\n2,y\n")
    with pytest.raises(UserError, match="column 'label': regression needs a numeric label"):
        preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "label", task="regression"))


def test_parquet_nulls_are_missing_values(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table(
        {
            "s": pa.array(["a", None, "b", "a"]),
            "f": pa.array([1.0, 2.0, None, 4.0]),
            "when": pa.array([dt.datetime(2024, 1, 1), None, dt.datetime(2024, 1, 2), None]),
            "ok": pa.array([True, False, None, True]),
            "label": pa.array([0, 1, None, 1]),
        }
    )
    pq.write_table(t, tmp_path / "d.parquet")
    out = tmp_path / "o"
    r = preprocess(
        PreprocessConfig(str(tmp_path / "d.parquet"), str(out), "label", eval_fraction=0)
    )
    kinds = {f.name: (f.dtype, f.kind) for f in r.schema.features}
    assert kinds == {
        "s": ("string", "categorical"),
        "f": ("float32", "numeric"),
        "when": ("int64", "timestamp"),
        "ok": ("int64", "boolean"),
    }
    assert r.rows == 3 and r.missing_label_rows == 1
    recs = sorted(_records(out), key=lambda e: e["f"] if "f" in e else 9)
    assert recs[1] == {"f": 2.0, "ok": 0, "label": 1}  # s and when missing: absent
    assert recs[0]["when"] == int(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp())


# ----------------------------------------------------------------------------- issue 12 CSV bugs


@pytest.mark.parametrize(
    "text, where",
    [
        (b'a,label\n1,x\n2,"y\n3,z\n', ":3: unterminated quoted field"),
        (b'a,label\n1,"x\n', ":2: unterminated quoted field"),
        (b'a,label\n1,x\n2,3\n3,"z', ":4: unterminated quoted field"),
    ],
)
def test_an_open_quote_in_the_last_field_is_refused(tmp_path, text, where):
    src = tmp_path / "q.csv"
    src.write_bytes(text)
    for block in (4 << 20, 8):
        with pytest.raises(UserError) as e:
            preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "label", block_size=block))
        assert str(e.value) == f"{src}{where}"
        assert not (tmp_path / "o").exists()


def test_cr_only_line_ends_are_one_rule(tmp_path):
    schemas = []
    for eol in ("\r", "\n"):
        src = tmp_path / f"cr{len(schemas)}.csv"
        src.write_text(
            eol.join(["a,label", "1.5,a", "2,b", "3,a", "4,b", "5,a", "6,b", "abc,a"]) + eol
        )
        r = preprocess(PreprocessConfig(str(src), str(tmp_path / f"o{len(schemas)}"), "label"))
        assert r.rows == 7
        schemas.append(r.schema)
    assert schemas[0] == schemas[1] and schemas[0].features[0].dtype == "string"


def test_a_huge_field_does_not_hide_the_real_error(tmp_path):
    src = tmp_path / "big.csv"
    src.write_text("a,s,label\n1," + "x" * 140_000 + ",0\n2,ok,1\n3,q,1,9\n")
    with pytest.raises(UserError) as e:
        preprocess(PreprocessConfig(str(src), str(tmp_path / "o"), "label"))
    assert str(e.value) == f"{src}:4: expected 3 fields, got 4"


def test_cli_flags_and_the_column_table(outside_dir):
    src = outside_dir / "d.csv"
    src.write_text("a,b,label\n1,-,0\n2,x,\n-,y,1\n4,x,0\n")
    p = run_tfpipes(
        "preprocess",
        "--source",
        str(src),
        "--output",
        str(outside_dir / "o"),
        "--label",
        "label",
        "--na-values",
        "-",
        "--on-missing-label",
        "drop",
        cwd=str(outside_dir),
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert "1 without a label dropped" in out
    assert "int64/numeric" in out and "33.3%" in out
    stats = json.loads((outside_dir / "o" / "stats.json").read_text())
    assert stats["features"]["a"]["missing"] == 1 and stats["missing_label_rows"] == 1
    p = run_tfpipes(
        "preprocess",
        "--source",
        str(src),
        "--output",
        str(outside_dir / "o2"),
        "--label",
        "label",
        "--on-missing-label",
        "fail",
        cwd=str(outside_dir),
    )
    assert p.returncode == 2 and p.stderr.strip().endswith(
        "d.csv:3: column 'label': missing label (--on-missing-label=drop drops such rows)"
    )
    assert not (outside_dir / "o2").exists()


def test_the_preprocess_component_takes_the_missing_value_and_label_options(tmp_path):
    from kfp.dsl import Dataset
    from tfpipes_components import preprocess_op

    from tfpipes import layout

    src = tmp_path / "in.csv"
    rows = [f"{'?' if i % 4 == 0 else i * 0.5},{i % 3}" for i in range(40)] + ["1.0,"]
    src.write_text("x,y\n" + "\n".join(rows) + "\n")
    out = Dataset(uri=str(tmp_path / "ds"))
    preprocess_op.python_func(
        source=str(src), label="y", examples=out, na_values="?,", task="regression", num_shards=2
    )
    stats = json.loads((tmp_path / "ds" / layout.STATS).read_text())
    assert stats["features"]["x"]["missing"] == 10 and stats["missing_label_rows"] == 1
    assert json.loads((tmp_path / "ds" / layout.SCHEMA).read_text())["task"] == "regression"
    assert out.metadata["missing_label_rows"] == 1


def test_a_csv_with_100000_columns_is_refused_in_one_line_at_once(tmp_path):
    import time

    src = tmp_path / "wide.csv"
    names = [f"c{i}" for i in range(100_000)] + ["label"]
    src.write_text(",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")
    t = time.monotonic()
    with pytest.raises(UserError) as e:
        preprocess(PreprocessConfig(str(src), str(tmp_path / "out"), "label", progress=False))
    assert time.monotonic() - t < 60  # refused before any per-column work
    assert str(e.value) == f"{src}: 100,001 columns; at most 10,000 are supported"
    assert not (tmp_path / "out").exists()
