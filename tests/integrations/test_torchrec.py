"""TorchRec form of compositional embeddings: id transform, compressed configs, outputs, DLRM, planner."""
import re

import pytest
import torch

pytest.importorskip("torchrec", reason="TorchRec is not installed (optional; the Makefile's install recipe adds it)")

from _torchrec_cases import FEATURES, make_batch, make_collection  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType  # noqa: E402
from torchrec.distributed.planner import Topology  # noqa: E402
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator  # noqa: E402
from torchrec.distributed.sharding_plan import get_default_sharders  # noqa: E402
from torchrec.fx import symbolic_trace  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor  # noqa: E402

from compembed.embedding import EmbeddingCollection, FeatureConfig, FusedEmbeddingCollection  # noqa: E402
from compembed.integrations.torchrec import (  # noqa: E402
    CompositionalEmbeddingBagCollection,
    PartitionIdTransform,
    partition_table_configs,
)
from compembed.partitions import ChineseRemainder, QuotientRemainder  # noqa: E402


def as_dict(kjt: KeyedJaggedTensor, weighted: bool = False) -> dict:
    """compembed's multi-hot input for the same bags: name -> (values, offsets[, weights])."""
    out = {}
    for name, jt in kjt.to_dict().items():
        offsets = jt.offsets()[:-1]
        out[name] = (jt.values(), offsets, jt.weights()) if weighted else (jt.values(), offsets)
    return out


def test_id_transform_uses_partition_arithmetic():
    qr, crt = QuotientRemainder(100, 4), ChineseRemainder(35, (5, 7))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b", "c"], values=torch.tensor([0, 99, 42, 3, 34, 7]), lengths=torch.tensor([2, 1, 1, 0, 1, 1]),
    )
    out = PartitionIdTransform({"a": qr, "c": crt})(kjt)
    assert out.keys() == ["a__p0", "a__p1", "b", "c__p0", "c__p1"]
    got = out.to_dict()
    a_ids = torch.tensor([0, 99, 42])
    assert got["a__p0"].values().tolist() == qr(a_ids)[:, 0].tolist()
    assert got["a__p1"].values().tolist() == (a_ids % 4).tolist()
    assert got["a__p0"].lengths().tolist() == [2, 1] and got["a__p1"].lengths().tolist() == [2, 1]
    assert got["b"].values().tolist() == [3] and got["b"].lengths().tolist() == [1, 0]
    assert got["c__p0"].values().tolist() == [34 % 5, 7 % 5] and got["c__p1"].values().tolist() == [34 % 7, 0]
    assert out.stride() == 2


def test_id_transform_names_bad_feature():
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=torch.tensor([1, 100]), lengths=torch.tensor([1, 1]))
    with pytest.raises(IndexError, match="feature 'a'.*id 100"):
        PartitionIdTransform({"a": QuotientRemainder(100, 4)})(kjt)


def test_partition_configs_have_compressed_sizes():
    table = EmbeddingBagConfig(num_embeddings=1000, embedding_dim=16, name="t", feature_names=["f", "g"])
    configs = partition_table_configs(table, QuotientRemainder(1000, 4), "concat")
    assert [(c.name, c.num_embeddings, c.embedding_dim) for c in configs] == [("t__p0", 250, 8), ("t__p1", 4, 8)]
    assert configs[0].feature_names == ["f__p0", "g__p0"]
    with pytest.raises(ValueError, match="partition covers 999"):
        partition_table_configs(table, QuotientRemainder(999, 4))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_outputs_and_gradients_equal_compembed(seed):
    ours = make_collection()
    trec = CompositionalEmbeddingBagCollection.from_collection(ours, one_hot=["one_hot"])
    assert trec.unpooled_tables == {"multi_hot"}  # the multi-hot mult table is combined per id
    kjt = make_batch(seed=seed, batch_size=16)
    got, want = trec(kjt), ours(as_dict(kjt))
    assert got.keys() == [f.name for f in FEATURES]
    assert got.values().shape == want.shape == (16, 40)
    torch.testing.assert_close(got.values(), want)
    # Same function, so same gradients for every partition table.
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed))
    (got.values() * weights).sum().backward()
    (want * weights).sum().backward()
    for name, module in ours.embeddings.items():
        for mine, theirs in zip(trec.partition_weights(name), module.weights):
            torch.testing.assert_close(mine.grad, theirs.grad)


