"""Bad input of every kind is one line naming the file (issue 12), never a traceback."""

from __future__ import annotations

import pytest

from tfpipes import layout
from tfpipes.errors import UserError
from tfpipes.schema import Schema, load_forced_types


def _one_line(e: pytest.ExceptionInfo, where: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(where), msg
    return msg


def test_a_schema_override_that_is_a_directory_or_not_utf8(tmp_path):
    with pytest.raises(UserError, match="is a directory, expected a file") as e:
        load_forced_types(str(tmp_path))
    _one_line(e, str(tmp_path))
    bad = tmp_path / "types.json"
    bad.write_bytes(b'{"a": "int64", "b": "\xff"}')
    with pytest.raises(UserError, match="not UTF-8 text") as e:
        load_forced_types(str(bad))
    _one_line(e, str(bad))


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '{"features": [1], "label": {}, "task": "x"}',
        '{"features": "ab"}',
        "7",
        '{"features": [], "label": {"name": [], "dtype": "int64"}, "task": "classification"}',
        '{"features": [], "label": {"name": null, "dtype": "int64"}, "task": "classification"}',
        '{"features": [{"name": "a", "dtype": "int64", "shape": "x"}], "label": '
        '{"name": "y", "dtype": "int64"}, "task": "classification"}',
    ],
)
def test_a_schema_of_another_shape(text):
    with pytest.raises(UserError, match="not a tfpipes schema") as e:
        Schema.from_json(text, where="d/schema.json")
    _one_line(e, "d/schema.json")


@pytest.mark.parametrize("text", ["[]", "nope", '"x"', "\xff"])
def test_stats_of_another_shape(tmp_path, text):
    (tmp_path / layout.STATS).write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as e:
        layout.read_stats(str(tmp_path))
    _one_line(e, str(tmp_path / layout.STATS))
    (tmp_path / layout.STATS).unlink()
    with pytest.raises(UserError, match="no stats.json"):
        layout.read_stats(str(tmp_path))


def test_schema_v2_kinds_round_trip_and_v1_is_unchanged():
    from tfpipes.schema import Feature

    v1 = Schema((Feature("x", "float32"), Feature("c", "string")), Feature("y", "int64"), "c", 2)
    assert '"kind"' not in v1.to_json() and '"version": 1' in v1.to_json()
    assert [f.effective_kind for f in v1.features] == ["numeric", "categorical"]
    v2 = Schema(
        (
            Feature("t", "int64", kind="timestamp", format="%d/%m/%Y"),
            Feature("b", "int64", (), "boolean"),
        ),
        Feature("y", "int64"),
        "classification",
        2,
    )
    back = Schema.from_json(v2.to_json())
    assert back == v2 and '"version": 2' in v2.to_json()
    with pytest.raises(UserError, match="kind 'boolean' needs dtype int64"):
        Schema.from_json(
            v2.to_json().replace(
                '"dtype": "int64",\n      "shape": [],\n      "kind": "boolean"',
                '"dtype": "string",\n      "shape": [],\n      "kind": "boolean"',
            )
        )
