"""FusedEmbeddingCollection must equal EmbeddingCollection: outputs, gradients, accounting, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compembed.embedding import EmbeddingCollection, FeatureConfig, feature_configs
from compembed.embedding.fused import FusedEmbeddingCollection

CARDS = [1460, 583, 10_131, 305, 24, 3, 97]


def _ids(configs, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.stack([torch.randint(0, c.num_embeddings, (batch,), generator=generator) for c in configs], dim=1)


def _pair(configs, **kwargs) -> tuple[EmbeddingCollection, FusedEmbeddingCollection]:
    torch.manual_seed(1)
    reference = EmbeddingCollection(configs, **kwargs)
    torch.manual_seed(1)
    fused = FusedEmbeddingCollection(configs, **kwargs)
    return reference, fused


def _grads(module: torch.nn.Module, reference: EmbeddingCollection, fused: FusedEmbeddingCollection) -> dict:
    """Each feature's table gradients as dense tensors, keyed like the reference state dict."""
    out = {}
    if module is reference:
        for name, p in reference.named_parameters():
            out[name] = p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)
        return out
    dense = {k: (p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)) for k, p in fused.weights.items()}
    for entry in fused.table_layout():
        start = entry["row_offset"]
        out[f"embeddings.{entry['feature']}.weights.{entry['table']}"] = dense[entry["weight"]][start : start + entry["rows"]]
    for name, p in fused.embeddings.named_parameters():
        out[f"embeddings.{name}"] = p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)
    return out


def _check_equal(reference, fused, inputs, atol=1e-6):
    out_ref, out_fused = reference(inputs), fused(inputs)
    assert out_ref.shape == out_fused.shape
    torch.testing.assert_close(out_fused, out_ref, rtol=1e-5, atol=atol)
    upstream = torch.randn_like(out_ref)
    out_ref.backward(upstream)
    out_fused.backward(upstream)
    g_ref, g_fused = _grads(reference, reference, fused), _grads(fused, reference, fused)
    assert g_ref.keys() == g_fused.keys()
    for key in g_ref:
        torch.testing.assert_close(g_fused[key], g_ref[key], rtol=1e-5, atol=atol, msg=key)


@pytest.mark.parametrize("scheme", ["full", "hashing", "qr", "gqr", "crt", "path"])
@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
@pytest.mark.parametrize("sparse", [False, True])
def test_one_hot_equals_collection(scheme, operation, sparse):
    configs = feature_configs(CARDS, scheme=scheme, operation=operation, embedding_dim=8, hidden_dims=(8,))
    reference, fused = _pair(configs, threshold=50, sparse=sparse)
    # Same seed, same initial values: the fused init walks the tables in the same order.
    ids = _ids(configs, 33)
    assert torch.equal(fused(ids), reference(ids))
    _check_equal(reference, fused, ids)


def test_mixed_schemes_dims_and_cat_output():
    configs = [
        FeatureConfig("a", 1000, embedding_dim=8, scheme="qr", operation="concat"),
        FeatureConfig("b", 50, embedding_dim=4, scheme="full"),
        FeatureConfig("c", 5000, embedding_dim=6, scheme="gqr", operation="mult", num_partitions=3),
        FeatureConfig("d", 777, embedding_dim=8, scheme="path", hidden_dims=(5,)),
        FeatureConfig("e", 999, embedding_dim=6, scheme="crt", operation="concat", num_partitions=2),
        FeatureConfig("f", 300, embedding_dim=4, scheme="hashing", num_collisions=3),
        FeatureConfig("g", 4096, embedding_dim=8, scheme="qr", operation="add", num_collisions=7),
    ]
    reference, fused = _pair(configs, output="cat", sparse=True)
    assert fused.num_parameters == reference.num_parameters
    assert fused.report() == reference.report()
    assert fused.summary() == reference.summary()
    assert fused.compression_ratio == pytest.approx(reference.compression_ratio)
    _check_equal(reference, fused, _ids(configs, 17))


def test_stack_output_permutation_across_groups():
    # Features alternate between groups, so the output must be put back in feature order.
    configs = [FeatureConfig(f"f{j}", n, scheme=s) for j, (n, s) in enumerate(
        [(10, "full"), (5000, "qr"), (30, "hashing"), (7000, "gqr"), (20, "full"), (4000, "crt")])]
    reference, fused = _pair(configs)
    assert None in fused._spans  # some group's features are not contiguous: placed by index
    _check_equal(reference, fused, _ids(configs, 9))
    reference, fused = _pair(configs, output="cat")
    _check_equal(reference, fused, _ids(configs, 9))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("scheme,operation", [("qr", "mult"), ("gqr", "add"), ("crt", "concat"), ("full", "mult"),
                                              ("hashing", "mult"), ("path", "mult")])
