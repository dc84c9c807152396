"""Every embedding module and collection exports (torch.export), compiles with fullgraph=True and runs on meta."""
import pytest
import torch
from torch.export import Dim

from compembed import trusted_inputs
from compembed.embedding import (
    CCEEmbeddingBag,
    CompositionalEmbedding,
    CompositionalEmbeddingBag,
    EmbeddingCollection,
    FeatureConfig,
    FullEmbeddingBag,
    FusedEmbeddingCollection,
    HashEmbeddingBag,
    HybridEmbeddingBag,
    PathEmbeddingBag,
)
from compembed.embedding.dhe import DHEEmbeddingBag
from compembed.embedding.md import MixedDimEmbeddingBag
from compembed.embedding.robe import ROBEEmbeddingBag
from compembed.embedding.tt import TTEmbeddingBag
from compembed.partitions import ChineseRemainder, GeneralizedQuotientRemainder, QuotientRemainder

N, D = 100, 8

MODULES = {
    "full": lambda **kw: FullEmbeddingBag(N, D, **kw),
    "hashing": lambda **kw: HashEmbeddingBag(N, D, num_buckets=13, **kw),
    "qr": lambda **kw: CompositionalEmbeddingBag(N, D, QuotientRemainder(N, 4), **kw),
    "gqr": lambda **kw: CompositionalEmbeddingBag(N, D, GeneralizedQuotientRemainder(N, (5, 5, 4)), operation="add", **kw),
    "crt": lambda **kw: CompositionalEmbeddingBag(N, D, ChineseRemainder(N, (7, 16)), operation="concat", **kw),
    # 4 remainder classes <= 8 inputs of the layer: every batch takes the all-classes branch
    "path": lambda **kw: PathEmbeddingBag(N, D, QuotientRemainder(N, 4), hidden_dims=(8,), **kw),
    # 25 classes > 8 inputs: compiled, the per-input branch whatever the batch
    "path-many": lambda **kw: PathEmbeddingBag(N, D, QuotientRemainder(N, 25), hidden_dims=(8,), **kw),
    "hybrid": lambda **kw: HybridEmbeddingBag(N, D, 10, QuotientRemainder(N - 10, 4), **kw),
    "hybrid-mean": lambda **kw: HybridEmbeddingBag(N, D, 10, ChineseRemainder(N - 10, (9, 10)), mode="mean", **kw),
    "robe": lambda **kw: ROBEEmbeddingBag(N, D, size=40, block_size=4, **kw),
    "hybrid-robe": lambda **kw: HybridEmbeddingBag(
        N, D, 10, ROBEEmbeddingBag(N - 10, D, size=30, block_size=4, device=kw.get("device")), **kw),
    "robe-signs": lambda **kw: ROBEEmbeddingBag(N, D, size=40, block_size=4, signs=True, padding_idx=0, **kw),
    "dhe": lambda **kw: DHEEmbeddingBag(N, D, num_hashes=8, hidden_dims=(8,), buckets=1000, **kw),
    "tt": lambda **kw: TTEmbeddingBag(N, D, rank=2, **kw),
    # ids 0..9 read the cache, the others the train: ids(batch) always has both
    "tt-cache": lambda **kw: TTEmbeddingBag(N, D, rank=2, cache_rows=10, **kw),
    # four blocks of 25 ids (widths 8, 5, 4, 4 under Zipf(1)): three projected
    "md": lambda **kw: MixedDimEmbeddingBag(N, D, alpha=0.3, **kw),
    "cce": lambda **kw: CCEEmbeddingBag(N, D, 13, 2, mode="sum", **kw),
}


def ids(batch: int, length: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, N, (batch, length), generator=g)
    x[0, 0] = 0  # a hot id of the hybrids, and a cold one
    x[0, 1] = N - 1
    return x


