"""Criteo-format ingestion: the real 8,000-line sample, and every kind of malformed input."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from compembed.data import DatasetFormatError, SyntheticConfig, SyntheticCTR, open_dataset
from compembed.data.criteo import BOM, parse_block, read_criteo
from compembed.data.errors import BadLineReport, InputError
from compembed.data.export import write_criteo_text
from compembed.data.prepare import CriteoPrepareConfig, day_split, prepare_criteo
from compembed.data.transform import load_dense_transforms
from compembed.data.vocab import frequency_ids, load_id_maps

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
SAMPLE = SHARED / "data" / "criteo" / "criteo_kaggle_head8000.tsv.gz"
needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason="../shared data not present (criteo sample)")

README_DISTINCT = [157, 370, 4524, 3369, 53, 7, 2817, 82, 3, 2584, 1904, 4337, 1591, 22, 1833, 3905, 9, 1055,
                   480, 3, 4140, 7, 12, 2152, 37, 1635]


def _prep(inputs, out, **kw) -> "object":
    return prepare_criteo([str(p) for p in inputs], out, CriteoPrepareConfig(**kw), progress=False)


# --------------------------------------------------------------------------- the real sample
@needs_sample
def test_kaggle_sample_counts_cardinalities_and_splits(tmp_path: Path) -> None:
    result = _prep([SAMPLE], tmp_path / "ds")
    assert result.num_rows == 8000 and result.report.total == 0
    assert list(result.extra["distinct_values"].values()) == README_DISTINCT  # over all rows
    # the paper's split: 7 days of divmod(8000, 7) = (1142, 6) rows; day 7 halved into test and val
    assert result.info.split_sizes == {"train": 6 * 1143, "val": 571, "test": 571}
    assert result.extra["missing_counts"]["C22"] == 6538
    # ids: 0 missing, 1 rare/unseen, then every distinct value of the train split (min_freq 1)
    lines = gzip.open(SAMPLE, "rt").read().splitlines()
    train_values = [{v for v in col if v} for col in zip(*(l.split("\t")[14:] for l in lines[:6858]))]
    assert result.info.cardinalities == [len(v) + 2 for v in train_values]
    assert result.info.cardinalities != [d + 2 for d in README_DISTINCT]  # some values occur only in val/test

    ds = open_dataset(tmp_path / "ds")
    assert ds.info.split_sizes == result.info.split_sizes and not ds.info.bayes_known
    labels = np.asarray(ds.labels)
    assert labels.mean() == pytest.approx(0.216)
    sparse = np.asarray(ds.sparse)
    assert (sparse[:, 21] == 0).sum() == 6538  # missing C22 -> id 0
    assert ((sparse >= 0) & (sparse < np.array(ds.info.cardinalities))).all()
    assert (sparse[:6858] != 1).all()  # no rare id in train with min_freq 1
    assert (sparse[6858:] == 1).any()  # values unseen in train map to the unseen id
    for j, name in enumerate(ds.info.categorical_names):  # per-id counts: a bincount over the train rows
        np.testing.assert_array_equal(ds.info.counts[name], np.bincount(sparse[:6858, j],
                                                                        minlength=ds.info.cardinalities[j]))

    # compare with a plain Python reading of the text
    vocab = json.loads((tmp_path / "ds" / "vocab.json").read_text())
    assert [sorted(vocab[f"C{j + 1}"]) for j in range(26)] == [sorted(v) for v in train_values]
    dense = np.asarray(ds.dense)
    for i in (0, 1, 2, 777, 6857, 6858, 7999):
        fields = lines[i].split("\t")
        assert labels[i] == int(fields[0])
        for j, v in enumerate(fields[1:14]):
            expect = 0.0 if v == "" else np.log1p(max(int(v), 0))
            assert dense[i, j] == pytest.approx(expect, rel=1e-6)
        for j, v in enumerate(fields[14:]):
            expect = 0 if v == "" else vocab[f"C{j + 1}"].index(v) + 2 if v in train_values[j] else 1
            assert sparse[i, j] == expect
    assert (dense[:, 1] >= 0).all() and any(int(l.split("\t")[2] or 0) < 0 for l in lines)  # I2 negatives clipped

    # splits are consecutive: train = first 6858 rows, then test, then val
    first_test = next(iter(ds.loader("test", 3)))
    np.testing.assert_array_equal(first_test.sparse.numpy(), sparse[6858:6861])
    last_val = list(ds.loader("val", 100))[-1]
    np.testing.assert_array_equal(last_val.sparse.numpy(), sparse[8000 - 71 : 8000])  # 571 = 5 * 100 + 71


@needs_sample
def test_kaggle_sample_random_split_and_min_freq(tmp_path: Path) -> None:
    result = _prep([SAMPLE], tmp_path / "ds", split="random", min_freq=5, seed=1)
    sizes = result.info.split_sizes
    assert sum(sizes.values()) == 8000 and 600 < sizes["val"] < 1000 and 600 < sizes["test"] < 1000
    ds = open_dataset(tmp_path / "ds")
    sparse = np.asarray(ds.sparse)
    for j in range(26):
        kept = result.info.cardinalities[j] - 2
        counts = np.bincount(sparse[:, j], minlength=kept + 2)
        assert (counts[2:] >= 5).all()  # every kept value was seen at least min_freq times
    assert (sparse == 1).any()  # rare values share id 1
    # every row is in exactly one split
    rows = np.concatenate([ds.splits[s] for s in ("train", "val", "test")])
    np.testing.assert_array_equal(np.sort(rows), np.arange(8000))


def _sample_text() -> tuple[np.ndarray, np.ndarray]:
    """The sample's categorical fields (str (8000, 26)) and raw dense values (float64 (8000, 13), NaN missing)."""
    fields = [line.split("\t") for line in gzip.open(SAMPLE, "rt").read().splitlines()]
    cats = np.array([f[14:] for f in fields])
    dense = np.array([[float(v) if v else np.nan for v in f[1:14]] for f in fields])
    return cats, dense


