"""Dense transforms: train statistics, the per-column choice of ``auto``, values and meta.json round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compembed.data.transform import (AUTO_LOG1P_MAX, DenseStats, DenseTransform, apply_transforms,
                                      choose_transforms, load_dense_transforms)


def _columns(rng: np.random.Generator, n: int) -> np.ndarray:
    """Counts, timestamps, signed values, years and a constant, with missing (NaN) entries."""
    x = np.stack([
        rng.poisson(3, n).astype(np.float64),
        8.8e8 + rng.integers(0, 2e7, n),
        rng.normal(-1, 2, n),
        rng.integers(1920, 1999, n).astype(np.float64),
        np.full(n, 5.0),
    ], axis=1)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def test_stats_match_numpy_over_chunks() -> None:
    x = _columns(np.random.default_rng(0), 10_000)
    stats = DenseStats(x.shape[1])
    for a in range(0, len(x), 777):
        stats.add(x[a : a + 777])
    for j in range(x.shape[1]):
        col = x[~np.isnan(x[:, j]), j]
        s = stats.column(j)
        assert s["count"] == len(col) and s["min"] == col.min() and s["max"] == col.max()
        assert s["mean"] == pytest.approx(col.mean(), rel=1e-12)
        assert s["std"] == pytest.approx(col.std(), rel=1e-9, abs=1e-9)  # timestamps keep their precision
    empty = DenseStats(1)
    empty.add(np.full((3, 1), np.nan))
    assert empty.column(0) == {"count": 0, "min": None, "max": None, "mean": None, "std": None}


def test_auto_chooses_log1p_for_counts_only() -> None:
    x = _columns(np.random.default_rng(1), 5000)
    stats = DenseStats(x.shape[1])
    stats.add(x)
    kinds = [t.kind for t in choose_transforms("auto", stats, x.shape[1])]
    # counts -> log1p; timestamps, negatives, years (far from 0 for their spread), a constant 5 -> standardize
    assert kinds == ["log1p", "standardize", "standardize", "standardize", "standardize"]
    big = DenseTransform.choose("auto", {"count": 2, "min": 0.0, "max": AUTO_LOG1P_MAX * 10, "mean": 1.0, "std": 1.0})
    assert big.kind == "standardize"
    assert [t.kind for t in choose_transforms("log1p", None, 2)] == ["log1p", "log1p"]
    with pytest.raises(ValueError, match="dense transform must be one of"):
        DenseTransform.choose("sqrt", None)


def test_transform_values() -> None:
    raw = np.array([np.nan, -2.0, 0.0, 3.0, 7.0])
    np.testing.assert_allclose(DenseTransform("log1p").apply(raw), [0, 0, 0, np.log1p(3), np.log1p(7)], rtol=1e-6)
    std = DenseTransform.choose("standardize", {"count": 4, "min": -2.0, "max": 7.0, "mean": 2.0, "std": 4.0})
    out = std.apply(raw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, -1, -0.5, 0.25, 1.25])  # missing -> 0, the train mean
    const = DenseTransform.choose("standardize", {"count": 3, "min": 5.0, "max": 5.0, "mean": 5.0, "std": 0.0})
    assert const.std == 1.0
    np.testing.assert_array_equal(const.apply(np.array([5.0, 6.0])), [0.0, 1.0])
    np.testing.assert_array_equal(DenseTransform("none").apply(raw), [0, -2, 0, 3, 7])
    both = apply_transforms([DenseTransform("log1p"), std], np.stack([raw, raw], axis=1))
    np.testing.assert_array_equal(both[:, 1], out)


def test_meta_round_trip(tmp_path: Path) -> None:
    x = _columns(np.random.default_rng(2), 1000)
    stats = DenseStats(x.shape[1])
    stats.add(x)
    transforms = choose_transforms("auto", stats, x.shape[1])
    names = [f"d{j}" for j in range(x.shape[1])]
    meta = {"info": {"dense_names": names}, "dense_transforms": {n: t.to_dict() for n, t in zip(names, transforms)}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    loaded = load_dense_transforms(tmp_path)
    assert list(loaded) == names and list(loaded.values()) == transforms
    np.testing.assert_array_equal(apply_transforms(list(loaded.values()), x), apply_transforms(transforms, x))
    # a dataset prepared before transforms were recorded: one transform for every column
    (tmp_path / "meta.json").write_text(json.dumps({"info": {"dense_names": ["a", "b"]},
                                                    "preprocessing": {"dense_transform": "none"}}))
    assert load_dense_transforms(tmp_path) == {"a": DenseTransform("none"), "b": DenseTransform("none")}
    (tmp_path / "meta.json").write_text(json.dumps({"info": {"dense_names": ["I1"]}, "preprocessing": {}}))
    assert load_dense_transforms(tmp_path) == {"I1": DenseTransform("log1p")}
