import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compembed.embedding import (
    CompositionalEmbedding,
    CompositionalEmbeddingBag,
    FullEmbeddingBag,
    HashEmbeddingBag,
    pool_bags,
)
from compembed.partitions import ChineseRemainder, GeneralizedQuotientRemainder, Identity, QuotientRemainder

OPS = ["concat", "add", "mult"]


def random_bags(n, num_bags, max_len, gen):
    lengths = torch.randint(0, max_len + 1, (num_bags,), generator=gen)
    ids = torch.randint(0, n, (int(lengths.sum()),), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    weights = torch.rand(ids.shape, generator=gen)
    return ids, offsets, weights


def copy_of(module: nn.EmbeddingBag, **kwargs) -> FullEmbeddingBag:
    ours = FullEmbeddingBag(module.num_embeddings, module.embedding_dim, **kwargs)
    with torch.no_grad():
        ours.weight.copy_(module.weight)
    return ours


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["sum", "mean", "max"]),
    layout=st.sampled_from(["1d", "1d_last", "2d"]),
    weighted=st.booleans(),
    padding=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_trivial_partition_equals_nn_embedding_bag(mode, layout, weighted, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    n, dim = 50, 6
    weighted = weighted and mode == "sum"
    padding_idx = 3 if padding else None
    reference = nn.EmbeddingBag(n, dim, mode=mode, include_last_offset=layout == "1d_last", padding_idx=padding_idx)
    ours = copy_of(reference, mode=mode, include_last_offset=layout == "1d_last", padding_idx=padding_idx)
    if layout == "2d":
        ids = torch.randint(0, n, (7, 4), generator=gen)
        ids[0, 1] = 3
        args = (ids, None, torch.rand(ids.shape, generator=gen) if weighted else None)
    else:
        ids, offsets, w = random_bags(n, 6, 5, gen)
        if layout == "1d_last":
            offsets = torch.cat([offsets, torch.tensor([ids.numel()])])
        args = (ids, offsets, w if weighted else None)
    expected, got = reference(*args), ours(*args)
    torch.testing.assert_close(got, expected)
    expected.square().sum().backward()
    got.square().sum().backward()
    torch.testing.assert_close(ours.weights[0].grad, reference.weight.grad)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_generic_pooling_equals_embedding_bag(mode):
    # pool_bags over per-id vectors is the path every composed module takes.
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 5, generator=gen)
    ids, offsets, w = random_bags(40, 9, 6, gen)
    w = w if mode == "sum" else None
    expected = F.embedding_bag(ids, weight, offsets, mode=mode, per_sample_weights=w)
    torch.testing.assert_close(pool_bags(weight[ids], ids, offsets, w, mode), expected)
    expected = F.embedding_bag(ids, weight, offsets, mode=mode, per_sample_weights=w, padding_idx=7)
    torch.testing.assert_close(pool_bags(weight[ids], ids, offsets, w, mode, padding_idx=7), expected)


def test_trivial_partition_per_id_equals_nn_embedding():
    reference = nn.Embedding(30, 4, padding_idx=2)
    ours = CompositionalEmbedding(30, 4, Identity(30), padding_idx=2)
    with torch.no_grad():
        ours.weights[0].copy_(reference.weight)
    ids = torch.tensor([[0, 2, 29], [2, 5, 7]])
    torch.testing.assert_close(ours(ids), reference(ids))