@needs_sample
def test_kaggle_sample_frequency_order_counts_and_vocab_round_trip(tmp_path: Path) -> None:
    value = _prep([SAMPLE], tmp_path / "v", split="random", min_freq=2, seed=3)
    freq = _prep([SAMPLE], tmp_path / "f", split="random", min_freq=2, seed=3, id_order="frequency")
    assert value.info.cardinalities == freq.info.cardinalities and freq.info.id_order == "frequency"
    v, f = open_dataset(tmp_path / "v"), open_dataset(tmp_path / "f")
    train = np.asarray(v.splits["train"])
    sv, sf = np.asarray(v.sparse), np.asarray(f.sparse)
    special = json.loads((tmp_path / "f" / "meta.json").read_text())["special_ids"]
    for j, name in enumerate(v.info.categorical_names):
        card = v.info.cardinalities[j]
        np.testing.assert_array_equal(v.info.counts[name], np.bincount(sv[train, j], minlength=card))
        np.testing.assert_array_equal(f.info.counts[name], np.bincount(sf[train, j], minlength=card))
        assert (np.diff(f.info.counts[name]) <= 0).all()  # id 0 is the most frequent; hot = id < K
        new_ids = frequency_ids(v.info.counts[name])  # a bijection of the value order
        np.testing.assert_array_equal(sf[:, j], new_ids[sv[:, j]])
        assert special[name] == {"missing": int(new_ids[0]), "rare": int(new_ids[1])}
    # raw values -> ids through vocab.json as prepared (both orders, every split), and ids -> values -> ids
    cats, _ = _sample_text()
    for path, sparse in ((tmp_path / "v", sv), (tmp_path / "f", sf)):
        maps = load_id_maps(path)
        for j in (0, 2, 21, 25):
            m = maps[f"C{j + 1}"]
            np.testing.assert_array_equal(m.ids(cats[:, j].tolist()), sparse[:, j])
            ids = np.arange(m.cardinality)
            keep = ~np.isin(ids, [m.missing_id, m.rare_id])
            np.testing.assert_array_equal(m.ids(m.values_of(ids[keep])), ids[keep])
        m = maps["C3"]  # hashes are compared as Criteo reads them: case and leading zeros do not matter
        i = next(i for i, h in enumerate(cats[:, 2]) if h.startswith("0"))
        np.testing.assert_array_equal(m.ids([cats[i, 2].upper(), cats[i, 2].lstrip("0"), "", None]),
                                      [sparse[i, 2], sparse[i, 2], m.missing_id, m.missing_id])