def test_from_a_fused_collection_equals_from_the_per_feature_one():
    ours = make_collection()
    fused = FusedEmbeddingCollection.from_collection(ours)
    kjt = make_batch(seed=6, batch_size=16)
    from_fused = CompositionalEmbeddingBagCollection.from_collection(fused, one_hot=["one_hot"])
    from_ours = CompositionalEmbeddingBagCollection.from_collection(ours, one_hot=["one_hot"])
    torch.testing.assert_close(from_fused(kjt).values(), from_ours(kjt).values())
    torch.testing.assert_close(from_fused(kjt).values(), fused(as_dict(kjt)))


def test_pooled_mult_differs_on_multi_hot_bags():
    """Why multi-hot mult is looked up unpooled: pooling each table first is a different function."""
    ours = make_collection()
    trec = CompositionalEmbeddingBagCollection.from_collection(ours, one_hot=["one_hot"])
    wrong = CompositionalEmbeddingBagCollection.from_collection(ours, one_hot=True)
    kjt = make_batch(seed=4, batch_size=16)
    assert wrong.unpooled_tables == set()
    with pytest.raises(ValueError, match="'multi_hot' was declared one-hot"):
        wrong(kjt)
    wrong.transform.one_hot_features = []  # bypass the check to show the numbers differ
    assert not torch.allclose(wrong(kjt)["multi_hot"], trec(kjt)["multi_hot"])


def test_weighted_bags_equal_compembed():
    features = [FeatureConfig("m", 300, 4, "qr", operation="mult"), FeatureConfig("a", 300, 4, "qr", operation="add")]
    torch.manual_seed(0)
    ours = EmbeddingCollection(features, output="cat")
    trec = CompositionalEmbeddingBagCollection.from_collection(ours, is_weighted=True)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["m", "a"], values=torch.tensor([1, 299, 7, 5, 250, 9]), lengths=torch.tensor([2, 1, 0, 3]),
        weights=torch.tensor([0.5, 2.0, -1.0, 1.5, 0.25, 3.0]),
    )
    torch.testing.assert_close(trec(kjt).values(), ours(as_dict(kjt, weighted=True)))


def test_dlrm_uses_module_unchanged():
    one_dim = EmbeddingCollection([f for f in FEATURES if f.operation != "concat"], output="stack")
    trec = CompositionalEmbeddingBagCollection.from_collection(one_dim, one_hot=["one_hot"])
    torch.manual_seed(0)
    model = DLRM(embedding_bag_collection=trec, dense_in_features=13, dense_arch_layer_sizes=[16, 8],
                 over_arch_layer_sizes=[16, 1])
    kjt = make_batch(seed=5, batch_size=6)
    kjt = KeyedJaggedTensor.from_jt_dict({k: v for k, v in kjt.to_dict().items() if k != "concat"})
    sparse = model.sparse_arch(kjt)
    torch.testing.assert_close(sparse, one_dim(as_dict(kjt)))  # (B, F, D) as DLRM sees it
    logits = model(torch.randn(6, 13), kjt)
    assert logits.shape == (6, 1)
    logits.sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in trec.partition_weights("multi_hot"))


def test_unpartitioned_tables_refuse_out_of_range_ids():
    tables = [EmbeddingBagConfig(num_embeddings=10, embedding_dim=4, name="t", feature_names=["f"]),
              EmbeddingBagConfig(num_embeddings=100, embedding_dim=4, name="q", feature_names=["g"])]
    trec = CompositionalEmbeddingBagCollection(tables, {"q": QuotientRemainder(100, 4)})
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f", "g"], values=torch.tensor([3, 9, -1, 5]),
                                              lengths=torch.tensor([2, 1, 1, 0]))
    with pytest.raises(IndexError, match=r"feature 'f': id -1 at position 2 is out of range \[0, 10\)"):
        trec(kjt)
    ok = KeyedJaggedTensor.from_lengths_sync(keys=["f", "g"], values=torch.tensor([3, 9, 0, 5]),
                                             lengths=torch.tensor([2, 1, 1, 0]))
    assert trec(ok).values().shape == (2, 8)


