"""Generic CTR tables: MovieLens as CTR (multi-hot genres), CSV/TSV/Parquet, bad rows."""
from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compembed.data import open_dataset
from compembed.data.errors import InputError
from compembed.data.table import TableSpec, prepare_table
from compembed.data.transform import load_dense_transforms
from compembed.data.vocab import frequency_ids, load_id_maps, relabelled_counts

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
MOVIELENS = SHARED / "data" / "movielens" / "ml100k_ctr.tsv.gz"
needs_movielens = pytest.mark.skipif(not MOVIELENS.exists(), reason="../shared data not present (movielens)")

ML_CATEGORICAL = ["user_id", "item_id", "age", "gender", "occupation", "zip_code", "release_year"]
ML_DISTINCT = {"user_id": 943, "item_id": 1682, "zip_code": 795, "release_year": 73, "age": 61,
               "occupation": 21, "gender": 2, "genres": 19}


@needs_movielens
def test_movielens_as_ctr(tmp_path: Path) -> None:
    spec = TableSpec(label="label", categorical=ML_CATEGORICAL, dense=["timestamp"], multi_hot=["genres"])
    result = prepare_table([MOVIELENS], tmp_path / "ml", spec, progress=False)
    assert result.num_rows == 100_000 and result.report.total == 0
    assert result.extra["distinct_values"] == ML_DISTINCT  # over all rows
    assert "rating" in result.extra["ignored_columns"]
    info = result.info
    assert "rating" not in info.categorical_names + info.dense_names  # the label's source is never a feature
    assert info.categorical_names == ML_CATEGORICAL + ["genres"] and info.multi_hot_names == ["genres"]
    assert sum(info.split_sizes.values()) == 100_000 and 9_000 < info.split_sizes["test"] < 11_000

    ds = open_dataset(tmp_path / "ml")
    train = np.asarray(ds.splits["train"])
    lines = gzip.open(MOVIELENS, "rt").read().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    train_values = {c: {rows[i][c] for i in train} for c in ML_CATEGORICAL}
    train_values["genres"] = {g for i in train for g in rows[i]["genres"].split("|")}
    # vocabularies from the train rows only
    assert info.cardinalities == [len(train_values[c]) + 2 for c in info.categorical_names]
    assert info.cardinalities[1] < ML_DISTINCT["item_id"] + 2  # some items occur only in val/test
    assert np.asarray(ds.labels).mean() == pytest.approx(0.554, abs=5e-4)
    values, offsets = ds.multi_hot["genres"]
    lengths = np.diff(np.asarray(offsets))
    assert offsets[-1] == len(values) and (lengths >= 1).all() and lengths.max() > 3
    # train counts: a bincount of each feature's ids over the train rows (every id of a bag counts)
    sparse = np.asarray(ds.sparse)
    for j, c in enumerate(ML_CATEGORICAL):
        np.testing.assert_array_equal(info.counts[c], np.bincount(sparse[train, j], minlength=info.cardinalities[j]))
        assert ds.info.counts[c].sum() == len(train)
    in_train = np.zeros(len(lengths), dtype=bool)
    in_train[train] = True
    np.testing.assert_array_equal(ds.info.counts["genres"],
                                  np.bincount(np.asarray(values)[np.repeat(in_train, lengths)], minlength=21))
    # auto dense transform: timestamps are far from zero for their spread, so they are standardized
    ts = np.array([float(r["timestamp"]) for r in rows])
    meta = json.loads((tmp_path / "ml" / "meta.json").read_text())
    t = meta["dense_transforms"]["timestamp"]
    assert t["kind"] == "standardize"
    assert t["mean"] == pytest.approx(ts[train].mean()) and t["std"] == pytest.approx(ts[train].std())
    dense = np.asarray(ds.dense)[:, 0]
    np.testing.assert_allclose(dense, (ts - ts[train].mean()) / ts[train].std(), rtol=1e-5, atol=1e-5)
    assert abs(dense[train].mean()) < 1e-3 and dense[train].std() == pytest.approx(1.0, rel=1e-3)
    # compare rows with the text: a value not seen in train maps to the unseen id 1
    vocab = json.loads((tmp_path / "ml" / "vocab.json").read_text())
    unseen = [i for i in range(len(rows)) if rows[i]["item_id"] not in train_values["item_id"]]
    assert unseen and (sparse[unseen, 1] == 1).all()
    for i in (0, 1, 4242, 99_999, *unseen[:3]):
        row = rows[i]
        assert ds.labels[i] == int(row["label"])
        for j, c in enumerate(ML_CATEGORICAL):
            assert ds.sparse[i, j] == (vocab[c].index(row[c]) + 2 if row[c] in train_values[c] else 1)
        bag = values[offsets[i] : offsets[i + 1]]
        assert sorted(bag) == sorted(vocab["genres"].index(g) + 2 for g in row["genres"].split("|"))

    batch = next(iter(ds.loader("train", 64, shuffle=True, seed=1)))
    assert batch.sparse.shape == (64, 7) and batch.dense.shape == (64, 1)
    bag_values, bag_offsets = batch.multi_hot["genres"]
    assert bag_offsets.shape == (64,) and bag_offsets[0] == 0 and len(bag_values) >= 64
    feats = batch.features(info.categorical_names)
    assert set(feats) == set(info.categorical_names)