@needs_sample
@pytest.mark.parametrize("transform", ["standardize", "auto"])
def test_kaggle_sample_dense_transforms(tmp_path: Path, transform: str) -> None:
    _prep([SAMPLE], tmp_path / "ds", dense_transform=transform)
    ds = open_dataset(tmp_path / "ds")
    _, raw = _sample_text()
    train = raw[:6858]
    transforms = load_dense_transforms(tmp_path / "ds")
    kinds = {n: t.kind for n, t in transforms.items()}
    if transform == "auto":
        assert kinds["I2"] == "standardize" and kinds["I1"] == "log1p"  # I2 has negatives; I1 counts
    else:
        assert set(kinds.values()) == {"standardize"}
    dense = np.asarray(ds.dense)
    for j, (name, t) in enumerate(transforms.items()):
        col = train[~np.isnan(train[:, j]), j]
        assert t.stats["count"] == len(col) and t.stats["min"] == col.min() and t.stats["max"] == col.max()
        if t.kind == "standardize":
            assert t.mean == pytest.approx(col.mean()) and t.std == pytest.approx(col.std())
        np.testing.assert_array_equal(t.apply(raw[:, j]), dense[:, j])  # new raw rows map as prepared
    assert abs(dense[:6858, 1].mean()) < 0.05  # I2 standardized (missing -> 0, the mean)


def test_day_split_of_the_full_kaggle_file() -> None:
    s = day_split(45_840_617)
    assert s["train"] == (0, 39_291_958)
    assert s["test"][1] - s["test"][0] == 3_274_330 and s["val"][1] - s["val"][0] == 3_274_329
    assert s["val"][1] == 45_840_617


# --------------------------------------------------------------------------- malformed input
VALID = [
    "0\t1\t5\t\t-1\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\tfb936136\t7b4723c4\t25c83c98\t7e0ccccf"
    "\tde7995b8\t1f89b562\ta73ee510\ta8cd5504\tb2cb9c98\t37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t891b62e7"
    "\te5ba7672\tf54016b9\t21ddcdc9\tb1252a9d\t07b5194c\t\t3a171ecb\tc5c50484\te8b83407\t9727dd16",
    "1\t\t0\t1\t\t\t\t0\t\t\t\t\t\t\t05db9164\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
    "0\t2\t0\t44\t1\t102\t8\t2\t2\t4\t1\t1\t\t4\t68fd1e64\tf0cf0024\t6f67f7e5\t41274cd7\t25c83c98\tfe6b92e5"
    "\t922afcc0\t0b153874\ta73ee510\t2b53e5fb\t4f1b46f3\t623049e6\td7020589\tb28479f6\te6c5b5cd\tc92f3b61"
    "\t07c540c4\tb04e4670\t21ddcdc9\t5840adea\t60f6221e\t\t3a171ecb\t43f13e8b\te8b83407\t731c3655",
    "1\t999999999999999999\t\t\t\t\t\t\t\t\t\t\t\t\t1\tABCDEF12\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
]


def _cats(line: str, j: int) -> str:
    return line.split("\t")[14 + j]


def _replace(line: str, col: int, value: str) -> str:  # col is 1-based
    f = line.split("\t")
    f[col - 1] = value
    return "\t".join(f)


BAD = {
    # kind: (bad line text, expected column)
    "field_count": ("\t".join(VALID[0].split("\t")[:30]), 31),
    "field_count_extra": (VALID[0] + "\tdeadbeef", 41),
    "field_count_empty": ("", 2),
    "bad_category": (_replace(VALID[0], 17, "zz12ab34"), 17),
    "bad_category_long": (_replace(VALID[0], 20, "123456789"), 20),
    "bad_dense": (_replace(VALID[0], 5, "3.5"), 5),
    "bad_dense_sign": (_replace(VALID[0], 3, "-"), 3),
    "dense_overflow": (_replace(VALID[0], 9, "99999999999999999999999"), 9),
    "bad_label": (_replace(VALID[0], 1, "2"), 1),
    "carriage_return": (VALID[0][:100] + "\r" + VALID[2][100:], None),
    "binary_junk": ("\x00\x01\xff\xfe\x7f" * 20, 2),
}
KIND = {"field_count_extra": "field_count", "field_count_empty": "field_count", "bad_category_long": "bad_category",
        "bad_dense_sign": "bad_dense", "binary_junk": "field_count"}


