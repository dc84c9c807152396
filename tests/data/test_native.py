"""The compiled fast paths (native.py) give exactly what the NumPy reference paths give, and every bad line
still gets the reference path's error, whichever path met it first."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from compembed.data import native
from compembed.data.criteo import parse_block, parse_lines
from compembed.data.errors import BadLineReport, InputError
from compembed.data.prepare import CriteoPrepareConfig, prepare_criteo
from compembed.data.vocab import Vocabulary

from test_criteo import BAD, SAMPLE, VALID, _replace, needs_sample

HAVE_CC = bool(shutil.which("cc") or shutil.which("gcc"))
needs_native = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: only the NumPy paths exist here")
OUTPUTS = ("labels.npy", "dense.npy", "sparse.npy", "vocab.json", "counts.npy", "cardinalities.json")
FIELDS = ("labels", "dense", "dense_missing", "cats", "cat_missing")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Build into a per-session cache, and leave the module's state as it was."""
    monkeypatch.setenv("COMPEMBED_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("COMPEMBED_PARSER", raising=False)
    saved = dict(native._state)
    native._state.clear()
    yield
    native._state.clear()
    native._state.update(saved)


def _prepare_both(inputs: list[Path], out: Path, **kw) -> tuple[Path, Path]:
    fast = prepare_criteo(inputs, out / "fast", CriteoPrepareConfig(**kw), progress=False)
    with native.disabled():
        ref = prepare_criteo(inputs, out / "ref", CriteoPrepareConfig(**kw), progress=False)
    assert fast.extra["parser"] == "c" and ref.extra["parser"] == "numpy"
    assert fast.num_rows == ref.num_rows and fast.info == ref.info
    return fast.path, ref.path


def _same_files(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _same_block(data: bytes) -> None:
    ref = parse_block(data, "x", 1)
    fast = native.parse_fast(data)
    assert fast is not None
    for name, got in zip(FIELDS, fast):
        want = getattr(ref, name)
        assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all(), name


@needs_native
def test_the_compiled_code_builds_and_is_used() -> None:
    assert native.parser_name() == "c" and native.build_error() is None
    assert list((Path(native._cache_dir())).glob("native-*.so"))


@needs_native
@needs_sample
@pytest.mark.parametrize("id_order", ["value", "frequency"])
def test_real_sample_prepares_byte_for_byte_the_same(tmp_path: Path, id_order: str) -> None:
    text = gzip.decompress(SAMPLE.read_bytes())
    src = tmp_path / "sample.tsv"
    src.write_bytes(text * 2)  # 16,000 lines: values seen in train and held out alike
    fast, ref = _prepare_both([src], tmp_path, id_order=id_order, min_freq=2, block_bytes=1 << 20)
    _same_files(fast, ref)
    _same_block(text)


def _random_lines(rng: np.random.Generator, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        dense = []
        for _ in range(13):
            k = rng.integers(0, 6)
            dense.append(b"" if k == 0 else b"-0" if k == 1 else b"000000000000000012" if k == 2
                         else str(int(rng.integers(-10**6, 10**6))).encode() if k == 3
                         else str(int(rng.integers(0, 10**18))).encode() if k == 4 else b"0")
        cats = []
        for _ in range(26):
            k = rng.integers(0, 5)
            value = rng.integers(0, 2**32)
            cats.append(b"" if k == 0 else b"%08x" % value if k < 3 else b"%X" % value if k == 3
                        else b"%x" % (value & 0xFFF))
        out.append(b"\t".join([b"01"[rng.integers(0, 2):][:1], *dense, *cats]))
    return out


@needs_native
def test_edge_cases_parse_the_same() -> None:
    rng = np.random.default_rng(0)
    lines = [l.encode() for l in VALID] + _random_lines(rng, 400)
    _same_block(b"".join(l + b"\n" for l in lines))
    _same_block(b"".join(l + (b"\r\n" if i % 2 else b"\n") for i, l in enumerate(lines)))  # CRLF, mixed
    empty = b"\t".join([b"0"] + [b""] * 39) + b"\n"
    _same_block(empty * 3)


@needs_native
def test_edge_case_files_prepare_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = [l.encode() for l in VALID] + _random_lines(rng, 300) + [l.encode() for l in VALID]
    src = tmp_path / "edge.tsv"
    src.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines))  # byte-order mark, CRLF, no final newline
    fast, ref = _prepare_both([src], tmp_path, block_bytes=1 << 12, split="random")
    _same_files(fast, ref)


@needs_native
@pytest.mark.parametrize("case", sorted(BAD) + ["trailing_tab", "cr_at_end_of_field"])
def test_bad_lines_get_the_reference_error(tmp_path: Path, case: str) -> None:
    bad = {"trailing_tab": VALID[0] + "\t", "cr_at_end_of_field": _replace(VALID[0], 20, "abc\r")}.get(case)
    bad = BAD[case][0] if bad is None else bad
    data = "".join(l + "\n" for l in [VALID[0], VALID[1], bad, VALID[2]]).encode("latin-1")
    assert native.parse_fast(data) is None  # the C code rejects it; parse_block names it
    errors = []
    for use_native in (True, False):
        src = tmp_path / "in.tsv"
        src.write_bytes(data)
        if use_native:
            with pytest.raises(InputError) as err:
                prepare_criteo([src], tmp_path / "out", CriteoPrepareConfig(), progress=False)
        else:
            with native.disabled(), pytest.raises(InputError) as err:
                prepare_criteo([src], tmp_path / "out", CriteoPrepareConfig(), progress=False)
        e = err.value
        errors.append((e.path, e.line, e.column, e.kind, e.feature, str(e)))
    assert errors[0] == errors[1] and errors[0][1] == 3
    report = BadLineReport()
    block = parse_lines(data, "x", 10, report)
    assert len(block) == 3 and [b.line for b in report.examples] == [12]


@needs_native
def test_single_byte_corruptions_are_accepted_exactly_when_the_reference_accepts_them() -> None:
    rng = np.random.default_rng(2)
    base = bytearray(b"".join(l.encode() + b"\n" for l in VALID))
    alphabet = np.frombuffer(b"0123456789abcdefABCDEFgz-+ .\t\r\n\x00\xff", dtype=np.uint8)
    accepted = rejected = 0
    for _ in range(600):
        data = bytearray(base)
        pos = int(rng.integers(0, len(data) - 1))  # the final newline stays
        data[pos] = int(rng.choice(alphabet))
        data = bytes(data)
        report = BadLineReport()
        ref = parse_block(data, "x", 1, report)
        fast = native.parse_fast(data)
        if report.total == 0:
            accepted += 1
            assert fast is not None
            for name, got in zip(FIELDS, fast):
                assert (got == getattr(ref, name)).all()
        else:
            rejected += 1
            assert fast is None
    assert accepted > 50 and rejected > 50


@needs_native
def test_hash_lookup_equals_sorted_lookup() -> None:
    rng = np.random.default_rng(3)
    vocabs = [Vocabulary.from_counts(np.unique(rng.integers(0, 2**32, size=n, dtype=np.uint32)),
                                     rng.integers(1, 4, size=n), min_freq=2) for n in (0, 1, 7, 5000)]
    vocabs = [Vocabulary(v.values) for v in vocabs]  # value order: the tables give value-order ids
    tables = native.vocab_tables([v.values for v in vocabs])
    m = 3000
    raw = np.stack([np.where(rng.random(m) < 0.5, rng.choice(v.values, m) if len(v.values) else 0,
                             rng.integers(0, 2**32, size=m)).astype(np.uint32) for v in vocabs], axis=1)
    raw[:5] = 0
    missing = rng.random(raw.shape) < 0.2
    got = tables.lookup(raw, missing)
    for f, v in enumerate(vocabs):
        np.testing.assert_array_equal(got[:, f], v.lookup(raw[:, f], missing[:, f]))
    with pytest.raises(ValueError, match="need"):
        tables.lookup(raw[:, :2], missing[:, :2])


def test_without_a_compiler_the_numpy_paths_are_used_and_said(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPEMBED_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert native.parser_name() == "numpy" and "no-such-compiler" in native.build_error()
    assert native.parse_fast(b"".join(l.encode() + b"\n" for l in VALID)) is None
    assert native.vocab_tables([np.arange(3, dtype=np.uint32)]) is None
    src = tmp_path / "in.tsv"
    src.write_text("".join(l + "\n" for l in VALID))
    res = prepare_criteo([src], tmp_path / "out", CriteoPrepareConfig(split="none"), progress=False)
    assert res.num_rows == 4 and res.extra["parser"] == "numpy"
    native._state.clear()
    monkeypatch.setenv("COMPEMBED_PARSER", "numpy")
    assert native.parser_name() == "numpy" and native.build_error() == "COMPEMBED_PARSER=numpy"


@needs_native
def test_interrupted_fast_run_resumes_to_the_reference_dataset(tmp_path: Path, monkeypatch) -> None:
    import compembed.data.prepare as prep

    src = tmp_path / "in.tsv"
    src.write_bytes(b"".join(l.encode() + b"\n" for l in VALID * 1500))
    cfg = dict(split="random", block_bytes=1 << 15, checkpoint_seconds=0)
    with native.disabled():
        ref = prepare_criteo([src], tmp_path / "ref", CriteoPrepareConfig(**cfg), progress=False)
    real = prep.read_criteo

    def interrupted(*args, **kw):
        for i, block in enumerate(real(*args, **kw)):
            if i == 5:
                raise KeyboardInterrupt
            yield block

    monkeypatch.setattr(prep, "read_criteo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_criteo([src], tmp_path / "out", CriteoPrepareConfig(**cfg), progress=False)
    monkeypatch.setattr(prep, "read_criteo", real)
    res = prepare_criteo([src], tmp_path / "out", CriteoPrepareConfig(**cfg), progress=False, resume=True)
    assert res.extra["parser"] == "c" and res.num_rows == ref.num_rows
    _same_files(res.path, ref.path)
