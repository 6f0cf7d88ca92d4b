"""The CSV block cutter: every block ends where the quote-aware rule says, whatever the reads.

The rule (:mod:`tfpipes.preprocess.csv_blocks`): after each read of ``block_size`` bytes, the
block is everything pending up to the last line end outside quotes. Blocks then depend on the
input bytes and the block size only (the fan-out plan and the block layout rely on it).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tfpipes.preprocess.csv_blocks import CsvInput, count_lines, row_end

_ENDS = st.sampled_from(["\n", "\r\n", "\r"])
_PLAIN = st.text(alphabet="ab1.,", min_size=0, max_size=12)
_QUOTED = st.text(alphabet='ab,\n\r"', min_size=0, max_size=12).map(
    lambda s: '"' + s.replace('"', '""') + '"'
)
_ROW = st.lists(st.one_of(_PLAIN, _QUOTED), min_size=1, max_size=4).map(",".join)


@st.composite
def csv_bytes(draw) -> bytes:
    rows = draw(st.lists(st.tuples(_ROW, _ENDS), min_size=0, max_size=40))
    body = "".join(r + e for r, e in rows)
    if rows and draw(st.booleans()):
        body = body.rstrip("\r\n")  # no line end after the last row
    return ("a,b\n" + body).encode()


def _unterminated(data: bytes) -> bool:
    from tfpipes.preprocess.csv_blocks import quoted_spans

    starts, ends = quoted_spans(data, ord(","))
    return bool(starts) and ends[-1] == len(data)


@settings(max_examples=300, deadline=None)
@given(raw=csv_bytes(), block_size=st.integers(min_value=1, max_value=64))
def test_blocks_cut_at_the_last_row_end_outside_quotes_after_each_read(
    tmp_path_factory, raw, block_size
):
    path = tmp_path_factory.mktemp("csv") / "d.csv"
    path.write_bytes(raw)
    body = raw[len(b"a,b\n") :]
    if _unterminated(body):
        return  # an error, not blocks (test_preprocess covers its message)
    inp = CsvInput(str(path), block_size)
    try:
        assert inp.header == ["a", "b"]
        start, seen = 0, []
        for block in inp.blocks():
            data = block.data
            assert isinstance(data, bytes) and data
            assert inp.offset == len(b"a,b\n") + start
            assert block.first == 2 + count_lines(body, start)
            read = inp.tap.bytes - len(b"a,b\n")  # what the reads have brought in so far
            if read < len(body):  # not the last rows: the rule's cut of everything pending
                assert len(data) == row_end(body[start:read], ord(","), eof=False)
            seen.append(data)
            start += len(data)
    finally:
        inp.close()
    joined = b"".join(seen)  # every byte once, in order; only blank line ends left over
    assert body.startswith(joined) and not body[len(joined) :].strip(b"\r\n")