def _write(path: Path, lines: list[str], ending: str = "\n", gz: bool = False) -> Path:
    data = "".join(l + ending for l in lines).encode("latin-1")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _dataset_arrays(path: Path) -> dict[str, np.ndarray]:
    ds = open_dataset(path)
    return {"dense": np.asarray(ds.dense), "sparse": np.asarray(ds.sparse), "labels": np.asarray(ds.labels)}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_line_is_reported_with_file_line_and_column(tmp_path: Path, case: str) -> None:
    bad, col = BAD[case]
    src = _write(tmp_path / "in.tsv", [VALID[0], VALID[1], bad, VALID[2]])
    with pytest.raises(InputError) as err:
        _prep([src], tmp_path / "out")
    e = err.value
    assert e.kind == KIND.get(case, case) and e.path == str(src) and e.line == 3
    if col is not None:
        assert e.column == col
    assert f"{src}:3" in str(e) and "--skip-bad-lines" in str(e)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial-*"))


def test_bad_line_messages_name_the_feature(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tsv", [VALID[0], _replace(VALID[0], 17, "zz12ab34")])
    with pytest.raises(InputError, match=r"in.tsv:2: column 17 \(C3\): category 'zz12ab34' is not"):
        _prep([src], tmp_path / "out")
    src = _write(tmp_path / "in.tsv", [_replace(VALID[0], 9, "99999999999999999999999")])
    with pytest.raises(InputError, match=r"column 9 \(I8\): dense value '9+' overflows"):
        _prep([src], tmp_path / "out")


def test_skip_bad_lines_keeps_every_valid_line_unchanged(tmp_path: Path) -> None:
    good = VALID * 5
    clean = _write(tmp_path / "clean.tsv", good)
    _prep([clean], tmp_path / "clean_ds", split="none")
    mixed, expected_bad = [], {}
    cases = sorted(BAD)
    for i, line in enumerate(good):
        mixed.append(line)
        if i < len(cases):
            mixed.append(BAD[cases[i]][0])
            expected_bad[len(mixed)] = KIND.get(cases[i], cases[i])
    # the CR case glues two records: count it as one bad line
    src = _write(tmp_path / "mixed.tsv", mixed)
    result = _prep([src], tmp_path / "mixed_ds", split="none", skip_bad_lines=True)
    assert result.num_rows == len(good)
    assert result.report.total == len(cases)
    assert {b.line: b.kind for b in result.report.examples} == expected_bad
    a, b = _dataset_arrays(tmp_path / "clean_ds"), _dataset_arrays(tmp_path / "mixed_ds")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    meta = json.loads((tmp_path / "mixed_ds" / "meta.json").read_text())
    assert meta["bad_lines"]["skipped"] == len(cases)


def test_max_bad_lines_stops_the_run(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tsv", [VALID[0], "junk", "junk", VALID[1]])
    with pytest.raises(InputError, match="more than 1 bad lines"):
        _prep([src], tmp_path / "out", skip_bad_lines=True, max_bad_lines=1)
    assert not (tmp_path / "out").exists()


def test_crlf_line_endings_are_valid_and_identical(tmp_path: Path) -> None:
    lf = _write(tmp_path / "lf.tsv", VALID)
    mixed = tmp_path / "mixed.tsv"
    mixed.write_bytes(b"".join(l.encode() + (b"\r\n" if i % 2 else b"\n") for i, l in enumerate(VALID)))
    _prep([lf], tmp_path / "a", split="none")
    _prep([mixed], tmp_path / "b", split="none")
    a, b = _dataset_arrays(tmp_path / "a"), _dataset_arrays(tmp_path / "b")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert len(a["labels"]) == 4


def test_uppercase_and_short_hex_and_missing_final_newline(tmp_path: Path) -> None:
    src = tmp_path / "in.tsv"
    src.write_bytes(("\n".join(VALID)).encode())  # no final newline
    _prep([src], tmp_path / "ds", split="none")
    ds = open_dataset(tmp_path / "ds")
    assert len(ds.labels) == 4
    block = parse_block(("\n".join(VALID) + "\n").encode(), "x", 1)
    assert block.cats[3, 0] == 1 and block.cats[3, 1] == 0xABCDEF12
    assert block.dense[3, 0] == 999999999999999999 and block.dense[0, 3] == -1
    assert block.dense_missing[1].sum() == 10 and block.cat_missing[1].sum() == 25


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_utf8_byte_order_mark_is_accepted(tmp_path: Path, gz: bool, skip: bool) -> None:
    plain = _write(tmp_path / "plain.tsv", VALID)
    text = BOM + "".join(l + "\n" for l in VALID).encode()
    marked = tmp_path / "marked.tsv"
    marked.write_bytes(gzip.compress(text) if gz else text)
    _prep([plain], tmp_path / "a", split="none")
    result = _prep([marked], tmp_path / "b", split="none", skip_bad_lines=skip)
    assert result.num_rows == len(VALID) and result.report.total == 0  # the first row is kept
    a, b = _dataset_arrays(tmp_path / "a"), _dataset_arrays(tmp_path / "b")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # Lines are numbered as before; a mark anywhere else is no valid label.
    marked.write_bytes(BOM + f"{VALID[0]}\n{BOM.decode()}{VALID[1]}\n".encode())
    with pytest.raises(InputError, match=r"marked.tsv:2: column 1 \(label\): label must be 0 or 1"):
        _prep([marked], tmp_path / "c")


def test_reading_resumes_past_a_byte_order_mark(tmp_path: Path) -> None:
    marked = tmp_path / "marked.tsv"
    marked.write_bytes(BOM + "".join(l + "\n" for l in VALID * 1000).encode())
    blocks = list(read_criteo([marked], block_bytes=1 << 16))
    assert len(blocks) > 2 and sum(len(b) for b in blocks) == 4000
    again = list(read_criteo([marked], block_bytes=1 << 16, start=blocks[0].resume_at))  # offsets count the mark
    assert [b.resume_at for b in again] == [b.resume_at for b in blocks[1:]]
    np.testing.assert_array_equal(np.concatenate([b.cats for b in again]), np.concatenate([b.cats for b in blocks[1:]]))


def test_truncated_gzip(tmp_path: Path) -> None:
    lines = VALID * 300
    full = gzip.compress("".join(l + "\n" for l in lines).encode())
    src = tmp_path / "cut.tsv.gz"
    src.write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(InputError) as err:
        _prep([src], tmp_path / "out")
    assert err.value.kind == "truncated_gzip" and err.value.line > 1 and "truncated" in str(err.value)
    result = _prep([src], tmp_path / "out", skip_bad_lines=True, split="none")
    assert result.report.counts["truncated_gzip"] == 1
    n = result.num_rows
    assert 0 < n < len(lines) and err.value.line == n + 1  # every complete line before the cut is kept
    ref = _write(tmp_path / "ref.tsv", lines[:n])
    _prep([ref], tmp_path / "ref", split="none")
    a, b = _dataset_arrays(tmp_path / "ref"), _dataset_arrays(tmp_path / "out")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(("\n".join(VALID * 50) + "\n").encode()))
    data[40:60] = b"\xff" * 20
    src = tmp_path / "bad.gz"
    src.write_bytes(bytes(data))
    with pytest.raises(InputError, match="gzip"):
        _prep([src], tmp_path / "out")


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.tsv: file is empty"):
        _prep([empty], tmp_path / "out")
    # skipped among other files, it is counted; alone it leaves no valid line
    other = _write(tmp_path / "ok.tsv", VALID)
    result = _prep([empty, other], tmp_path / "out", skip_bad_lines=True, split="none")
    assert result.num_rows == 4 and result.report.counts["empty_file"] == 1
    with pytest.raises(InputError, match="no valid lines"):
        _prep([empty], tmp_path / "out2", skip_bad_lines=True)
    gz_empty = tmp_path / "empty.gz"
    gz_empty.write_bytes(gzip.compress(b""))
    with pytest.raises(InputError, match="file is empty"):
        _prep([gz_empty], tmp_path / "out3")


def test_binary_junk_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 50 + b"\x00" * (2 << 20))  # also a line over 1 MiB
    with pytest.raises(InputError):
        _prep([junk], tmp_path / "out")
    report = BadLineReport()
    assert sum(len(b) for b in read_criteo([junk], report=report)) == 0
    assert report.total >= 2 and "line_too_long" in report.counts


