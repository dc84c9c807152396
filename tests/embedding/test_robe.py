"""ROBE-Z: the forward against a slow per-id reading of the array, gradients, bytes, no loop over ids, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compembed.embedding import EmbeddingCollection, FeatureConfig, FusedEmbeddingCollection, build_embedding_bag
from compembed.embedding.robe import PRIME, ROBEEmbeddingBag
from compembed.optim import RowWiseAdagrad, SparseAdagrad, SparseSGD

from embedding.ops import count_ops, slow_bags


def slow_vector(module: ROBEEmbeddingBag, x: int) -> list[float]:
    """The vector of id x read value by value, as the paper describes it (plain Python ints)."""
    array = module.weight.detach()[:, 0].tolist()
    z, size, out = module.block_size, module.size, []
    for i in range(module.num_blocks):
        start = ((int(module.hash_a[i]) * x + int(module.hash_b[i])) % PRIME) % size
        sign = 1.0
        if module.signs:
            sign = 1.0 - 2.0 * (((int(module.sign_a[i]) * x + int(module.sign_b[i])) % PRIME) % 2)
        out += [sign * array[(start + j) % size] for j in range(z)]
    return out


def slow_robe_bags(module, ids: list[int], offsets: list[int], weights: list[float] | None, mode: str) -> torch.Tensor:
    return slow_bags(lambda x: slow_vector(module, x), ids, offsets, weights, mode, module.embedding_dim)


@pytest.mark.parametrize("block_size,signs", [(1, False), (2, True), (4, False), (8, True)])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_forward_matches_a_slow_reading_of_the_array(block_size, signs, mode):
    torch.manual_seed(0)
    # size 13 is prime and small: blocks wrap around the end of the array often
    module = ROBEEmbeddingBag(100, 8, size=13, block_size=block_size, signs=signs, mode=mode, seed=3,
                              dtype=torch.float64)
    ids = [0, 99, 5, 5, 42, 17, 63, 1]
    offsets = [0, 2, 2, 5]  # bag 1 is empty
    out = module(torch.tensor(ids), torch.tensor(offsets))
    torch.testing.assert_close(out, slow_robe_bags(module, ids, offsets, None, mode))
    # the blocks of some id really do wrap around
    starts = module.positions(torch.tensor(ids))[..., 0]
    assert block_size == 1 or bool(((starts + block_size) > 13).any())


def test_per_sample_weights_two_dim_input_and_include_last_offset():
    torch.manual_seed(0)
    module = ROBEEmbeddingBag(50, 6, size=40, block_size=3, signs=True, mode="sum", dtype=torch.float64)
    ids, offsets, weights = [3, 7, 49, 0, 12, 12], [0, 3], [0.5, -1.0, 2.0, 1.5, 0.25, 3.0]
    out = module(torch.tensor(ids), torch.tensor(offsets), torch.tensor(weights, dtype=torch.float64))
    torch.testing.assert_close(out, slow_robe_bags(module, ids, offsets, weights, "sum"))
    two_dim = module(torch.tensor(ids).view(2, 3), None, torch.tensor(weights, dtype=torch.float64).view(2, 3))
    torch.testing.assert_close(two_dim, out)
    last = ROBEEmbeddingBag(50, 6, size=40, block_size=3, signs=True, mode="sum", include_last_offset=True,
                            dtype=torch.float64)
    last.load_state_dict(module.state_dict())
    torch.testing.assert_close(last(torch.tensor(ids), torch.tensor([0, 3, 6]),
                                    torch.tensor(weights, dtype=torch.float64)), out)


def test_padding_idx_is_left_out_of_means():
    module = ROBEEmbeddingBag(20, 4, size=30, mode="mean", padding_idx=0)
    out = module(torch.tensor([[0, 5], [5, 5]]))
    torch.testing.assert_close(out[0], out[1])


def test_hash_functions_are_buffers_drawn_from_the_seed():
    a, b, c = (ROBEEmbeddingBag(1000, 8, size=64, block_size=2, signs=True, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.hash_a, b.hash_a) and torch.equal(a.sign_b, b.sign_b)
    assert not torch.equal(a.hash_a, c.hash_a)
    assert {"weight", "hash_a", "hash_b", "sign_a", "sign_b"} == set(a.state_dict())
    c.load_state_dict(a.state_dict())
    ids = torch.arange(1000).view(100, 10)
    torch.testing.assert_close(c(ids), a(ids))
    # features of one collection get different hash functions
    coll = EmbeddingCollection([FeatureConfig(n, 1000, 8, scheme="robe") for n in ("x", "y")])
    assert not torch.equal(coll.embeddings["x"].hash_a, coll.embeddings["y"].hash_a)


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_sparse_gradient_equals_the_dense_one_and_trains(mode):
    torch.manual_seed(0)
    dense = ROBEEmbeddingBag(500, 8, size=100, block_size=2, signs=True, mode=mode)
    sparse = ROBEEmbeddingBag(500, 8, size=100, block_size=2, signs=True, mode=mode, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    ids, offsets = torch.randint(0, 500, (40,)), torch.arange(0, 40, 4)
    for module in (dense, sparse):
        module(ids, offsets).pow(2).sum().backward()
    assert sparse.weight.grad.is_sparse and not dense.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    touched = set(sparse.positions(ids).flatten().tolist())
    assert set(dense.weight.grad.nonzero()[:, 0].tolist()) <= touched and dense.weight.grad.abs().sum() > 0
    # the project's sparse optimizers take the (size, 1) array's sparse gradient
    for opt_cls in (SparseSGD, SparseAdagrad, RowWiseAdagrad):
        before = sparse.weight.detach().clone()
        opt_cls([sparse.weight], lr=0.1).step()
        changed = (sparse.weight.detach() != before).any(1).nonzero()[:, 0].tolist()
        assert changed and set(changed) <= touched, opt_cls.__name__
    torch.optim.SparseAdam([sparse.weight], lr=0.1).step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_bytes_counted_equal_bytes_allocated(dtype):
    configs = [FeatureConfig("a", 10_000, 16, scheme="robe", robe_size=3001, block_size=4),
               FeatureConfig("b", 777, 16, scheme="robe", num_collisions=5)]
    for cls in (EmbeddingCollection, FusedEmbeddingCollection):
        coll = cls(configs, dtype=dtype)
        reports = {r.name: r for r in coll.report()}
        for name, values in (("a", 3001), ("b", -(-777 * 16 // 5))):
            weight = coll.feature_module(name).weight
            allocated = weight.untyped_storage().nbytes()
            assert reports[name].parameters == values and reports[name].bytes == allocated == values * dtype.itemsize
        assert coll.num_bytes == sum(r.bytes for r in reports.values())


def test_dense_gradient_on_the_cpu_is_embeddings_bit_for_bit():
    # dense on the CPU the array is read with index_select (a faster backward): the gradient of F.embedding
    torch.manual_seed(1)
    module = ROBEEmbeddingBag(5000, 8, size=300, block_size=4, mode="sum")
    ids, upstream = torch.randint(0, 5000, (64, 5)), torch.randn(64, 8)
    module(ids).backward(upstream)
    weight = module.weight.detach().clone().requires_grad_()
    F.embedding(module.positions(ids), weight).reshape(64, 5, 8).sum(1).backward(upstream)
    assert torch.equal(module.weight.grad, weight.grad) and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sparse", [True, False])
def test_no_python_loop_over_ids(sparse):
    """The ops torch runs for a forward and backward do not grow with the number of ids."""
    module = ROBEEmbeddingBag(10**6, 16, size=10_000, block_size=4, signs=True, sparse=sparse)

    def ops(batch: int) -> int:
        return count_ops(module, torch.randint(0, 10**6, (batch, 3)))

    assert ops(8) == ops(4096) == ops(8) > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=100, block_size=3), "block_size Z=3 must divide embedding_dim D=8"),
    (dict(size=3, block_size=4), "size=3 values is smaller than one block"),
    (dict(size=0), "size must be a positive int"),
    (dict(size=10, block_size=0), "block_size must be a positive int"),
])
def test_clear_errors_for_shapes_that_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ROBEEmbeddingBag(100, 8, **kwargs)


def test_clear_errors_from_the_feature_config_and_for_ids():
    with pytest.raises(ValueError, match="feature 'C1': block_size Z=5 must divide embedding_dim D=16"):
        FeatureConfig("C1", 1000, 16, scheme="robe", block_size=5)
    with pytest.raises(ValueError, match="feature 'C1': the robe array of 8 values is smaller than one block"):
        FeatureConfig("C1", 1000, 16, scheme="robe", robe_size=8)
    with pytest.raises(ValueError, match="feature 'C1': robe_size must be an int >= 0"):
        FeatureConfig("C1", 1000, 16, scheme="robe", robe_size=-1)
    with pytest.raises(ValueError, match="exceeds the hash prime"):
        ROBEEmbeddingBag(PRIME + 1, 8, size=16, device="meta")
    module = build_embedding_bag(FeatureConfig("C1", 100, 8, scheme="robe"))
    with pytest.raises(IndexError, match=r"id 100 at position \(1, 0\) is out of range"):
        module(torch.tensor([[3], [100]]))


def test_scheme_in_the_fused_collection_equals_the_per_feature_one():
    configs = [FeatureConfig("a", 300, 8, scheme="robe", block_size=2, robe_signs=True),
               FeatureConfig("b", 300, 8, scheme="qr")]
    torch.manual_seed(0)
    plain = EmbeddingCollection(configs, sparse=True)
    torch.manual_seed(0)
    fused = FusedEmbeddingCollection(configs, sparse=True)
    ids = torch.randint(0, 300, (32, 2))
    torch.testing.assert_close(fused(ids), plain(ids))
    assert [r.scheme for r in fused.report()] == ["robe-2", "qr-mult"]
