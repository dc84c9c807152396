"""MixedDimEmbeddingBag: frequency blocks of power-law widths, each projected to D."""
import pytest
import torch

from compembed.embedding import EmbeddingCollection, FeatureConfig, MixedDimEmbeddingBag, build_embedding_bag
from compembed.embedding.md import md_dims, md_num_parameters, zipf_block_popularity
from compembed.planning import feature_bytes, match_budget

from embedding.ops import allocated_bytes_as_counted, count_ops, slow_bags


def _md(n=40, dim=8, seed=0, **kwargs) -> MixedDimEmbeddingBag:
    torch.manual_seed(seed)
    return MixedDimEmbeddingBag(n, dim, dtype=torch.float64, **kwargs)


def _slow_row(m: MixedDimEmbeddingBag, x: int) -> torch.Tensor:
    """e(x) by the definition: find x's block by scanning the starts, then E_i[x - start_i] @ P_i."""
    block = max(i for i, start in enumerate(m.starts) if start <= x)
    row = m.tables[block][x - m.starts[block]]
    return row @ m.projections[str(block)] if m.block_dims[block] < m.embedding_dim else row


def _slow_bags(m, ids, offsets, weights, mode):
    return slow_bags(lambda x: _slow_row(m, x), ids, offsets, weights, mode, m.embedding_dim)


@pytest.mark.parametrize("kwargs", [dict(), dict(alpha=0.8, num_blocks=3), dict(boundaries=(1, 5, 30), base_dim=6),
                                    dict(block_dims=(8, 8, 2, 1)), dict(num_blocks=1)])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_forward_equals_the_blockwise_definition(kwargs, mode):
    m = _md(mode=mode, **kwargs)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (10,), generator=gen)
    ids[:4] = torch.tensor([0, 39, 10, 9])  # both sides of block edges
    offsets = torch.tensor([0, 3, 3, 6])
    weights = torch.rand(10, generator=gen, dtype=torch.float64) if mode == "sum" else None
    torch.testing.assert_close(m(ids, offsets, per_sample_weights=weights), _slow_bags(m, ids, offsets, weights, mode))
    torch.testing.assert_close(m(ids.view(2, 5)), _slow_bags(m, ids, torch.tensor([0, 5]), None, mode))


def test_power_law_widths():
    starts = (0, 250, 500, 750)
    popularity = zipf_block_popularity(1000, starts)
    assert list(popularity) == sorted(popularity, reverse=True)
    # the rule d_i = d_0 (p_i / p_0) ** alpha, by hand for block 1
    assert md_dims(16, popularity, 0.3)[1] == round(16 * (popularity[1] / popularity[0]) ** 0.3)
    assert md_dims(16, popularity, 0.0) == (16, 16, 16, 16)  # alpha 0: uniform widths
    assert md_dims(16, popularity, 0.3) == (16, 8, 7, 6)
    assert md_dims(16, [1.0, 1e-9], 5.0) == (16, 1)  # never below 1
    assert md_dims(16, popularity, 0.3, base_dim=4)[0] == 4
    m = MixedDimEmbeddingBag(1000, 16, alpha=0.3)
    assert m.block_dims == (16, 8, 7, 6) and set(m.projections) == {"1", "2", "3"}  # no projection at width D


def test_init_gives_every_block_the_full_table_std():
    torch.manual_seed(0)
    m = MixedDimEmbeddingBag(40_000, 16, alpha=0.6, num_blocks=2)
    for block in range(2):
        ids = torch.arange(m.starts[block], m.starts[block] + 20_000)
        std = m.embed(ids).std().item()
        assert abs(std / m.init_std - 1) < 0.1, (block, std, m.init_std)


def test_sparse_gradients_on_used_rows_and_projections():
    m = _md(sparse=True)
    m(torch.tensor([[0, 12], [39, 12]])).sum().backward()
    used = {0: [0], 1: [2], 3: [9]}  # starts (0, 10, 20, 30)
    for i, table in enumerate(m.tables):  # block 2 is unused: no gradient at all (lazy optimizers skip it)
        assert (table.grad is None) if i not in used else \
            sorted(set(table.grad.coalesce().indices()[0].tolist())) == used[i]
    for key, proj in m.projections.items():
        assert (proj.grad is None) if int(key) not in used else \
            proj.grad.coalesce().indices()[0].tolist() == list(range(proj.shape[0]))
    dense = _md()
    dense(torch.tensor([[0, 12], [39, 12]])).sum().backward()
    for a, b in zip(m.parameters(), dense.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad.to_dense(), b.grad)