def test_several_files_and_gzip_concatenate_in_order(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tsv", VALID[:2])
    b = _write(tmp_path / "b.tsv.gz", VALID[2:], gz=True)
    both = _write(tmp_path / "all.tsv", VALID)
    _prep([a, b], tmp_path / "ab", split="none")
    _prep([both], tmp_path / "all", split="none")
    x, y = _dataset_arrays(tmp_path / "ab"), _dataset_arrays(tmp_path / "all")
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_line_numbers_across_blocks(tmp_path: Path) -> None:
    lines = VALID * 2000  # ~1.3 MB: several 64 KiB blocks
    lines[6543] = "1\tbad"
    src = _write(tmp_path / "in.tsv", lines)
    with pytest.raises(InputError) as err:
        list(read_criteo([src], block_bytes=1 << 16))
    assert err.value.line == 6544


def test_output_is_atomic(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tsv", VALID)
    _prep([src], tmp_path / "ds", split="none")
    with pytest.raises(FileExistsError, match="overwrite"):
        _prep([src], tmp_path / "ds")
    # a failing run leaves the old dataset as it was, and no partial directory
    bad = _write(tmp_path / "bad.tsv", VALID + ["x"])
    with pytest.raises(InputError):
        prepare_criteo([bad], tmp_path / "ds", overwrite=True, progress=False)
    assert len(open_dataset(tmp_path / "ds").labels) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv", "ds", "in.tsv"]
    # a directory without meta.json (what a killed run leaves) does not open
    (tmp_path / "half").mkdir()
    np.save(tmp_path / "half" / "dense.npy", np.zeros((2, 13), np.float32))
    with pytest.raises(DatasetFormatError, match="meta.json"):
        open_dataset(tmp_path / "half")


@pytest.mark.parametrize("id_order", ["value", "frequency"])
def test_synthetic_text_round_trip(tmp_path: Path, id_order: str) -> None:
    syn = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.001, seed=2, id_order=id_order))
    path = write_criteo_text(syn, tmp_path / "s.tsv.gz", progress=False)
    result = _prep([path], tmp_path / "ds", split="none")
    rows = syn.rows(0, 3000)
    ds = _dataset_arrays(tmp_path / "ds")
    np.testing.assert_array_equal(ds["labels"], rows["labels"])
    np.testing.assert_allclose(ds["dense"], rows["dense"], rtol=1e-6)
    # ids are renumbered, but missing stays 0 and equal ids stay equal
    np.testing.assert_array_equal(ds["sparse"] == 0, rows["sparse"] == np.array(syn.missing_ids))
    for j in range(26):
        pairs = np.unique(np.stack([ds["sparse"][:, j], rows["sparse"][:, j]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert result.report.total == 0


# --------------------------------------------------------------------------- parser properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_hex = st.text("0123456789abcdefABCDEF", min_size=0, max_size=8)
_int = st.one_of(st.just(""), st.integers(-10**18 + 1, 10**18 - 1).map(str))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from("01"), st.lists(_int, min_size=13, max_size=13),
                               st.lists(_hex, min_size=26, max_size=26)), min_size=1, max_size=20))
