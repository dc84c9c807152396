"""CCE: lookups against a slow per-id computation, gradients, no loop over ids, byte accounting, errors,
re-clustering, hooks, export."""
import pytest
import torch
from torch.export import Dim

from compembed.embedding import CCEEmbeddingBag, EmbeddingCollection, FeatureConfig, FusedEmbeddingCollection
from compembed.embedding import cce
from compembed.embedding.cce import cce_index_bytes, chunk_rows, kmeans, nearest
from compembed.embedding.robe import PRIME
from compembed.planning import feature_bytes
from compembed.training import reset_optimizer_state

from embedding.ops import count_ops

N, D, K, C = 200, 8, 12, 2


def module(**kw) -> CCEEmbeddingBag:
    torch.manual_seed(0)
    args = dict(num_rows=K, num_columns=C, seed=3)
    args.update(kw)
    return CCEEmbeddingBag(N, D, **args)


def slow_vector(m: CCEEmbeddingBag, x: int) -> torch.Tensor:
    """The paper's formula for one id, column by column."""
    parts = []
    for i in range(m.num_columns):
        a = int(m.assignment[x, i])
        h = ((int(m.hash_a[i]) * x + int(m.hash_b[i])) % PRIME) % m.num_rows
        parts.append(m.clustered[i * m.num_rows + a] + m.hashed[i * m.num_rows + h])
    return torch.cat(parts)


def slow_bags(m, bags, weights=None):
    out = []
    for b, bag in enumerate(bags):
        vectors = torch.stack([slow_vector(m, x) for x in bag])
        if weights is not None:
            vectors = vectors * torch.tensor(weights[b]).unsqueeze(1)
        out.append({"sum": vectors.sum(0), "mean": vectors.mean(0), "max": vectors.max(0).values}[m.mode])
    return torch.stack(out)


BAGS = [[3, 199, 3], [0], [57, 58, 59, 60]]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("reclustered", [False, True])
def test_forward_equals_the_per_id_formula(mode, reclustered):
    m = module(mode=mode)
    if reclustered:
        with torch.no_grad():
            m.hashed.normal_()  # after a round the hashed tables are zero: give them values again
        m.recluster()
        with torch.no_grad():
            m.hashed.normal_()
    values = torch.tensor([x for bag in BAGS for x in bag])
    offsets = torch.tensor([0, 3, 4])
    torch.testing.assert_close(m(values, offsets), slow_bags(m, BAGS))
    square = torch.tensor([[5, 6], [199, 0]])
    torch.testing.assert_close(m(square), slow_bags(m, square.tolist()))


def test_per_sample_weights_and_include_last_offset():
    m = module(mode="sum", include_last_offset=True)
    values = torch.tensor([x for bag in BAGS for x in bag])
    weights = torch.rand(values.numel(), generator=torch.Generator().manual_seed(1))
    nested = [weights[:3].tolist(), weights[3:4].tolist(), weights[4:].tolist()]
    out = m(values, torch.tensor([0, 3, 4, 8]), weights)
    torch.testing.assert_close(out, slow_bags(m, BAGS, nested))


def test_padding_idx_is_left_out():
    m = module(mode="sum", padding_idx=7)
    torch.testing.assert_close(m(torch.tensor([[7, 9]])), slow_bags(m, [[9]]))


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_reach_both_tables(sparse):
    m = module(mode="sum", sparse=sparse)
    m(torch.tensor([[1, 2, 150]])).sum().backward()
    for p in (m.clustered, m.hashed):
        assert p.grad is not None and p.grad.is_sparse == sparse
        dense = p.grad.to_dense()
        # 3 ids x 2 columns touch at most 6 rows, each getting ones (d sum / d row)
        touched = dense.abs().sum(1) > 0
        assert 1 <= int(touched.sum()) <= 6 and torch.all(dense[touched] >= 1)


@pytest.mark.parametrize(("sparse", "padding_idx"), [(True, None), (False, 5)])
def test_no_python_loop_over_ids(sparse, padding_idx):
    """The ops torch runs for a forward and backward do not grow with the number of ids."""
    m = CCEEmbeddingBag(10**5, 16, num_rows=500, num_columns=4, mode="sum", sparse=sparse, padding_idx=padding_idx)

    def ops(batch: int) -> int:
        ids = torch.randint(0, 10**5, (batch, 3), generator=torch.Generator().manual_seed(batch))
        ids[0, 0] = 5  # a padding id in every batch (an ordinary one without padding_idx)
        return count_ops(m, ids)

    assert ops(8) == ops(4096) == ops(8) > 0