def test_fx_symbolic_trace_of_collection_and_dlrm():
    """torchrec.fx traces the wrapper (and TorchRec's DLRM over it): the id transform and the per-id
    pooling are single opaque nodes, so the graph gives the eager outputs and still checks the ids."""
    trec = CompositionalEmbeddingBagCollection.from_collection(make_collection(), one_hot=["one_hot"])
    traced = symbolic_trace(trec)
    targets = {getattr(n.target, "__name__", n.target) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"_transform_ids", "_pool"} <= targets
    for seed in (7, 8):  # batches other than any seen while tracing
        kjt = make_batch(seed=seed, batch_size=6)
        torch.testing.assert_close(traced(kjt).values(), trec(kjt).values())
    bags = make_batch(seed=7, batch_size=2).to_dict()
    bags["multi_hot"] = JaggedTensor(values=torch.tensor([3, 1000]), lengths=torch.tensor([2, 0]))
    with pytest.raises(IndexError, match=r"feature 'multi_hot': id 1000 at position 1 is out of range"):
        traced(KeyedJaggedTensor.from_jt_dict(bags))

    one_dim = EmbeddingCollection([f for f in FEATURES if f.operation != "concat"], output="stack")
    torch.manual_seed(0)
    tables = CompositionalEmbeddingBagCollection.from_collection(one_dim, one_hot=["one_hot"])
    model = DLRM(embedding_bag_collection=tables,
                 dense_in_features=13, dense_arch_layer_sizes=[16, 8], over_arch_layer_sizes=[16, 1])
    traced_model = symbolic_trace(model)
    kjt = KeyedJaggedTensor.from_jt_dict({k: v for k, v in make_batch(seed=9, batch_size=6).to_dict().items()
                                          if k != "concat"})
    dense = torch.randn(6, 13, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(traced_model(dense, kjt), model(dense, kjt))


def test_planner_storage_estimates_are_compressed_sizes():
    n, dim = 100_000, 16
    table = EmbeddingBagConfig(num_embeddings=n, embedding_dim=dim, name="t", feature_names=["f"],
                               pooling=PoolingType.SUM)
    compressed = CompositionalEmbeddingBagCollection([table], {"t": QuotientRemainder(n, 4)}, one_hot=True)
    full = EmbeddingBagCollection([table])

    def table_wise_ddr(module):
        options = EmbeddingEnumerator(Topology(world_size=2, compute_device="cpu"), batch_size=128).enumerate(
            module, get_default_sharders()
        )
        return {
            o.name: (tuple(o.tensor.shape), o.total_storage.ddr)
            for o in options if o.sharding_type == "table_wise" and o.compute_kernel == "fused"
        }

    ours, theirs = table_wise_ddr(compressed), table_wise_ddr(full)
    assert {name: shape for name, (shape, _) in ours.items()} == {"t__p0": (25_000, dim), "t__p1": (4, dim)}
    # The planner's estimate is the table bytes plus a per-table overhead that does not depend on rows:
    # the compressed tables are charged their own rows, not the full table's.
    overhead = theirs["t"][1] - n * dim * 4
    for (rows, d), ddr in ours.values():
        assert ddr == rows * d * 4 + overhead
    assert sum(ddr for _, ddr in ours.values()) < theirs["t"][1] / 3


# ---- hybrid tables: a hot table for ids < K, the partition tables for the others --------------------

HYBRID = [
    FeatureConfig("h_mult", 300, 4, "hybrid", hot_rows=20, operation="mult"),  # multi-hot mult: per id
    FeatureConfig("h_mean", 300, 4, "hybrid", hot_rows=20, operation="add", mode="mean"),  # mean: per id
    FeatureConfig("h_concat", 300, 4, "hybrid", hot_rows=20, operation="concat", cold_scheme="crt"),  # pooled
    FeatureConfig("h_one_hot", 300, 4, "hybrid", hot_rows=20, operation="mult", mode="mean"),  # declared: pooled
    FeatureConfig("h_all_hot", 10, 4, "hybrid", hot_rows=20),  # a full table
    FeatureConfig("h_none_hot", 50, 4, "hybrid", hot_rows=0, operation="add", cold_scheme="hashing"),
]


def hybrid_batch(features, seed: int, batch_size: int = 12, weighted: bool = False) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    keys, values, lengths = [], [], []
    for f in features:
        bag_lengths = torch.randint(0, 2 if f.name == "h_one_hot" else 5, (batch_size,), generator=g)
        ids = torch.randint(0, f.num_embeddings, (int(bag_lengths.sum()),), generator=g)
        ids[: min(2, ids.numel())] = torch.tensor([19, 20])[: ids.numel()] % f.num_embeddings  # K-1 and K
        keys.append(f.name)
        values.append(ids)
        lengths.append(bag_lengths)
    ids = torch.cat(values)
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=ids, lengths=torch.cat(lengths),
                                               weights=torch.rand(ids.shape, generator=g) if weighted else None)


