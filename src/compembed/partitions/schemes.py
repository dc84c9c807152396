"""The partition schemes of the paper, plus the hashing trick and the full table as baselines."""
from __future__ import annotations

import math
from collections.abc import Sequence

from .base import RadixPartition, _require_int

__all__ = [
    "QuotientRemainder",
    "GeneralizedQuotientRemainder",
    "ChineseRemainder",
    "Hashing",
    "Identity",
]


class QuotientRemainder(RadixPartition):
    """Quotient-remainder trick: tables of ``ceil(n / m)`` rows (``x // m``) and ``m`` rows (``x % m``).

    ``num_collisions`` is ``m``: the paper's "c collisions" means ``c`` ids share each quotient row.
    """

    def __init__(self, num_embeddings: int, num_collisions: int) -> None:
        _require_int("num_embeddings", num_embeddings, minimum=1)
        _require_int("num_collisions", num_collisions, minimum=1)
        self.num_collisions = num_collisions
        quotient_rows = -(-num_embeddings // num_collisions)
        super().__init__(num_embeddings, strides=(num_collisions, 1), moduli=(quotient_rows, num_collisions))

    def _args(self) -> str:
        return f"num_embeddings={self.num_embeddings}, num_collisions={self.num_collisions}"


class GeneralizedQuotientRemainder(RadixPartition):
    """Mixed radix: partition ``j`` holds the ``j``-th digit of ``x`` in base ``(m1, ..., mk)``.

    Class ``j`` is ``(x // (m1 * ... * m(j-1))) % mj``; the digits are unique when ``prod(m) >= n``.
    """

    def __init__(self, num_embeddings: int, divisors: Sequence[int]) -> None:
        divisors = _check_factors("divisors", divisors)
        if math.prod(divisors) < num_embeddings:
            raise ValueError(
                f"divisors {list(divisors)} have product {math.prod(divisors)} < num_embeddings "
                f"{num_embeddings}: some ids would share all their classes"
            )
        self.divisors = divisors
        strides = [math.prod(divisors[:j]) for j in range(len(divisors))]
        super().__init__(num_embeddings, strides=strides, moduli=divisors)

    def _args(self) -> str:
        return f"num_embeddings={self.num_embeddings}, divisors={list(self.divisors)}"


class ChineseRemainder(RadixPartition):
    """Residues ``x % mj`` for pairwise coprime moduli with ``prod(m) >= n`` (Chinese remainder theorem)."""

    def __init__(self, num_embeddings: int, moduli: Sequence[int]) -> None:
        moduli = _check_factors("moduli", moduli)
        for i, a in enumerate(moduli):
            for b in moduli[i + 1 :]:
                if math.gcd(a, b) != 1:
                    raise ValueError(
                        f"moduli must be pairwise coprime: {a} and {b} share the factor {math.gcd(a, b)}"
                    )
        if math.prod(moduli) < num_embeddings:
            raise ValueError(
                f"moduli {list(moduli)} have product {math.prod(moduli)} < num_embeddings "
                f"{num_embeddings}: some ids would share all their residues"
            )
        super().__init__(num_embeddings, strides=[1] * len(moduli), moduli=moduli)

    def _args(self) -> str:
        return f"num_embeddings={self.num_embeddings}, moduli={list(self.moduli)}"


class Hashing(RadixPartition):
    """The hashing trick, ``x % num_buckets``: one partition, not complementary when buckets < n."""

    def __init__(self, num_embeddings: int, num_buckets: int) -> None:
        _require_int("num_buckets", num_buckets, minimum=1)
        self.num_buckets = num_buckets
        super().__init__(num_embeddings, strides=(1,), moduli=(num_buckets,))

    def _args(self) -> str:
        return f"num_embeddings={self.num_embeddings}, num_buckets={self.num_buckets}"


class Identity(RadixPartition):
    """The naive partition into singletons: one full table of ``num_embeddings`` rows."""

    def __init__(self, num_embeddings: int) -> None:
        super().__init__(num_embeddings, strides=(1,), moduli=(num_embeddings,))


def _check_factors(name: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (int, str)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of ints, got {values!r}")
    for j, v in enumerate(values):
        _require_int(f"{name}[{j}]", v, minimum=1)
    return tuple(int(v) for v in values)
