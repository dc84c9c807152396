"""TTEmbeddingBag (TT-Rec): the batched contraction against the per-id product of core slices."""
import math

import pytest
import torch

from compembed.embedding import EmbeddingCollection, FeatureConfig, TTEmbeddingBag, build_embedding_bag
from compembed.embedding.tt import tt_dim_factors, tt_max_rank, tt_row_factors
from compembed.planning import feature_bytes, match_budget

from embedding.ops import allocated_bytes_as_counted, count_ops, slow_bags


def _tt(n=60, dim=8, rank=3, seed=0, dtype=torch.float64, **kwargs) -> TTEmbeddingBag:
    torch.manual_seed(seed)
    return TTEmbeddingBag(n, dim, rank, dtype=dtype, **kwargs)


def _slow_row(m: TTEmbeddingBag, x: int) -> torch.Tensor:
    """e(x) by the definition: digits by mixed radix, then G1[i1, j1, :] @ G2[i2][:, j2, :] @ G3[i3][:, j3]."""
    if x < m.cache_rows:
        return m.cache[x]
    (n1, n2, n3), (d1, d2, d3) = m.row_factors, m.dim_factors
    i1, rest = divmod(x, n2 * n3)
    i2, i3 = divmod(rest, n3)
    row = []
    for j1 in range(d1):
        for j2 in range(d2):
            for j3 in range(d3):
                row.append(m.g1[i1, j1, :] @ m.g2[i2, :, j2, :] @ m.g3[i3, :, j3])
    return torch.stack(row)


def _slow_bags(m, ids, offsets, weights, mode, last=False):
    """Pool the slow rows bag by bag, as nn.EmbeddingBag defines it."""
    return slow_bags(lambda x: _slow_row(m, x), ids, offsets, weights, mode, m.embedding_dim, include_last_offset=last)


@pytest.mark.parametrize("kwargs", [dict(), dict(cache_rows=7), dict(dim=12, rank=2, row_factors=(3, 4, 5)),
                                    dict(n=97, dim=7, rank=4)])  # D = 7 prime: dims (1, 1, 7)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_forward_equals_the_product_of_core_slices(kwargs, mode):
    m = _tt(mode=mode, **kwargs)
    with torch.no_grad():  # a cache that differs from the train, so the routing is visible
        if m.cache is not None:
            m.cache.normal_()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, m.num_embeddings, (9,), generator=gen)
    ids[:3] = torch.tensor([0, m.num_embeddings - 1, 6])
    offsets = torch.tensor([0, 2, 2, 5])  # one empty bag
    weights = torch.rand(9, generator=gen, dtype=torch.float64) if mode == "sum" else None
    expected = _slow_bags(m, ids, offsets, weights, mode)
    torch.testing.assert_close(m(ids, offsets, per_sample_weights=weights), expected)
    two_d = ids[:8].view(2, 4)
    torch.testing.assert_close(m(two_d), _slow_bags(m, ids[:8], torch.tensor([0, 4]), None, mode))
    torch.testing.assert_close(m.embed(two_d)[1, 2], _slow_row(m, int(two_d[1, 2])))


def test_include_last_offset_and_int32_ids():
    m = _tt(include_last_offset=True, mode="sum")
    ids = torch.tensor([3, 59, 0, 17], dtype=torch.int32)
    offsets = torch.tensor([0, 1, 4])
    torch.testing.assert_close(m(ids, offsets), _slow_bags(m, ids, offsets, None, "sum", last=True))


@pytest.mark.parametrize("sparse", [False, True])
def test_batches_all_cached_none_cached_or_empty(sparse):
    m = _tt(cache_rows=10, sparse=sparse)
    for ids in ([[1], [9]], [[10], [59]], []):
        x = torch.tensor(ids, dtype=torch.int64).view(-1, 1)
        out = m(x)
        assert out.shape == (len(ids), 8)
        out.sum().backward()
        if ids:
            torch.testing.assert_close(out, torch.stack([_slow_row(m, i) for (i,) in ids]))