def test_hybrid_id_transform_routes_hot_and_cold_ids():
    qr = QuotientRemainder(80, 4)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["h", "b"], values=torch.tensor([3, 25, 99, 20, 19, 7]), lengths=torch.tensor([2, 1, 2, 1]),
        weights=torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 5.0]),
    )
    out = PartitionIdTransform({"h": qr}, hot_rows={"h": 20})(kjt)
    assert out.keys() == ["h__hot", "h__p0", "h__p1", "b"]
    got = out.to_dict()
    assert got["h__hot"].values().tolist() == [3] and got["h__hot"].lengths().tolist() == [1, 0]
    assert got["h__hot"].weights().tolist() == [0.5]
    cold = [25 - 20, 99 - 20]
    assert got["h__p0"].values().tolist() == [x // 4 for x in cold] and got["h__p1"].values().tolist() == [1, 3]
    assert got["h__p0"].lengths().tolist() == [1, 1] and got["h__p1"].weights().tolist() == [1.0, 2.0]
    assert got["b"].values().tolist() == [20, 19, 7]
    bad = KeyedJaggedTensor.from_lengths_sync(keys=["h"], values=torch.tensor([100]), lengths=torch.tensor([1]))
    with pytest.raises(IndexError, match="feature 'h'.*id 100"):
        PartitionIdTransform({"h": qr}, hot_rows={"h": 20})(bad)


def test_hybrid_table_configs():
    table = EmbeddingBagConfig(num_embeddings=1000, embedding_dim=16, name="t", feature_names=["f"])
    configs = partition_table_configs(table, QuotientRemainder(900, 4), "mult", hot_rows=100)
    assert [(c.name, c.num_embeddings, c.feature_names) for c in configs] == [
        ("t__hot", 100, ["f__hot"]), ("t__p0", 225, ["f__p0"]), ("t__p1", 4, ["f__p1"])]
    with pytest.raises(ValueError, match=r"partition covers 1000 ids but the table has 900 cold ids"):
        partition_table_configs(table, QuotientRemainder(1000, 4), hot_rows=100)


@pytest.mark.parametrize("weighted", [False, True])
def test_hybrid_outputs_and_gradients_equal_compembed(weighted):
    features = [f for f in HYBRID if not (weighted and f.mode == "mean")]
    torch.manual_seed(0)
    ours = EmbeddingCollection(features, output="cat")
    trec = CompositionalEmbeddingBagCollection.from_collection(ours, one_hot=["h_one_hot"], is_weighted=weighted)
    assert trec.hot_rows == {f.name: 20 for f in features if f.name not in ("h_all_hot", "h_none_hot")}
    assert trec.unpooled_tables == ({"h_mult", "h_mean"} if not weighted else {"h_mult"})
    assert trec.one_hot_features == (["h_one_hot"] if not weighted else [])
    kjt = hybrid_batch(features, seed=1, weighted=weighted)
    got, want = trec(kjt).values(), ours(as_dict(kjt, weighted))
    torch.testing.assert_close(got, want)
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    for f in features:
        mine, theirs = trec.partition_weights(f.name), ours.table_weights(f.name)
        assert [tuple(w.shape) for w in mine] == [tuple(w.shape) for w in theirs]
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a.grad, b.grad)
    fused = FusedEmbeddingCollection.from_collection(ours)
    from_fused = CompositionalEmbeddingBagCollection.from_collection(fused, one_hot=["h_one_hot"], is_weighted=weighted)
    torch.testing.assert_close(from_fused(kjt).values(), want)


def test_fx_symbolic_trace_of_hybrid_tables():
    torch.manual_seed(0)
    trec = CompositionalEmbeddingBagCollection.from_collection(EmbeddingCollection(HYBRID, output="cat"),
                                                               one_hot=["h_one_hot"])
    traced = symbolic_trace(trec)
    assert "_assemble" in {getattr(n.target, "__name__", n.target) for n in traced.graph.nodes}
    kjt = hybrid_batch(HYBRID, seed=3)
    torch.testing.assert_close(traced(kjt).values(), trec(kjt).values())


def test_hybrid_without_torchrec_form_names_feature_and_scheme():
    ours = EmbeddingCollection([FeatureConfig("top", 300, 4, "hybrid", hot_rows=20, mode="max")])
    with pytest.raises(ValueError, match="feature 'top': scheme 'hybrid' with mode 'max' has no TorchRec form"):
        CompositionalEmbeddingBagCollection.from_collection(ours)


