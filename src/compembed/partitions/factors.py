"""Choosing the factors of a scheme, and checking that a scheme is complementary."""
from __future__ import annotations

import math

import torch

from .base import Partition, _require_int

__all__ = ["integer_root", "choose_divisors", "choose_moduli", "is_complementary"]


def integer_root(n: int, k: int) -> int:
    """The largest integer ``r`` with ``r**k <= n`` (exact, no float rounding)."""
    _require_int("n", n, minimum=0)
    _require_int("k", k, minimum=1)
    r = int(round(n ** (1.0 / k)))
    while r > 0 and r**k > n:
        r -= 1
    while (r + 1) ** k <= n:
        r += 1
    return r


def choose_divisors(num_embeddings: int, k: int) -> tuple[int, ...]:
    """``k`` mixed-radix divisors near ``n**(1/k)`` whose product is the smallest found ``>= n``.

    Starts every divisor at ``floor(n**(1/k))`` and raises them one at a time, so they differ by at
    most one and the tables are as even as possible.
    """
    _require_int("num_embeddings", num_embeddings, minimum=1)
    _require_int("k", k, minimum=1)
    divisors = [max(1, integer_root(num_embeddings, k))] * k
    j = 0
    while math.prod(divisors) < num_embeddings:
        divisors[j % k] += 1
        j += 1
    return tuple(sorted(divisors, reverse=True))


def choose_moduli(num_embeddings: int, k: int) -> tuple[int, ...]:
    """``k`` pairwise coprime moduli near ``n**(1/k)`` with product ``>= n``.

    Greedy: from a starting value upwards take each number coprime to those taken; the smallest
    starting value whose ``k`` moduli cover ``n`` wins, which keeps the tables small and even.
    """
    _require_int("num_embeddings", num_embeddings, minimum=1)
    _require_int("k", k, minimum=1)
    if k == 1:
        return (num_embeddings,)
    start = max(2, integer_root(num_embeddings, k) - k)
    while True:
        moduli: list[int] = []
        candidate = start
        while len(moduli) < k:
            if all(math.gcd(candidate, m) == 1 for m in moduli):
                moduli.append(candidate)
            candidate += 1
        if math.prod(moduli) >= num_embeddings:
            return tuple(sorted(moduli, reverse=True))
        start += 1


def is_complementary(partition: Partition, exhaustive: bool | None = None, exhaustive_limit: int = 1 << 22) -> bool:
    """Whether every pair of distinct ids is separated by at least one partition.

    Decided by construction where the scheme proves it (mixed radix covering ``n``, or pairwise
    coprime residues covering ``n``), by pigeonhole where the tables have fewer class tuples than
    ids, and otherwise by mapping all ``n`` ids and counting distinct class tuples (for
    ``n <= exhaustive_limit``). ``exhaustive=True`` always maps all ids, ``False`` never does.
    Raises ValueError when the allowed methods cannot decide.
    """
    n = partition.num_embeddings
    if not exhaustive:
        if partition.complementary:
            return True
        if math.prod(partition.table_sizes) < n:
            return False
    if exhaustive is False or n > exhaustive_limit:
        raise ValueError(
            f"cannot decide complementarity of {partition!r}: no proof by construction and "
            f"n={n} exceeds exhaustive_limit={exhaustive_limit}"
        )
    classes = partition(torch.arange(n, dtype=torch.int64), validate=False)
    if math.prod(partition.table_sizes) < 2**62:
        # Pack each class tuple into one int64 key: a 1-D unique is much faster than unique(dim=0).
        key = torch.zeros(n, dtype=torch.int64)
        for j, size in enumerate(partition.table_sizes):
            key = key * size + classes[:, j]
        return torch.unique(key).numel() == n
    return torch.unique(classes, dim=0).shape[0] == n


