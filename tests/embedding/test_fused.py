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
        out[f"embeddings.{entry['feature']}.{entry['param']}"] = dense[entry["weight"]][start : start + entry["rows"]]
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


# ---- hybrid features: the hot table and the cold tables in the fused gather ----------------------

def _hybrid_configs(cold_scheme="qr", operation="mult", mode="sum", hot_rows=30):
    return feature_configs(CARDS, scheme="hybrid", hot_rows=hot_rows, cold_scheme=cold_scheme, operation=operation,
                           mode=mode, embedding_dim=8)


def _boundary_ids(configs, batch=40, hot_rows=30):
    ids = _ids(configs, batch, torch.Generator().manual_seed(2))
    for j, c in enumerate(configs):  # K-1, K, n-1 where they exist, then some of each
        ids[:3, j] = torch.tensor([min(hot_rows - 1, c.num_embeddings - 1), min(hot_rows, c.num_embeddings - 1),
                                   c.num_embeddings - 1])
    return ids


@pytest.mark.parametrize("cold_scheme", ["full", "hashing", "qr", "gqr", "crt"])
@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
@pytest.mark.parametrize("sparse", [False, True])
def test_hybrid_one_hot_equals_collection(cold_scheme, operation, sparse):
    configs = _hybrid_configs(cold_scheme, operation)
    reference, fused = _pair(configs, sparse=sparse)
    assert any(g.select for g in fused.groups)  # the hybrids are fused, not per-feature modules
    assert not fused.embeddings
    ids = _boundary_ids(configs)
    assert torch.equal(fused(ids), reference(ids))  # same seed, same initial values
    _check_equal(reference, fused, ids)
    _check_equal(reference, fused, {c.name: ids[:, j : j + 1] for j, c in enumerate(configs)})


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("cold_scheme,operation", [("qr", "mult"), ("crt", "concat"), ("hashing", "add")])
def test_hybrid_multi_hot_bags(mode, cold_scheme, operation):
    configs = feature_configs([500, 90, 3000], names=["x", "y", "z"], scheme="hybrid", hot_rows=40,
                              cold_scheme=cold_scheme, operation=operation, mode=mode, embedding_dim=6)
    reference, fused = _pair(configs, sparse=(mode != "max"))
    values = torch.tensor([0, 39, 40, 2999, 5, 1000, 7, 41, 2, 39, 3])
    offsets = torch.tensor([0, 3, 3, 7])
    inputs = {"x": torch.tensor([[0, 39, 40], [499, 1, 2], [41, 42, 43], [3, 4, 5]]),
              "y": torch.randint(0, 90, (4, 1)), "z": (values, offsets)}
    _check_equal(reference, fused, inputs)
    if mode == "sum":
        inputs["z"] = (values, offsets, torch.rand(values.shape))
        _check_equal(*_pair(configs, sparse=True), inputs)


def _touched(collection) -> dict:
    """Per feature table: the rows its sparse gradient names (as rows of that table)."""
    if isinstance(collection, FusedEmbeddingCollection):
        rows = {k: set(p.grad.coalesce().indices()[0].tolist()) for k, p in collection.weights.items()}
        return {(e["feature"], e["param"]): {r - e["row_offset"] for r in rows[e["weight"]]
                                             if e["row_offset"] <= r < e["row_offset"] + e["rows"]}
                for e in collection.table_layout()}
    return {(name.split(".")[0], name.split(".", 1)[1]): set(p.grad.coalesce().indices()[0].tolist())
            for name, p in collection.embeddings.named_parameters()}


