"""Sparse optimizers equal torch.optim on the same gradients and touch only the rows in the batch."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from compembed.optim import RowWiseAdagrad, SparseAdagrad, SparseSGD


def _embedding_grad(weight: torch.Tensor, ids: torch.Tensor, upstream: torch.Tensor, sparse: bool) -> None:
    F.embedding(ids, weight, sparse=sparse).backward(upstream)


def _run(optimizer_cls, kwargs, sparse: bool, steps: int = 4, rows: int = 50, dim: int = 6) -> torch.Tensor:
    torch.manual_seed(3)
    weight = torch.nn.Parameter(torch.randn(rows, dim))
    opt = optimizer_cls([weight], **kwargs)
    for _ in range(steps):
        ids = torch.randint(0, rows, (40,))  # with duplicates: rows appear several times
        opt.zero_grad()
        _embedding_grad(weight, ids, torch.randn(40, dim), sparse)
        opt.step()
    return weight.detach()


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("lr", [0.1, 0.01])
def test_sgd_equals_torch(sparse, lr):
    ours = _run(SparseSGD, dict(lr=lr), sparse)
    ref = _run(torch.optim.SGD, dict(lr=lr), sparse)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("kwargs", [dict(lr=0.1), dict(lr=0.05, lr_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)])
def test_adagrad_equals_torch(sparse, kwargs):
    ours = _run(SparseAdagrad, kwargs, sparse)
    ref = _run(torch.optim.Adagrad, kwargs, sparse)
    assert torch.equal(ours, ref)  # bit-identical: torch's ops in torch's order


def _rowwise_reference(rows=50, dim=6, steps=4, lr=0.1, eps=1e-8):
    """Row-wise Adagrad written densely: s_i += mean(G_i^2) over the row, W_i -= lr G_i / (sqrt(s_i) + eps)."""
    torch.manual_seed(3)
    weight = torch.randn(rows, dim)
    state = torch.zeros(rows)
    for _ in range(steps):
        ids = torch.randint(0, rows, (40,))
        grad = torch.zeros(rows, dim).index_add_(0, ids, torch.randn(40, dim))
        touched = torch.zeros(rows, dtype=torch.bool)
        touched[ids] = True
        state = torch.where(touched, state + grad.pow(2).mean(1), state)
        weight = weight - lr * grad / (state.sqrt() + eps).unsqueeze(1)
    return weight, state


def test_rowwise_adagrad_matches_its_definition():
    expected, expected_state = _rowwise_reference()
    torch.manual_seed(3)
    weight = torch.nn.Parameter(torch.randn(50, 6))
    opt = RowWiseAdagrad([weight], lr=0.1)
    for _ in range(4):
        ids = torch.randint(0, 50, (40,))
        opt.zero_grad()
        _embedding_grad(weight, ids, torch.randn(40, 6), sparse=True)
        opt.step()
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-5, atol=1e-6)
    state = opt.state[weight]["sum"]
    assert state.shape == (50,)  # one accumulator per row
    torch.testing.assert_close(state, expected_state)


def test_rowwise_adagrad_dense_and_sparse_agree():
    # Rows outside the batch have zero gradient: the dense step adds 0 to their accumulator and
    # moves them by 0, the sparse step skips them. Same result.
    torch.testing.assert_close(_run(RowWiseAdagrad, dict(lr=0.1), True), _run(RowWiseAdagrad, dict(lr=0.1), False))


@pytest.mark.parametrize("cls", [SparseSGD, SparseAdagrad, RowWiseAdagrad])
def test_only_batch_rows_change(cls):
    weight = torch.nn.Parameter(torch.randn(1000, 4))
    before = weight.detach().clone()
    opt = cls([weight], lr=0.5)
    ids = torch.tensor([3, 7, 7, 999])
    _embedding_grad(weight, ids, torch.ones(4, 4), sparse=True)
    opt.step()
    changed = (weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 7, 999]


def test_biases_and_mixed_params():
    # One optimizer for an embedding (sparse) and a linear layer (dense, with a 1-D bias).
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    params = list(emb.parameters()) + list(lin.parameters())
    opt = RowWiseAdagrad(params, lr=0.1)
    out = lin(emb(torch.tensor([1, 2, 2]))).sum()
    out.backward()
    opt.step()
    assert opt.state[lin.bias]["sum"].shape == (1,)
    assert opt.state[lin.weight]["sum"].shape == (1,)
    assert opt.state[emb.weight]["sum"].shape == (20,)


def test_invalid_arguments():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="learning rate"):
        SparseSGD(p, lr=-1)
    with pytest.raises(ValueError, match="eps"):
        SparseAdagrad(p, eps=-1)
    with pytest.raises(ValueError, match="lr_decay"):
        RowWiseAdagrad(p, lr_decay=-1)


def test_closure_and_state_dict_roundtrip():
    weight = torch.nn.Parameter(torch.randn(10, 2))
    opt = SparseAdagrad([weight], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.embedding(torch.tensor([1, 4]), weight, sparse=True).sum()
        loss.backward()
        return loss

    assert opt.step(closure) is not None
    restored = SparseAdagrad([weight], lr=0.1)
    restored.load_state_dict(opt.state_dict())
    torch.testing.assert_close(restored.state[weight]["sum"], opt.state[weight]["sum"])
    assert restored.state[weight]["step"] == 1


@pytest.mark.parametrize("cls", [SparseSGD, SparseAdagrad, RowWiseAdagrad])
def test_an_empty_sparse_gradient_changes_nothing(cls):
    """A lookup of no ids (e.g. a TT cache when the batch has no cached id) gives a gradient with 0 rows."""
    weight = torch.nn.Parameter(torch.randn(5, 3))
    before = weight.detach().clone()
    torch.nn.functional.embedding(torch.empty(0, dtype=torch.int64), weight, sparse=True).sum().backward()
    assert weight.grad.is_sparse and weight.grad._nnz() == 0
    cls([weight], lr=0.1).step()
    assert torch.equal(weight, before)


def _batches(steps: int, rows: int = 50, dim: int = 6, seed: int = 11) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step: ids with duplicates, and their upstream gradient rows."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, rows, (40,), generator=generator), torch.randn(40, dim, generator=generator))
            for _ in range(steps)]


def test_rowwise_adagrad_with_lr_decay_and_initial_accumulator_matches_a_row_by_row_loop():
    lr, lr_decay, initial, eps = 0.1, 0.3, 0.25, 1e-6
    torch.manual_seed(4)
    start = torch.randn(50, 6, dtype=torch.float64)
    batches = _batches(5)
    # the definition, one row at a time in Python floats
    rows = [[float(x) for x in r] for r in start]
    acc = [initial] * 50
    for step, (ids, upstream) in enumerate(batches, start=1):
        grad = {}
        for i, g in zip(ids.tolist(), upstream.tolist()):
            grad[i] = [a + b for a, b in zip(grad.get(i, [0.0] * 6), g)]
        clr = lr / (1 + (step - 1) * lr_decay)
        for i, g in grad.items():
            acc[i] += sum(x * x for x in g) / len(g)
            rows[i] = [w - clr * x / (acc[i] ** 0.5 + eps) for w, x in zip(rows[i], g)]
    weight = torch.nn.Parameter(start.clone())
    opt = RowWiseAdagrad([weight], lr=lr, lr_decay=lr_decay, initial_accumulator_value=initial, eps=eps)
    for ids, upstream in batches:
        opt.zero_grad()
        _embedding_grad(weight, ids, upstream.double(), sparse=True)
        opt.step()
    torch.testing.assert_close(weight.detach(), torch.tensor(rows, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(opt.state[weight]["sum"], torch.tensor(acc, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def _steps(weight: torch.nn.Parameter, opt, batches) -> None:
    for ids, upstream in batches:
        opt.zero_grad()
        _embedding_grad(weight, ids, upstream, sparse=True)
        opt.step()


@pytest.mark.parametrize("cls,kwargs", [
    (SparseSGD, dict(lr=0.1)),
    (SparseAdagrad, dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1)),
    (RowWiseAdagrad, dict(lr=0.1, lr_decay=0.05)),
])
def test_state_dict_saved_mid_run_continues_bit_identically(cls, kwargs):
    batches = _batches(6)
    torch.manual_seed(2)
    start = torch.randn(50, 6)
    whole = torch.nn.Parameter(start.clone())
    _steps(whole, cls([whole], **kwargs), batches)

    first = torch.nn.Parameter(start.clone())
    opt = cls([first], **kwargs)
    _steps(first, opt, batches[:3])
    saved = copy.deepcopy(opt.state_dict())
    resumed = torch.nn.Parameter(first.detach().clone())
    again = cls([resumed], **kwargs)
    again.load_state_dict(saved)
    _steps(resumed, again, batches[3:])
    assert torch.equal(resumed.detach(), whole.detach())
    assert not torch.equal(resumed.detach(), start)


def test_a_torch_adagrad_state_continues_in_sparse_adagrad():
    # a checkpoint written while the tables trained with torch.optim.Adagrad resumes on SparseAdagrad
    batches = _batches(6)
    torch.manual_seed(2)
    start = torch.randn(50, 6)
    ref = torch.nn.Parameter(start.clone())
    _steps(ref, torch.optim.Adagrad([ref], lr=0.1, lr_decay=0.05), batches)

    weight = torch.nn.Parameter(start.clone())
    old = torch.optim.Adagrad([weight], lr=0.1, lr_decay=0.05)
    _steps(weight, old, batches[:3])
    new = SparseAdagrad([weight], lr=0.1, lr_decay=0.05)
    new.load_state_dict(old.state_dict())
    _steps(weight, new, batches[3:])
    assert torch.equal(weight.detach(), ref.detach())
    assert new.state[weight]["step"] == 6