def test_parser_agrees_with_python_on_valid_lines(rows) -> None:
    text = "".join("\t".join([lab, *dense, *cats]) + "\n" for lab, dense, cats in rows)
    block = parse_block(text.encode(), "x", 1)
    assert len(block) == len(rows)
    for i, (lab, dense, cats) in enumerate(rows):
        assert block.labels[i] == int(lab)
        assert block.dense[i].tolist() == [int(v) if v else 0 for v in dense]
        assert block.dense_missing[i].tolist() == [v == "" for v in dense]
        assert block.cats[i].tolist() == [int(v, 16) if v else 0 for v in cats]
        assert block.cat_missing[i].tolist() == [v == "" for v in cats]


@settings(max_examples=80, deadline=None)
@given(col=st.integers(2, 40), value=st.binary(min_size=1, max_size=12).filter(lambda v: b"\t" not in v
                                                                                and b"\n" not in v and b"\r" not in v))
def test_parser_rejects_exactly_the_invalid_fields(col: int, value: bytes) -> None:
    fields = VALID[0].encode().split(b"\t")
    fields[col - 1] = value
    line = b"\t".join(fields) + b"\n"
    if col <= 14:
        s = value[1:] if value[:1] == b"-" else value
        valid = 0 < len(s) <= 18 and s.isdigit() and all(48 <= c <= 57 for c in s)
    else:
        valid = len(value) <= 8 and all(c in b"0123456789abcdefABCDEF" for c in value)
    report = BadLineReport()
    block = parse_block(line, "x", 1, report)
    assert len(block) == int(valid) and report.total == int(not valid)
    if not valid:
        assert report.examples[0].column == col