@pytest.mark.parametrize("op", OPS)
def test_combine_then_pool_on_weighted_multi_hot_bags(op):
    gen = torch.Generator().manual_seed(2)
    n, m, dim = 200, 7, 6
    bag = CompositionalEmbeddingBag(n, dim, QuotientRemainder(n, m), operation=op, mode="sum", init_std=0.5)
    ids, offsets, w = random_bags(n, 8, 6, gen)
    # One more bag with ids sharing a quotient row, and a negative weight.
    offsets = torch.cat([offsets, torch.tensor([ids.numel()])])
    ids, w = torch.cat([ids, torch.tensor([5, 13, 64])]), torch.cat([w, torch.tensor([0.5, 2.0, -1.0])])
    out = bag(ids, offsets, w)

    q, r = bag.weights[0][ids // m], bag.weights[1][ids % m]
    per_id = {"concat": torch.cat([q, r], -1), "add": q + r, "mult": q * r}[op]
    bounds = offsets.tolist() + [ids.numel()]
    expected = torch.stack([(w[a:b, None] * per_id[a:b]).sum(0) for a, b in zip(bounds[:-1], bounds[1:])])
    torch.testing.assert_close(out, expected)

    # Pooling each table first and then combining is a different function for mult.
    pooled_q = F.embedding_bag(ids // m, bag.weights[0], offsets, mode="sum", per_sample_weights=w)
    pooled_r = F.embedding_bag(ids % m, bag.weights[1], offsets, mode="sum", per_sample_weights=w)
    if op == "mult":
        assert not torch.allclose(out, pooled_q * pooled_r, atol=1e-3)
    else:
        pooled = torch.cat([pooled_q, pooled_r], -1) if op == "concat" else pooled_q + pooled_r
        torch.testing.assert_close(out, pooled)  # linear operations commute with pooling


def test_pool_first_and_combine_first_agree_on_one_hot_bags():
    bag = CompositionalEmbeddingBag(100, 4, QuotientRemainder(100, 6))
    ids = torch.randint(0, 100, (12, 1))
    expected = bag.weights[0][ids[:, 0] // 6] * bag.weights[1][ids[:, 0] % 6]
    torch.testing.assert_close(bag(ids), expected)


PARTITIONS = {
    "qr": lambda n: QuotientRemainder(n, 9),
    "gqr": lambda n: GeneralizedQuotientRemainder(n, (5, 6, 7)),
    "crt": lambda n: ChineseRemainder(n, (5, 7, 9)),
}


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("scheme", sorted(PARTITIONS))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gradients_reach_every_table(scheme, op, sparse, mode):
    n = 200
    bag = CompositionalEmbeddingBag(n, 6, PARTITIONS[scheme](n), operation=op, mode=mode, sparse=sparse)
    ids, offsets, _ = random_bags(n, 10, 4, torch.Generator().manual_seed(3))
    bag(ids, offsets).square().sum().backward()
    for j, weight in enumerate(bag.weights):
        assert weight.grad is not None, f"table {j} got no gradient"
        assert weight.grad.is_sparse == sparse
        grad = weight.grad.to_dense() if sparse else weight.grad
        assert grad.abs().sum() > 0, f"table {j} got a zero gradient"


def test_sparse_and_dense_gradients_agree():
    dense = CompositionalEmbeddingBag(300, 8, QuotientRemainder(300, 17), mode="sum")
    sparse = CompositionalEmbeddingBag(300, 8, QuotientRemainder(300, 17), mode="sum", sparse=True)
    sparse.load_state_dict(dense.state_dict())
    ids, offsets, w = random_bags(300, 10, 5, torch.Generator().manual_seed(4))
    for module in (dense, sparse):
        module(ids, offsets, w).sum().backward()
    for a, b in zip(dense.weights, sparse.weights):
        torch.testing.assert_close(b.grad.to_dense(), a.grad)


def test_parameter_count_of_a_criteo_sized_table():
    n = 10_131_227
    bag = CompositionalEmbeddingBag(n, 16, QuotientRemainder(n, 4), device="meta")
    assert bag.num_parameters == (2_532_807 + 4) * 16
    assert bag.full_table_parameters == n * 16
    assert HashEmbeddingBag(n, 16, num_buckets=2_532_807, device="meta").num_parameters == 2_532_807 * 16
    concat = CompositionalEmbeddingBag(n, 16, QuotientRemainder(n, 4), operation="concat", device="meta")
    assert [tuple(w.shape) for w in concat.weights] == [(2_532_807, 8), (4, 8)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("k", [2, 3])
def test_init_gives_the_spread_of_a_full_table(op, k):
    n = 1_000_000
    partition = QuotientRemainder(n, 1000) if k == 2 else GeneralizedQuotientRemainder(n, (100, 100, 100))
    module = CompositionalEmbedding(n, 16, partition, operation=op)
    target = 1 / (3 * n) ** 0.5  # std of uniform(-1/sqrt(n), 1/sqrt(n))
    vectors = module(torch.randint(0, n, (200_000,)))
    assert abs(vectors.mean().item()) < 0.05 * target
    assert vectors.std().item() == pytest.approx(target, rel=0.1)


def test_distinct_ids_get_distinct_vectors():
    n = 5000
    for op in OPS:
        module = CompositionalEmbedding(n, 8, QuotientRemainder(n, 71), operation=op)
        assert torch.unique(module(torch.arange(n)), dim=0).shape[0] == n


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: CompositionalEmbeddingBag(100, 8, QuotientRemainder(100, 4), operation="max"), ValueError, "operation must be one of"),
        (lambda: CompositionalEmbeddingBag(100, 8, QuotientRemainder(100, 4), mode="median"), ValueError, "mode must be one of"),
        (lambda: CompositionalEmbeddingBag(100, 8, QuotientRemainder(99, 4)), ValueError, "partition covers 99 ids"),
        (lambda: CompositionalEmbeddingBag(100, 0, QuotientRemainder(100, 4)), ValueError, "embedding_dim must be a positive int"),
        (lambda: CompositionalEmbeddingBag(100, 8, "qr"), TypeError, "partition must be"),
        (lambda: CompositionalEmbeddingBag(100, 8, QuotientRemainder(100, 4), operation="concat", table_dims=(4, 5)), ValueError, "summing to embedding_dim=8"),
        (lambda: CompositionalEmbeddingBag(100, 8, QuotientRemainder(100, 4), table_dims=(4, 4)), ValueError, "only applies to concat"),
        (lambda: CompositionalEmbeddingBag(100, 8, QuotientRemainder(100, 4), padding_idx=100), ValueError, "padding_idx must be in"),
    ],
)
def test_invalid_module_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_out_of_range_ids_raise_a_clear_error():
    bag = CompositionalEmbeddingBag(100, 4, QuotientRemainder(100, 4))
    with pytest.raises(IndexError, match=r"id 100 at position \(1, 0\)"):
        bag(torch.tensor([[1, 2], [100, 3]]))
    with pytest.raises(ValueError, match="offsets"):
        bag(torch.tensor([1, 2, 3]))


def test_concat_with_explicit_table_dims():
    bag = CompositionalEmbeddingBag(100, 24, QuotientRemainder(100, 10), operation="concat", table_dims=(16, 8))
    out = bag(torch.tensor([[42]]))
    torch.testing.assert_close(out[0], torch.cat([bag.weights[0][4], bag.weights[1][2]]))


def _adagrad_step_change(module, ids: torch.Tensor, upstream: torch.Tensor, lr: float = 0.05) -> float:
    """RMS change of the vectors of ``ids`` after one Adagrad step on ``sum(vectors * upstream)``."""
    before = module(ids).detach()
    optimizer = torch.optim.Adagrad(module.parameters(), lr=lr)
    (module(ids) * upstream).sum().backward()
    optimizer.step()
    with torch.no_grad():
        return (module(ids) - before).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("op", ["add", "mult"])
@pytest.mark.parametrize("partition", [
    QuotientRemainder(20_000, 4), QuotientRemainder(20_000, 500), GeneralizedQuotientRemainder(20_000, (30, 30, 30)),
    ChineseRemainder(20_000, (27, 28, 29)),
], ids=["qr4", "qr500", "gqr3", "crt3"])
def test_composed_vectors_learn_as_fast_as_full_rows(op, partition):
    # One Adagrad step moves a full row by about lr per coordinate; composed vectors must move
    # comparably (the old symmetric mult init moved them 5-15x less, see embedding.init).
    n, dim = partition.num_embeddings, 16
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, n, (256,), generator=gen)
    upstream = torch.randn(256, dim, generator=gen)
    full = _adagrad_step_change(CompositionalEmbedding(n, dim, Identity(n)), ids, upstream)
    composed = _adagrad_step_change(CompositionalEmbedding(n, dim, partition, operation=op), ids, upstream)
    assert 0.6 * full < composed < 3 * full


def test_mult_init_puts_the_spread_on_the_largest_table():
    n = 10_000
    module = CompositionalEmbedding(n, 16, QuotientRemainder(n, 4), operation="mult")
    quotient, remainder = module.weights  # 2,500 and 4 rows
    sigma = 1 / (3 * n) ** 0.5
    assert quotient.std().item() == pytest.approx(sigma, rel=0.05)
    assert remainder.std().item() == pytest.approx(1.0, rel=0.3)  # 64 values of uniform(+-sqrt 3)
    small_quotient = CompositionalEmbedding(n, 16, QuotientRemainder(n, 500), operation="mult")
    assert small_quotient.weights[1].std().item() == pytest.approx(sigma, rel=0.05)  # 500 > 20 rows
