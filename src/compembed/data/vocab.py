"""Streaming value counts and the value -> id maps built from them.

Id convention of every prepared categorical feature: 0 = missing, 1 = rare (a value seen fewer than
``min_freq`` times, or unseen at preparation time), ``2..n-1`` = the kept values in ascending order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MISSING_ID", "RARE_ID", "ValueCounter", "Vocabulary"]

MISSING_ID = 0
RARE_ID = 1


class ValueCounter:
    """Counts of integer values fed in chunks, in memory proportional to the distinct values.

    Each chunk's ``np.unique`` counts become a sorted run; runs are merged when the newest is at
    least half the size of the one before (like a log-structured merge), so the total work is
    ``O(V log V)`` per pass and memory stays within a small multiple of the distinct count ``V``.
    """

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.runs.append(np.unique(values, return_counts=True))
            while len(self.runs) > 1 and 2 * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
                self.runs.append(_merge(self.runs.pop(), self.runs.pop()))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, counts)``: sorted distinct values and how often each was seen."""
        while len(self.runs) > 1:
            self.runs.append(_merge(self.runs.pop(), self.runs.pop()))
        if not self.runs:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return self.runs[0]


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    values, inverse = np.unique(np.concatenate([a[0], b[0]]), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([a[1], b[1]]), minlength=len(values))
    return values, counts.astype(np.int64)


@dataclass
class Vocabulary:
    """Kept values of one feature (sorted); ``lookup`` maps raw values to ids."""

    values: np.ndarray

    @classmethod
    def from_counts(cls, values: np.ndarray, counts: np.ndarray, min_freq: int = 1) -> "Vocabulary":
        return cls(values[counts >= min_freq])

    @property
    def cardinality(self) -> int:
        """Number of ids, counting the missing and rare ids."""
        return len(self.values) + 2

    def lookup(self, raw: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        """int32 ids of ``raw`` values (``missing`` marks missing entries)."""
        pos = np.searchsorted(self.values, raw)
        found = pos < len(self.values)
        found[found] = self.values[pos[found]] == raw[found]
        ids = np.where(found, pos + 2, RARE_ID).astype(np.int32)
        if missing is not None:
            ids[missing] = MISSING_ID
        return ids