def test_label_cannot_be_a_feature() -> None:
    with pytest.raises(ValueError, match="named twice"):
        TableSpec(label="label", categorical=["label", "user"])
    with pytest.raises(ValueError, match="at least one"):
        TableSpec(label="label")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_bad_rows_error_or_skip(tmp_path: Path) -> None:
    text = ("y,u,n,tags,extra\n"
            "1,a,1.5,x|y,z\n"
            "0,b,,y,z\n"
            "1,a,2\n"              # line 4: too few fields
            "2,a,3,x,z\n"          # line 5: label 2
            "0,c,abc,x,z\n"        # line 6: dense not a number
            "1,,4,,z\n")           # line 7: valid, missing categorical and empty bag
    src = _csv(tmp_path / "t.csv", text)
    spec = dict(label="y", categorical=["u"], dense=["n"], multi_hot=["tags"], split="none", dense_transform="none")
    with pytest.raises(InputError) as err:
        prepare_table([src], tmp_path / "o", TableSpec(**spec), progress=False)
    assert err.value.line == 4 and err.value.kind == "field_count" and "t.csv:4" in str(err.value)
    result = prepare_table([src], tmp_path / "o", TableSpec(**spec, skip_bad_lines=True), progress=False)
    assert result.num_rows == 3
    assert {(b.line, b.kind) for b in result.report.examples} == {(4, "field_count"), (5, "bad_label"),
                                                                   (6, "bad_dense")}
    ds = open_dataset(tmp_path / "o")
    np.testing.assert_array_equal(np.asarray(ds.labels), [1, 0, 1])
    np.testing.assert_allclose(np.asarray(ds.dense)[:, 0], [1.5, 0.0, 4.0])
    np.testing.assert_array_equal(np.asarray(ds.sparse)[:, 0], [2, 3, 0])  # a=2, b=3, missing=0
    values, offsets = ds.multi_hot["tags"]
    np.testing.assert_array_equal(np.asarray(offsets), [0, 2, 3, 4])
    np.testing.assert_array_equal(np.asarray(values), [2, 3, 3, 0])  # x=2, y=3, empty bag -> [missing]


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("name", ["t.csv", "t.tsv.gz"])
def test_utf8_byte_order_mark_is_accepted(tmp_path: Path, skip: bool, name: str) -> None:
    src = tmp_path / name

    def write(rows) -> None:  # a byte-order mark, then the header and rows
        sep = "\t" if ".tsv" in name else ","
        data = ("\ufeff" + "".join(sep.join(row) + "\n" for row in [("y", "u", "n"), *rows])).encode()
        src.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)

    write([("1", "a", "1.5"), ("0", "b", "2")])
    spec = TableSpec(label="y", categorical=["u"], dense=["n"], split="none", dense_transform="none",
                     skip_bad_lines=skip)
    result = prepare_table([src], tmp_path / "o", spec, progress=False)
    assert result.num_rows == 2 and result.report.total == 0  # the header is found, the first row kept
    ds = open_dataset(tmp_path / "o")
    np.testing.assert_array_equal(np.asarray(ds.labels), [1, 0])
    np.testing.assert_allclose(np.asarray(ds.dense)[:, 0], [1.5, 2.0])
    write([("1", "a", "1"), ("2", "b", "1")])  # lines are numbered as without the mark
    with pytest.raises(InputError, match=rf"{name}:3: column 1: y: label must be 0 or 1, got '2'"):
        prepare_table([src], tmp_path / "o2", dataclasses.replace(spec, skip_bad_lines=False), progress=False)


