"""The preprocess cache key: it covers every file preprocess reads, and nothing else."""

import gzip

import pytest

from tfpipes import cache, storage
from tfpipes.preprocess import INPUT_SUFFIXES, PreprocessConfig, preprocess

# Suffixes preprocess read but the fingerprint step once ignored (issue 10): a changed input
# of these kinds left the cache key as it was, so KFP reused a stale data set.
ONCE_IGNORED = (".tsv.gz", ".txt.gz", ".pq")


def _fingerprint_step(source: str, num_shards: int = 2) -> str:
    """The pipeline's fingerprint step, run as a plain function (its body is what KFP ships)."""
    from tfpipes_components.steps import fingerprint_op

    return fingerprint_op.python_func(
        source=source, label="label", eval_fraction=0.2, num_shards=num_shards
    )


def _write_input(path, rows: list[tuple[float, int]]) -> None:
    """``rows`` as x,label in the format ``path``'s suffix names."""
    name = str(path)
    if name.endswith((".pq", ".parquet")):
        import pyarrow as pa
        import pyarrow.parquet as pq

        xs, labels = zip(*rows)
        pq.write_table(pa.table({"x": list(xs), "label": list(labels)}), name)
        return
    sep = "\t" if ".tsv" in name else ","
    text = f"x{sep}label\n" + "".join(f"{x}{sep}{y}\n" for x, y in rows)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)


def test_the_fingerprint_step_matches_exactly_what_preprocess_reads(tmp_path):
    for suffix in INPUT_SUFFIXES:
        _write_input(tmp_path / f"part{suffix}", [(0.5, 0), (1.5, 1)])
    (tmp_path / "notes.json").write_text("{}")  # not an input: ignored by both
    files = storage.match_files(str(tmp_path), INPUT_SUFFIXES)
    assert len(files) == len(INPUT_SUFFIXES)
    out = tmp_path / "out"
    r = preprocess(PreprocessConfig(str(tmp_path), str(out), "label", num_shards=2, progress=False))
    assert r.rows == 2 * len(INPUT_SUFFIXES)  # every suffix in the table is read
    params = {"label": "label", "eval_fraction": 0.2, "num_shards": 2}
    # no cache index: the step's key is the content hash of what preprocess read
    assert _fingerprint_step(str(tmp_path)) == cache.cache_key(r.source_hash, params)


@pytest.mark.parametrize("suffix", ONCE_IGNORED)
def test_a_changed_input_changes_the_cache_key(tmp_path, suffix):
    _write_input(tmp_path / "a.csv", [(0.5, 0), (1.5, 1)])
    changed = tmp_path / f"b{suffix}"
    _write_input(changed, [(2.5, 0), (3.5, 1)])
    before = _fingerprint_step(str(tmp_path))
    assert _fingerprint_step(str(tmp_path)) == before  # deterministic
    _write_input(changed, [(2.5, 0), (4.5, 1)])
    assert _fingerprint_step(str(tmp_path)) != before


@pytest.mark.parametrize("suffix", ONCE_IGNORED)
def test_a_source_of_only_such_files_has_a_key(tmp_path, suffix):
    _write_input(tmp_path / f"only{suffix}", [(0.5, 0), (1.5, 1)])
    key = _fingerprint_step(str(tmp_path))
    assert len(key) == 32
