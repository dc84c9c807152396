"""Partitions of a categorical feature's id set, the building block of compositional embeddings.

A partition scheme maps each category id in ``[0, num_embeddings)`` to one class index per
partition; each partition owns one small embedding table with a row per class.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from ..validation import assert_in_graph, check_mode

__all__ = ["Partition", "RadixPartition", "check_ids", "ID_DTYPES"]


# The integer dtypes ids may have (the modules convert them to int64 once).
ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def check_ids(ids: Tensor, num_embeddings: int) -> None:
    """Raise a clear error unless ``ids`` is an integer tensor with values in ``[0, num_embeddings)``.

    On CPU in eager mode the error names the first offending id and its position, so that a bad
    input row is easy to find. Inside ``torch.compile`` / ``torch.export`` and on accelerators the
    range check is one ``torch._assert_async`` (no host sync); meta and fake tensors pass, and
    ``compembed.trusted_inputs()`` skips the value check (see ``compembed.validation``).
    """
    mode = check_mode(ids)
    if isinstance(ids, torch.fx.Proxy):  # symbolic fx tracing: no dtype to check
        if mode == "graph":
            assert_in_graph(((ids >= 0) & (ids < num_embeddings)).all(), _range_message(num_embeddings))
        return
    if not isinstance(ids, Tensor):
        raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in ID_DTYPES:
        raise TypeError(f"ids must be an integer tensor (int64 or int32), got dtype {ids.dtype}")
    if mode == "graph":
        assert_in_graph(((ids >= 0) & (ids < num_embeddings)).all(), _range_message(num_embeddings))
    if mode != "eager" or ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)
    if lo.item() < 0 or hi.item() >= num_embeddings:
        position = ((ids < 0) | (ids >= num_embeddings)).nonzero()[0]
        value = ids[tuple(position)].item()
        where = tuple(position.tolist()) if ids.dim() > 1 else position.item()
        raise IndexError(
            f"id {value} at position {where} is out of range [0, {num_embeddings})"
        )


def _range_message(num_embeddings: int) -> str:
    return (f"compembed: an id is out of range [0, {num_embeddings}) (run the batch eagerly on the CPU "
            f"to see which one)")


class Partition(ABC):
    """A set of partitions P1..Pk of the ids ``[0, num_embeddings)``.

    Calling a partition maps an integer tensor of ids of any shape ``(*)`` to class indices of
    shape ``(*, k)``: column ``j`` is the row of the id's class in table ``j``.
    """

    def __init__(self, num_embeddings: int) -> None:
        _require_int("num_embeddings", num_embeddings, minimum=1)
        self.num_embeddings = num_embeddings

    @property
    @abstractmethod
    def table_sizes(self) -> tuple[int, ...]:
        """Number of classes (= table rows) of each partition."""

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    @property
    @abstractmethod
    def complementary(self) -> bool:
        """True when complementarity holds by construction (every id gets a unique class tuple)."""

    @abstractmethod
    def classes(self, ids: Tensor) -> Tensor:
        """Class indices ``(*, k)`` of already validated int64 ids ``(*)``."""

    def __call__(self, ids: Tensor, validate: bool = True) -> Tensor:
        if validate:
            check_ids(ids, self.num_embeddings)
        return self.classes(ids.long())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._args()})"

    def _args(self) -> str:
        return f"num_embeddings={self.num_embeddings}"


class RadixPartition(Partition):
    """Partition ``j`` puts id ``x`` in class ``(x // strides[j]) % moduli[j]``.

    Every scheme of this package is of this form (quotient-remainder, mixed radix, Chinese
    remainder, hashing, the full table), so all of them map ids with the same two integer ops, which
    also vectorises across features. Table ``j`` keeps only the classes that ids in range can reach:
    ``min(moduli[j], ceil(num_embeddings / strides[j]))`` rows.
    """

    def __init__(self, num_embeddings: int, strides: Sequence[int], moduli: Sequence[int]) -> None:
        super().__init__(num_embeddings)
        if len(strides) != len(moduli) or not strides:
            raise ValueError("strides and moduli must be non-empty and of equal length")
        self.strides = tuple(int(s) for s in strides)
        self.moduli = tuple(int(m) for m in moduli)
        self._strides_t = torch.tensor(self.strides, dtype=torch.int64)
        self._moduli_t = torch.tensor(self.moduli, dtype=torch.int64)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        n = self.num_embeddings
        return tuple(min(m, -(-n // s)) for s, m in zip(self.strides, self.moduli))

    @property
    def complementary(self) -> bool:
        return _is_mixed_radix(self) or _is_chinese_remainder(self)

    def classes(self, ids: Tensor) -> Tensor:
        strides = self._strides_t.to(ids.device)
        moduli = self._moduli_t.to(ids.device)
        # Integer floor division and remainder: exact for every int64 id (a float division
        # loses exactness above 2**24).
        return torch.remainder(torch.div(ids.unsqueeze(-1), strides, rounding_mode="floor"), moduli)


def _is_mixed_radix(p: RadixPartition) -> bool:
    """Digits of a mixed-radix number system (in any table order) whose range covers all ids."""
    order = sorted(range(p.num_tables), key=lambda j: p.strides[j])
    place = 1
    for j in order:
        if p.strides[j] != place:
            return False
        place *= p.moduli[j]
    return place >= p.num_embeddings


def _is_chinese_remainder(p: RadixPartition) -> bool:
    """Residues modulo pairwise coprime moduli whose product covers all ids."""
    if any(s != 1 for s in p.strides):
        return False
    return _pairwise_coprime(p.moduli) and math.prod(p.moduli) >= p.num_embeddings


def _pairwise_coprime(moduli: Sequence[int]) -> bool:
    return all(math.gcd(a, b) == 1 for i, a in enumerate(moduli) for b in moduli[i + 1 :])


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