@pytest.mark.parametrize("text,skip,where,kind", [
    (b"y,u,n\n1,a,1\n\n\r\n0,b,x\n", False, ":5: column 3: n: 'x'", "bad_dense"),  # empty lines counted
    (b"u,n,y\n\na,1,1\nb,2,5\n", False, ":4: column 3: y: label must be 0 or 1", "bad_label"),  # the file's column
    (b"y,u,n\n1,\xe9,1\n0,b,2\n", True, ":2: column 2: byte 0xe9 is not UTF-8", "bad_encoding"),
    (b"y,u,n\n1,a,1\n0,\xe9\n", True, ":3: column 2: byte 0xe9 is not UTF-8", "bad_encoding"),  # in a malformed row
    (b"y,u\xe9,n\n1,a,1\n", False, ":1: column 2: byte 0xe9 is not UTF-8", "bad_encoding"),  # in the header
    (b'y,u,n\n1,a,"1\n0,b,2\n1,c,3\n', True, ":2: column 3: a quoted value runs past the end", "unmatched_quote"),
    (b'y,u,n\n1,"a,1\n0,b,2\n', True, ":2: column 2: a quoted value runs past the end", "unmatched_quote"),
])
def test_table_errors_are_located_in_the_file(tmp_path: Path, text: bytes, skip: bool, where: str, kind: str) -> None:
    # Bad UTF-8 and an unmatched quote (which would swallow the rows after it) stop the run even when skipping.
    src = tmp_path / "t.csv"
    src.write_bytes(text)
    spec = TableSpec(label="y", categorical=["u"], dense=["n"], skip_bad_lines=skip)
    with pytest.raises(InputError) as err:
        prepare_table([src], tmp_path / "o", spec, progress=False)
    assert err.value.kind == kind and where in str(err.value), str(err.value)
    assert ("--skip-bad-lines" in str(err.value)) == (kind in ("bad_dense", "bad_label"))


def test_skipped_rows_are_counted_once_with_their_line_and_column(tmp_path: Path) -> None:
    src = _csv(tmp_path / "t.csv", "y,u,n\n1,a\n\n0,b,2\n1,c,x\n")
    spec = TableSpec(label="y", categorical=["u"], dense=["n"], split="none", skip_bad_lines=True)
    result = prepare_table([src], tmp_path / "o", spec, progress=False)
    assert result.num_rows == 1
    assert [(b.line, b.column, b.kind) for b in result.report.examples] == [(2, 3, "field_count"), (5, 3, "bad_dense")]


def test_bad_label_and_dense_errors_name_line(tmp_path: Path) -> None:
    src = _csv(tmp_path / "t.tsv", "y\tu\tn\n1\ta\t1\n0\tb\tinf\n")
    with pytest.raises(InputError, match=r"t.tsv:3: .*'inf' is not a finite number"):
        prepare_table([src], tmp_path / "o", TableSpec(label="y", categorical=["u"], dense=["n"]), progress=False)
    src = _csv(tmp_path / "t2.tsv", "y\tu\n1\ta\nyes\tb\n")
    with pytest.raises(InputError, match=r"t2.tsv:3: column 1: y: label must be 0 or 1"):
        prepare_table([src], tmp_path / "o", TableSpec(label="y", categorical=["u"]), progress=False)
    with pytest.raises(InputError, match=r"no column\(s\) \['v'\]"):
        prepare_table([src], tmp_path / "o", TableSpec(label="y", categorical=["v"]), progress=False)


