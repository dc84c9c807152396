"""Initialisation that gives a composed embedding the spread of a standard full-table init.

The reference is the full table's init in recommendation models (DLRM, TorchRec): uniform in
``(-1/sqrt(n), 1/sqrt(n))``, i.e. standard deviation ``1/sqrt(3n)``. The factors of a composition
are drawn centred (uniform, symmetric about 0) with a standard deviation chosen so that the
combined vector has that same standard deviation:

- concat: each part is a slice of the vector, so each factor has std ``sigma``;
- add: ``k`` independent terms, so each has std ``sigma / sqrt(k)``;
- mult: the product of ``k`` independent centred factors has variance ``prod(s_j**2)``. The
  largest table (the rows shared by the fewest ids) gets std ``sigma`` and every other factor std
  1, so the product again has std ``sigma``.

Why mult is asymmetric: a step on one factor moves the product by the step times the other
factors. With Adagrad every factor's first steps have size ``lr``, so the product of
``W_big[p(x)] * W_small[q(x)]`` moves by about ``lr * |W_small|``. With std-1 small factors that
is about ``lr`` (0.87 ``lr`` on average for a uniform factor), as for a full-table row; with the
symmetric choice ``sigma**(1/k)`` (about 0.06-0.13 for Criteo sizes) the composed vectors moved
5-15x slower than full rows, and QR-mult fell behind hashing after one epoch. Remainder rows of
ones would start the composition as the hashing trick; centred std-1 rows keep every id's vector
distinct from the start. ``add`` needs no such care: a step on any factor moves the sum by as
much as a full-row step.

All-positive factors (the reference code's ``uniform(sqrt(1/n), 1)``) would give ``add`` and
``mult`` a large common offset shared by all ids, which trains badly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["default_std", "factor_std", "factor_stds", "uniform_"]

OPERATIONS = ("concat", "add", "mult")


def default_std(num_embeddings: int) -> float:
    """Std of the usual full-table init ``uniform(-1/sqrt(n), 1/sqrt(n))``."""
    return 1.0 / math.sqrt(3.0 * num_embeddings)


def factor_stds(target_std: float, operation: str, table_sizes: tuple[int, ...] | list[int]) -> tuple[float, ...]:
    """Std of each table's factors, in table order, so that combining them gives ``target_std``.

    For ``mult`` the first of the largest tables carries ``target_std`` and the others std 1 (see
    the module doc); ``concat`` and ``add`` use ``factor_std`` for every table.
    """
    k = len(table_sizes)
    if operation != "mult" or k == 1:
        return (factor_std(target_std, operation, k),) * k
    big = max(range(k), key=lambda j: table_sizes[j])
    return tuple(target_std if j == big else 1.0 for j in range(k))


def factor_std(target_std: float, operation: str, num_factors: int) -> float:
    """Std of each factor when all ``num_factors`` factors share one std and combine to ``target_std``.

    Used for ``concat`` and ``add``; ``mult`` tables are initialised by ``factor_stds``.
    """
    if operation == "concat" or num_factors == 1:
        return target_std
    if operation == "add":
        return target_std / math.sqrt(num_factors)
    if operation == "mult":
        return target_std ** (1.0 / num_factors)
    raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")


@torch.no_grad()
def uniform_(tensor: Tensor, std: float) -> Tensor:
    """Fill ``tensor`` from the centred uniform distribution with standard deviation ``std``."""
    bound = std * math.sqrt(3.0)
    return tensor.uniform_(-bound, bound)