def test_hybrid_sparse_gradient_names_only_used_rows():
    configs = _hybrid_configs("qr", "mult")
    reference, fused = _pair(configs, sparse=True)
    ids = _ids(configs, 16) % 30  # hot ids only: no cold row of any feature is used
    ids[0, 0] = 1000  # except one cold id of C1
    reference(ids).sum().backward()
    fused(ids).sum().backward()
    touched = _touched(fused)
    assert touched == _touched(reference)
    assert touched["C1", "cold.weights.0"] == {(1000 - 30) // 4} and touched["C1", "cold.weights.1"] == {(1000 - 30) % 4}
    assert all(not rows for (f, p), rows in touched.items() if p.startswith("cold") and f != "C1")


def test_hybrid_sparse_adam_keeps_the_state_of_unused_rows():
    configs = _hybrid_configs("qr", "mult")
    _, fused = _pair(configs, sparse=True)
    optimizer = torch.optim.SparseAdam(fused.parameters(), lr=0.1)
    fused(_ids(configs, 4000)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    weight = fused.weights["8"]
    before, state = weight.detach().clone(), {k: optimizer.state[weight][k].clone() for k in ("exp_avg", "exp_avg_sq")}
    ids = torch.zeros(2, len(configs), dtype=torch.int64)
    ids[:, 0] = torch.tensor([3, 1000])  # C1: hot 3 and cold 1000; every other feature: hot 0
    fused(ids).square().sum().backward()
    optimizer.step()
    offset = {(e["feature"], e["param"]): e["row_offset"] for e in fused.table_layout()}
    used = {offset["C1", "hot"] + 3, offset["C1", "cold.weights.0"] + 242, offset["C1", "cold.weights.1"] + 2}
    used |= {offset[c.name, "hot"] for c in configs[1:]}
    moved = set((weight - before).abs().sum(1).nonzero().flatten().tolist())
    assert moved == used
    unused = torch.tensor(sorted(set(range(weight.shape[0])) - used))
    for key, old in state.items():
        assert torch.equal(optimizer.state[weight][key][unused], old[unused])


def test_hybrid_state_layout_and_accounting():
    configs = [FeatureConfig("h", 5000, embedding_dim=8, scheme="hybrid", hot_rows=50, cold_scheme="gqr"),
               FeatureConfig("p", 777, embedding_dim=8, scheme="path", hidden_dims=(5,)),
               FeatureConfig("small", 20, embedding_dim=4, scheme="hybrid", hot_rows=50),
               FeatureConfig("zero", 300, embedding_dim=4, scheme="hybrid", hot_rows=0, cold_scheme="crt",
                             operation="concat"),
               FeatureConfig("q", 1000, embedding_dim=6, scheme="qr", operation="add")]
    reference, fused = _pair(configs, output="cat", sparse=True)
    assert fused.report() == reference.report() and fused.summary() == reference.summary()
    assert fused.num_bytes == reference.num_bytes == sum(r.bytes for r in fused.report())
    layout = {(e["feature"], e["table"]): e for e in fused.table_layout()}
    assert [layout["h", t]["param"] for t in range(4)] == ["hot", "cold.weights.0", "cold.weights.1", "cold.weights.2"]
    assert layout["small", 0]["param"] == "hot" and layout["zero", 0]["param"] == "cold.weights.0"
    for name in ("h", "small", "zero", "q"):
        mine, theirs = fused.table_weights(name), reference.table_weights(name)
        assert [tuple(w.shape) for w in mine] == [tuple(w.shape) for w in theirs]
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    _check_equal(reference, fused, _ids(configs, 17))
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(1.0)
    copy = FusedEmbeddingCollection.from_collection(reference)
    ids = _ids(configs, 9)
    assert torch.equal(copy(ids), reference(ids))
    state = {k: v for k, v in reference.state_dict().items() if k != "embeddings.h.hot"}
    with pytest.raises(KeyError, match="feature 'h': 'embeddings.h.hot' is missing"):
        fused.load_collection_state_dict(state)


@settings(max_examples=20, deadline=None)
@given(
    cards=st.lists(st.integers(1, 3000), min_size=1, max_size=4),
    hot_rows=st.integers(0, 400),
    cold_scheme=st.sampled_from(["full", "hashing", "qr", "gqr", "crt"]),
    operation=st.sampled_from(["mult", "add", "concat"]),
    seed=st.integers(0, 2**16),
)
def test_property_hybrid_equal_to_collection(cards, hot_rows, cold_scheme, operation, seed):
    configs = feature_configs(cards, scheme="hybrid", hot_rows=hot_rows, cold_scheme=cold_scheme, operation=operation,
                              num_collisions=3, embedding_dim=8)
    reference = EmbeddingCollection(configs, sparse=True)
    fused = FusedEmbeddingCollection.from_collection(reference)
    _check_equal(reference, fused, _ids(configs, 6, torch.Generator().manual_seed(seed)))


def test_only_path_features_leave_nothing_to_gather():
    configs = feature_configs([100, 200], scheme="path", embedding_dim=4, hidden_dims=(4,))
    reference, fused = _pair(configs, sparse=True)
    assert not fused.weights and not fused.groups
    _check_equal(reference, fused, _ids(configs, 5))


@pytest.mark.parametrize("sparse", [False, True])
def test_a_hybrid_with_a_robe_cold_part_keeps_its_own_module(sparse):
    configs = [FeatureConfig("r", 3000, 8, scheme="hybrid", hot_rows=40, cold_scheme="robe", robe_size=501),
               FeatureConfig("q", 900, 8, scheme="hybrid", hot_rows=30, cold_scheme="qr"),
               FeatureConfig("o", 700, 8, scheme="robe", robe_size=300)]
    reference, fused = _pair(configs, sparse=sparse)
    assert set(fused.embeddings) == {"r", "o"}  # the robe hybrid runs as it is; the qr hybrid is fused
    assert any(g.select for g in fused.groups)
    ids = _boundary_ids(configs, hot_rows=40)
    assert torch.equal(fused(ids), reference(ids))  # one seed gives one model, whichever collection builds it
    _check_equal(reference, fused, ids)
    assert fused.num_bytes == reference.num_bytes