def test_bytes_counted_equal_bytes_allocated():
    m = module()
    allocated = sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
    params = sum(p.numel() * p.element_size() for p in m.parameters())
    assert m.index_bytes == cce_index_bytes(N, C, K) == allocated - params == N * C + 16 * C + 8
    assert m.assignment.dtype == torch.uint8 and m.assignment.shape == (N, C)  # k = 12 fits a byte
    for k, dtype in ((256, torch.uint8), (257, torch.int16), (2**15, torch.int16), (2**15 + 1, torch.int32)):
        meta = CCEEmbeddingBag(2**16, 4, k, device="meta")
        assert meta.assignment.dtype == dtype and meta.index_bytes == cce_index_bytes(2**16, 2, k)
    config = FeatureConfig("f", 1000, 16, scheme="cce", cce_columns=4, cce_rows=30)
    for cls in (EmbeddingCollection, FusedEmbeddingCollection):
        coll = cls([config, FeatureConfig("g", 40, 16, scheme="full")])
        report = coll.report()[0]
        assert report.index_bytes == cce_index_bytes(1000, 4, 30) and report.table_sizes == (120, 120)
        assert report.bytes == 2 * 120 * 4 * 4 + report.index_bytes
        assert coll.num_bytes == report.bytes + 40 * 16 * 4
        assert "index MiB" in coll.summary() and "cce[c4, k30]" in coll.summary()
    cce = coll.feature_module("f")  # the fused collection's other buffers are its layout's index vectors, not per id
    assert coll.num_bytes == sum(t.numel() * t.element_size() for t in (*coll.parameters(), *cce.buffers()))
    # the closed form of the planner, with and without optimizer state
    assert feature_bytes(config) == report.bytes
    assert feature_bytes(config, "adagrad") == 2 * (report.bytes - report.index_bytes) + report.index_bytes
    assert feature_bytes(config, "rowwise_adagrad") == report.bytes + 4 * 240


def test_closed_form_bytes_equal_the_meta_collection_for_derived_rows():
    for n, dim, columns, collisions in ((100_003, 16, 2, 4), (5000, 8, 4, 7), (9, 4, 1, 1)):
        config = FeatureConfig("f", n, dim, scheme="cce", cce_columns=columns, num_collisions=collisions)
        coll = EmbeddingCollection([config], device="meta")
        assert config.cce_k == min(n, -(-n // (2 * collisions)))
        assert feature_bytes(config) == coll.num_bytes == 2 * config.cce_k * dim * 4 + cce_index_bytes(n, columns, config.cce_k)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(num_columns=3), "num_columns c=3 must divide embedding_dim D=8"),
    (dict(num_rows=0), "num_rows must be an int >= 1, got 0"),
    (dict(num_rows=N + 1), f"num_rows k={N + 1} must be at most num_embeddings n={N}"),
    (dict(every_steps=-1), "every_steps must be an int >= 0, got -1"),
    (dict(every_steps=2.5), "every_steps must be an int >= 0, got 2.5"),
    (dict(max_rounds=-2), "max_rounds must be an int >= 0"),
    (dict(kmeans_iterations=0), "kmeans_iterations must be an int >= 1"),
    (dict(mode="median"), "mode must be one of"),
    (dict(padding_idx=N), "padding_idx must be in"),
])
def test_invalid_parameters_raise_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        module(**kw)


def test_feature_config_checks_and_caps():
    with pytest.raises(ValueError, match="feature 'f': cce_columns c=3 must divide embedding_dim D=16"):
        FeatureConfig("f", 100, 16, scheme="cce", cce_columns=3)
    with pytest.raises(ValueError, match="feature 'f': cce_every must be an int >= 0, got -5"):
        FeatureConfig("f", 100, 16, scheme="cce", cce_every=-5)
    with pytest.raises(ValueError, match="feature 'f': cce_rows must be an int >= 0"):
        FeatureConfig("f", 100, 16, scheme="qr", cce_rows=-1)  # checked whatever the scheme
    assert FeatureConfig("f", 100, 16, scheme="cce", cce_rows=500).cce_k == 100  # capped at n


