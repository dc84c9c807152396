"""DHE: the encoding and forward against a slow per-id computation, gradients, bytes, no loop over ids, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compembed.embedding import EmbeddingCollection, FeatureConfig, FusedEmbeddingCollection
from compembed.embedding.dhe import DHE_ACTIVATIONS, DHEEmbeddingBag, dhe_parameters
from compembed.embedding.robe import PRIME

from embedding.ops import count_ops, slow_bags


def slow_encoding(module: DHEEmbeddingBag, x: int) -> list[float]:
    """The k real values of id x, computed one hash at a time with Python ints and math."""
    k, m = module.num_hashes, module.buckets
    hashes = [((int(module.hash_a[j]) * x + int(module.hash_b[j])) % PRIME) % m for j in range(k)]
    if not module.gaussian:
        return [2.0 * h / (m - 1) - 1.0 for h in hashes]
    v = [(h + 1) / m for h in hashes]
    half = k // 2
    radius = [math.sqrt(-2.0 * math.log(v[j])) for j in range(half)]
    return ([radius[j] * math.cos(2 * math.pi * v[half + j]) for j in range(half)]
            + [radius[j] * math.sin(2 * math.pi * v[half + j]) for j in range(half)])


def slow_vector(module: DHEEmbeddingBag, x: int) -> torch.Tensor:
    """The MLP applied to one id's encoding, layer by layer (eval mode: batch norm uses running stats)."""
    h = torch.tensor(slow_encoding(module, x), dtype=torch.float64)
    for layer in module.mlp:
        if isinstance(layer, nn.Linear):
            h = layer.weight.detach() @ h + layer.bias.detach()
        elif isinstance(layer, nn.BatchNorm1d):
            h = (h - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps) * layer.weight.detach() + layer.bias.detach()
        elif isinstance(layer, nn.Mish):
            h = h * torch.tanh(torch.log1p(torch.exp(h)))
        else:
            h = torch.clamp(h, min=0)
    return h


@pytest.mark.parametrize("gaussian", [True, False])
def test_encoding_matches_a_slow_computation(gaussian):
    module = DHEEmbeddingBag(10**6, 8, num_hashes=6, hidden_dims=(), buckets=1000, gaussian=gaussian, seed=5,
                             dtype=torch.float64)
    ids = [0, 1, 999_999, 123_456]
    codes = module.encode(torch.tensor(ids))
    torch.testing.assert_close(codes, torch.tensor([slow_encoding(module, x) for x in ids], dtype=torch.float64))
    assert codes.shape == (4, 6) and (gaussian or codes.abs().max() <= 1.0)


@pytest.mark.parametrize("buckets", [10**6, 2**25 + 1])
def test_float32_encoding_is_the_exact_one_rounded_and_finite(buckets):
    """A float32 MLP gets its encoding computed in float32 (float64 when m > 2**24, where float32
    cannot hold every hash + 1): within float32 rounding of the exact values, never NaN."""
    module = DHEEmbeddingBag(2**31 - 1, 4, num_hashes=64, hidden_dims=(), buckets=buckets, seed=3)
    ids = [0, 5, 2**31 - 2, 123_456_789]
    codes = module.encode(torch.tensor(ids))
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    exact = torch.tensor([slow_encoding(module, x) for x in ids], dtype=torch.float64)
    torch.testing.assert_close(codes.double(), exact, rtol=1e-5, atol=2e-5)


def test_mish_is_torch_mish():
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64, requires_grad=True)
    ours, theirs = DHE_ACTIVATIONS["mish"]()(x), torch.nn.functional.mish(x)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(theirs.sum(), x)[0])


def test_gaussian_encoding_is_close_to_standard_normal():
    module = DHEEmbeddingBag(10**6, 8, num_hashes=64, hidden_dims=(), seed=0)
    codes = module.encode(torch.arange(20_000))
    assert abs(codes.mean().item()) < 0.02 and abs(codes.std().item() - 1.0) < 0.02


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("activation,batchnorm", [("mish", False), ("relu", True)])
def test_forward_matches_a_slow_per_id_computation(mode, activation, batchnorm):
    torch.manual_seed(0)
    module = DHEEmbeddingBag(500, 4, num_hashes=8, hidden_dims=(6, 5), activation=activation, batchnorm=batchnorm,
                             mode=mode, dtype=torch.float64)
    if batchnorm:  # non-trivial running statistics
        module.train()
        module(torch.randint(0, 500, (64, 1)))
    module.eval()
    ids, offsets = [4, 499, 17, 17, 0, 250], [0, 1, 1, 4]  # bag 1 is empty
    out = module(torch.tensor(ids), torch.tensor(offsets))
    torch.testing.assert_close(out, slow_bags(lambda x: slow_vector(module, x), ids, offsets, None, mode, 4))


def test_bag_inputs_per_sample_weights_and_padding():
    torch.manual_seed(0)
    module = DHEEmbeddingBag(100, 4, num_hashes=4, hidden_dims=(8,), mode="sum", dtype=torch.float64)
    ids, weights = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.rand(2, 3, dtype=torch.float64)
    out = module(ids, None, weights)
    vectors = module.embed(ids)
    torch.testing.assert_close(out, (vectors * weights.unsqueeze(-1)).sum(1))
    torch.testing.assert_close(module(ids.flatten(), torch.tensor([0, 3]), weights.flatten()), out)
    padded = DHEEmbeddingBag(100, 4, num_hashes=4, hidden_dims=(8,), mode="mean", padding_idx=0)
    bags = padded(torch.tensor([[0, 7], [7, 7]]))
    torch.testing.assert_close(bags[0], bags[1])


