"""Initialisation that gives a composed embedding the spread of a standard full-table init.

The reference is the full table's init in recommendation models (DLRM, TorchRec): uniform in
``(-1/sqrt(n), 1/sqrt(n))``, i.e. standard deviation ``1/sqrt(3n)``. The factors of a composition
are drawn centred (uniform, symmetric about 0) with a standard deviation chosen so that the
combined vector has that same standard deviation:

- concat: each part is a slice of the vector, so each factor has std ``sigma``;
- add: ``k`` independent terms, so each has std ``sigma / sqrt(k)``;
- mult: the product of ``k`` independent centred factors has variance ``prod(s_j**2)``, so each
  has std ``sigma**(1/k)``.

All-positive factors (the reference code's ``uniform(sqrt(1/n), 1)``) would give ``add`` and
``mult`` a large common offset shared by all ids, which trains badly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["default_std", "factor_std", "uniform_"]

OPERATIONS = ("concat", "add", "mult")


def default_std(num_embeddings: int) -> float:
    """Std of the usual full-table init ``uniform(-1/sqrt(n), 1/sqrt(n))``."""
    return 1.0 / math.sqrt(3.0 * num_embeddings)


def factor_std(target_std: float, operation: str, num_factors: int) -> float:
    """Std of each factor so that combining ``num_factors`` of them gives ``target_std``."""
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