@pytest.mark.parametrize("name", list(MODULES))
def test_every_scheme_exports_with_a_dynamic_batch_and_matches_eager(name):
    torch.manual_seed(0)
    module = MODULES[name]()
    program = torch.export.export(module, (ids(6),), dynamic_shapes=({0: Dim("batch")},))
    for batch in (2, 9):
        x = ids(batch, seed=batch)
        torch.testing.assert_close(program.module()(x), module(x))
    bad = ids(4)
    bad[2, 1] = N
    with pytest.raises(RuntimeError, match=rf"an id is out of range \[0, {N}\)"):
        program.module()(bad)


def test_per_id_module_and_bags_with_offsets_export():
    torch.manual_seed(0)
    per_id = CompositionalEmbedding(N, D, QuotientRemainder(N, 4), padding_idx=3)
    x = ids(5)
    torch.testing.assert_close(torch.export.export(per_id, (x,)).module()(x), per_id(x))
    bag = CompositionalEmbeddingBag(N, D, QuotientRemainder(N, 4), mode="sum", include_last_offset=True)
    values, offsets, weights = torch.tensor([1, 50, 99, 7, 8]), torch.tensor([0, 2, 2, 5]), torch.rand(5)
    program = torch.export.export(bag, (values, offsets, weights))
    torch.testing.assert_close(program.module()(values, offsets, weights), bag(values, offsets, weights))
    with pytest.raises(RuntimeError, match="offsets must start at 0, never decrease and end at the number of ids"):
        program.module()(values, torch.tensor([0, 3, 2, 5]), weights)


@pytest.mark.parametrize("name", ["qr", "path", "hybrid", "hybrid-robe", "robe", "dhe", "tt-cache", "md", "cce"])
def test_bags_export_with_dynamic_ids_and_bags(name):
    torch.manual_seed(0)
    bag = MODULES[name]()
    values, offsets = torch.tensor([1, 50, 99, 7, 8]), torch.tensor([0, 2, 2])
    program = torch.export.export(bag, (values, offsets), dynamic_shapes=({0: Dim("ids")}, {0: Dim("bags")}))
    for values, offsets in [(torch.tensor([3, 4, 5, 6, 7, 8, 9, 1]), torch.tensor([0, 1])),
                            (torch.tensor([0, 99, 10, 11]), torch.tensor([0, 0, 1, 3, 4]))]:
        torch.testing.assert_close(program.module()(values, offsets), bag(values, offsets))
    with pytest.raises(RuntimeError, match="offsets must start at 0, never decrease and end within the number of ids"):
        program.module()(values, torch.tensor([0, 3, 2, 4]))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_padding_idx_exports_with_dynamic_batches_and_bags(mode):
    # Traced, pool_bags leaves padding ids out by masking (embedding_bag's padding_idx would fix the batch size).
    torch.manual_seed(0)
    bag = ROBEEmbeddingBag(N, D, size=40, block_size=4, signs=True, padding_idx=7, mode=mode)
    rows = Dim("batch")
    program = torch.export.export(bag, (ids(6),), dynamic_shapes=({0: rows},))
    x = ids(9, seed=9)
    x[1] = 7  # a bag of padding only
    x[2, 0] = 7
    torch.testing.assert_close(program.module()(x), bag(x))
    values, offsets = torch.tensor([7, 50, 7, 7, 8]), torch.tensor([0, 2, 2, 4])  # an empty bag, a padding-only bag
    program = torch.export.export(bag, (values, offsets), dynamic_shapes=({0: Dim("ids")}, {0: Dim("bags")}))
    for values, offsets in [(values, offsets), (torch.tensor([3, 7, 5, 6, 7, 8, 9, 1]), torch.tensor([0, 1]))]:
        torch.testing.assert_close(program.module()(values, offsets), bag(values, offsets))
    if mode == "sum":  # with per_sample_weights
        values, offsets, weights = torch.tensor([7, 50, 7, 7, 8]), torch.tensor([0, 2, 2, 4]), torch.rand(5)
        program = torch.export.export(bag, (values, offsets, weights))
        torch.testing.assert_close(program.module()(values, offsets, weights), bag(values, offsets, weights))