def test_multi_hot_bags_compose_then_pool(mode, scheme, operation):
    configs = feature_configs([500, 90, 3000], names=["x", "y", "z"], scheme=scheme, operation=operation,
                              mode=mode, embedding_dim=6, hidden_dims=(4,))
    reference, fused = _pair(configs, sparse=(mode != "max"))
    # x: 2-D bags, y: one-hot column, z: 1-D values with offsets (an empty bag included).
    values = torch.randint(0, 3000, (11,))
    offsets = torch.tensor([0, 3, 3, 7])
    inputs = {"x": torch.randint(0, 500, (4, 3)), "y": torch.randint(0, 90, (4, 1)), "z": (values, offsets)}
    _check_equal(reference, fused, inputs)


def test_per_sample_weights():
    configs = feature_configs([500, 2000], names=["x", "y"], scheme="qr", operation="mult", embedding_dim=4)
    reference, fused = _pair(configs, sparse=True)
    values = torch.randint(0, 2000, (9,))
    inputs = {"x": torch.randint(0, 500, (3, 1)),
              "y": (values, torch.tensor([0, 2, 5]), torch.rand(9))}
    _check_equal(reference, fused, inputs)


def test_dict_of_one_hot_columns_takes_the_fused_path():
    configs = feature_configs([500, 2000, 30], scheme="qr")
    reference, fused = _pair(configs, sparse=True)
    ids = _ids(configs, 8)
    inputs = {c.name: ids[:, j : j + 1] for j, c in enumerate(configs)}
    assert fused._stack_one_hot(inputs) is not None
    _check_equal(reference, fused, inputs)


@settings(max_examples=25, deadline=None)
@given(
    cards=st.lists(st.integers(1, 3000), min_size=1, max_size=5),
    scheme=st.sampled_from(["full", "hashing", "qr", "gqr", "crt"]),
    operation=st.sampled_from(["mult", "add", "concat"]),
    threshold=st.sampled_from([0, 100]),
    collisions=st.integers(1, 9),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_equal_to_collection(cards, scheme, operation, threshold, collisions, k, seed):
    configs = feature_configs(cards, scheme=scheme, operation=operation, num_collisions=collisions,
                              num_partitions=k, embedding_dim=8)
    reference = EmbeddingCollection(configs, threshold=threshold, sparse=True)
    fused = FusedEmbeddingCollection.from_collection(reference)
    generator = torch.Generator().manual_seed(seed)
    _check_equal(reference, fused, _ids(reference.configs, 6, generator))


def test_from_collection_copies_parameters():
    configs = feature_configs(CARDS, scheme="qr", embedding_dim=4)
    reference = EmbeddingCollection(configs, threshold=100)
    fused = FusedEmbeddingCollection.from_collection(reference)
    ids = _ids(configs, 16)
    assert torch.equal(fused(ids), reference(ids))
    with pytest.raises(KeyError, match="C1"):
        fused.load_collection_state_dict({})


def test_parameters_are_few_fused_weights():
    configs = feature_configs(CARDS, scheme="qr", embedding_dim=8)
    fused = FusedEmbeddingCollection(configs, threshold=50, sparse=True)
    assert [name for name, _ in fused.named_parameters()] == ["weights.8"]
    assert fused.weights["8"].shape[0] == sum(sum(r.table_sizes) for r in fused.report())


def test_out_of_range_id_names_feature_row_and_column():
    configs = feature_configs([10, 20, 30], scheme="qr")
    fused = FusedEmbeddingCollection(configs)
    ids = torch.zeros(4, 3, dtype=torch.int64)
    ids[2, 1] = 20
    with pytest.raises(IndexError, match=r"feature 'C2' \(column 1\): id 20 at row 2 is out of range \[0, 20\)"):
        fused(ids)
    ids[2, 1] = -1
    with pytest.raises(IndexError, match="C2"):
        fused(ids)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        fused(torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        fused(torch.zeros(4, 3))
    with pytest.raises(IndexError, match="'C3'"):
        fused({"C1": torch.zeros(2, 2, dtype=torch.int64), "C2": torch.zeros(2, 2, dtype=torch.int64),
               "C3": torch.full((2, 2), 30)})
    with pytest.raises(KeyError, match="C2"):
        fused({"C1": torch.zeros(2, 1, dtype=torch.int64)})


def test_works_inside_dlrm_and_trains():
    from compembed.models.dlrm import DLRM
    from compembed.optim import SparseSGD

    configs = feature_configs([1000, 50, 700], scheme="qr", embedding_dim=8)
    model = DLRM(FusedEmbeddingCollection(configs, sparse=True), num_dense=4, bottom_mlp=(16,), top_mlp=(16,))
    opt = SparseSGD(model.parameters(), lr=0.1)
    dense, ids = torch.randn(64, 4), _ids(configs, 64)
    labels = (dense[:, 0] > 0).float()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, ids), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.03
