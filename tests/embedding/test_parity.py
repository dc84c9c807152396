"""Parity of the embedding-bag modules with ``nn.EmbeddingBag`` itself: signature and defaults,
modes, bag layouts, padding, ``max_norm``, ``scale_grad_by_freq``, ``from_pretrained``, state dicts,
sparse gradients, and the clear errors where a composed vector has no such meaning.

One file for the whole interface (it spans compositional.py, hybrid.py and path.py)."""
import inspect

import pytest
import torch
from torch import nn

from compembed.embedding import (
    SCHEMES,
    CompositionalEmbeddingBag,
    EmbeddingCollection,
    FeatureConfig,
    FullEmbeddingBag,
    HashEmbeddingBag,
    HybridEmbeddingBag,
    PathEmbeddingBag,
)
from compembed.partitions import Hashing, QuotientRemainder

N, DIM = 40, 5
LAYOUTS = ["2d", "1d", "1d_last"]


def _inputs(layout: str, seed: int = 0, n: int = N, with_pad: int | None = None):
    """(ids, offsets, per_sample_weights) of 6 bags, one of them empty in the 1-D layouts."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "2d":
        ids = torch.randint(0, n, (6, 4), generator=gen)
        offsets = None
    else:
        ids = torch.randint(0, n, (17,), generator=gen)
        offsets = torch.tensor([0, 3, 3, 8, 12, 15])  # bag 1 is empty
        if layout == "1d_last":
            offsets = torch.cat([offsets, torch.tensor([ids.numel()])])
    if with_pad is not None:
        ids.view(-1)[[0, 4, 5]] = with_pad
    return ids, offsets, torch.rand(ids.shape, generator=gen)


def _twins(**kwargs) -> tuple[nn.EmbeddingBag, FullEmbeddingBag]:
    """An ``nn.EmbeddingBag`` and a ``FullEmbeddingBag`` with the same arguments and the same table."""
    torch.manual_seed(0)
    reference = nn.EmbeddingBag(N, DIM, **kwargs)
    ours = FullEmbeddingBag(N, DIM, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


# ---- signature and defaults ------------------------------------------------------------------

def test_full_bag_has_the_signature_of_nn_embedding_bag():
    theirs = [(k, p.default) for k, p in inspect.signature(nn.EmbeddingBag).parameters.items()]
    ours = [(k, p.default) for k, p in inspect.signature(FullEmbeddingBag).parameters.items()]
    assert ours[: len(theirs)] == theirs  # same names, same order, same defaults (mode="mean")
    assert [k for k, _ in ours[len(theirs):]] == ["init_std"]  # compembed's one extra, keyword-only
    assert inspect.signature(FullEmbeddingBag.from_pretrained).parameters.keys() == \
        inspect.signature(nn.EmbeddingBag.from_pretrained).parameters.keys()


DEFAULT_BUILT = {
    "compositional": lambda: CompositionalEmbeddingBag(N, DIM, QuotientRemainder(N, 4)),
    "hashing": lambda: HashEmbeddingBag(N, DIM, 9),
    "hybrid": lambda: HybridEmbeddingBag(N, DIM, 10, QuotientRemainder(N - 10, 4)),
    "path": lambda: PathEmbeddingBag(N, DIM, QuotientRemainder(N, 4)),
    "full": lambda: FullEmbeddingBag(N, DIM),
}
OPTIONS = ("max_norm", "norm_type", "scale_grad_by_freq", "mode", "sparse", "include_last_offset", "padding_idx")


@pytest.mark.parametrize("name", sorted(DEFAULT_BUILT))
def test_every_bag_takes_torch_defaults(name):
    reference, module = nn.EmbeddingBag(N, DIM), DEFAULT_BUILT[name]()
    assert module.mode == "mean"
    assert {k: getattr(module, k) for k in OPTIONS} == {k: getattr(reference, k) for k in OPTIONS}
    if name != "hashing":  # HashEmbeddingBag passes its keywords on to CompositionalEmbeddingBag
        cls = type(module)
        torch_defaults = {k: p.default for k, p in inspect.signature(nn.EmbeddingBag).parameters.items()}
        shared = {k: p.default for k, p in inspect.signature(cls).parameters.items() if k in torch_defaults}
        assert shared == {k: torch_defaults[k] for k in shared} and set(OPTIONS) <= shared.keys()


def test_positional_arguments_mean_what_they_mean_in_torch():
    table = torch.randn(N, DIM)
    args = (N, DIM, 1.5, 1.0, False, "max", False, table, True, 3)  # ..., _weight, include_last_offset, padding_idx
    reference, ours = nn.EmbeddingBag(*args), FullEmbeddingBag(*args)
    for name in ("max_norm", "norm_type", "scale_grad_by_freq", "mode", "sparse", "include_last_offset", "padding_idx"):
        assert getattr(ours, name) == getattr(reference, name), name
    ids, offsets, _ = _inputs("1d_last", with_pad=3)
    torch.testing.assert_close(ours(ids, offsets), reference(ids, offsets))


def test_default_mode_is_mean_like_torch():
    reference, ours = _twins()
    ids, offsets, _ = _inputs("1d")
    torch.testing.assert_close(ours(ids, offsets), reference(ids, offsets))
    manual = reference.weight[ids[:3]].mean(0)
    torch.testing.assert_close(ours(ids, offsets)[0], manual)


def test_old_positional_mode_is_refused_not_misread():
    with pytest.raises(TypeError, match="positional"):
        CompositionalEmbeddingBag(N, DIM, QuotientRemainder(N, 4), "mult", "sum")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_builders_pass_the_config_mode(scheme):
    # FeatureConfig keeps mode="sum" (DLRM's pooling): models built from configs do not change.
    config = FeatureConfig("f", 300, 4, scheme, hot_rows=20, hidden_dims=(4,))
    module = EmbeddingCollection([config]).embeddings["f"]
    assert config.mode == "sum" and module.mode == "sum"
    if scheme == "hybrid":
        assert module.cold.mode == "sum"


# ---- forward and backward against nn.EmbeddingBag ----------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 7])
def test_full_bag_equals_nn_embedding_bag(mode, layout, padding_idx):
    reference, ours = _twins(mode=mode, include_last_offset=layout == "1d_last", padding_idx=padding_idx)
    ids, offsets, _ = _inputs(layout, with_pad=padding_idx)
    upstream = torch.randn(6, DIM, generator=torch.Generator().manual_seed(1))
    (reference(ids, offsets) * upstream).sum().backward()
    (ours(ids, offsets) * upstream).sum().backward()
    torch.testing.assert_close(ours(ids, offsets), reference(ids, offsets))
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    if padding_idx is not None:
        assert ours.weight.grad[padding_idx].abs().sum() == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_sample_weights_equal_torch(layout):
    reference, ours = _twins(mode="sum", include_last_offset=layout == "1d_last", padding_idx=2)
    ids, offsets, weights = _inputs(layout, with_pad=2)
    torch.testing.assert_close(ours(ids, offsets, weights), reference(ids, offsets, weights))
    with pytest.raises(NotImplementedError, match="per_sample_weights is only supported for mode='sum'"):
        FullEmbeddingBag(N, DIM)(ids, offsets, weights)  # mean, as torch: refused, not silently summed


def test_new_full_bag_zeroes_the_padding_row_like_torch():
    assert FullEmbeddingBag(N, DIM, padding_idx=4).weight[4].abs().sum() == 0
    assert FullEmbeddingBag(N, DIM).weight[4].abs().sum() > 0


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_sparse_gradients_equal_torch(mode):
    reference, ours = _twins(mode=mode, sparse=True, padding_idx=7)
    ids, offsets, _ = _inputs("1d", with_pad=7)
    reference(ids, offsets).square().sum().backward()
    ours(ids, offsets).square().sum().backward()
    assert ours.weight.grad.is_sparse
    torch.testing.assert_close(ours.weight.grad.to_dense(), reference.weight.grad.to_dense())


def test_sparse_max_gives_torchs_dense_max_gradient():
    # nn.EmbeddingBag refuses sparse=True with mode="max"; FullEmbeddingBag gives the same gradient, sparse.
    reference, ours = _twins(mode="max")
    sparse = FullEmbeddingBag(N, DIM, mode="max", sparse=True)
    sparse.load_state_dict(ours.state_dict())
    ids, offsets, _ = _inputs("1d")
    reference(ids, offsets).square().sum().backward()
    sparse(ids, offsets).square().sum().backward()
    assert sparse.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight.grad.to_dense(), reference.weight.grad)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("mode", ["sum", "mean", "max", "max-sparse"])
def test_max_norm_renormalises_looked_up_rows_like_torch(mode, norm_type):
    reference, ours = _twins(mode=mode.split("-")[0], max_norm=0.5, norm_type=norm_type)
    if mode == "max-sparse":  # not a single embedding_bag: rows first, then pooling (torch has no sparse max)
        ours = FullEmbeddingBag(N, DIM, mode="max", max_norm=0.5, norm_type=norm_type, sparse=True)
        ours.load_state_dict(reference.state_dict())
    before = ours.weight.detach().clone()
    ids, offsets, _ = _inputs("1d")
    torch.testing.assert_close(ours(ids, offsets), reference(ids, offsets))
    torch.testing.assert_close(ours.weight.detach(), reference.weight.detach())  # renormalised in place, as torch
    used = torch.zeros(N, dtype=torch.bool)
    used[ids] = True
    norms = ours.weight.detach().norm(p=norm_type, dim=1)
    assert (norms[used] <= 0.5 + 1e-5).all() and (before.norm(p=norm_type, dim=1)[used] > 0.5).any()
    torch.testing.assert_close(ours.weight.detach()[~used], before[~used])  # rows not looked up are left alone


@pytest.mark.parametrize("sparse", [False, True])
def test_hashing_max_norm_and_grad_scaling_act_on_the_shared_rows(sparse):
    buckets = 9
    torch.manual_seed(0)
    # torch scales gradients by frequency only densely
    options = dict(max_norm=0.3, scale_grad_by_freq=not sparse, mode="sum", sparse=sparse)
    reference = nn.EmbeddingBag(buckets, DIM, **options)
    ours = HashEmbeddingBag(N, DIM, buckets, **options)
    ours.load_state_dict({"weights.0": reference.weight.detach().clone()})
    ids, offsets, _ = _inputs("1d")
    upstream = torch.randn(6, DIM, generator=torch.Generator().manual_seed(1))
    (reference(ids % buckets, offsets) * upstream).sum().backward()
    (ours(ids, offsets) * upstream).sum().backward()
    torch.testing.assert_close(ours.weights[0].detach(), reference.weight.detach())
    grad = ours.weights[0].grad
    torch.testing.assert_close(grad.to_dense() if sparse else grad,
                               reference.weight.grad.to_dense() if sparse else reference.weight.grad)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_scale_grad_by_freq_equals_torch(mode):
    reference, ours = _twins(mode=mode, scale_grad_by_freq=True)
    ids = torch.tensor([[1, 1, 1, 2], [2, 3, 1, 4]])  # id 1 four times, id 2 twice
    reference(ids).sum().backward()
    ours(ids).sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    plain = FullEmbeddingBag(N, DIM, mode=mode)
    plain.load_state_dict(ours.state_dict())
    plain(ids).sum().backward()
    torch.testing.assert_close(ours.weight.grad[1], plain.weight.grad[1] / 4)  # it does scale


def test_hybrid_max_norm_covers_hot_and_single_table_cold_rows():
    module = HybridEmbeddingBag(N, DIM, 10, Hashing(N - 10, 7), max_norm=0.2, mode="sum", init_std=1.0)
    ids = torch.tensor([[0, 3, 12, 30]])
    module(ids)
    assert module.hot[[0, 3]].norm(dim=1).max() <= 0.2 + 1e-6
    assert module.cold.weights[0][[2, 6]].norm(dim=1).max() <= 0.2 + 1e-6  # (12 - 10) % 7, (30 - 10) % 7
    assert module.hot[5].norm() > 0.2  # not looked up


@pytest.mark.parametrize("build", [
    lambda **kw: HashEmbeddingBag(N, DIM, 9, **kw),
    lambda **kw: CompositionalEmbeddingBag(N, DIM, QuotientRemainder(N, 4), **kw),
    lambda **kw: HybridEmbeddingBag(N, DIM, 10, QuotientRemainder(N - 10, 4), **kw),
    lambda **kw: PathEmbeddingBag(N, DIM, QuotientRemainder(N, 4), hidden_dims=(4,), **kw),
], ids=["hashing", "qr", "hybrid", "path"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_padding_idx_is_an_id_left_out_of_every_bag(build, mode):
    torch.manual_seed(0)
    module = build(mode=mode, padding_idx=7)
    plain = build(mode=mode)
    plain.load_state_dict(module.state_dict())
    ids = torch.tensor([1, 7, 16, 7, 7, 3, 11, 7])  # with 9 buckets, 16 shares the padding id's row
    offsets = torch.tensor([0, 3, 5, 7])  # the bag [7, 7] holds only padding: a zero vector
    expected = torch.stack([plain(torch.tensor([[1, 16]]))[0], torch.zeros(DIM),
                            plain(torch.tensor([[3, 11]]))[0], torch.zeros(DIM)])
    torch.testing.assert_close(module(ids, offsets), expected)


# ---- from_pretrained, _weight and state dicts ------------------------------------------------

@pytest.mark.parametrize("freeze", [True, False])
def test_from_pretrained_equals_torch(freeze):
    table = torch.randn(N, DIM, generator=torch.Generator().manual_seed(3))
    kwargs = dict(freeze=freeze, max_norm=2.0, mode="sum", include_last_offset=True, padding_idx=1)
    reference = nn.EmbeddingBag.from_pretrained(table.clone(), **kwargs)
    ours = FullEmbeddingBag.from_pretrained(table.clone(), **kwargs)
    assert ours.weight.requires_grad is (not freeze) is reference.weight.requires_grad
    ids, offsets, _ = _inputs("1d_last", with_pad=1)
    out = ours(ids, offsets)
    torch.testing.assert_close(out, reference(ids, offsets))
    assert out.requires_grad is not freeze
    torch.testing.assert_close(ours.weight, reference.weight)  # renormalised alike
    shared = torch.randn(4, 3)
    assert FullEmbeddingBag.from_pretrained(shared).weight.data_ptr() == shared.data_ptr()  # used, not copied


def test_weight_argument_is_the_table():
    table = torch.randn(N, DIM, dtype=torch.float64)
    bag = FullEmbeddingBag(N, DIM, _weight=table)
    assert bag.weight.data_ptr() == table.data_ptr() and bag.weight.dtype == torch.float64
    assert bag.weights == [bag.weight] and bag.num_parameters == N * DIM
    with pytest.raises(ValueError, match=r"_weight must have shape \(num_embeddings, embedding_dim\) = \(40, 5\), got \(5, 40\)"):
        FullEmbeddingBag(N, DIM, _weight=table.T)
    with pytest.raises(ValueError, match="embeddings must be a 2-D tensor"):
        FullEmbeddingBag.from_pretrained(torch.randn(5))


def test_state_dicts_load_both_ways():
    reference = nn.EmbeddingBag(N, DIM)
    ours = FullEmbeddingBag(N, DIM)
    assert list(ours.state_dict()) == list(reference.state_dict()) == ["weight"]
    ours.load_state_dict(reference.state_dict())  # strict
    ids, offsets, _ = _inputs("1d")
    torch.testing.assert_close(ours(ids, offsets), reference(ids, offsets))
    back = nn.EmbeddingBag(N, DIM)
    back.load_state_dict(FullEmbeddingBag(N, DIM).state_dict())
    ours2 = FullEmbeddingBag(N, DIM)
    ours2.load_state_dict(back.state_dict())
    torch.testing.assert_close(back(ids, offsets), ours2(ids, offsets))
    assert not torch.equal(back.weight, reference.weight)  # it did load something else


def test_checkpoints_with_the_old_table_name_still_load():
    # Before FullEmbeddingBag had ``weight``, its table was saved as ``weights.0``.
    configs = [FeatureConfig("a", 30, 4, "full"), FeatureConfig("h", 300, 4, "hybrid", hot_rows=5, cold_scheme="full")]
    saved = EmbeddingCollection(configs)
    old = {k.replace(".weight", ".weights.0"): v for k, v in saved.state_dict().items()}
    assert "embeddings.a.weights.0" in old and "embeddings.h.cold.weights.0" in old
    loaded = EmbeddingCollection(configs)
    loaded.load_state_dict(old)  # strict
    ids = torch.tensor([[3, 200], [29, 1]])
    torch.testing.assert_close(loaded(ids), saved(ids))


# ---- what the math does not allow ------------------------------------------------------------

@pytest.mark.parametrize(("build", "message"), [
    (lambda: CompositionalEmbeddingBag(N, DIM, QuotientRemainder(N, 4), max_norm=1.0),
     r"max_norm cannot be applied to a composed vector \(operation='mult' of 2 tables\).*full or hashing"),
    (lambda: CompositionalEmbeddingBag(N, DIM, QuotientRemainder(N, 4), operation="concat", scale_grad_by_freq=True),
     r"scale_grad_by_freq cannot be applied to a composed vector \(operation='concat' of 2 tables\)"),
    (lambda: PathEmbeddingBag(N, DIM, QuotientRemainder(N, 4), max_norm=1.0),
     r"max_norm cannot be applied to a composed vector \(a base row transformed by the MLPs of 1 more tables\)"),
    (lambda: PathEmbeddingBag(N, DIM, QuotientRemainder(N, 4), scale_grad_by_freq=True),
     "scale_grad_by_freq cannot be applied to a composed vector"),
    (lambda: HybridEmbeddingBag(N, DIM, 10, QuotientRemainder(N - 10, 4), operation="add", max_norm=1.0),
     r"max_norm cannot be applied to a composed vector \(operation='add' of 2 tables\)"),
    (lambda: HybridEmbeddingBag(N, DIM, 10, FullEmbeddingBag(N - 10, DIM), max_norm=1.0),
     "cold must have the hybrid's max_norm=1.0"),
    (lambda: FullEmbeddingBag(N, DIM, mode="max", scale_grad_by_freq=True),
     r"scale_grad_by_freq is not supported with mode='max'"),
    (lambda: FullEmbeddingBag(N, DIM, sparse=True, scale_grad_by_freq=True),
     r"scale_grad_by_freq is not supported with sparse=True"),
    (lambda: FullEmbeddingBag(N, DIM, max_norm=0.0), "max_norm must be a positive number or None, got 0.0"),
    (lambda: FullEmbeddingBag(N, DIM, max_norm="sum"), "max_norm must be a positive number or None, got 'sum'"),
    (lambda: HashEmbeddingBag(N, DIM, 9, norm_type=-1.0), "norm_type must be a positive number, got -1.0"),
    (lambda: HybridEmbeddingBag(N, DIM, 10, Hashing(N - 10, 4), padding_idx=N), r"padding_idx must be in \[0, 40\)"),
])
def test_what_does_not_apply_is_refused_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()