@pytest.mark.parametrize("name", list(MODULES))
def test_every_scheme_compiles_fullgraph(name):
    torch.manual_seed(0)
    module = MODULES[name]()
    compiled = torch.compile(module, fullgraph=True, backend="eager", dynamic=False)
    x = ids(6)
    torch.testing.assert_close(compiled(x), module(x))
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(MODULES))
def test_every_scheme_runs_on_the_meta_device(name):
    module = MODULES[name](device="meta")
    out = module(torch.full((5, 3), N + 7, device="meta"))  # no values: nothing to check
    assert out.shape == (5, D) and out.device.type == "meta"
    bags = module(torch.zeros(7, dtype=torch.long, device="meta"), torch.tensor([0, 3], device="meta"))
    assert bags.shape == (2, D)
    reference = torch.nn.EmbeddingBag(N, D, device="meta")  # as nn.EmbeddingBag does
    assert reference(torch.zeros(7, dtype=torch.long, device="meta"), torch.tensor([0, 3], device="meta")).shape == bags.shape


def mixed_features() -> list[FeatureConfig]:
    return [
        FeatureConfig("a", 50, D, scheme="full"),
        FeatureConfig("b", 300, D, scheme="hybrid", hot_rows=5, cold_scheme="qr"),
        FeatureConfig("c", 100, D, scheme="path", hidden_dims=(8,)),
        FeatureConfig("d", 1000, D, scheme="crt", num_partitions=2),
        FeatureConfig("e", 64, D, scheme="hashing"),
        FeatureConfig("f", 500, D, scheme="gqr", operation="concat"),
    ]


def feature_ids(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c.num_embeddings, (batch,), generator=g) for c in mixed_features()], 1)


@pytest.mark.parametrize("cls", [EmbeddingCollection, FusedEmbeddingCollection])
def test_collections_export_and_match_eager(cls):
    torch.manual_seed(0)
    collection = cls(mixed_features(), output="cat")
    program = torch.export.export(collection, (feature_ids(6),), dynamic_shapes=({0: Dim("batch")},))
    for batch in (3, 11):
        x = feature_ids(batch, seed=batch)
        torch.testing.assert_close(program.module()(x), collection(x))
    bad = feature_ids(4)
    bad[1, 3] = 1000
    with pytest.raises(RuntimeError, match="out of"):
        program.module()(bad)
    multi_hot = {c.name: torch.randint(0, c.num_embeddings, (4, 2)) for c in mixed_features()}
    multi_hot["d"] = (torch.tensor([3, 999, 5, 6, 7, 8]), torch.tensor([0, 1, 1, 4]), torch.rand(6))
    torch.testing.assert_close(torch.export.export(collection, (multi_hot,)).module()(multi_hot), collection(multi_hot))


def test_fused_collection_compiles_fullgraph_with_its_sparse_gradients():
    torch.manual_seed(0)
    fused = FusedEmbeddingCollection(mixed_features(), sparse=True, output="cat")
    x = feature_ids(8)
    upstream = torch.randn(8, 6 * D)
    (fused(x) * upstream).sum().backward()
    expected = {name: p.grad.to_dense() for name, p in fused.named_parameters()}
    fused.zero_grad(set_to_none=True)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager", dynamic=False)
    out = compiled(x)
    torch.testing.assert_close(out, fused(x))
    (out * upstream).sum().backward()
    for name, p in fused.named_parameters():
        assert p.grad.layout == expected[name].layout or p.grad.is_sparse, name
        torch.testing.assert_close(p.grad.to_dense(), expected[name], msg=name)
    torch._dynamo.reset()


def test_trusted_inputs_at_trace_time_leave_the_check_out_of_the_graph():
    torch.manual_seed(0)
    fused = FusedEmbeddingCollection(mixed_features())
    with trusted_inputs():
        program = torch.export.export(fused, (feature_ids(4),))
    checked = torch.export.export(fused, (feature_ids(4),))
    assert "_assert_async" not in str(program.graph) and "_assert_async" in str(checked.graph)
