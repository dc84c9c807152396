"""Generic CTR tables: MovieLens as CTR (multi-hot genres), CSV/TSV/Parquet, bad rows."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compembed.data import open_dataset
from compembed.data.errors import InputError
from compembed.data.table import TableSpec, prepare_table

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
    assert result.extra["distinct_values"] == ML_DISTINCT
    assert "rating" in result.extra["ignored_columns"]
    info = result.info
    assert "rating" not in info.categorical_names + info.dense_names  # the label's source is never a feature
    assert info.categorical_names == ML_CATEGORICAL + ["genres"] and info.multi_hot_names == ["genres"]
    assert info.cardinalities == [ML_DISTINCT[c] + 2 for c in info.categorical_names]
    assert sum(info.split_sizes.values()) == 100_000 and 9_000 < info.split_sizes["test"] < 11_000

    ds = open_dataset(tmp_path / "ml")
    assert np.asarray(ds.labels).mean() == pytest.approx(0.554, abs=5e-4)
    values, offsets = ds.multi_hot["genres"]
    lengths = np.diff(np.asarray(offsets))
    assert offsets[-1] == len(values) and (lengths >= 1).all() and lengths.max() > 3
    # compare rows with the text
    lines = gzip.open(MOVIELENS, "rt").read().splitlines()
    header = lines[0].split("\t")
    import json

    vocab = json.loads((tmp_path / "ml" / "vocab.json").read_text())
    for i in (0, 1, 4242, 99_999):
        row = dict(zip(header, lines[i + 1].split("\t")))
        assert ds.labels[i] == int(row["label"])
        for j, c in enumerate(ML_CATEGORICAL):
            assert ds.sparse[i, j] == vocab[c].index(row[c]) + 2
        bag = values[offsets[i] : offsets[i + 1]]
        assert sorted(bag) == sorted(vocab["genres"].index(g) + 2 for g in row["genres"].split("|"))
        assert ds.dense[i, 0] == pytest.approx(np.log1p(float(row["timestamp"])), rel=1e-6)

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
    assert result.info.cardinalities == [3, 4]  # shop: {10} kept; items: {a, b} kept
    ds = open_dataset(tmp_path / "o")
    np.testing.assert_array_equal(np.asarray(ds.sparse)[:, 0], [2, 2, 1, 1, 2, 0])
    values, offsets = ds.multi_hot["items"]
    bags = [list(values[offsets[i] : offsets[i + 1]]) for i in range(6)]
    assert bags == [[2, 3], [2], [0], [0], [1, 2], [3]]
    np.testing.assert_allclose(np.asarray(ds.dense)[:, 0], [1, 2, 0, 4, 5, 6])
    test = next(iter(ds.loader("test", 10)))
    assert test.labels.tolist() == [0.0] and test.multi_hot["items"][0].tolist() == [3]