def test_no_python_loop_over_ids():
    m = MixedDimEmbeddingBag(1000, 16, sparse=True)
    counts = []
    for batch in (8, 1024):
        ids = (torch.arange(batch) * 1000 // batch).view(-1, 4)  # ids spread over every block
        counts.append(count_ops(m, ids))
    assert counts[0] == counts[1] and counts[0] < 150, counts


@pytest.mark.parametrize("config", [
    FeatureConfig("a", 10_000, 16, scheme="md"),
    FeatureConfig("b", 999, 8, scheme="md", md_alpha=1.0, md_blocks=7, md_base_dim=5),
    FeatureConfig("c", 3, 16, scheme="md", md_blocks=5),  # blocks capped at n
    FeatureConfig("d", 500, 16, scheme="md", md_boundaries=(10, 100)),
])
def test_bytes_counted_equal_bytes_allocated(config):
    for module, allocated in allocated_bytes_as_counted(config):
        assert sum(module.table_sizes) == config.num_embeddings
        assert md_num_parameters(config.num_embeddings, config.embedding_dim, module.starts, module.block_dims) * 4 == allocated


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        MixedDimEmbeddingBag(100, 8, alpha=-0.1)
    with pytest.raises(ValueError, match="num_blocks=5 does not fit: more blocks than the 3 ids"):
        MixedDimEmbeddingBag(3, 8, num_blocks=5)
    with pytest.raises(ValueError, match=r"boundaries must be strictly increasing ints in \(0, num_embeddings=100\)"):
        MixedDimEmbeddingBag(100, 8, boundaries=(50, 20))
    with pytest.raises(ValueError, match=r"base_dim must be an int in \[1, embedding_dim=8\]"):
        MixedDimEmbeddingBag(100, 8, base_dim=9)
    with pytest.raises(ValueError, match=r"block_dims must be 4 ints in \[1, embedding_dim=8\]"):
        MixedDimEmbeddingBag(100, 8, block_dims=(8, 4, 0, 1))
    with pytest.raises(ValueError, match="popularity has 2 values for 4 blocks"):
        MixedDimEmbeddingBag(100, 8, popularity=(1.0, 0.5))
    with pytest.raises(ValueError, match="feature 'f': md_alpha must be a number >= 0"):
        FeatureConfig("f", 100, scheme="md", md_alpha=-1.0)
    with pytest.raises(ValueError, match="feature 'f': md_blocks must be an int >= 1"):
        FeatureConfig("f", 100, scheme="md", md_blocks=0)
    with pytest.raises(ValueError, match=r"feature 'f': md_base_dim must be an int in \[0, embedding_dim=16\]"):
        FeatureConfig("f", 100, scheme="md", md_base_dim=17)
    with pytest.raises(ValueError, match="feature 'f': boundaries must be strictly increasing"):
        build_embedding_bag(FeatureConfig("f", 100, scheme="md", md_boundaries=(0, 5)))
    with pytest.raises(IndexError, match=r"id -1 .*out of range \[0, 100\)"):
        build_embedding_bag(FeatureConfig("f", 100, scheme="md"))(torch.tensor([[3, -1]]))
    # md's minimum is one value per id: a budget below it cannot be met
    assert match_budget("md", [10_000, 5000], 15_000 * 4 * 2, threshold=0) is None


def test_match_budget_takes_the_largest_base_width_that_fits():
    cards = [100_000, 20_000, 50]
    full = sum(cards) * 16 * 4 * 2
    features, size, base = match_budget("md", cards, full // 4, threshold=0)
    assert size <= full // 4 and 1 <= base < 16
    configs = [FeatureConfig(f"C{j + 1}", n, 16, **features[f"C{j + 1}"]) for j, n in enumerate(cards)]
    assert sum(feature_bytes(c, "adagrad") for c in configs) == size == 2 * EmbeddingCollection(configs, device="meta").num_bytes
    wider = [FeatureConfig(f"C{j + 1}", n, 16, scheme="md", md_base_dim=base + 1) for j, n in enumerate(cards)]
    assert sum(feature_bytes(c, "adagrad") for c in wider) > full // 4
