"""Property-based fuzzing of the table reader: random valid CSV/TSV files in random formats and block
sizes are prepared unchanged, and a random single-byte corruption loses no other row and is located."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compembed.data import open_dataset
from compembed.data.errors import InputError
from compembed.data.table import TableSpec, prepare_table

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_word = st.text("abcXYZ019-_.é漢", min_size=0, max_size=6)
_dense = st.one_of(st.just(""), st.integers(-10**6, 10**6).map(str),
                   st.floats(-1e6, 1e6, allow_nan=False).map(repr))
_row = st.tuples(st.sampled_from("01"), _word, _dense, st.lists(_word.filter(bool), max_size=3), _word)
COLUMNS = ["y", "u", "n", "tags", "extra"]  # "extra" is not named: it is ignored
SPEC = dict(label="y", categorical=["u"], dense=["n"], multi_hot=["tags"], split="none", dense_transform="none")


def _text(rows, sep: str, order: list[int], ending: str = "\n", blank: frozenset = frozenset()) -> str:
    """A table of ``rows`` with its columns in ``order`` and empty lines after the rows in ``blank``."""
    lines = [sep.join(COLUMNS[j] for j in order)]
    for i, (label, u, n, tags, extra) in enumerate(rows):
        fields = [label, u, n, "|".join(tags), extra]
        lines.append(sep.join(fields[j] for j in order))
        lines += [""] * (i in blank)
    return "".join(line + ending for line in lines)


def _expected(row) -> tuple:
    label, u, n, tags, _ = row
    return int(label), u, np.float32(float(n)) if n else np.float32(0), tuple(tags) or ("",)


def _prepared(out: Path) -> list[tuple]:
    """The rows of a prepared dataset, ids turned back into their values ("" for missing)."""
    ds = open_dataset(out)
    vocab = {c: ["", None, *values] for c, values in json.loads((out / "vocab.json").read_text()).items()}
    values, offsets = (np.asarray(a) for a in ds.multi_hot["tags"])
    tags = [tuple(vocab["tags"][v] for v in values[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return list(zip(np.asarray(ds.labels).tolist(), [vocab["u"][i] for i in np.asarray(ds.sparse)[:, 0]],
                    np.asarray(ds.dense)[:, 0].tolist(), tags))


@FUZZ
@given(rows=st.lists(_row, min_size=1, max_size=25), tsv=st.booleans(), gz=st.booleans(), bom=st.booleans(),
       crlf=st.booleans(), order=st.permutations(range(5)), blank=st.sets(st.integers(0, 24), max_size=3),
       block_bytes=st.sampled_from([64, 256, 4096, 1 << 20]), skip=st.booleans())
def test_valid_rows_are_prepared_unchanged(tmp_path_factory, rows, tsv, gz, bom, crlf, order, blank, block_bytes, skip):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / ("t.tsv" if tsv else "t.csv")
    data = (("\ufeff" if bom else "") + _text(rows, "\t" if tsv else ",", order, "\r\n" if crlf else "\n",
                                              frozenset(blank))).encode()
    if gz:
        path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(data) if gz else data)
    spec = TableSpec(**SPEC, block_bytes=block_bytes, skip_bad_lines=skip)
    result = prepare_table([path], tmp / "out", spec, progress=False)
    assert result.num_rows == len(rows) and result.report.total == 0
    assert _prepared(tmp / "out") == [_expected(r) for r in rows]


@FUZZ
@given(rows=st.lists(_row, min_size=3, max_size=8), position=st.integers(0, 10**6), byte=st.integers(0, 255),
       skip=st.booleans(), empty_line=st.booleans())
def test_a_corrupted_byte_loses_no_other_row_and_is_located(tmp_path_factory, rows, position, byte, skip, empty_line):
    tmp = tmp_path_factory.mktemp("fuzz")
    text = _text(rows, ",", list(range(5)), blank=frozenset({0} if empty_line else ())).encode()
    at = position % len(text)
    path = tmp / "t.csv"
    path.write_bytes(text[:at] + bytes([byte]) + text[at + 1:])
    hit = text[:at].count(b"\n") + 1  # the line of the changed byte: a new line break makes it two lines,
    reported = {hit, hit + 1}  # a changed line break joins it with the next
    touched = {hit, hit + 1} if text[at] == 10 else {hit}
    data_lines = [i + 2 + (empty_line and i > 0) for i in range(len(rows))]
    try:
        result = prepare_table([path], tmp / "out", TableSpec(**SPEC, skip_bad_lines=skip), progress=False)
    except InputError as err:
        assert err.path == str(path)
        if err.kind == "empty_dataset":  # every row is bad: only when the header changed
            assert skip and hit == 1
        elif err.kind == "missing_column":
            assert err.line == 1 and hit == 1
        else:  # a changed header can make any row bad
            assert (err.line in reported or hit == 1 and err.line > 1) and err.column >= 1, str(err)
            assert not skip or err.kind in ("bad_encoding", "unmatched_quote"), str(err)  # what skipping cannot
        return
    assert all(b.path == str(path) and (b.line in reported or hit == 1) and b.line >= 1 and b.column >= 1
               for b in result.report.examples)
    if hit > 1:  # the header is intact: every row on another line is kept unchanged, in order
        kept = iter(_prepared(tmp / "out"))
        untouched = [_expected(r) for r, line in zip(rows, data_lines) if line not in touched]
        assert all(any(got == want for got in kept) for want in untouched)
