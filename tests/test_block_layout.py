"""The block record layout (layout.RECORD_LAYOUTS): block records are plain tf.train.Examples,
the per-row records rebuilt from them are byte for byte those of the per-row layout (missing
cells included), both layouts feed the same rows, old manifests read as per-row, and the block
shuffle mixes a label-sorted data set at least as well as the per-row shuffle buffer."""

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tfpipes import layout  # noqa: E402
from tfpipes.errors import UserError  # noqa: E402
from tfpipes.input_pipeline import label_mix_distance, make_dataset  # noqa: E402
from tfpipes.manifest import verify_dataset  # noqa: E402
from tfpipes.preprocess import PreprocessConfig, preprocess  # noqa: E402
from tfpipes.records import read_row_records  # noqa: E402
from tfpipes.schema import load_schema  # noqa: E402


def _csv_with_missing(path, n: int) -> None:
    rng = np.random.default_rng(3)
    lines = ["x,k,s,label"]
    for i in range(n):
        x = "" if i % 7 == 3 else f"{rng.normal():.4f}"
        k = "NA" if i % 11 == 5 else str(int(rng.integers(-5, 1000)))
        s = "" if i % 5 == 1 else f"c{int(rng.integers(0, 4))}"
        lines.append(f"{x},{k},{s},{i % 3}")
    path.write_text("\n".join(lines) + "\n")


def _write(src, out, lay: str, **kw) -> str:
    cfg = PreprocessConfig(str(src), str(out), "label", progress=False, layout=lay, **kw)
    preprocess(cfg)
    return str(out)


def test_block_records_give_back_the_per_row_records_and_rows(tmp_path):
    src = tmp_path / "in.csv"
    _csv_with_missing(src, 1300)  # 3 shards: partial blocks and more than one block a shard
    roots = {lay: _write(src, tmp_path / lay, lay, num_shards=3) for lay in ("rows", "blocks")}
    ms = {lay: verify_dataset(r) for lay, r in roots.items()}
    schema = load_schema(roots["blocks"])
    assert {lay: m.layout for lay, m in ms.items()} == {"rows": "rows", "blocks": "blocks"}
    assert ms["rows"].rows == ms["blocks"].rows  # the same split, whatever the layout

    # A block record is a tf.train.Example: one list of a value per row for each column.
    path = os.path.join(roots["blocks"], ms["blocks"].shard_paths("train")[0])
    ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(path))).numpy())
    feats = ex.features.feature
    n = feats[layout.BLOCK_ROWS_KEY].int64_list.value[0]
    assert 0 < n <= layout.BLOCK_ROWS
    assert len(feats["x"].float_list.value) == len(feats["s"].bytes_list.value) == n
    assert len(feats[layout.BLOCK_MISSING_KEY].int64_list.value) > 0

    for split in ("train", "eval"):
        rows = read_row_records(roots["rows"], ms["rows"], schema, split)
        from_blocks = read_row_records(roots["blocks"], ms["blocks"], schema, split)
        assert len(rows) == ms["rows"].rows[split] and rows == from_blocks
    assert read_row_records(roots["blocks"], ms["blocks"], schema, "eval", 5) == rows[:5]

    # The eval pass (one pass; the shards interleave otherwise) parses the same rows from
    # both layouts, missing values as MISSING_VALUES.
    def eval_rows(lay):
        ds = make_dataset(roots[lay], ms[lay], "eval", schema, 64, training=False)
        parts = [(f["__float32__"].numpy(), f["__int64__"].numpy(), y.numpy()) for f, y in ds]
        x, k, y = (np.concatenate(p) for p in zip(*parts))
        table = np.column_stack([np.nan_to_num(x, nan=-99.0), k, y]).astype(np.float64)
        return table[np.lexsort(table.T[::-1])], np.isnan(x).sum()

    (rows_table, rows_nan), (blocks_table, blocks_nan) = eval_rows("rows"), eval_rows("blocks")
    np.testing.assert_array_equal(rows_table, blocks_table)
    assert rows_nan == blocks_nan > 0

    # A manifest written before the layout field reads as per-row.
    mpath = os.path.join(roots["rows"], "manifest.json")
    d = json.loads(open(mpath).read())
    del d["layout"]
    open(mpath, "w").write(json.dumps(d))
    assert verify_dataset(roots["rows"]).layout == "rows"


def test_an_unknown_layout_is_a_flag_error(tmp_path):
    with pytest.raises(UserError, match="--layout must be one of blocks, rows"):
        PreprocessConfig("in.csv", "out", "label", layout="columns").validate()


def test_block_shuffle_mixes_sorted_labels_no_worse_than_the_per_row_buffer(tmp_path):
    """Rows written in label order: the mean TV distance of a batch's label mix from the
    split's is no larger with blocks than with per-row records (the same buffer setting).
    Batches cut from unpermuted blocks would each hold one label (TV 0.75 here)."""
    from tfpipes.sample_data import write_float_csv

    src = tmp_path / "sorted.csv"
    write_float_csv(str(src), 8000, features=3, classes=4, seed=1, sort=True)
    tv = {}
    for lay in ("rows", "blocks"):
        root = _write(src, tmp_path / lay, lay, num_shards=2, eval_fraction=0.05)
        m, schema = verify_dataset(root), load_schema(root)
        ds = make_dataset(root, m, "train", schema, 32, training=True, seed=3, shuffle_buffer=500)
        labels = np.concatenate([y.numpy() for _, y in ds.take(250)])  # 8000 rows: one epoch
        ref = np.bincount(labels, minlength=4) / len(labels)
        tv[lay] = label_mix_distance(ds.take(250), 4, ref)
    assert tv["blocks"] <= tv["rows"], tv
    assert tv["blocks"] < 0.5, tv  # far from one label a batch

    # Every row once per epoch (f0 tells the rows apart), in a new order each epoch.
    every = make_dataset(root, m, "train", schema, 1000, training=False)
    ids = np.sort(np.concatenate([f["__float32__"].numpy()[:, 0] for f, _ in every]))
    n = m.rows["train"]
    stream = np.concatenate([f["__float32__"].numpy()[:, 0] for f, _ in ds.take(2 * n // 32 + 1)])
    for e in range(2):
        np.testing.assert_array_equal(np.sort(stream[e * n : (e + 1) * n]), ids)
    assert not np.array_equal(stream[:n], stream[n : 2 * n])

    # Input pipelines (MWMS/PS workers) read disjoint rows that cover the split: by file with
    # as many files as pipelines, by block with fewer.
    from tfpipes.input_pipeline import load_columns, shard_files

    for pipelines in (2, 3):
        shares = [
            load_columns(
                shard_files(root, m, "train"), None, schema,
                tf.distribute.InputContext(pipelines, i, 1), "blocks",
            )[0]["__float32__"].numpy()[:, 0]
            for i in range(pipelines)
        ]  # fmt: skip
        assert all(len(s) for s in shares)
        np.testing.assert_array_equal(np.sort(np.concatenate(shares)), ids)
