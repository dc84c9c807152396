"""Sparse optimizer steps: the cost of a step is the rows in the batch, not the table size.

``torch.optim.SGD`` adds a sparse gradient with ``param.add_(grad)``, which on CPU runs a dense
add over the whole table (a 2 GB Criteo table costs tens of ms per step), and
``torch.optim.Adagrad`` builds several sparse tensors per step. These optimizers read the sparse
gradient's ``(indices, values)`` and update the touched rows with ``scatter_add_`` / indexing:

- ``SparseSGD``: ``W[i] -= lr * g_i`` (duplicates of a row add up, as in the dense update).
- ``SparseAdagrad``: ``torch.optim.Adagrad``'s update, one accumulator per parameter element:
  ``S[i] += G_i**2; W[i] -= clr * G_i / (sqrt(S[i]) + eps)`` with ``G_i`` the summed gradient of
  row ``i`` (the sparse gradient is coalesced first) and ``clr = lr / (1 + (step - 1) * lr_decay)``,
  computed with torch's own ops in torch's order, so its results are bit-identical to torch's (a
  1-ulp difference would not stay small: a row whose first gradient is ~0 moves by ``+-lr``).
- ``RowWiseAdagrad``: one accumulator per row (FBGEMM's row-wise Adagrad), the mean of the
  squared row gradient: ``s[i] += mean(G_i**2); W[i] -= clr * G_i / (sqrt(s[i]) + eps)``. Its state
  is ``rows`` floats instead of ``rows x D``, so an Adagrad-trained table costs ~1x, not 2x, its size.

All three accept dense gradients too (the same formula over every row), so one optimizer can hold
a model's embedding tables and its MLPs.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["SparseSGD", "SparseAdagrad", "RowWiseAdagrad"]


def _rows_and_values(grad: Tensor, coalesce: bool) -> tuple[Tensor, Tensor]:
    """Row indices ``(N,)`` and row gradients ``(N, *row_shape)`` of a sparse COO gradient."""
    if coalesce:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    return grad._indices()[0], grad._values()


def _add_rows(p: Tensor, rows: Tensor, values: Tensor) -> None:
    """``p[rows[i]] += values[i]`` for every i (repeated rows add up).

    ``scatter_add_`` over the row index broadcast to the row shape: on CPU ``index_add_`` runs one
    small op per index, several times slower for tens of thousands of rows.
    """
    values = values.to(p.dtype).reshape(rows.shape[0], p[0].numel() if p.shape[0] else 0)  # also 0 rows
    index = rows.unsqueeze(1).expand_as(values)
    p.view(p.shape[0], -1).scatter_add_(0, index, values)


def _check_lr(lr: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"invalid learning rate: {lr}")


class _SparseOptimizer(Optimizer):
    """The loop over parameters with a gradient; subclasses update one parameter."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, self.state[p])
        return loss

    def _update(self, p: Tensor, group: dict, state: dict) -> None:
        raise NotImplementedError


class SparseSGD(_SparseOptimizer):
    """Plain SGD, ``W -= lr * grad``, updating only the rows of sparse gradients in place.

    Equals ``torch.optim.SGD(params, lr)`` (no momentum, no weight decay) on the same gradients.
    """

    def __init__(self, params: Iterable, lr: float = 0.01) -> None:
        _check_lr(lr)
        super().__init__(params, dict(lr=lr))
        self._buffer: Tensor | None = None

    def _scratch(self, like: Tensor) -> Tensor:
        """A reused buffer shaped like ``like``: a fresh multi-MB tensor every step costs page faults."""
        n = like.numel()
        if self._buffer is None or self._buffer.numel() < n or self._buffer.dtype != like.dtype \
                or self._buffer.device != like.device:
            self._buffer = torch.empty(n, dtype=like.dtype, device=like.device)
        return self._buffer[:n].view(like.shape)

    def _update(self, p: Tensor, group: dict, state: dict) -> None:
        if p.grad.is_sparse:
            rows, values = _rows_and_values(p.grad, coalesce=False)
            _add_rows(p, rows, torch.mul(values, -group["lr"], out=self._scratch(values)))
        else:
            p.add_(p.grad, alpha=-group["lr"])


class _Adagrad(_SparseOptimizer):
    """Shared step of the two Adagrad variants: they differ in the shape of the accumulator."""

    rowwise = False

    def __init__(
        self, params: Iterable, lr: float = 0.01, lr_decay: float = 0.0,
        initial_accumulator_value: float = 0.0, eps: float = 1e-10,
    ) -> None:
        _check_lr(lr)
        if not lr_decay >= 0.0:
            raise ValueError(f"invalid lr_decay: {lr_decay}")
        if not initial_accumulator_value >= 0.0:
            raise ValueError(f"invalid initial_accumulator_value: {initial_accumulator_value}")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps: {eps}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, initial_accumulator_value=initial_accumulator_value, eps=eps))

    def _accumulator(self, p: Tensor, initial: float) -> Tensor:
        shape = p.shape[:1] if self.rowwise and p.dim() > 0 else p.shape
        return torch.full(shape, initial, dtype=p.dtype, device=p.device)

    def _square(self, g: Tensor) -> Tensor:
        """What the accumulator of each updated row (or element) adds: ``g**2``, or its row mean."""
        if self.rowwise and g.dim() > 1:
            return g.pow(2).flatten(1).mean(1)
        return g.pow(2)

    def _expand(self, acc: Tensor, g: Tensor) -> Tensor:
        return acc.view(-1, *([1] * (g.dim() - 1))) if self.rowwise and g.dim() > 1 else acc

    def _update(self, p: Tensor, group: dict, state: dict) -> None:
        if not state:
            state["step"] = 0
            state["sum"] = self._accumulator(p, group["initial_accumulator_value"])
        state["step"] = int(state["step"]) + 1  # int; a torch.optim.Adagrad state holds a tensor
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        acc = state["sum"]
        if p.grad.is_sparse:
            # Adagrad squares the summed gradient of a row: duplicates must be added first.
            rows, g = _rows_and_values(p.grad, coalesce=True)
            total = acc.index_select(0, rows).add_(self._square(g))
            acc[rows] = total  # rows are unique after coalescing
            # gather, add with alpha (one rounding, as torch's sparse add_ with alpha), write back
            p[rows] = p.index_select(0, rows).add_(g / self._expand(total.sqrt().add_(group["eps"]), g), alpha=-clr)
        else:
            g = p.grad
            if self.rowwise and g.dim() > 1:
                acc.add_(self._square(g))
            else:
                acc.addcmul_(g, g)  # torch.optim.Adagrad's own op (and rounding)
            p.addcdiv_(g, self._expand(acc.sqrt().add_(group["eps"]), g), value=-clr)


class SparseAdagrad(_Adagrad):
    """Adagrad with one accumulator per element; equals ``torch.optim.Adagrad`` (no weight decay)."""


class RowWiseAdagrad(_Adagrad):
    """Adagrad with one accumulator per row (FBGEMM's row-wise Adagrad); ``eps`` defaults to 1e-8.

    Row ``i`` keeps ``s[i]``, the running sum of ``mean(G_i**2)`` over its D entries; parameters of
    one dimension (biases) keep one accumulator per element, i.e. plain Adagrad.
    """

    rowwise = True

    def __init__(self, params: Iterable, lr: float = 0.01, lr_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, lr_decay=lr_decay, initial_accumulator_value=initial_accumulator_value, eps=eps)
