"""Property-based fuzzing of the Criteo reader: random valid files in random block, worker and resume
settings, and random single-byte corruptions, against a plain line-by-line Python reference."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compembed.data.criteo import BOM, NUM_FIELDS, read_criteo
from compembed.data.errors import BadLineReport, InputError

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_dense = st.one_of(st.just(""), st.integers(-10**18 + 1, 10**18 - 1).map(str),
                   st.text("0123456789", min_size=1, max_size=18), st.just("-0"))
_cat = st.text("0123456789abcdefABCDEF", min_size=0, max_size=8)
_row = st.tuples(st.sampled_from("01"), st.lists(_dense, min_size=13, max_size=13),
                 st.lists(_cat, min_size=26, max_size=26))

Row = tuple  # (label, dense values, dense missing, category hashes, category missing)


def _line(row) -> str:
    label, dense, cats = row
    return "\t".join([label, *dense, *cats])


def _field_ok(column: int, field: bytes) -> bool:
    if column == 1:
        return field in (b"0", b"1")
    if column <= 14:
        digits = field[1:] if field.startswith(b"-") else field
        return field == b"" or (0 < len(digits) <= 18 and all(48 <= c <= 57 for c in digits))
    return len(field) <= 8 and all(c in b"0123456789abcdefABCDEF" for c in field)


def _reference(text: bytes) -> tuple[list[Row], dict[int, int]]:
    """The valid rows of Criteo ``text`` and ``{line: first bad column}``, one line at a time."""
    text = text[len(BOM):] if text.startswith(BOM) else text
    if text and not text.endswith(b"\n"):
        text += b"\n"
    rows, bad = [], {}
    for number, line in enumerate(text.split(b"\n")[:-1], start=1):
        line = line[:-1] if line.endswith(b"\r") else line
        fields = line.split(b"\t")
        columns = [line[:line.index(b"\r")].count(b"\t") + 1] if b"\r" in line else []
        if len(fields) != NUM_FIELDS:
            columns.append(min(len(fields) + 1, NUM_FIELDS + 1))
        else:
            columns += [c for c, f in enumerate(fields, start=1) if not _field_ok(c, f)][:1]
        if columns:
            bad[number] = min(columns)
            continue
        dense, cats = fields[1:14], fields[14:]
        rows.append((int(fields[0]), tuple(int(v) if v else 0 for v in dense), tuple(v == b"" for v in dense),
                     tuple(int(v, 16) if v else 0 for v in cats), tuple(v == b"" for v in cats)))
    return rows, bad


def _rows(blocks) -> list[Row]:
    return [(int(b.labels[i]), tuple(b.dense[i].tolist()), tuple(b.dense_missing[i].tolist()),
             tuple(b.cats[i].tolist()), tuple(b.cat_missing[i].tolist())) for b in blocks for i in range(len(b))]


def _columns(blocks) -> list[np.ndarray]:
    """The blocks' rows as five arrays (labels, dense, dense missing, categories, categories missing)."""
    fields = ("labels", "dense", "dense_missing", "cats", "cat_missing")
    return [np.concatenate([getattr(b, f) for b in blocks]) if blocks else np.empty(0) for f in fields]


@FUZZ
@given(rows=st.lists(st.tuples(_row, st.booleans()), min_size=1, max_size=8), repeat=st.integers(1, 3000),
       block_bytes=st.sampled_from([1 << 12, 1 << 15, 1 << 17, 8 << 20]), workers=st.sampled_from([1, 2]),
       sync_every=st.sampled_from([0.0, 60.0]), bom=st.booleans(), gz=st.booleans(), final_newline=st.booleans(),
       skip=st.booleans(), resume=st.integers(0, 1000))
def test_valid_lines_are_read_unchanged_in_any_block_and_worker_setting(
        tmp_path_factory, rows, repeat, block_bytes, workers, sync_every, bom, gz, final_newline, skip, resume):
    once = "".join(_line(row) + ("\r\n" if crlf else "\n") for row, crlf in rows).encode()
    expected, bad = _reference(once)
    assert not bad
    text = (BOM if bom else b"") + (once * repeat if final_newline else (once * repeat).rstrip(b"\r\n"))
    path = tmp_path_factory.mktemp("fuzz") / "day.tsv"
    path.write_bytes(gzip.compress(text, compresslevel=1) if gz else text)

    report = BadLineReport() if skip else None
    blocks = list(read_criteo([path], block_bytes, report, workers=workers, sync_every=sync_every))
    for got, want in zip(_columns(blocks), zip(*expected)):
        np.testing.assert_array_equal(got, np.tile(np.array(want), (repeat,) + (1,) * (np.ndim(want) - 1)))
    assert report is None or report.total == 0
    # Resuming after any block reads the rest unchanged.
    k = resume % len(blocks)
    rest = list(read_criteo([path], block_bytes, start=blocks[k].resume_at))
    for got, want in zip(_columns(rest), _columns(blocks[k + 1:])):
        np.testing.assert_array_equal(got, want)


@FUZZ
@given(rows=st.lists(_row, min_size=2, max_size=6), position=st.integers(0, 10**6), byte=st.integers(0, 255),
       skip=st.booleans())
def test_a_corrupted_byte_loses_no_other_line_and_is_located(tmp_path_factory, rows, position, byte, skip):
    lines = [_line(row).encode() + b"\n" for row in rows]
    text = b"".join(lines)
    at = position % len(text)
    corrupted = text[:at] + bytes([byte]) + text[at + 1:]
    path = tmp_path_factory.mktemp("fuzz") / "day.tsv"
    path.write_bytes(corrupted)
    expected, bad = _reference(corrupted)
    # Every line the changed byte is not part of is expected unchanged (a changed newline joins two lines).
    hit = text[:at].count(b"\n")
    touched = {hit, hit + 1} if text[at] == 10 else {hit}
    untouched = [r for i, r in enumerate(_reference(text)[0]) if i not in touched]
    assert all(r in expected for r in untouched)

    if skip:
        report = BadLineReport()
        assert _rows(read_criteo([path], 1 << 12, report)) == expected
        assert {(b.line, b.column) for b in report.examples} == set(bad.items())
        assert all(b.path == str(path) and b.line >= 1 and b.column >= 1 for b in report.examples)
    elif bad:
        with pytest.raises(InputError) as err:
            list(read_criteo([path], 1 << 12))
        first = min(bad)
        assert (err.value.path, err.value.line, err.value.column) == (str(path), first, bad[first])
        assert f"{path}:{first}: column {bad[first]}" in str(err.value)
    else:
        assert _rows(read_criteo([path], 1 << 12)) == expected
