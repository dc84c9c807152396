"""Bag inputs (offsets, per-sample weights) are checked by one shared function in every bag module."""
import re

import pytest
import torch

from compembed.embedding import (
    CompositionalEmbeddingBag,
    EmbeddingCollection,
    FullEmbeddingBag,
    FusedEmbeddingCollection,
    HashEmbeddingBag,
    HybridEmbeddingBag,
    PathEmbeddingBag,
    feature_configs,
)
from compembed.embedding.pooling import _offsets_ok, _offsets_valid, check_bag_inputs
from compembed.partitions import QuotientRemainder

N = 100
# Every bag module, by the path its offsets take: pool_bags (composed, hybrid, path) or one fused embedding_bag.
MODULES = {
    "qr": lambda **kw: CompositionalEmbeddingBag(N, 4, QuotientRemainder(N, 4), **kw),
    "full": lambda **kw: FullEmbeddingBag(N, 4, **kw),
    "hashing": lambda **kw: HashEmbeddingBag(N, 4, num_buckets=30, **kw),
    "hybrid": lambda **kw: HybridEmbeddingBag(N, 4, 10, QuotientRemainder(N - 10, 4), **kw),
    "path": lambda **kw: PathEmbeddingBag(N, 4, QuotientRemainder(N, 4), hidden_dims=(8,), **kw),
}
IDS = torch.tensor([3, 1, 4, 1, 5, 9, 2])  # 7 ids

BAD = [
    ([0, 2, -1], r"offsets\[2\] = -1 \(the start of bag 2\) is negative"),
    ([1, 2, 4], r"offsets\[0\] = 1 \(the start of bag 0\) must be 0"),
    ([0, 4, 2, 5], r"non-decreasing: offsets\[2\] = 2 \(the start of bag 2\) is below offsets\[1\] = 4"),
    ([0, 2, 8], r"offsets\[2\] = 8 \(the start of bag 2\) is past the end of the input \(7 ids\)"),
    ([], r"offsets is empty, so the 7 ids belong to no bag"),
]


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("offsets,message", BAD)
def test_bad_offsets_are_refused_naming_the_bag(name, offsets, message):
    module = MODULES[name]()
    with pytest.raises(ValueError, match=message):
        module(IDS, torch.tensor(offsets, dtype=torch.int64))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_include_last_offset_must_end_at_the_input_end(name):
    module = MODULES[name](include_last_offset=True)
    assert module(IDS, torch.tensor([0, 2, 2, 7])).shape == (3, 4)  # an empty bag is fine
    with pytest.raises(ValueError, match=r"must equal the number of ids 7, got offsets\[3\] = 6 \(the end of bag 2\)"):
        module(IDS, torch.tensor([0, 2, 2, 6]))  # would drop the last id silently
    with pytest.raises(ValueError, match=r"offsets\[3\] = 8 \(the end of bag 2\) is past the end"):
        module(IDS, torch.tensor([0, 2, 2, 8]))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_valid_offsets_and_weights_pass(name):
    module = MODULES[name]()
    out = module(IDS, torch.tensor([0, 2, 2, 7], dtype=torch.int32))  # int32 offsets, an empty bag, bag at the end
    assert out.shape == (4, 4) and torch.isfinite(out).all()
    assert module(IDS, torch.tensor([0, 7])).shape == (2, 4)  # the last bag may start at the end: empty
    with pytest.raises(TypeError, match="offsets must be an int64 or int32 tensor, got torch.float32"):
        module(IDS, torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match=r"offsets must be 1-D \(one start per bag\), got shape \(2, 1\)"):
        module(IDS, torch.tensor([[0], [2]]))
    if module.mode == "sum":
        # Weights of another dtype are converted to the tables' (float64 and int alike).
        weights = torch.arange(7, dtype=torch.float64)
        expected = module(IDS, torch.tensor([0, 3]), weights.float())
        torch.testing.assert_close(module(IDS, torch.tensor([0, 3]), weights), expected)
        torch.testing.assert_close(module(IDS, torch.tensor([0, 3]), weights.long()), expected)
        with pytest.raises(ValueError, match=r"per_sample_weights must have the shape of the ids \(7,\), got \(6,\)"):
            module(IDS, torch.tensor([0, 3]), torch.ones(6))
        with pytest.raises(TypeError, match="per_sample_weights must be a real tensor, got list"):
            module(IDS, torch.tensor([0, 3]), [1.0] * 7)


@pytest.mark.parametrize("cls", [EmbeddingCollection, FusedEmbeddingCollection])
def test_collections_name_the_feature_of_bad_offsets(cls):
    collection = cls(feature_configs([N, 500], names=["a", "b"], scheme="qr", embedding_dim=4), threshold=0)
    good = {"a": torch.randint(0, N, (3, 1)), "b": (torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 4]))}
    assert collection(good).shape == (3, 2, 4)
    bad = dict(good, b=(torch.tensor([1, 2, 3, 4]), torch.tensor([0, -3, 4])))
    with pytest.raises(ValueError, match=r"feature 'b' \(column 1\): offsets\[1\] = -3 \(the start of bag 1\) is negative"):
        collection(bad)


@pytest.mark.parametrize("on_device", [False, True])
def test_both_formulations_of_the_fast_check_agree(on_device):
    # The graph's / accelerator's tensor form (no host sync) and the CPU's scalar form, both run here on CPU tensors.
    def valid(offsets, n, last):
        return bool(_offsets_ok(offsets, n, last)) if on_device else _offsets_valid(offsets, n, last)

    for offsets, ok in [([0, 2, 2, 7], True), ([0], True), ([0, 7], True), ([1, 2], False), ([0, 3, 2], False),
                        ([0, 8], False), ([0, -1, 3], False)]:
        assert valid(torch.tensor(offsets), 7, False) is ok, offsets
    assert valid(torch.tensor([0, 3, 7]), 7, True)
    assert not valid(torch.tensor([0, 3, 6]), 7, True)


