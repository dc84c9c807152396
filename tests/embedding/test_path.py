import pytest
import torch

from compembed.embedding import PathEmbedding, PathEmbeddingBag
from compembed.partitions import GeneralizedQuotientRemainder, Hashing, QuotientRemainder


def reference_path(module: PathEmbedding, x: int) -> torch.Tensor:
    """The composition written id by id: base row, then each partition's own MLP."""
    classes = module.partition(torch.tensor([x]))[0].tolist()
    v = module.weight[classes[0]]
    for path, c in zip(module.paths, classes[1:]):
        for l, (w, b) in enumerate(zip(path.weights, path.biases)):
            v = v @ w[c].view(path.dims[l], path.dims[l + 1]) + b[c]
            if l < len(path.weights) - 1:
                v = torch.relu(v)
    return v


@pytest.mark.parametrize("hidden", [(), (16,), (8, 4)])
def test_path_matches_the_per_id_definition(hidden):
    n = 300
    module = PathEmbedding(n, 6, GeneralizedQuotientRemainder(n, (7, 7, 7)), hidden_dims=hidden)
    for p in module.parameters():
        torch.nn.init.normal_(p)
    ids = torch.tensor([0, 1, 7, 48, 299, 123])
    out = module(ids)
    for i, x in enumerate(ids.tolist()):
        torch.testing.assert_close(out[i], reference_path(module, x), rtol=1e-4, atol=1e-4)


def test_path_bag_pools_composed_vectors():
    n = 500
    bag = PathEmbeddingBag(n, 8, QuotientRemainder(n, 4), hidden_dims=(16,), mode="mean")
    ids, offsets = torch.tensor([3, 4, 5, 400, 7]), torch.tensor([0, 3])
    out = bag(ids, offsets)
    per_id = bag.embed(ids)
    torch.testing.assert_close(out, torch.stack([per_id[:3].mean(0), per_id[3:].mean(0)]))


def test_path_parameters_base_table_plus_one_mlp_per_class():
    n, dim, m, h = 10_131_227, 16, 4, 64
    bag = PathEmbeddingBag(n, dim, QuotientRemainder(n, m), hidden_dims=(h,), device="meta")
    mlp = dim * h + h + h * dim + dim
    assert bag.num_parameters == 2_532_807 * dim + m * mlp


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_reach_base_table_and_every_mlp(sparse):
    n = 100
    bag = PathEmbeddingBag(n, 4, QuotientRemainder(n, 5), hidden_dims=(8,), sparse=sparse)
    bag(torch.arange(n).view(20, 5)).square().sum().backward()
    for name, p in bag.named_parameters():
        assert p.grad is not None, name
        assert p.grad.is_sparse == sparse, name
        grad = p.grad.to_dense() if sparse else p.grad
        assert grad.abs().sum() > 0, name


def test_path_init_keeps_the_spread_of_the_base_table():
    n = 1_000_000
    module = PathEmbedding(n, 16, QuotientRemainder(n, 4), hidden_dims=(64,))
    vectors = module(torch.randint(0, n, (100_000,)))
    target = 1 / (3 * n) ** 0.5
    assert 0.5 * target < vectors.std().item() < 2 * target


def test_path_needs_two_partitions():
    with pytest.raises(ValueError, match="at least 2 tables"):
        PathEmbeddingBag(100, 4, Hashing(100, 10))
    with pytest.raises(ValueError, match="hidden_dims must be positive"):
        PathEmbeddingBag(100, 4, QuotientRemainder(100, 4), hidden_dims=(0,))