def test_parallel_parsing_gives_the_same_dataset_and_report(tmp_path: Path) -> None:
    lines = VALID * 3000
    for i in (5, 4000, 11999):
        lines[i] = _replace(VALID[0], 20, "nothex!!")
    src = _write(tmp_path / "in.tsv", lines)
    results = {}
    for w in (1, 2):
        cfg = CriteoPrepareConfig(split="none", skip_bad_lines=True, workers=w, block_bytes=1 << 18)
        results[w] = prepare_criteo([src], tmp_path / f"w{w}", cfg, progress=False)
    assert results[1].num_rows == results[2].num_rows == len(lines) - 3
    assert [b.line for b in results[2].report.examples] == [6, 4001, 12000]
    a, b = _dataset_arrays(tmp_path / "w1"), _dataset_arrays(tmp_path / "w2")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(InputError) as err:  # the first bad line is reported, from a worker process
        prepare_criteo([src], tmp_path / "w3", CriteoPrepareConfig(workers=2, block_bytes=1 << 18), progress=False)
    assert err.value.line == 6 and err.value.column == 20 and err.value.feature == "C6"


@pytest.mark.parametrize("gz,workers", [(False, 1), (True, 1), (False, 2)])
def test_interrupted_run_resumes_to_the_same_dataset(tmp_path: Path, monkeypatch, gz: bool, workers: int) -> None:
    import compembed.data.prepare as prep

    lines = VALID * 2500
    lines[7000] = "junk"
    a = _write(tmp_path / "a.tsv", lines[:6000], gz=gz)
    b = _write(tmp_path / "b.tsv", lines[6000:])
    cfg = dict(split="random", skip_bad_lines=True, block_bytes=1 << 16, checkpoint_seconds=0, workers=workers)
    ref = prepare_criteo([a, b], tmp_path / "ref", CriteoPrepareConfig(**cfg), progress=False)

    real = prep.read_criteo
    seen = []

    def interrupted(*args, **kw):  # a Ctrl-C after 9 blocks, past a checkpoint
        for i, block in enumerate(real(*args, **kw)):
            if i == 9:
                raise KeyboardInterrupt
            seen.append(block.resume_at)
            yield block

    monkeypatch.setattr(prep, "read_criteo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_criteo([a, b], tmp_path / "out", CriteoPrepareConfig(**cfg), progress=False)
    assert (tmp_path / "out.partial" / "checkpoint.json").exists() and not (tmp_path / "out").exists()
    with pytest.raises(DatasetFormatError):
        open_dataset(tmp_path / "out.partial")
    monkeypatch.setattr(prep, "read_criteo", real)

    starts = []
    monkeypatch.setattr(prep, "read_criteo", lambda *args, **kw: (starts.append(kw["start"]), real(*args, **kw))[1])
    res = prepare_criteo([a, b], tmp_path / "out", CriteoPrepareConfig(**cfg), progress=False, resume=True)
    assert starts[0] != (0, 0, 1) and starts[0] in seen  # it went on from a checkpoint
    assert res.num_rows == ref.num_rows == len(lines) - 1 and res.report.total == 1
    x, y = _dataset_arrays(tmp_path / "ref"), _dataset_arrays(tmp_path / "out")
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])
    assert res.info == ref.info
    for name in ref.info.categorical_names:
        np.testing.assert_array_equal(res.info.counts[name], ref.info.counts[name])
    assert (tmp_path / "ref" / "vocab.json").read_text() == (tmp_path / "out" / "vocab.json").read_text()
    assert not (tmp_path / "out.partial").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_stale_partial_directory_is_not_resumed(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tsv", VALID)
    stale = tmp_path / "out.partial"
    stale.mkdir()
    (stale / "checkpoint.json").write_text('{"inputs": [], "options": {}}')
    (stale / "labels.scratch").write_bytes(b"\x01" * 100)
    res = prepare_criteo([src], tmp_path / "out", CriteoPrepareConfig(split="none"), progress=False, resume=True)
    assert res.num_rows == 4 and not stale.exists()
    np.testing.assert_array_equal(_dataset_arrays(tmp_path / "out")["labels"], [0, 1, 0, 1])
