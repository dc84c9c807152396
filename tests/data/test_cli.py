"""`compembed prepare criteo|table` and `compembed synth` end to end."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from compembed.cli.main import main
from compembed.data import open_dataset

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
SAMPLE = SHARED / "data" / "criteo" / "criteo_kaggle_head8000.tsv.gz"
MOVIELENS = SHARED / "data" / "movielens" / "ml100k_ctr.tsv.gz"
needs_shared = pytest.mark.skipif(not SAMPLE.exists() or not MOVIELENS.exists(), reason="../shared data not present")


@pytest.mark.parametrize("argv", [["prepare", "criteo", "--help"], ["prepare", "table", "--help"], ["synth", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "--out" in out


def test_synth_dataset_and_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--rows", "5000", "--quiet"]) == 0
    assert "Bayes-optimal test loss" in capsys.readouterr().out
    ds = open_dataset(tmp_path / "s")
    assert ds.info.bayes_known and ds.info.split_sizes == {"train": 4000, "val": 500, "test": 500}
    assert next(iter(ds.loader("test", 8))).click_prob is not None
    train = np.asarray(ds.sparse)[:4000]
    for j, name in enumerate(ds.info.categorical_names):
        np.testing.assert_array_equal(ds.info.counts[name], np.bincount(train[:, j], minlength=ds.info.cardinalities[j]))
    assert main(["synth", "--out", str(tmp_path / "f"), "--rows", "5000", "--quiet", "--id-order", "frequency"]) == 0
    freq = open_dataset(tmp_path / "f")
    assert freq.info.id_order == "frequency" and all((np.diff(c) <= 0).all() for c in freq.info.counts.values())
    np.testing.assert_array_equal(np.asarray(freq.click_prob), np.asarray(ds.click_prob))  # a relabelling
    assert main(["synth", "--out", str(tmp_path / "s"), "--rows", "10", "--quiet"]) == 2  # exists: usage
    assert "already exists" in capsys.readouterr().err

    text = tmp_path / "s.tsv.gz"
    assert main(["synth", "--out", str(text), "--rows", "3000", "--format", "criteo", "--quiet"]) == 0
    assert len(gzip.open(text, "rt").read().splitlines()) == 3000
    assert main(["prepare", "criteo", str(text), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert open_dataset(tmp_path / "p").info.split_sizes["train"] == 4 * 429 + 2 * 428  # divmod(3000, 7) = (428, 4)


def test_dataset_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["synth", "--out", str(tmp_path / "s"), "--rows", "2000", "--quiet"]) == 0
        assert main(["synth", "--out", str(tmp_path / "s.tsv"), "--rows", "2000", "--quiet", "--format", "criteo"]) == 0
        assert main(["prepare", "criteo", str(tmp_path / "s.tsv"), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    finally:
        os.umask(old)
    files = [tmp_path / "s.tsv", *(tmp_path / "s").iterdir(), *(tmp_path / "p").iterdir()]
    assert {"meta.json", "cardinalities.json", "vocab.json", "sparse.npy"} <= {p.name for p in files}
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in files} == {str(p): "0o644" for p in files}


def test_prepare_criteo_error_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\n")
    assert main(["prepare", "criteo", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 3  # bad data
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.tsv:1: column 3" in err and "Traceback" not in err
    assert main(["prepare", "criteo", str(bad), "--out", str(tmp_path / "o"), "--quiet", "--skip-bad-lines"]) == 3
    assert "no valid lines" in capsys.readouterr().err


@needs_shared
def test_prepare_real_samples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "criteo", str(SAMPLE), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "8,000 rows" in out and "train 6,858, val 571, test 571" in out
    assert "dense transform: log1p (every column)" in out
    assert main(["prepare", "table", str(MOVIELENS), "--out", str(tmp_path / "m"), "--quiet", "--label", "label",
                 "--categorical", "user_id,item_id,gender", "--multi-hot", "genres", "--split", "sequential",
                 "--dense", "timestamp,age"]) == 0
    out = capsys.readouterr().out
    assert "100,000 rows" in out and "ignored columns (not features): rating" in out
    assert "dense transforms: timestamp=standardize, age=log1p" in out  # --dense-transform auto
    ds = open_dataset(tmp_path / "m")
    # sequential split: vocabularies from the first 80,000 rows; 32 items appear only later
    assert ds.info.cardinalities == [945, 1684 - 32, 4, 21] and ds.info.id_order == "value"
    assert np.asarray(ds.labels).sum() > 0
    assert main(["prepare", "table", str(MOVIELENS), "--out", str(tmp_path / "f"), "--quiet", "--label", "label",
                 "--categorical", "item_id", "--split", "sequential", "--id-order", "frequency"]) == 0
    freq = open_dataset(tmp_path / "f")
    counts = freq.info.counts["item_id"]
    assert freq.info.id_order == "frequency" and (np.diff(counts) <= 0).all()
    assert sorted(counts.tolist()) == sorted(ds.info.counts["item_id"].tolist())
