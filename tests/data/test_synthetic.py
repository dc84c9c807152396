"""The synthetic generator: determinism, Criteo-like shape, known probabilities, loader contract."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compembed.data import SyntheticConfig, SyntheticCTR, bayes_loss, scaled_cardinalities
from compembed.data.criteo_spec import KAGGLE_CARDINALITIES
from compembed.data.synthetic import CHUNK_ROWS, _BlockOrder
from compembed.data.vocab import frequency_ids


@pytest.fixture(scope="module")
def ds() -> SyntheticCTR:
    return SyntheticCTR(SyntheticConfig(num_rows=60_000, cardinality_scale=0.001, seed=3))


def test_cardinalities_scale_kaggle_with_a_floor() -> None:
    cards = scaled_cardinalities(0.001)
    assert len(cards) == 26
    for n, c in zip(KAGGLE_CARDINALITIES, cards):
        assert c == 1 + max(min(n, 4), round(n * 0.001))  # +1: the missing id 0
    assert cards[2] == 1 + 10131  # C3 = 10,131,227 categories
    assert min(scaled_cardinalities(1e-9)) >= 1 + 3  # C9 has only 3 values


def test_rows_are_well_formed(ds: SyntheticCTR) -> None:
    rows = ds.rows(0, 2 * CHUNK_ROWS)
    sparse, dense = rows["sparse"], rows["dense"]
    assert sparse.shape == (2 * CHUNK_ROWS, 26) and dense.shape == (2 * CHUNK_ROWS, 13)
    cards = np.array(ds.info.cardinalities)
    assert (sparse >= 0).all() and (sparse < cards).all()
    assert (sparse == 0).any(0).sum() >= 13  # missing values in most features
    assert (dense >= 0).all() and np.isfinite(dense).all()
    np.testing.assert_allclose(dense, np.log1p(np.where(rows["dense_missing"], 0, np.maximum(rows["dense_raw"], 0))),
                               rtol=1e-6)
    assert (rows["dense_raw"][:, 1] == -1).any()  # a few negatives, as in Criteo's I2
    p = rows["click_prob"]
    assert ((p > 0) & (p < 1)).all()
    assert abs(rows["labels"].mean() - 0.25) < 0.02
    # Zipf-like: the most frequent value of the largest feature is far above uniform
    c3 = sparse[:, 2][sparse[:, 2] > 0]
    assert np.bincount(c3).max() > 50 * len(c3) / cards[2]


def test_labels_follow_the_true_probabilities(ds: SyntheticCTR) -> None:
    rows = ds.rows(0, 3 * CHUNK_ROWS)
    p, y = rows["click_prob"].astype(np.float64), rows["labels"].astype(np.float64)
    # calibration: within probability bins the positive rate matches the mean probability
    bins = np.digitize(p, [0.1, 0.2, 0.4, 0.6])
    for b in range(5):
        sel = bins == b
        if sel.sum() > 500:
            assert abs(y[sel].mean() - p[sel].mean()) < 4 * math.sqrt(0.25 / sel.sum()) + 0.01
    base = y.mean()
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert bayes_loss(p, y) < entropy - 0.05  # the features are informative
    assert ds.bayes_loss("test") == pytest.approx(bayes_loss(*_split_probs(ds, "test")), rel=1e-6)


def _split_probs(ds: SyntheticCTR, split: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = ds.split_ranges[split]
    r = ds.rows(a, b)
    return r["click_prob"], r["labels"].astype(np.float32)


def test_collisions_cost_accuracy() -> None:
    # Give ids that share a hashing bucket (4 collisions) their frequency-weighted mean effect and
    # latent vector, as a perfectly trained hashed table would at best: the loss must go up.
    ds = SyntheticCTR(SyntheticConfig(num_rows=60_000, cardinality_scale=0.01, seed=3))
    a, b = ds.split_ranges["test"]
    rows = ds.rows(a, b)
    hidden = np.random.default_rng(0).standard_normal((b - a, 2))  # same hidden term on both sides
    y = rows["labels"].astype(np.float64)
    exact = 1 / (1 + np.exp(-ds._logit(rows["sparse"], hidden)))
    for feat, n in zip(ds.features, ds.info.cardinalities):
        if n < 1000:
            continue
        freq = np.zeros(n)
        freq[feat.ids] = np.diff(np.concatenate([[0.0], feat.cdf]))
        bucket = np.arange(n) % math.ceil(n / 4)
        w = np.bincount(bucket, weights=freq) + 1e-12
        feat.effect = (np.bincount(bucket, weights=freq * feat.effect) / w)[bucket].astype(np.float32)
        for k in range(feat.latent.shape[1]):
            feat.latent[:, k] = (np.bincount(bucket, weights=freq * feat.latent[:, k]) / w)[bucket]
    hashed = 1 / (1 + np.exp(-ds._logit(rows["sparse"], hidden)))
    assert bayes_loss(hashed, y) > bayes_loss(exact, y) + 0.005


def test_deterministic_and_independent_of_num_rows() -> None:
    a = SyntheticCTR(SyntheticConfig(num_rows=40_000, seed=7)).rows(20_000, 20_100)
    b = SyntheticCTR(SyntheticConfig(num_rows=90_000, seed=7), cache_rows=0).rows(20_000, 20_100)
    c = SyntheticCTR(SyntheticConfig(num_rows=40_000, seed=8)).rows(20_000, 20_100)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["sparse"], c["sparse"])


def test_splits_are_consecutive_ranges(ds: SyntheticCTR) -> None:
    assert ds.info.split_sizes == {"train": 48_000, "val": 6_000, "test": 6_000}
    assert ds.split_ranges["val"] == (48_000, 54_000)
    first_val = next(iter(ds.loader("val", 10)))
    np.testing.assert_array_equal(first_val.sparse.numpy(), ds.rows(48_000, 48_010)["sparse"])
    assert first_val.click_prob is not None and first_val.click_prob.dtype == torch.float32


def test_loader_shuffle_is_a_seeded_permutation(ds: SyntheticCTR) -> None:
    def probs(seed: int) -> np.ndarray:
        return torch.cat([b.click_prob for b in ds.loader("test", 1000, shuffle=True, seed=seed)]).numpy()

    plain = torch.cat([b.click_prob for b in ds.loader("test", 1000)]).numpy()
    p0, p0b, p1 = probs(0), probs(0), probs(1)
    np.testing.assert_array_equal(p0, p0b)
    assert not np.array_equal(p0, p1) and not np.array_equal(p0, plain)
    np.testing.assert_array_equal(np.sort(p0), np.sort(plain))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5000), block=st.integers(1, 700), seed=st.integers(0, 10))
def test_block_order_is_a_permutation(n: int, block: int, seed: int) -> None:
    order = _BlockOrder(n, block, seed)
    rows = order.rows(0, n)
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    cut = n // 3
    np.testing.assert_array_equal(np.concatenate([order.rows(0, cut), order.rows(cut, n)]), rows)


def test_start_batch_resumes_the_same_order(ds: SyntheticCTR) -> None:
    full = [b.labels for b in ds.loader("train", 512, shuffle=True, seed=5)]
    resumed = [b.labels for b in ds.loader("train", 512, shuffle=True, seed=5, start_batch=37)]
    assert len(full) == ds.num_batches("train", 512) == 94
    assert len(resumed) == len(full) - 37
    for a, b in zip(full[37:], resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_shards_make_up_the_global_batch(ds: SyntheticCTR, world_size: int, drop_last: bool) -> None:
    bs = 700
    glob = list(ds.loader("val", bs * world_size, shuffle=True, seed=2, drop_last=drop_last))
    shards = [list(ds.loader("val", bs, shuffle=True, seed=2, rank=r, world_size=world_size, drop_last=drop_last))
              for r in range(world_size)]
    for r in range(world_size):
        assert len(shards[r]) == len(glob) == ds.num_batches("val", bs, r, world_size, drop_last)
    for i, g in enumerate(glob):
        assert torch.equal(torch.cat([shards[r][i].sparse for r in range(world_size)]), g.sparse)
        if i < len(glob) - 1 or drop_last:
            assert all(len(shards[r][i]) == bs for r in range(world_size))


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_rows"):
        SyntheticConfig(num_rows=0)
    with pytest.raises(ValueError, match="cardinalities"):
        SyntheticConfig(cardinalities=[5, 5])
    with pytest.raises(KeyError, match="unknown split"):
        next(iter(SyntheticCTR(SyntheticConfig(num_rows=100)).loader("dev", 10)))


def test_train_counts_are_a_bincount_of_the_train_rows(ds: SyntheticCTR) -> None:
    a, b = ds.split_ranges["train"]
    sparse = ds.rows(a, b)["sparse"]
    assert set(ds.info.counts) == set(ds.info.categorical_names) and ds.info.id_order == "value"
    for j, name in enumerate(ds.info.categorical_names):
        np.testing.assert_array_equal(ds.info.counts[name], np.bincount(sparse[:, j], minlength=ds.info.cardinalities[j]))


def test_frequency_order_is_a_relabelling_by_train_counts() -> None:
    cfg = dict(num_rows=50_000, cardinality_scale=0.001, seed=5)
    value = SyntheticCTR(SyntheticConfig(**cfg))
    freq = SyntheticCTR(SyntheticConfig(**cfg, id_order="frequency"))
    rv, rf = value.rows(0, 50_000), freq.rows(0, 50_000)
    for k in ("dense", "labels", "click_prob"):  # the same rows: only the ids' labels change
        np.testing.assert_array_equal(rv[k], rf[k])
    assert freq.bayes_loss("test") == value.bayes_loss("test")
    n_train = freq.split_ranges["train"][1]
    for j, name in enumerate(freq.info.categorical_names):
        counts = freq.info.counts[name]
        assert (np.diff(counts) <= 0).all()  # id 0 is the most frequent in train
        np.testing.assert_array_equal(counts, np.bincount(rf["sparse"][:n_train, j], minlength=len(counts)))
        new_ids = frequency_ids(value.info.counts[name])  # ties in value order
        np.testing.assert_array_equal(rf["sparse"][:, j], new_ids[rv["sparse"][:, j]])
        assert freq.missing_ids[j] == new_ids[0]
    hidden = np.random.default_rng(0).standard_normal((100, 2))  # the planted model is relabelled with the ids
    np.testing.assert_array_equal(freq._logit(rf["sparse"][:100], hidden), value._logit(rv["sparse"][:100], hidden))
    with pytest.raises(ValueError, match="id_order"):
        SyntheticConfig(id_order="random")
