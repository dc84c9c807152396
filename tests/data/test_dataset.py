"""The CTRDataset contract on array-backed data: batching, sharding, resuming, bags."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compembed.data import ArrayDataset, DatasetInfo, bayes_loss, count_batches, shard_bounds


def _dataset(n: int = 103, with_bags: bool = True) -> ArrayDataset:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.arange(offsets[-1], dtype=np.int32)  # value k sits at position k: easy to check
    info = DatasetInfo(dense_names=["d"], categorical_names=["c", "bag"], cardinalities=[n, int(offsets[-1])],
                       multi_hot_names=["bag"] if with_bags else [])
    return ArrayDataset(
        info, dense=np.arange(n, dtype=np.float32)[:, None], sparse=np.arange(n, dtype=np.int32)[:, None],
        labels=(np.arange(n) % 2).astype(np.uint8), splits={"train": (0, 80), "val": np.arange(80, 103)},
        multi_hot={"bag": (values, offsets)} if with_bags else None,
    )


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 500), bs=st.integers(1, 40), world=st.integers(1, 5), drop=st.booleans())
def test_shards_partition_every_global_batch(n: int, bs: int, world: int, drop: bool) -> None:
    nb = count_batches(n, bs, world, drop)
    assert nb == (n // (bs * world) if drop else math.ceil(n / (bs * world)))
    covered = []
    for i in range(nb):
        bounds = [shard_bounds(n, bs, i, r, world) for r in range(world)]
        for (_, b), (c, _) in zip(bounds, bounds[1:]):
            assert b == c  # contiguous, in rank order
        assert bounds[0][0] == i * bs * world
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1 and max(sizes) <= bs
        covered.extend(range(bounds[0][0], bounds[-1][1]))
    assert covered == list(range(len(covered)))
    assert len(covered) == (nb * bs * world if drop else n)


def test_loader_batches_rows_in_order_and_shuffled() -> None:
    ds = _dataset()
    rows = torch.cat([b.sparse[:, 0] for b in ds.loader("train", 16)])
    assert rows.tolist() == list(range(80))
    shuffled = torch.cat([b.sparse[:, 0] for b in ds.loader("train", 16, shuffle=True, seed=4)])
    again = torch.cat([b.sparse[:, 0] for b in ds.loader("train", 16, shuffle=True, seed=4)])
    assert torch.equal(shuffled, again) and sorted(shuffled.tolist()) == list(range(80))
    assert shuffled.tolist() != list(range(80))
    val = torch.cat([b.sparse[:, 0] for b in ds.loader("val", 7, shuffle=True, seed=1)])
    assert sorted(val.tolist()) == list(range(80, 103))


def test_resume_and_shards_on_array_data() -> None:
    ds = _dataset()
    full = [b.sparse for b in ds.loader("train", 6, shuffle=True, seed=9)]
    resumed = [b.sparse for b in ds.loader("train", 6, shuffle=True, seed=9, start_batch=5)]
    assert len(resumed) == len(full) - 5 == 9
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed))
    glob = [b.sparse for b in ds.loader("val", 6, shuffle=True, seed=3)]
    parts = [[b.sparse for b in ds.loader("val", 2, shuffle=True, seed=3, rank=r, world_size=3)] for r in range(3)]
    assert len(glob) == len(parts[0]) == ds.num_batches("val", 2, world_size=3)
    for i, g in enumerate(glob):
        assert torch.equal(torch.cat([p[i] for p in parts]), g)
    with pytest.raises(ValueError, match="rank"):
        next(iter(ds.loader("val", 2, rank=3, world_size=3)))


def test_bags_are_gathered_in_embedding_bag_layout() -> None:
    ds = _dataset()
    _, offsets = ds.multi_hot["bag"]
    for batch in list(ds.loader("train", 10, shuffle=True, seed=2))[:3] + list(ds.loader("val", 10)):
        values, starts = batch.multi_hot["bag"]
        assert starts[0] == 0 and len(starts) == len(batch)
        ends = torch.cat([starts[1:], torch.tensor([len(values)])])
        for j, row in enumerate(batch.sparse[:, 0].tolist()):
            assert values[starts[j] : ends[j]].tolist() == list(range(offsets[row], offsets[row + 1]))
    bag = torch.nn.EmbeddingBag(int(offsets[-1]), 3, mode="sum")
    out = bag(*batch.multi_hot["bag"])
    assert out.shape == (len(batch), 3)


def test_batch_dtypes() -> None:
    batch = next(iter(_dataset(with_bags=False).loader("train", 5)))
    assert batch.dense.dtype == torch.float32 and batch.sparse.dtype == torch.int64
    assert batch.labels.dtype == torch.float32 and batch.click_prob is None and batch.multi_hot == {}


def test_bayes_loss_is_the_mean_bce() -> None:
    p, y = np.array([0.9, 0.2, 0.5]), np.array([1.0, 0.0, 1.0])
    expect = -np.mean([math.log(0.9), math.log(0.8), math.log(0.5)])
    assert bayes_loss(p, y) == pytest.approx(expect)
    assert bayes_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) < 1e-6
