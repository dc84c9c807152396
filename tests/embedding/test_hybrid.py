"""HybridEmbeddingBag: hot ids own rows, cold ids go through a compressed scheme."""
import pytest
import torch

from compembed.embedding import (
    CompositionalEmbeddingBag,
    EmbeddingCollection,
    FeatureConfig,
    FullEmbeddingBag,
    HybridEmbeddingBag,
    ROBEEmbeddingBag,
    build_embedding_bag,
    combine,
    default_std,
)
from compembed.partitions import ChineseRemainder, GeneralizedQuotientRemainder, Hashing, QuotientRemainder

COLD = {
    "full": lambda n: ("mult", FullEmbeddingBag(n, 6).partition),
    "hashing": lambda n: ("mult", Hashing(n, max(1, n // 3))),
    "qr-mult": lambda n: ("mult", QuotientRemainder(n, 4)),
    "qr-concat": lambda n: ("concat", QuotientRemainder(n, 5)),
    "gqr-add": lambda n: ("add", GeneralizedQuotientRemainder(n, (5, 5, 4))),
    "crt-mult": lambda n: ("mult", ChineseRemainder(n, (5, 7, 3))),
}


def _hybrid(n=100, k=10, cold="qr-mult", seed=0, **kwargs) -> HybridEmbeddingBag:
    operation, partition = COLD[cold](n - k)
    torch.manual_seed(seed)
    return HybridEmbeddingBag(n, 6, k, partition, operation=operation, **kwargs)


def _slow_vector(module: HybridEmbeddingBag, x: int) -> torch.Tensor:
    """e(x) by the definition, one id at a time."""
    if x < module.hot_rows:
        return module.hot[x]
    cold = module.cold
    classes = cold.partition(torch.tensor([x - module.hot_rows]))[0].tolist()
    return combine([w[c] for w, c in zip(cold.weights, classes)], cold.operation)


def _slow_bags(module, bags, weights, mode):
    out = []
    for b, bag in enumerate(bags):
        if not bag:
            out.append(torch.zeros(module.embedding_dim))
            continue
        vectors = torch.stack([_slow_vector(module, x) for x in bag])
        if weights is not None:
            vectors = vectors * torch.tensor(weights[b]).unsqueeze(1)
        out.append({"sum": vectors.sum(0), "mean": vectors.mean(0), "max": vectors.max(0).values}[mode])
    return torch.stack(out)


@pytest.mark.parametrize("cold", sorted(COLD))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_forward_equals_slow_computation(cold, mode):
    module = _hybrid(cold=cold, mode=mode)
    g = torch.Generator().manual_seed(1)
    # 2-D bags with hot, cold and boundary ids.
    ids = torch.randint(0, 100, (5, 3), generator=g)
    ids[0] = torch.tensor([0, 9, 10])
    ids[1] = torch.tensor([99, 9, 9])
    with torch.no_grad():
        torch.testing.assert_close(module(ids), _slow_bags(module, ids.tolist(), None, mode))
    # 1-D ids with offsets (an empty bag), with and without include_last_offset.
    values = torch.randint(0, 100, (9,), generator=g)
    bags = [values[0:4].tolist(), [], values[4:9].tolist()]
    with torch.no_grad():
        torch.testing.assert_close(module(values, torch.tensor([0, 4, 4])), _slow_bags(module, bags, None, mode))
        last = _hybrid(cold=cold, mode=mode, include_last_offset=True)
        torch.testing.assert_close(last(values, torch.tensor([0, 4, 4, 9])), _slow_bags(last, bags, None, mode))
    if mode == "sum":
        weights = torch.rand(9, generator=g)
        wbags = [weights[0:4].tolist(), [], weights[4:9].tolist()]
        with torch.no_grad():
            got = module(values, torch.tensor([0, 4, 4]), per_sample_weights=weights)
            torch.testing.assert_close(got, _slow_bags(module, bags, wbags, mode))
            got = module(ids, per_sample_weights=torch.ones(5, 3))
            torch.testing.assert_close(got, _slow_bags(module, ids.tolist(), None, mode))


def test_boundaries_map_exactly():
    module = _hybrid(n=100, k=10, cold="qr-mult")
    vectors = module.embed(torch.tensor([0, 9, 10, 11, 99]))
    cold = module.cold.embed(torch.tensor([0, 1, 89]))
    assert torch.equal(vectors[:2], module.hot[[0, 9]])
    assert torch.equal(vectors[2:], cold)
    is_hot, hot_rows, cold_ids = module.split(torch.tensor([[9, 10], [0, 99]]))
    assert is_hot.tolist() == [[True, False], [True, False]]
    assert hot_rows.tolist() == [9, 0] and cold_ids.tolist() == [0, 89]


def test_big_ids_near_2_40_map_exactly_without_allocating():
    n, k, c = 2**40 + 12_345, 1_000, 2**20
    module = HybridEmbeddingBag(n, 16, k, QuotientRemainder(n - k, c), device="meta")
    assert module.table_sizes == (k, -(-(n - k) // c), c)
    ids = torch.tensor([0, k - 1, k, 2**40 - 1, 2**40, n - 1])
    is_hot, hot_rows, cold_ids = module.split(ids)
    assert is_hot.tolist() == [True, True, False, False, False, False]
    assert hot_rows.tolist() == [0, k - 1]
    expected = [x - k for x in ids.tolist()[2:]]
    assert cold_ids.tolist() == expected
    classes = module.cold.partition(cold_ids, validate=False)
    assert classes.tolist() == [[x // c, x % c] for x in expected]
    assert classes[:, 0].max().item() < module.table_sizes[1]
    report, = EmbeddingCollection([FeatureConfig("big", n, scheme="hybrid", hot_rows=k, num_collisions=c)],
                                  device="meta").report()
    assert report.scheme == "hybrid[1000]+qr-mult" and report.table_sizes == module.table_sizes
    assert report.parameters == sum(module.table_sizes) * 16 and report.bytes == 4 * report.parameters


@pytest.mark.parametrize("cold", ["qr-mult", "qr-concat", "crt-mult", "gqr-add"])
def test_every_id_gets_a_unique_vector_with_a_complementary_cold_scheme(cold):
    n, k = 60, 7
    module = _hybrid(n=n, k=k, cold=cold)
    from compembed.partitions import is_complementary

    assert is_complementary(module.cold.partition)
    with torch.no_grad():
        vectors = module.embed(torch.arange(n))
    assert torch.unique(vectors, dim=0).shape[0] == n
    for x in (0, k - 1, k, n - 1):
        torch.testing.assert_close(vectors[x], _slow_vector(module, x).detach())


@pytest.mark.parametrize("cold", ["qr-mult", "hashing", "crt-mult"])
def test_sparse_gradients_only_on_used_rows(cold):
    module = _hybrid(n=100, k=10, cold=cold, sparse=True)
    # Only hot ids: the cold tables get a gradient with no rows.
    module(torch.tensor([[1, 3], [3, 5]])).sum().backward()
    assert sorted(module.hot.grad.coalesce().indices()[0].tolist()) == [1, 3, 5]
    assert all(w.grad._nnz() == 0 for w in module.cold.weights)
    # Mixed: the hot table gets the hot ids' rows, each cold table the cold ids' classes.
    module.zero_grad()
    ids = torch.tensor([[2, 50], [99, 10]])
    module(ids).sum().backward()
    assert module.hot.grad.coalesce().indices()[0].tolist() == [2]
    classes = module.cold.partition(torch.tensor([40, 89, 0]))
    for t, weight in enumerate(module.cold.weights):
        assert set(weight.grad.coalesce().indices()[0].tolist()) == set(classes[:, t].tolist())


def test_sparse_adam_keeps_the_state_of_unused_rows():
    module = _hybrid(n=100, k=10, cold="qr-mult", sparse=True)
    optimizer = torch.optim.SparseAdam(module.parameters(), lr=0.1)
    module(torch.arange(100).view(-1, 1)).square().sum().backward()  # every row gets state
    optimizer.step()
    optimizer.zero_grad()
    before = [p.detach().clone() for p in module.parameters()]
    state = [{k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)} for p in module.parameters()]
    module(torch.tensor([[1], [3]])).square().sum().backward()  # hot ids only
    optimizer.step()
    moved = [(p - b).abs().sum(1).nonzero().flatten().tolist() for p, b in zip(module.parameters(), before)]
    assert moved == [[1, 3], [], []]
    for p, old in zip(module.parameters(), state):
        unused = [r for r in range(p.shape[0]) if not (p is module.hot and r in (1, 3))]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[p][key][unused], old[key][unused]), key


def test_dense_gradients_and_max_mode_match_slow_path():
    module = _hybrid(n=50, k=5, cold="qr-mult", mode="max")
    ids = torch.tensor([[0, 7, 49], [4, 4, 5]])
    module(ids).sum().backward()
    reference = _hybrid(n=50, k=5, cold="qr-mult", mode="max")
    _slow_bags(reference, ids.tolist(), None, "max").sum().backward()
    for p, q in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_init_spreads_and_extremes():
    module = _hybrid(n=100_000, k=50_000, cold="qr-mult")
    std = default_std(100_000)
    assert module.hot.std().item() == pytest.approx(std, rel=0.02)
    assert module.cold.init_std == std  # the cold tables compose to a full table's spread over all n ids
    # K = 0 is the cold scheme over all ids, K = n (or more, in a config) is a full table: same seed, same model.
    for hot_rows, other in ((0, "qr"), (1000, "full"), (5000, "full")):
        torch.manual_seed(3)
        hybrid = build_embedding_bag(FeatureConfig("f", 1000, scheme="hybrid", hot_rows=hot_rows, cold_scheme="qr"))
        torch.manual_seed(3)
        plain = build_embedding_bag(FeatureConfig("f", 1000, scheme=other))
        ids = torch.randint(0, 1000, (8, 2))
        assert torch.equal(hybrid(ids), plain(ids))
        assert [p.shape for p in hybrid.parameters()] == [p.shape for p in plain.parameters()]


def test_config_builds_every_cold_scheme_and_accounts_bytes():
    configs = [FeatureConfig(f"f{j}", n, embedding_dim=8, scheme="hybrid", hot_rows=k, cold_scheme=s, operation=op)
               for j, (n, k, s, op) in enumerate([(1000, 10, "qr", "mult"), (3000, 30, "gqr", "concat"),
                                                   (500, 5, "crt", "add"), (700, 7, "hashing", "mult"),
                                                   (40, 4, "full", "mult"), (20, 50, "qr", "mult"), (90, 0, "qr", "add")])]
    collection = EmbeddingCollection(configs, output="cat", dtype=torch.float64)
    reports = collection.report()
    assert [r.scheme for r in reports] == ["hybrid[10]+qr-mult", "hybrid[30]+gqr-concat", "hybrid[5]+crt-add",
                                           "hybrid[7]+hashing", "hybrid[4]+full", "hybrid[20]", "hybrid[0]+qr-add"]
    assert reports[0].table_sizes == (10, 248, 4)
    for report, module in zip(reports, collection.embeddings.values()):
        assert report.bytes == sum(p.numel() * p.element_size() for p in module.parameters())
        assert report.table_sizes == tuple(w.shape[0] for w in module.weights)
    allocated = sum(p.numel() * p.element_size() for p in collection.parameters())
    assert collection.num_bytes == allocated == sum(r.bytes for r in reports)
    assert collection.table_weights("f0")[0] is collection.embeddings["f0"].hot
    assert "hybrid[10]+qr-mult" in collection.summary()


def test_bad_arguments_raise_clear_errors():
    qr = QuotientRemainder(90, 4)
    for bad in (-1, 101, 1.5, True):
        with pytest.raises(ValueError, match=r"hot_rows must be an int in \[0, num_embeddings=100\]"):
            HybridEmbeddingBag(100, 6, bad, qr)
    with pytest.raises(ValueError, match="cold is needed for the 90 cold ids"):
        HybridEmbeddingBag(100, 6, 10)
    with pytest.raises(ValueError, match="leaves no cold ids: cold must be None"):
        HybridEmbeddingBag(100, 6, 100, qr)
    with pytest.raises(ValueError, match=r"cold covers 90 ids but there are num_embeddings - hot_rows = 100 - 20 = 80"):
        HybridEmbeddingBag(100, 6, 20, qr)
    with pytest.raises(ValueError, match="cold has embedding_dim 4"):
        HybridEmbeddingBag(100, 6, 10, CompositionalEmbeddingBag(90, 4, qr))
    with pytest.raises(ValueError, match="sparse=True"):
        HybridEmbeddingBag(100, 6, 10, CompositionalEmbeddingBag(90, 6, qr), sparse=True)
    with pytest.raises(TypeError, match="cold must be a Partition"):
        HybridEmbeddingBag(100, 6, 10, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        HybridEmbeddingBag(100, 6, 10, qr, mode="median")
    with pytest.raises(IndexError, match=r"id 100 .* out of range \[0, 100\)"):
        _hybrid()(torch.tensor([[3, 100]]))
    with pytest.raises(ValueError, match="feature 'f': hot_rows must be an int >= 0, got -2"):
        FeatureConfig("f", 10, scheme="hybrid", hot_rows=-2)
    with pytest.raises(ValueError, match="feature 'f': cold_scheme must be one of .* got 'path'"):
        FeatureConfig("f", 10, scheme="hybrid", cold_scheme="path")
    with pytest.raises(ValueError, match="feature 'f': moduli must be pairwise coprime"):
        build_embedding_bag(FeatureConfig("f", 100, scheme="hybrid", hot_rows=5, cold_scheme="crt", factors=(4, 6, 25)))


def test_a_given_cold_module_is_used_as_is():
    torch.manual_seed(0)
    cold = CompositionalEmbeddingBag(90, 6, QuotientRemainder(90, 4), operation="add")
    module = HybridEmbeddingBag(100, 6, 10, cold)
    assert module.cold is cold and module.weights[1:] == list(cold.weights)
    assert torch.equal(module.embed(torch.tensor([10, 99])), cold.embed(torch.tensor([0, 89])))


# ---- a ROBE-Z cold part (the planner's ``cold="robe"``) ------------------------------------------

def _robe_hybrid(n=100, k=10, size=37, z=2, mode="sum", sparse=False, signs=True) -> HybridEmbeddingBag:
    torch.manual_seed(0)
    cold = ROBEEmbeddingBag(n - k, 6, size, block_size=z, signs=signs, mode=mode, sparse=sparse, seed=3)
    return HybridEmbeddingBag(n, 6, k, cold, mode=mode, sparse=sparse)


def _slow_robe_vector(module: HybridEmbeddingBag, x: int) -> torch.Tensor:
    """e(x) by the definition: the hot row, or the cold id's D/Z blocks read from the array with wrap-around."""
    if x < module.hot_rows:
        return module.hot[x]
    robe, y = module.cold, x - module.hot_rows
    values = []
    for i in range(robe.num_blocks):
        start = ((int(robe.hash_a[i]) * y + int(robe.hash_b[i])) % (2**31 - 1)) % robe.size
        sign = 1 - 2 * (((int(robe.sign_a[i]) * y + int(robe.sign_b[i])) % (2**31 - 1)) % 2) if robe.signs else 1
        values += [sign * robe.weight[(start + j) % robe.size, 0] for j in range(robe.block_size)]
    return torch.stack(values)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_robe_cold_part_equals_the_definition(mode):
    module = _robe_hybrid(mode=mode)
    ids = torch.tensor([[0, 9, 10], [99, 9, 9], [55, 10, 3], [98, 97, 96]])
    slow = torch.stack([{"sum": v.sum(0), "mean": v.mean(0), "max": v.max(0).values}[mode]
                        for v in (torch.stack([_slow_robe_vector(module, x) for x in bag]) for bag in ids.tolist())])
    with torch.no_grad():
        torch.testing.assert_close(module(ids), slow)
        # a cold id reads what the ROBE module itself gives its shifted id
        torch.testing.assert_close(module.embed(torch.tensor([10, 99])), module.cold.embed(torch.tensor([0, 89])))


def test_robe_cold_part_gradients_reach_only_what_was_read():
    module = _robe_hybrid(sparse=True)
    module(torch.tensor([[0, 1], [2, 2]])).sum().backward()  # hot ids only
    assert module.cold.weight.grad is None or module.cold.weight.grad.coalesce().values().abs().sum() == 0
    assert set(module.hot.grad.coalesce().indices()[0].tolist()) == {0, 1, 2}
    module.zero_grad()
    module(torch.tensor([[50]])).sum().backward()  # one cold id: its D/Z blocks of Z values
    read = set(module.cold.positions(torch.tensor([40])).flatten().tolist())
    assert set(module.cold.weight.grad.coalesce().indices()[0].tolist()) == read
    assert module.hot.grad is None or module.hot.grad.coalesce().values().abs().sum() == 0


def test_robe_cold_part_from_a_config_counts_its_bytes():
    config = FeatureConfig("f", 1000, 16, scheme="hybrid", hot_rows=40, cold_scheme="robe", robe_size=777, block_size=8)
    module = build_embedding_bag(config)
    assert isinstance(module.cold, ROBEEmbeddingBag) and module.cold.num_embeddings == 960
    assert module.table_sizes == (40, 777) and module.num_parameters == 40 * 16 + 777
    report = EmbeddingCollection([config]).report()[0]
    assert report.scheme == "hybrid[40]+robe-8" and report.parameters == 40 * 16 + 777
    # without robe_size, the array holds the hashing trick's values of the cold ids: ceil(960 * 16 / 4)
    assert build_embedding_bag(FeatureConfig("f", 1000, 16, scheme="hybrid", hot_rows=40,
                                             cold_scheme="robe")).cold.size == 3840
    with pytest.raises(ValueError, match=r"feature 'f': block_size Z=5 must divide embedding_dim D=16"):
        FeatureConfig("f", 1000, 16, scheme="hybrid", hot_rows=40, cold_scheme="robe", block_size=5)
    with pytest.raises(ValueError, match="a ROBE cold part has no max_norm or scale_grad_by_freq"):
        HybridEmbeddingBag(100, 6, 10, ROBEEmbeddingBag(90, 6, 30), max_norm=1.0)
    with pytest.raises(ValueError, match="sparse=True"):
        HybridEmbeddingBag(100, 6, 10, ROBEEmbeddingBag(90, 6, 30), sparse=True)