def test_gradients_flow_to_every_layer_and_are_dense_even_with_sparse():
    torch.manual_seed(0)
    module = DHEEmbeddingBag(1000, 8, num_hashes=16, hidden_dims=(32,), batchnorm=True, sparse=True)
    module(torch.randint(0, 1000, (64, 3))).pow(2).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    assert len(grads) == 6  # two linear layers, one batch norm: weight and bias each
    assert all(g is not None and not g.is_sparse and g.abs().sum() > 0 for g in grads.values())
    assert module.dense_gradients and module.sparse is False  # DDP's sparse sync leaves it to DDP


@pytest.mark.parametrize("batchnorm", [False, True])
def test_repeated_ids_give_the_per_occurrence_values_and_gradients(batchnorm):
    """The MLP runs once per distinct id (batch norm in training: once per occurrence, its statistics
    are over every occurrence); outputs and gradients equal running it on each occurrence."""
    torch.manual_seed(0)
    module = DHEEmbeddingBag(50, 4, num_hashes=6, hidden_dims=(8,), batchnorm=batchnorm, dtype=torch.float64)
    ids = torch.tensor([[3, 7, 3], [3, 49, 7]])
    grads = []
    for rows in (lambda: module.embed(ids), lambda: module.decode(ids.reshape(-1)).view(2, 3, 4)):
        module.zero_grad()
        out = rows()
        out.pow(2).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_dhe_params_are_not_taken_for_sparse_ones_in_distributed_training():
    from compembed.distributed.ddp import sparse_parameters

    coll = EmbeddingCollection([FeatureConfig("d", 100, 8, scheme="dhe"), FeatureConfig("r", 100, 8, scheme="robe")],
                               sparse=True)
    assert [name for name, _ in sparse_parameters(coll)] == ["embeddings.r.weight"]
    # the fused collection (the models' default) is sparse itself: DHE's MLP inside it is still dense
    fused = FusedEmbeddingCollection([FeatureConfig("d", 100, 8, scheme="dhe"), FeatureConfig("q", 100, 8, scheme="qr")],
                                     sparse=True)
    names = [name for name, _ in sparse_parameters(fused)]
    assert names and not any(".d." in name for name in names), names


def test_hash_functions_are_buffers_drawn_from_the_seed():
    a, b, c = (DHEEmbeddingBag(1000, 8, num_hashes=8, seed=s) for s in (4, 4, 5))
    assert torch.equal(a.hash_a, b.hash_a) and not torch.equal(a.hash_a, c.hash_a)
    assert {"hash_a", "hash_b"} <= set(a.state_dict())
    c.load_state_dict(a.state_dict())
    ids = torch.arange(1000).view(-1, 4)
    torch.testing.assert_close(c(ids), a(ids))


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bytes_counted_equal_bytes_allocated(batchnorm, dtype):
    configs = [FeatureConfig("a", 10**6, 16, scheme="dhe", dhe_hashes=32, dhe_hidden=(48, 24), dhe_batchnorm=batchnorm),
               FeatureConfig("b", 50, 16, scheme="dhe", dhe_hashes=4, dhe_hidden=())]
    for cls in (EmbeddingCollection, FusedEmbeddingCollection):
        coll = cls(configs, dtype=dtype)
        reports = {r.name: r for r in coll.report()}
        for config in configs:
            module = coll.feature_module(config.name)
            allocated = sum(p.untyped_storage().nbytes() for p in module.parameters())
            closed = dhe_parameters(config.dhe_hashes, config.dhe_hidden, 16, batchnorm=config.dhe_batchnorm)
            report = reports[config.name]
            assert report.parameters == closed and report.bytes == allocated == closed * dtype.itemsize
        # the hash coefficients (and batch-norm statistics) are buffers: not learned, not counted
        assert all(not name.endswith(("hash_a", "hash_b")) for name, _ in coll.named_parameters())
    assert dhe_parameters(32, (48, 24), 16, batchnorm=False) == 32 * 48 + 48 + 48 * 24 + 24 + 24 * 16 + 16


def test_no_python_loop_over_ids():
    module = DHEEmbeddingBag(10**6, 16, num_hashes=16, hidden_dims=(32,), batchnorm=True)

    def ops(batch: int) -> int:
        return count_ops(module, torch.randint(0, 10**6, (batch, 3)))

    assert ops(8) == ops(4096) == ops(8) > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_hashes=0), "num_hashes k must be a positive int"),
    (dict(num_hashes=7), "num_hashes k=7 must be even"),
    (dict(hidden_dims=(8, 0)), "hidden_dims must be positive ints"),
    (dict(buckets=0), "buckets m must be a positive int"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(mode="median"), "mode must be one of"),
])
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DHEEmbeddingBag(100, 8, **kwargs)


def test_clear_errors_from_the_feature_config():
    with pytest.raises(ValueError, match="feature 'C2': dhe_hashes must be an int >= 1, got 0"):
        FeatureConfig("C2", 100, 8, scheme="dhe", dhe_hashes=0)
    with pytest.raises(ValueError, match="feature 'C2': dhe_gaussian pairs the hashes"):
        FeatureConfig("C2", 100, 8, scheme="dhe", dhe_hashes=5)
    FeatureConfig("C2", 100, 8, scheme="dhe", dhe_hashes=5, dhe_gaussian=False)  # uniform takes any k
    with pytest.raises(ValueError, match="feature 'C2': dhe_activation must be one of"):
        FeatureConfig("C2", 100, 8, scheme="dhe", dhe_activation="gelu")