def test_parquet_with_list_column_and_min_freq(tmp_path: Path) -> None:
    table = pa.table({
        "click": [1, 0, 0, 1, 1, 0],
        "shop": pa.array([10, 10, 11, 12, 10, None], pa.int64()),
        "price": [1.0, 2.0, None, 4.0, 5.0, 6.0],
        "items": pa.array([["a", "b"], ["a"], [], None, ["c", "a"], ["b"]], pa.list_(pa.string())),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    spec = TableSpec(label="click", categorical=["shop"], dense=["price"], multi_hot=["items"], min_freq=2,
                     split="sequential", val_fraction=1 / 6, test_fraction=1 / 6, dense_transform="none")
    result = prepare_table([tmp_path / "t.parquet"], tmp_path / "o", spec, progress=False)
    assert result.info.split_sizes == {"train": 4, "val": 1, "test": 1}
    # counted in the 4 train rows only: shop {10: 2, 11: 1, 12: 1} keeps 10; items {a: 2, b: 1} keeps a
    assert result.info.cardinalities == [3, 3]
    ds = open_dataset(tmp_path / "o")
    np.testing.assert_array_equal(np.asarray(ds.sparse)[:, 0], [2, 2, 1, 1, 2, 0])
    values, offsets = ds.multi_hot["items"]
    bags = [list(values[offsets[i] : offsets[i + 1]]) for i in range(6)]
    assert bags == [[2, 1], [2], [0], [0], [1, 2], [1]]  # b (once in train) and c (not in train) are rare
    np.testing.assert_array_equal(ds.info.counts["shop"], [0, 2, 2])
    np.testing.assert_array_equal(ds.info.counts["items"], [2, 1, 2])  # the empty and missing bags: [0]
    np.testing.assert_allclose(np.asarray(ds.dense)[:, 0], [1, 2, 0, 4, 5, 6])
    test = next(iter(ds.loader("test", 10)))
    assert test.labels.tolist() == [0.0] and test.multi_hot["items"][0].tolist() == [1]


TINY = ("y,u,n,ts,tags\n"
        "1,a,1,1000000000,x|y\n"
        "0,b,2,1000001000,x\n"
        "1,a,3,1000002000,\n"
        "0,,4,1000003000,y|y\n"
        "1,a,5,1000004000,z\n"
        "0,c,,1000005000,x\n"       # the first 6 rows are the train split
        "1,d,7,1000006000,w\n"      # val: d and w are not in train
        "0,a,8,,x\n"
        "1,b,9,1000008000,q\n"      # test: q is not in train
        "0,,100,1000009000,x|q\n")


def _tiny(tmp_path: Path, name: str, **kw) -> tuple[object, Path]:
    src = tmp_path / "tiny.csv"
    src.write_text(TINY)
    spec = TableSpec(label="y", categorical=["u"], dense=["n", "ts"], multi_hot=["tags"], split="sequential",
                     val_fraction=0.2, test_fraction=0.2, **kw)
    prepare_table([src], tmp_path / name, spec, progress=False)
    return open_dataset(tmp_path / name), tmp_path / name


def _bags(ds) -> list[list[int]]:
    values, offsets = ds.multi_hot["tags"]
    return [np.asarray(values[offsets[i] : offsets[i + 1]]).tolist() for i in range(len(offsets) - 1)]


def test_tiny_table_vocabularies_and_counts_come_from_train(tmp_path: Path) -> None:
    ds, _ = _tiny(tmp_path, "v")
    assert ds.info.split_sizes == {"train": 6, "val": 2, "test": 2} and ds.info.id_order == "value"
    assert ds.info.cardinalities == [5, 5]  # u: missing, rare, a b c; tags: missing, rare, x y z
    # d (val), w (val) and q (test) were not seen in train: the unseen id 1, not ids of their own
    np.testing.assert_array_equal(np.asarray(ds.sparse)[:, 0], [2, 3, 2, 0, 2, 4, 1, 2, 3, 0])
    assert _bags(ds) == [[2, 3], [2], [0], [3, 3], [4], [2], [1], [2], [1], [2, 1]]
    np.testing.assert_array_equal(ds.info.counts["u"], [1, 0, 3, 1, 1])
    np.testing.assert_array_equal(ds.info.counts["tags"], [1, 0, 3, 3, 1])  # y twice in one bag counts twice
    np.testing.assert_array_equal(ds.info.counts["u"], np.bincount(np.asarray(ds.sparse)[:6, 0], minlength=5))


def test_tiny_table_frequency_order_is_a_relabelling(tmp_path: Path) -> None:
    value, vpath = _tiny(tmp_path, "v")
    freq, fpath = _tiny(tmp_path, "f", id_order="frequency")
    assert freq.info.id_order == "frequency" and freq.info.cardinalities == value.info.cardinalities
    for j, name in enumerate(["u", "tags"]):
        counts = freq.info.counts[name]
        assert (np.diff(counts) <= 0).all()  # id 0 is the most frequent
        new_ids = frequency_ids(value.info.counts[name])  # ties in value order
        np.testing.assert_array_equal(counts, relabelled_counts(value.info.counts[name], new_ids))
        if name == "u":
            np.testing.assert_array_equal(np.asarray(freq.sparse)[:, 0], new_ids[np.asarray(value.sparse)[:, 0]])
        else:
            assert _bags(freq) == [new_ids[b].tolist() for b in _bags(value)]
    # u by count: a (3), then missing, b, c (1 each, in value order), then rare (0)
    np.testing.assert_array_equal(np.asarray(freq.sparse)[:, 0], [0, 2, 0, 1, 0, 3, 4, 0, 2, 1])
    meta = json.loads((fpath / "meta.json").read_text())
    assert meta["special_ids"]["u"] == {"missing": 1, "rare": 4}
    assert json.loads((vpath / "meta.json").read_text())["special_ids"]["u"] == {"missing": 0, "rare": 1}


@pytest.mark.parametrize("id_order", ["value", "frequency"])
def test_tiny_table_vocab_round_trip(tmp_path: Path, id_order: str) -> None:
    ds, path = _tiny(tmp_path, "o", id_order=id_order)
    maps = load_id_maps(path)
    rows = [line.split(",") for line in TINY.splitlines()[1:]]
    # raw values -> ids exactly as prepared, every split included (unseen values -> the rare id)
    np.testing.assert_array_equal(maps["u"].ids([r[1] for r in rows]), np.asarray(ds.sparse)[:, 0])
    tags = [t for r in rows for t in (r[4].split("|") if r[4] else [""])]
    values, _ = ds.multi_hot["tags"]
    np.testing.assert_array_equal(maps["tags"].ids(tags), np.asarray(values))
    # ids -> values -> ids
    for name, m in maps.items():
        ids = np.arange(m.cardinality)
        back = m.ids(m.values_of(ids))
        special = np.isin(ids, [m.missing_id, m.rare_id])
        np.testing.assert_array_equal(back[~special], ids[~special])
        assert m.values_of(ids).null_count == 2


def test_tiny_table_dense_transforms(tmp_path: Path) -> None:
    ds, path = _tiny(tmp_path, "o")  # auto
    transforms = load_dense_transforms(path)
    assert {n: t.kind for n, t in transforms.items()} == {"n": "log1p", "ts": "standardize"}
    ts = np.array([1e9 + 1000 * i for i in range(6)])
    assert transforms["ts"].mean == ts.mean() and transforms["ts"].std == pytest.approx(ts.std(), rel=1e-12)
    assert transforms["n"].stats == {"count": 5, "min": 1.0, "max": 5.0, "mean": 3.0, "std": pytest.approx(2 ** 0.5)}
    raw = np.array([[np.nan if v == "" else float(v) for v in line.split(",")[2:4]] for line in TINY.splitlines()[1:]])
    dense = np.asarray(ds.dense)
    for j, name in enumerate(["n", "ts"]):  # new raw rows map exactly as prepared
        np.testing.assert_array_equal(transforms[name].apply(raw[:, j]), dense[:, j])
    assert dense[5, 0] == 0 and dense[7, 1] == 0  # missing -> 0 after the transform
    np.testing.assert_allclose(dense[:, 1], (np.nan_to_num(raw[:, 1], nan=ts.mean()) - ts.mean()) / ts.std(),
                               rtol=1e-6, atol=1e-6)
    std, _ = _tiny(tmp_path, "s", dense_transform="standardize")
    n = np.array([1, 2, 3, 4, 5.0])
    np.testing.assert_allclose(np.asarray(std.dense)[:5, 0], (n - n.mean()) / n.std(), rtol=1e-6)
    with pytest.raises(ValueError, match="dense_transform must be one of"):
        TableSpec(label="y", dense=["n"], dense_transform="sqrt")