@pytest.mark.parametrize("config,named", [
    (dict(scheme="hybrid", hot_rows=20, cold_scheme="robe"), "scheme 'hybrid' (cold part 'robe')"),
    (dict(scheme="robe"), "scheme 'robe'"), (dict(scheme="tt"), "scheme 'tt'"), (dict(scheme="md"), "scheme 'md'"),
    (dict(scheme="dhe"), "scheme 'dhe'"), (dict(scheme="cce"), "scheme 'cce'"),
])
def test_the_fields_methods_are_refused_by_feature_and_scheme(config, named):
    ours = EmbeddingCollection([FeatureConfig("f", 300, 4, mode="sum", **config)])
    with pytest.raises(ValueError, match=rf"feature 'f': {re.escape(named)} with mode 'sum' has no TorchRec form"
                                         r".*data-parallel"):
        CompositionalEmbeddingBagCollection.from_collection(ours)


# ---- quantisation for inference: TorchRec's int8 modules replace the partition tables ---------------

def state_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))


def quantised_dlrm_case():
    one_dim = EmbeddingCollection([f for f in FEATURES if f.operation != "concat"], output="stack")
    torch.manual_seed(0)
    trec = CompositionalEmbeddingBagCollection.from_collection(one_dim, one_hot=["one_hot"])
    model = DLRM(embedding_bag_collection=trec, dense_in_features=13, dense_arch_layer_sizes=[16, 8],
                 over_arch_layer_sizes=[16, 1]).eval()
    kjt = KeyedJaggedTensor.from_jt_dict({k: v for k, v in make_batch(seed=5, batch_size=16).to_dict().items()
                                          if k != "concat"})
    return model, kjt, torch.randn(16, 13, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("how", ["quantize_inference_model", "quantize_embeddings"])
def test_quantisation_swaps_every_partition_table(how):
    from torchrec import EmbeddingCollection as TorchRecEC
    from torchrec.inference.modules import quantize_embeddings, quantize_inference_model
    from torchrec.quant import embedding_modules as quant

    model, kjt, dense = quantised_dlrm_case()
    trec = model.sparse_arch.embedding_bag_collection
    with torch.no_grad():
        want, want_sparse = model(dense, kjt), trec(kjt).values()
    float_bytes = state_bytes(trec)
    if how == "quantize_inference_model":
        quantised = quantize_inference_model(model)
    else:
        quantised = quantize_embeddings(model, dtype=torch.qint8, inplace=True,
                                        additional_qconfig_spec_keys=[TorchRecEC],
                                        additional_mapping={TorchRecEC: quant.EmbeddingCollection})
    qtrec = quantised.sparse_arch.embedding_bag_collection
    assert qtrec is trec  # the wrapper stays; its TorchRec collections are swapped
    assert isinstance(qtrec.pooled, quant.EmbeddingBagCollection)
    assert isinstance(qtrec.unpooled, quant.EmbeddingCollection)
    assert state_bytes(qtrec) < 0.6 * float_bytes
    with torch.no_grad():
        got_sparse, got = qtrec(kjt).values(), quantised(dense, kjt)
    # Row-wise int8: each feature's vectors move, but by well under 2% of their scale.
    for j, name in enumerate(qtrec._embedding_names):
        cols = slice(8 * j, 8 * (j + 1))
        error = (got_sparse[:, cols] - want_sparse[:, cols]).abs().max()
        assert 0 < error < 0.02 * want_sparse[:, cols].abs().max(), name
    torch.testing.assert_close(got, want, rtol=0, atol=0.02 * want.abs().max().item())


def test_default_quantize_embeddings_is_never_a_silent_no_op():
    """TorchRec's quantize_embeddings maps only EmbeddingBagCollection by default, so the per-id (multi-hot
    mult) tables, an EmbeddingCollection, would stay float: a clear error, or a warning when nothing moved."""
    from torchrec.inference.modules import quantize_embeddings

    model, kjt, dense = quantised_dlrm_case()
    with pytest.raises(ValueError, match=r"swapped the pooled partition tables .* but its per-id tables \(multi_hot"):
        quantize_embeddings(model, dtype=torch.qint8, inplace=False)

    only_per_id = EmbeddingCollection([f for f in FEATURES if f.name == "multi_hot"], output="cat")
    trec = CompositionalEmbeddingBagCollection.from_collection(only_per_id)
    assert trec.pooled is None
    with pytest.warns(UserWarning, match=r"left every partition table .* in float.*quantize_inference_model"):
        quantised = quantize_embeddings(trec, dtype=torch.qint8, inplace=False)
    assert state_bytes(quantised) == state_bytes(trec)
