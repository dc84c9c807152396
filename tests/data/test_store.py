"""The on-disk format: per-id counts beside the arrays, and datasets prepared before counts existed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compembed.data import DatasetFormatError, DatasetInfo, SyntheticConfig, SyntheticCTR, open_dataset
from compembed.data.export import save_synthetic
from compembed.data.store import StoreBuilder, dataset_identity
from compembed.data.table import TableSpec, prepare_table
from compembed.data.transform import DenseTransform, load_dense_transforms
from compembed.data.vocab import load_id_maps


def test_info_json_round_trip_leaves_counts_out() -> None:
    info = DatasetInfo(dense_names=["d"], categorical_names=["a", "b"], cardinalities=[3, 2], id_order="frequency",
                       counts={"a": np.array([5, 2, 1]), "b": np.array([4, 4])})
    d = info.to_dict()
    assert "counts" not in d and d["id_order"] == "frequency"
    json.dumps(d)
    back = DatasetInfo.from_dict(d)
    assert back == info and back.counts is None and back.id_order == "frequency"
    old = {k: v for k, v in d.items() if k != "id_order"}  # meta.json of an older dataset
    assert DatasetInfo.from_dict(old).id_order == "value"
    with pytest.raises(ValueError, match="id_order"):
        DatasetInfo(dense_names=[], categorical_names=[], cardinalities=[], id_order="random")


def test_counts_are_stored_memory_mapped_and_checked(tmp_path: Path) -> None:
    ds = SyntheticCTR(SyntheticConfig(num_rows=3000, seed=1))
    save_synthetic(ds, tmp_path / "s", progress=False)
    opened = open_dataset(tmp_path / "s")
    assert isinstance(opened.info.counts["C3"], np.memmap)
    for name in ds.info.categorical_names:
        np.testing.assert_array_equal(opened.info.counts[name], ds.info.counts[name])
    assert len(np.load(tmp_path / "s" / "counts.npy")) == sum(ds.info.cardinalities)
    assert open_dataset(tmp_path / "s", mmap=False).info.counts["C1"].sum() == 2400  # every train row
    np.save(tmp_path / "s" / "counts.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(DatasetFormatError, match="counts.npy: shape"):
        open_dataset(tmp_path / "s")
    bad = DatasetInfo(dense_names=[], categorical_names=["a"], cardinalities=[3], counts={"a": np.zeros(2)})
    with StoreBuilder(tmp_path / "b") as store, pytest.raises(ValueError, match="counts of feature 'a'"):
        store.commit(bad, 0, {})


def test_dataset_prepared_before_counts_still_opens(tmp_path: Path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("y,u,n\n1,a,1\n0,b,2\n1,a,3\n")
    prepare_table([src], tmp_path / "o", TableSpec(label="y", categorical=["u"], dense=["n"], split="none"),
                  progress=False)
    # what an older compembed wrote: no counts.npy, and none of the new keys in meta.json
    (tmp_path / "o" / "counts.npy").unlink()
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    for key in ("special_ids", "dense_transforms"):
        del meta[key]
    del meta["info"]["id_order"]
    meta["preprocessing"]["dense_transform"] = "log1p"
    (tmp_path / "o" / "meta.json").write_text(json.dumps(meta))
    ds = open_dataset(tmp_path / "o")
    assert ds.info.counts is None and ds.info.id_order == "value"
    np.testing.assert_array_equal(np.asarray(ds.sparse)[:, 0], [2, 3, 2])
    maps = load_id_maps(tmp_path / "o")
    assert maps["u"].missing_id == 0 and maps["u"].rare_id == 1
    np.testing.assert_array_equal(maps["u"].ids(["b", "a", "zz"]), [3, 2, 1])
    assert load_dense_transforms(tmp_path / "o") == {"n": DenseTransform("log1p")}


def test_a_dataset_keeps_its_identity_when_moved_or_copied_and_another_has_another(tmp_path):
    small = dict(num_rows=300, cardinality_scale=0.0005)
    save_synthetic(SyntheticCTR(SyntheticConfig(**small, seed=0)), tmp_path / "a", progress=False)
    identity = dataset_identity(tmp_path / "a")
    assert identity is not None and identity.startswith("sha1:")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    (tmp_path / "a").rename(tmp_path / "moved")
    assert dataset_identity(tmp_path / "copy") == dataset_identity(tmp_path / "moved") == identity
    assert dataset_identity(tmp_path / "a") is None  # nothing there any more
    save_synthetic(SyntheticCTR(SyntheticConfig(**small, seed=1)), tmp_path / "other", progress=False)
    assert dataset_identity(tmp_path / "other") not in (None, identity)
