"""DLRM and DCN with every embedding scheme: shapes, the layers' math, and learning a toy task."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from compembed.embedding import EmbeddingCollection, FeatureConfig
from compembed.models import DCN, DLRM, CrossNetwork, DotInteraction, ModelConfig, build_model
from compembed.optim import SparseAdagrad

from .toy import toy_dataset

SCHEMES = [("full", "mult"), ("hashing", "mult"), ("qr", "concat"), ("qr", "add"), ("qr", "mult"),
           ("gqr", "mult"), ("crt", "mult"), ("path", "mult"), ("hybrid", "mult"),
           ("cce", "mult"), ("robe", "mult"), ("dhe", "mult"), ("tt", "mult"), ("md", "mult")]
SMALL = dict(threshold=0, embedding_dim=8, bottom_mlp=(32,), top_mlp=(32,), deep_mlp=(32, 16), cross_layers=2, num_collisions=4,
             num_partitions=2, path_hidden=(8,), hot_rows=5)


def train_loss(model, dataset, steps: int, lr: float = 0.05) -> tuple[float, float]:
    """Mean training-set BCE before and after ``steps`` Adagrad steps."""
    names = dataset.info.categorical_names
    full = next(iter(dataset.loader("train", 10**6)))

    def loss() -> float:
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(model(full.dense, full.features(names)), full.labels).item()

    before = loss()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=lr)
    batches = itertools.cycle(list(dataset.loader("train", 128, shuffle=True, seed=1)))
    for _ in range(steps):
        batch = next(batches)
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(batch.dense, batch.features(names)), batch.labels).backward()
        optimizer.step()
    return before, loss()


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
@pytest.mark.parametrize("scheme,operation", SCHEMES)
def test_every_scheme_learns(arch, scheme, operation):
    dataset = toy_dataset()
    model = build_model(ModelConfig(arch=arch, scheme=scheme, operation=operation, **SMALL), dataset.info)
    assert model.embeddings.configs[0].scheme == scheme
    before, after = train_loss(model, dataset, steps=60)
    assert after < before - 0.05, f"{arch}/{scheme}-{operation}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_multi_hot_feature(arch):
    dataset = toy_dataset(multi_hot=True)
    model = build_model(ModelConfig(arch=arch, **SMALL), dataset.info)
    batch = next(iter(dataset.loader("train", 16)))
    assert model(batch.dense, batch.features(dataset.info.categorical_names)).shape == (16,)


def test_paper_defaults():
    config = ModelConfig()
    assert (config.embedding_dim, config.bottom_mlp, config.top_mlp) == (16, (512, 256, 64), (512, 256))
    assert (config.deep_mlp, config.cross_layers) == ((512, 256, 64), 6)
    dataset = toy_dataset(rows=64)
    model = build_model(config, dataset.info)
    assert [m.out_features for m in model.bottom if isinstance(m, torch.nn.Linear)] == [512, 256, 64, 16]
    assert [m.out_features for m in model.top if isinstance(m, torch.nn.Linear)] == [512, 256, 1]
    # 3 features + the dense vector: 6 pairs, plus the 16-dim dense vector
    assert model.top[0].in_features == 6 + 16


def test_dot_interaction_is_lower_triangle_of_gram():
    x = torch.randn(5, 4, 3)
    out = DotInteraction()(x)
    expected = torch.stack([torch.einsum("bd,bd->b", x[:, i], x[:, j]) for i in range(4) for j in range(i)], 1)
    assert out.shape == (5, 6)
    assert torch.allclose(out, expected, atol=1e-6)


def test_dot_interaction_gradient_matches_autograd_of_the_plain_formula():
    x = torch.randn(7, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DotInteraction(), (x,))
    upstream = torch.randn(7, 10, dtype=torch.float64)
    (grad,) = torch.autograd.grad(DotInteraction()(x), x, upstream)
    rows, cols = torch.tril_indices(5, 5, offset=-1)
    (expected,) = torch.autograd.grad(torch.bmm(x, x.transpose(1, 2))[:, rows, cols], x, upstream)
    assert torch.allclose(grad, expected)


def test_cross_network_formula():
    net = CrossNetwork(dim=5, num_layers=2)
    with torch.no_grad():
        net.biases.normal_()
    x0 = torch.randn(3, 5)
    x = x0
    for w, b in zip(net.weights, net.biases):
        x = x0 * (x @ w)[:, None] + b + x
    assert torch.allclose(net(x0), x, atol=1e-6)


def test_mixed_widths_line_up():
    """A collection whose feature widths differ from the bottom MLP output is projected, not a crash."""
    configs = [FeatureConfig("a", 60, embedding_dim=8, scheme="qr", operation="concat"),
               FeatureConfig("b", 40, embedding_dim=24, scheme="qr", operation="concat"),
               FeatureConfig("c", 9, embedding_dim=16, scheme="full")]
    collection = EmbeddingCollection(configs, output="cat")
    model = DLRM(collection, num_dense=4, bottom_mlp=(32,), top_mlp=(32,), dim=16)
    ids = torch.stack([torch.randint(0, n, (7,)) for n in (60, 40, 9)], 1)
    out = model(torch.randn(7, 4), ids)
    assert out.shape == (7,)
    out.sum().backward()
    assert model.align.projections[0].weight.grad is not None
    dcn = DCN(EmbeddingCollection(configs, output="cat"), num_dense=4, cross_layers=2, deep_mlp=(16,))
    assert dcn(torch.randn(7, 4), ids).shape == (7,)
    assert dcn.cross.weights.shape == (2, 4 + 8 + 24 + 16)


def test_no_dense_features():
    configs = [FeatureConfig("a", 10, embedding_dim=4), FeatureConfig("b", 20, embedding_dim=4)]
    model = DLRM(EmbeddingCollection(configs), num_dense=0, top_mlp=(8,))
    assert model(torch.empty(3, 0), torch.zeros(3, 2, dtype=torch.long)).shape == (3,)


@pytest.mark.parametrize("cls", [DLRM, DCN])
def test_dense_input_that_does_not_fit_is_named(cls):
    configs = [FeatureConfig("a", 10, embedding_dim=4), FeatureConfig("b", 20, embedding_dim=4)]
    model = cls(EmbeddingCollection(configs), num_dense=3)
    ids = torch.zeros(5, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="dense has batch size 4 but the categorical features have 5"):
        model(torch.randn(4, 3), ids)
    with pytest.raises(ValueError, match=r"dense must have shape \(B, 3\), one column per dense feature, got \(5, 2\)"):
        model(torch.randn(5, 2), ids)
    assert model(torch.randn(5, 3), ids).shape == (5,)


@pytest.mark.parametrize("bad,match", [
    (dict(arch="transformer"), "arch must be one of"),
    (dict(scheme="bloom"), "scheme must be one of"),
    (dict(operation="max"), "operation must be one of"),
    (dict(deep_mlp=()), "deep_mlp needs"),
    (dict(hot_rows=-1), "hot_rows must be >= 0"),
    (dict(cold_scheme="path"), "cold_scheme must be one of"),
    (dict(cce_columns=3), "cce_columns must be >= 1 and divide embedding_dim=16, got 3"),
    (dict(cce_every=-1), "cce_every must be >= 0, got -1"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)


@pytest.mark.parametrize("scheme,operation", SCHEMES)
def test_fused_and_per_feature_collections_train_the_same_model(scheme, operation):
    """build_model's default fused collection is the per-feature one's model, only faster."""
    dataset = toy_dataset(rows=256, multi_hot=True)
    names = dataset.info.categorical_names
    config = ModelConfig(scheme=scheme, operation=operation, **SMALL)
    models = []
    for fused in (True, False):
        torch.manual_seed(3)
        models.append(build_model(config, dataset.info, sparse=True, fused=fused))
    assert type(models[0].embeddings).__name__ == "FusedEmbeddingCollection"
    assert type(models[1].embeddings).__name__ == "EmbeddingCollection"
    optimizers = [SparseAdagrad(m.parameters(), lr=0.05) for m in models]
    for batch in dataset.loader("train", 64, shuffle=True, seed=0):
        outputs = [m(batch.dense, batch.features(names)) for m in models]
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
        for out, opt in zip(outputs, optimizers):
            F.binary_cross_entropy_with_logits(out, batch.labels).backward()
            opt.step()
            opt.zero_grad()


def test_sparse_gradients_on_every_table():
    dataset = toy_dataset(rows=64)
    for scheme in ("full", "qr", "path"):
        model = build_model(ModelConfig(scheme=scheme, **SMALL), dataset.info, sparse=True)
        batch = next(iter(dataset.loader("train", 32)))
        model(batch.dense, batch.features(dataset.info.categorical_names)).sum().backward()
        grads = [p.grad for p in model.embeddings.parameters()]
        assert grads and all(g is not None and g.is_sparse for g in grads)


def test_hybrid_config_reaches_every_feature_and_labels_itself():
    config = ModelConfig(scheme="hybrid", hot_rows=1000, cold_scheme="qr", operation="mult", num_collisions=4)
    assert config.label() == "hybrid1000+qr-mult/4"
    assert ModelConfig(scheme="hybrid", hot_rows=50, cold_scheme="crt", num_partitions=3).label() == "hybrid50+crt-mult/k3"
    assert ModelConfig(scheme="hybrid", hot_rows=7, cold_scheme="full").label() == "hybrid7+full"
    dataset = toy_dataset(rows=64)
    model = build_model(ModelConfig(scheme="hybrid", cold_scheme="hashing", **SMALL), dataset.info)
    assert {(c.scheme, c.hot_rows, c.cold_scheme) for c in model.embeddings.configs} == {("hybrid", 5, "hashing")}
    assert all(r.scheme.startswith("hybrid[5]") for r in model.embeddings.report())


def test_cce_config_reaches_every_feature_labels_itself_and_has_sparse_gradients():
    assert ModelConfig(scheme="cce", num_collisions=8).label() == "cce-c2/8"
    assert ModelConfig(scheme="cce", cce_columns=4, cce_rows=100).label() == "cce-c4-k100"
    dataset = toy_dataset(rows=64)
    config = ModelConfig(scheme="cce", cce_columns=4, cce_every=7, cce_epoch_end=True, cce_rounds=3, **SMALL)
    model = build_model(config, dataset.info, sparse=True)
    assert {(c.cce_columns, c.cce_every, c.cce_epoch_end, c.cce_rounds) for c in model.embeddings.configs} == {(4, 7, True, 3)}
    modules = [model.embeddings.feature_module(n) for n in dataset.info.categorical_names]
    assert [(m.num_rows, m.every_steps, m.at_epoch_end, m.max_rounds) for m in modules] == [
        (-(-n // 8), 7, True, 3) for n in dataset.info.cardinalities]
    batch = next(iter(dataset.loader("train", 32)))
    model(batch.dense, batch.features(dataset.info.categorical_names)).sum().backward()
    grads = [p.grad for p in model.embeddings.parameters()]
    assert len(grads) == 6 and all(g is not None and g.is_sparse for g in grads)