def test_cache_starts_as_the_train_and_keeps_the_function():
    plain, cached = _tt(seed=3), _tt(seed=3, cache_rows=10)
    ids = torch.arange(60)
    torch.testing.assert_close(cached.embed(ids), plain.embed(ids))
    assert cached.cache.shape == (10, 8) and cached.table_sizes == (10, *cached.row_factors)


def test_gradients_flow_to_the_used_slices_and_cache_rows_only():
    m = _tt(cache_rows=5, sparse=True)
    ids = torch.tensor([[1, 30], [59, 2], [30, 30]])  # uncached 30 = (1, 2, 0) and 59 = (2, 3, 4) in radix (3, 4, 5)
    assert m.row_factors == (3, 4, 5)
    m(ids).sum().backward()
    for core, used in zip(m.cores, ([1, 2], [2, 3], [0, 4])):
        assert core.grad.is_sparse and core.grad._indices()[0].tolist() == used  # each slice once, uncoalesced
    assert m.cache.grad.is_sparse
    assert sorted(m.cache.grad.coalesce().indices()[0].tolist()) == [1, 2]
    dense = _tt(cache_rows=5)
    dense(ids).sum().backward()
    for sparse_core, dense_core in zip(m.cores, dense.cores):
        torch.testing.assert_close(sparse_core.grad.to_dense(), dense_core.grad)
    small = _tt(n=12, dim=4, rank=2)
    x = torch.tensor([[0], [5], [11], [7]])

    def run(a, b, c):
        return torch.func.functional_call(small, {"core1": a, "core2": b, "core3": c}, (x,))

    assert torch.autograd.gradcheck(run, tuple(core.detach().clone().requires_grad_() for core in small.cores))