def test_two_dimensional_ids_and_no_offsets_need_no_check():
    check_bag_inputs(torch.zeros(3, 2, dtype=torch.int64), None)
    check_bag_inputs(torch.zeros(3, dtype=torch.int64), torch.tensor([0, 1, 3]), torch.ones(3))
    check_bag_inputs(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))  # no bags, no ids


@pytest.mark.parametrize("cls", [EmbeddingCollection, FusedEmbeddingCollection])
def test_features_with_different_batch_sizes_are_named(cls):
    collection = cls(feature_configs([N, 500, 40], names=["a", "b", "c"], scheme="qr", embedding_dim=4), threshold=0)
    one_hot = {"a": torch.randint(0, N, (3, 1)), "b": torch.randint(0, 500, (4, 1)), "c": torch.randint(0, 40, (3, 1))}
    message = r"the features have different batch sizes \(3 bags: 'a', 'c'; 4 bags: 'b'\); each needs one bag per row"
    with pytest.raises(ValueError, match=message):
        collection(one_hot)
    with pytest.raises(ValueError, match=message):  # the same with bags given as values and offsets
        collection(dict(one_hot, b=(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1, 2]))))


def test_fused_collection_takes_int32_ids_like_the_per_feature_one():
    configs = feature_configs([N, 500], names=["a", "b"], scheme="qr", embedding_dim=4)
    torch.manual_seed(1)
    per_feature = EmbeddingCollection(configs, threshold=0)
    torch.manual_seed(1)  # the same initial tables
    fused = FusedEmbeddingCollection(configs, threshold=0)
    ids = torch.stack([torch.randint(0, N, (6,)), torch.randint(0, 500, (6,))], 1)
    for dtype in (torch.int32, torch.int16):
        torch.testing.assert_close(fused(ids.to(dtype)), per_feature(ids.to(dtype)))
        torch.testing.assert_close(fused(ids.to(dtype)), fused(ids))
    torch.testing.assert_close(fused({"a": ids[:, :1].int(), "b": ids[:, 1:].int()}), fused(ids))
    with pytest.raises(TypeError, match="ids must be an integer tensor \\(int64 or int32\\), got dtype torch.float32"):
        fused(ids.float())


# ---- property-based: random ids, offsets and weights against a bag-by-bag reference
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BUILT: dict = {}


def _module(name: str, mode: str, last: bool):
    key = (name, mode, last)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = MODULES[name](mode=mode, include_last_offset=last).eval()
    return _BUILT[key]


def _reference(module, ids: list[int], bounds: list[int], weights: list[float] | None) -> torch.Tensor:
    """Each bag pooled one by one from the per-id vectors (an empty bag is zeros)."""
    vectors = module.embed(torch.tensor(ids, dtype=torch.int64))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        bag = vectors[a:b] * (torch.tensor(weights[a:b]).unsqueeze(1) if weights is not None else 1)
        if b == a:
            out.append(torch.zeros(vectors.shape[1]))
        else:
            out.append({"sum": bag.sum(0), "mean": bag.mean(0), "max": bag.max(0).values}[module.mode])
    return torch.stack(out) if out else torch.zeros(0, vectors.shape[1])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(MODULES)), mode=st.sampled_from(["sum", "mean", "max"]), last=st.booleans(),
       ids=st.lists(st.integers(-2, N + 2), max_size=12), lengths=st.lists(st.integers(0, 4), max_size=6),
       offsets_noise=st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(-9, 9))),
       weighted=st.sampled_from(["none", "right", "short"]))
def test_random_bag_inputs_pool_like_the_reference_or_name_the_problem(name, mode, last, ids, lengths, offsets_noise,
                                                                        weighted):
    module = _module(name, mode, last)
    starts = [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()]
    ids = ids[: starts[-1]] + [0] * max(0, starts[-1] - len(ids))  # the bags cover the ids exactly
    offsets = starts if last else starts[:-1]
    if offsets_noise is not None and offsets:  # change one offset by a random amount
        i, delta = offsets_noise
        offsets = list(offsets)
        offsets[i % len(offsets)] += delta
    weights = None if weighted == "none" else [0.5 + i for i in range(max(0, len(ids) - (weighted == "short")))]
    problems = set()
    if any(not 0 <= x < N for x in ids):
        problems.add(r"id -?\d+ at position \d+ is out of range")
    bounds = [*offsets, len(ids)] if not last else offsets
    if not offsets or offsets[0] != 0 or any(b < a for a, b in zip(bounds[:-1], bounds[1:])) or bounds[-1] != len(ids):
        if offsets or ids or last:
            problems.add(r"offsets(\[\d+\] = -?\d+ \((the start|the end) of bag \d+\)| is empty)")
    if weights is not None and (len(weights) != len(ids) or mode != "sum"):
        problems.add("per_sample_weights")
    args = (torch.tensor(ids, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64),
            None if weights is None else torch.tensor(weights))
    if not problems:
        with torch.no_grad():
            torch.testing.assert_close(module(*args), _reference(module, ids, bounds, weights))
        return
    with pytest.raises((ValueError, TypeError, IndexError, NotImplementedError)) as err:
        module(*args)
    assert any(re.search(p, str(err.value)) for p in problems), (problems, str(err.value))