def test_reclustering_is_deterministic_and_sensible():
    a, b = module(), module()
    # ids 0..49 share one vector in column 0, ids 50..99 another: each group must end in one cluster
    with torch.no_grad():
        for m in (a, b):
            m.assignment[:50, 0] = 0
            m.assignment[50:100, 0] = 1
            m.hashed[:K].zero_()
    before = a.assignment.clone()
    old_vectors = a.embed(torch.arange(N)).detach().view(N, C, D // C)
    changed = a.recluster()
    assert changed == [a.clustered, a.hashed]
    b.recluster()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert int(a.round) == 1 and not torch.equal(a.assignment, before)
    assert torch.equal(a.hashed, torch.zeros_like(a.hashed))
    assert a.assignment[:50, 0].unique().numel() == 1 and a.assignment[50:100, 0].unique().numel() == 1
    assert a.assignment.min() >= 0 and a.assignment.max() < K
    # right after a round every id's vector is its centroid (the hashed part is zero)
    vectors = a.embed(torch.arange(N)).view(N, C, D // C)
    for i in range(C):
        torch.testing.assert_close(vectors[:, i], a.clustered[i * K + a.assignment[:, i].long()])
    # and each id went to the centroid nearest to its vector before the round (to within float rounding)
    for i in range(C):
        distances = torch.cdist(old_vectors[:, i], a.clustered[i * K : (i + 1) * K].detach())
        chosen = distances.gather(1, a.assignment[:, i : i + 1].long())[:, 0]
        assert torch.all(chosen <= distances.min(1).values + 1e-6)
    # a second round draws another hash and keeps the vectors' clusters
    a.recluster()
    assert int(a.round) == 2 and not torch.equal(a.hash_a, b.hash_a)


def test_kmeans_on_a_subsample_still_assigns_every_id():
    m = module(kmeans_sample=40)
    m.recluster()
    vectors = m.embed(torch.arange(N)).view(N, C, D // C)
    for i in range(C):
        torch.testing.assert_close(vectors[:, i], m.clustered[i * K + m.assignment[:, i].long()])


def test_nearest_is_the_argmin_of_squared_distances_whatever_the_chunks(monkeypatch):
    g = torch.Generator().manual_seed(3)
    # small integers: every distance is exact, and there are ties (the lowest index wins)
    points = torch.randint(-3, 4, (57, 3), generator=g).float()
    centroids = torch.randint(-3, 4, (23, 3), generator=g).float()
    squared = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(2)
    expected = [min(range(23), key=lambda j: (float(row[j]), j)) for row in squared]
    assert any((row == row.min()).sum() > 1 for row in squared)  # ties are exercised
    for values in (2**20, 23 * 5, 23, 1):  # one chunk; 5 points per chunk; one point per chunk
        monkeypatch.setattr(cce, "_DISTANCE_VALUES", values)
        assert nearest(points, centroids).tolist() == expected


def test_distance_chunks_are_cache_sized_on_the_cpu_and_launch_sized_elsewhere():
    assert chunk_rows(1000, torch.device("cpu")) == 2**20 // 1000
    assert chunk_rows(1000, torch.device("cuda")) == chunk_rows(1000, "meta") == 2**26 // 1000
    # k beyond the budget: a point per chunk on the CPU, still 64 per launch on an accelerator
    assert chunk_rows(2**20 * 3, "cpu") == 1 and chunk_rows(2**20, "cuda") == 64


def test_nearest_distances_are_the_bits_of_the_two_pass_form():
    # p @ (-2 c) + ||c||^2 is ||c||^2 - 2 (p @ c) exactly: scaling by -2 is exact in floating point
    g = torch.Generator().manual_seed(4)
    points, centroids = torch.randn(40, 8, generator=g) * 0.01, torch.randn(1000, 8, generator=g) * 0.01
    norms = (centroids * centroids).sum(1)
    assert torch.equal((points @ (-2.0 * centroids).T).add_(norms), norms - 2.0 * points @ centroids.T)


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres.repeat_interleave(30, 0) + 0.1 * torch.randn(90, 2, generator=g))
    found = kmeans(points, 3, 6, torch.Generator().manual_seed(5))
    distance = torch.cdist(found, centres).min(1).values
    assert torch.all(distance < 0.2), found


def test_train_step_hook_schedule_and_optimizer_reset():
    m = module(every_steps=5, max_rounds=2)
    assert [s for s in range(1, 21) if m.on_train_step(s)] == [5, 10]  # at most 2 rounds
    assert m.on_train_step(4, epoch_end=True) == [] and int(m.round) == 2
    ends = module(at_epoch_end=True)
    assert ends.on_train_step(5) == [] and len(ends.on_train_step(5, epoch_end=True)) == 2
    # the optimizer state of the re-initialised tables starts again
    opt = torch.optim.Adam(ends.parameters(), lr=0.1)
    ends(torch.tensor([[1, 2]])).sum().backward()
    opt.step()
    assert reset_optimizer_state([opt], ends.on_train_step(1, epoch_end=True)) == 2
    for p in (ends.clustered, ends.hashed):
        assert all(torch.count_nonzero(v) == 0 for v in opt.state[p].values())


def test_state_dict_round_trip_keeps_the_clustering():
    a = module()
    a.recluster()
    b = module()
    b.load_state_dict(a.state_dict())
    x = torch.tensor([[1, 2, 3], [100, 150, 199]])
    assert torch.equal(a(x), b(x)) and int(b.round) == 1


def test_exports_compiles_and_runs_on_meta():
    m = module(mode="sum")
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 199], [0, 0, 0]])
    program = torch.export.export(m, (x,), dynamic_shapes=({0: Dim("batch")},))
    for batch in (2, 7):
        y = torch.randint(0, N, (batch, 3), generator=torch.Generator().manual_seed(batch))
        torch.testing.assert_close(program.module()(y), m(y))
    bad = x.clone()
    bad[1, 1] = N
    with pytest.raises(RuntimeError, match=rf"an id is out of range \[0, {N}\)"):
        program.module()(bad)
    compiled = torch.compile(m, fullgraph=True, backend="eager", dynamic=False)
    torch.testing.assert_close(compiled(x), m(x))
    torch._dynamo.reset()
    meta = CCEEmbeddingBag(N, D, K, C, device="meta")
    assert meta(torch.full((5, 3), N + 7, device="meta")).shape == (5, D)