@pytest.mark.parametrize("cache_rows", [0, 5])
def test_repeated_ids_give_the_per_occurrence_values_and_gradients(cache_rows):
    """The contraction runs once per distinct id; outputs and gradients equal running it per occurrence."""
    m = _tt(cache_rows=cache_rows)
    ids = torch.tensor([[2, 40, 2, 2], [59, 40, 2, 11]])
    results = []
    for rows in (lambda: m.embed(ids), lambda: m._rows(ids.reshape(-1)).view(2, 4, 8)):
        m.zero_grad()
        out = rows()
        (out * torch.arange(8, dtype=torch.float64)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_init_gives_the_target_std():
    m = TTEmbeddingBag(125_000, 16, 8)
    torch.manual_seed(0)
    m.reset_parameters()
    std = m.embed(torch.randint(0, 125_000, (20_000,))).std().item()
    assert abs(std / m.init_std - 1) < 0.1, (std, m.init_std)


@pytest.mark.parametrize("cache_rows", [0, 10])
def test_no_python_loop_over_ids(cache_rows):
    """The number of tensor ops of a forward and backward does not grow with the batch."""
    m = _tt(n=1000, dim=16, rank=4, cache_rows=cache_rows, dtype=torch.float32)
    counts = []
    for batch in (4, 512):
        ids = torch.arange(batch).view(-1, 2) * 7 % 1000  # both cached and uncached ids
        counts.append(count_ops(m, ids))
    assert counts[0] == counts[1] and counts[0] < 80, counts


@pytest.mark.parametrize("config", [
    FeatureConfig("a", 10_000, 16, scheme="tt", tt_rank=8),
    FeatureConfig("b", 999, 8, scheme="tt", tt_rank=5, tt_cache_rows=30),
    FeatureConfig("c", 301, 16, scheme="tt", tt_rank=64),  # rank capped at the feature's largest useful one
    FeatureConfig("d", 5, 7, scheme="tt", tt_rank=2, tt_cache_rows=9),  # cache capped at n
])
def test_bytes_counted_equal_bytes_allocated(config):
    for module, allocated in allocated_bytes_as_counted(config):
        assert feature_bytes(config, "adagrad") == 2 * allocated
        assert math.prod(module.row_factors) >= config.num_embeddings


def test_factorisations():
    for n in (1, 2, 10, 1000, 1001, 100_003, 33_762_577):
        rows = tt_row_factors(n)
        assert math.prod(rows) >= n and math.prod(rows) < n * 1.15 + 8, (n, rows)
    assert tt_dim_factors(16) == (2, 2, 4) and tt_dim_factors(64) == (4, 4, 4) and tt_dim_factors(13) == (1, 1, 13)
    assert tt_max_rank((10, 10, 10), (2, 2, 4)) == 20


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        TTEmbeddingBag(100, 8, 0)
    with pytest.raises(ValueError, match="TT-rank 50 does not fit.*no rank above 8 "):
        TTEmbeddingBag(100, 8, 50, row_factors=(5, 5, 4))
    with pytest.raises(ValueError, match=r"row_factors \[2, 2, 2\] multiply to 8, fewer than num_embeddings=100"):
        TTEmbeddingBag(100, 8, 2, row_factors=(2, 2, 2))
    with pytest.raises(ValueError, match=r"dim_factors \[2, 2, 3\] multiply to 12, not embedding_dim=8"):
        TTEmbeddingBag(100, 8, 2, dim_factors=(2, 2, 3))
    with pytest.raises(ValueError, match="3 positive ints"):
        TTEmbeddingBag(100, 8, 2, row_factors=(10, 10))
    with pytest.raises(ValueError, match=r"cache_rows must be an int in \[0, num_embeddings=100\]"):
        TTEmbeddingBag(100, 8, 2, cache_rows=101)
    with pytest.raises(ValueError, match="feature 'f': tt_rank must be an int >= 1, got 0"):
        FeatureConfig("f", 100, scheme="tt", tt_rank=0)
    with pytest.raises(ValueError, match="feature 'f': tt_cache_rows must be an int >= 0"):
        FeatureConfig("f", 100, scheme="tt", tt_cache_rows=-1)
    with pytest.raises(IndexError, match=r"id 100 .*out of range \[0, 100\)"):
        build_embedding_bag(FeatureConfig("f", 100, scheme="tt"))(torch.tensor([[3, 100]]))
    # a budget below TT's minimum (rank 1 everywhere) cannot be met
    assert match_budget("tt", [10_000, 5000], 100, threshold=0) is None


def test_match_budget_takes_the_largest_rank_that_fits():
    cards = [100_000, 20_000, 50]
    full = sum(cards) * 16 * 4 * 2  # tables and Adagrad state
    features, size, rank = match_budget("tt", cards, full // 64, threshold=0)
    assert size <= full // 64
    configs = [FeatureConfig(f"C{j + 1}", n, 16, **features[f"C{j + 1}"]) for j, n in enumerate(cards)]
    assert sum(feature_bytes(c, "adagrad") for c in configs) == size
    assert features["C1"]["scheme"] == "tt" and features["C1"]["tt_rank"] in (rank, rank + 1)
    bigger = [FeatureConfig(f"C{j + 1}", n, 16, scheme="tt", tt_rank=rank + 1) for j, n in enumerate(cards)]
    assert sum(feature_bytes(c, "adagrad") for c in bigger) > full // 64  # the next rank does not fit
    assert EmbeddingCollection(configs, device="meta").num_bytes * 2 == size


def test_sparse_adam_trains_the_cores_and_leaves_unused_slices():
    m = _tt(cache_rows=5, sparse=True, dtype=torch.float32)
    before = [core.detach().clone() for core in m.cores]
    optimizer = torch.optim.SparseAdam(list(m.parameters()), lr=0.01)
    m(torch.tensor([[30], [59]])).sum().backward()
    optimizer.step()
    for core, old, used in zip(m.cores, before, ([1, 2], [2, 3], [0, 4])):
        changed = (core != old).any(dim=1).nonzero().flatten().tolist()
        assert changed == used
