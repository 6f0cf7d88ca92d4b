"""The bytes preprocess writes for a fixed block of rows, pinned (both record layouts).

The SHA-256 values were those of the encoder as of main 8afcba0 (2026-12-02), before the
block layout's speed-ups: a faster encoder must write the very same bytes (the split too). A
deliberate format change updates them, and says so: on 2026-12-02 (later) the split's hash
became one of each row's values (row_hash) instead of its record's CRC32C; the records' bytes
did not change, only which rows went to which split.
"""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from tfpipes.preprocess.blocks import Plan
from tfpipes.preprocess.encoding import encode_splits

EXPECTED = {
    "blocks": "0038e90c9dfcf3a65791623f3ff0dbb494ad784439f62a3be53d3758a9142fe2",
    "rows": "416e39de46a1ed2f71c9ae486d611ec15f4e76a241699444caf91fe9c0717372",
}


def _block():
    i = np.arange(1500)
    words = ["", "a", "héllo", "x" * 300] + [f"w{k}" for k in range(40)]
    cols = {
        "f": ((i * 7919 % 1000) - 500).astype(np.float32) / np.float32(37),
        "g": (i % 13).astype(np.float32) * np.float32(0.25),
        "d": 1_500_000_000 + i * 86_400,  # 5-byte varints; missing cells are 10-byte ones
        "s": pa.array([words[k * 17 % len(words)] for k in i.tolist()]),
        "label": i * 37 % 300,  # one- and two-byte varints
    }
    present = {
        "f": i % 10 != 3,
        "g": None,
        "d": i % 5 != 1,
        "s": i % 7 != 2,
        "label": None,
    }
    return cols, present


@pytest.mark.parametrize("layout", ["blocks", "rows"])
def test_the_encoded_bytes_are_pinned(layout):
    cols, present = _block()
    plan = Plan(
        header=tuple(cols),
        types={"f": "float32", "g": "float32", "d": "int64", "s": "string", "label": "int64"},
        label="label",
        order=("f", "g", "d", "s", "label"),
        eval_fraction=0.2,
        split_seed=3,
        num_shards=3,
        compression="",
        on_bad_row="fail",
        layout=layout,
    )
    splits = encode_splits(plan, cols, present)
    h = hashlib.sha256()
    for split in ("train", "eval"):
        for data, rows in zip(splits[split].data, splits[split].rows):
            h.update(np.asarray(data).tobytes())
            h.update(str(rows).encode())
    assert sum(splits["eval"].rows) > 0 and sum(splits["train"].rows) > 0
    assert h.hexdigest() == EXPECTED[layout]
