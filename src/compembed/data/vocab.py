"""Streaming value counts and the value -> id maps built from them.

Id convention of every prepared categorical feature in value order: 0 = missing, 1 = rare (a value seen
fewer than ``min_freq`` times in the train split, or not seen there), ``2..n-1`` = the kept values in
ascending order. In frequency order the same ids are renumbered by descending train count (ties in
value order), the missing and rare ids included: meta.json's ``special_ids`` says where they went.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["MISSING_ID", "RARE_ID", "ValueCounter", "Vocabulary", "IdMap", "frequency_ids", "relabelled_counts",
           "load_id_maps", "id_maps", "special_ids", "ids_doc", "kept_ids"]

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


def frequency_ids(counts: np.ndarray) -> np.ndarray:
    """int64 new id of each id when ids are renumbered by descending ``counts``, ties kept in id order.

    ``counts[i]`` is the count of (value-order) id ``i``; the result is a permutation with
    ``counts[frequency_ids(counts).argsort()]`` non-increasing, so id 0 becomes the most frequent.
    """
    order = np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")
    new = np.empty(len(order), dtype=np.int64)
    new[order] = np.arange(len(order))
    return new


def relabelled_counts(counts: np.ndarray, new_ids: np.ndarray | None) -> np.ndarray:
    """``counts`` indexed by the new ids (``counts`` itself when ``new_ids`` is None)."""
    if new_ids is None:
        return counts
    out = np.empty_like(counts)
    out[new_ids] = counts
    return out


@dataclass
class Vocabulary:
    """Kept values of one feature (sorted), their ids and train counts; ``lookup`` maps raw values to ids.

    Value-order ids: 0 = missing, 1 = rare/unseen, ``2 + k`` = ``values[k]``. With ``new_ids`` (the
    frequency order) the id used is ``new_ids[value-order id]``; ``counts`` is indexed by the id used.
    """

    values: np.ndarray
    counts: np.ndarray | None = None  # int64 (cardinality,) train occurrences per id
    new_ids: np.ndarray | None = None  # int64 (cardinality,) id used for each value-order id; None: value order

    @classmethod
    def from_counts(
        cls, values: np.ndarray, counts: np.ndarray, min_freq: int = 1, missing: int = 0, id_order: str = "value",
    ) -> "Vocabulary":
        """From the sorted distinct ``values`` and their (train) ``counts``; ``missing`` missing entries.

        Values seen fewer than ``min_freq`` times share the rare id, whose count is theirs summed.
        ``id_order``: ``value`` or ``frequency`` (ids by descending count, ties in value order).
        """
        if id_order not in ("value", "frequency"):
            raise ValueError(f"id_order must be value or frequency, got {id_order!r}")
        counts = np.asarray(counts, dtype=np.int64)
        keep = counts >= min_freq  # as in kept_ids
        id_counts = np.concatenate([[missing, counts[~keep].sum()], counts[keep]]).astype(np.int64)
        new_ids = frequency_ids(id_counts) if id_order == "frequency" else None
        return cls(values[keep], relabelled_counts(id_counts, new_ids), new_ids)

    @property
    def cardinality(self) -> int:
        """Number of ids, counting the missing and rare ids."""
        return len(self.values) + 2

    @property
    def missing_id(self) -> int:
        return MISSING_ID if self.new_ids is None else int(self.new_ids[MISSING_ID])

    @property
    def rare_id(self) -> int:
        return RARE_ID if self.new_ids is None else int(self.new_ids[RARE_ID])

    def relabel(self, ids: np.ndarray) -> np.ndarray:
        """Value-order ids -> the ids used (same dtype)."""
        return ids if self.new_ids is None else self.new_ids[ids].astype(ids.dtype)

    def values_by_id(self) -> np.ndarray:
        """The kept values in increasing order of their ids (what vocab.json lists)."""
        return self.values if self.new_ids is None else self.values[np.argsort(self.new_ids[2:], kind="stable")]

    def lookup(self, raw: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        """int32 ids of ``raw`` values (``missing`` marks missing entries)."""
        pos = np.searchsorted(self.values, raw)
        found = pos < len(self.values)
        found[found] = self.values[pos[found]] == raw[found]
        ids = np.where(found, pos + 2, RARE_ID).astype(np.int32)
        if missing is not None:
            ids[missing] = MISSING_ID
        return self.relabel(ids)


def kept_ids(counts: np.ndarray, min_freq: int = 1) -> np.ndarray:
    """Value-order id of each counted value (sorted, with ``counts``): ``2 + k`` for the ``k``-th value
    seen at least ``min_freq`` times, ``RARE_ID`` for the others (as ``Vocabulary.from_counts`` keeps them)."""
    keep = np.asarray(counts) >= min_freq
    return np.where(keep, np.cumsum(keep) + 1, RARE_ID)


def special_ids(names: list[str], vocabs: list[Vocabulary]) -> dict[str, dict[str, int]]:
    """``{feature: {"missing": id, "rare": id}}``, what meta.json records as ``special_ids``."""
    return {name: {"missing": v.missing_id, "rare": v.rare_id} for name, v in zip(names, vocabs)}


def ids_doc(id_order: str, what: str) -> str:
    """The id convention in words, for meta.json (``what``: what the values are, e.g. ``hash``)."""
    if id_order == "value":
        return f"0 = missing, 1 = rare/unseen, 2.. = kept values in ascending {what} order"
    return ("by descending train-split count, ties in value order (missing, rare/unseen, then kept values in "
            f"ascending {what} order); special_ids says where the missing and rare ids are")


class IdMap:
    """Raw value <-> id of one prepared feature, read back from ``vocab.json`` (see ``load_id_maps``).

    Args:
        values: the kept values in increasing id order, the special ids left out (a vocab.json list).
        missing_id, rare_id: where the special ids are.
        normalize: applied to the raw strings before lookup (Criteo: hashes as 8 lowercase hex digits).
    """

    def __init__(self, values: list[str], missing_id: int = MISSING_ID, rare_id: int = RARE_ID,
                 normalize: Callable[[pa.Array], pa.Array] | None = None) -> None:
        self.values = pa.array(values, pa.string())
        self.missing_id, self.rare_id = int(missing_id), int(rare_id)
        self.cardinality = len(values) + 2
        self.normalize = normalize
        # the ids of the listed values: every id but the two special ones, in increasing order
        self.value_ids = np.delete(np.arange(self.cardinality, dtype=np.int64), [self.missing_id, self.rare_id])

    def ids(self, raw: list[str | None] | pa.Array) -> np.ndarray:
        """int64 ids of raw values: None or empty -> the missing id, a value not kept -> the rare id."""
        arr = raw if isinstance(raw, pa.Array) else pa.array(raw, pa.string())
        missing = np.asarray(pc.fill_null(pc.equal(arr, ""), True), dtype=bool)
        if self.normalize is not None:
            arr = self.normalize(arr)
        pos = np.asarray(pc.fill_null(pc.index_in(arr, value_set=self.values), -1), dtype=np.int64)
        return self.from_positions(np.where(missing, MISSING_ID, np.where(pos >= 0, pos + 2, RARE_ID)))

    def from_positions(self, positions: np.ndarray) -> np.ndarray:
        """int64 ids of value-order ids against ``values`` (0 = missing, 1 = not kept, ``2 + k`` = ``values[k]``),
        as ``table._map_ids`` gives them with ``values`` as its value set."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.where(positions >= 2, self.value_ids[np.clip(positions - 2, 0, len(self.value_ids) - 1)], self.rare_id)
        out[positions == MISSING_ID] = self.missing_id
        return out

    def values_of(self, ids: np.ndarray) -> pa.Array:
        """The raw values of ``ids`` (null for the missing and rare ids)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.cardinality):
            raise IndexError(f"ids out of range [0, {self.cardinality}): {ids[(ids < 0) | (ids >= self.cardinality)][:5]}")
        pos = np.searchsorted(self.value_ids, ids)
        special = (ids == self.missing_id) | (ids == self.rare_id)
        return self.values.take(pa.array(np.where(special, 0, pos), mask=special))


def load_id_maps(path: str | os.PathLike) -> dict[str, IdMap]:
    """``{feature: IdMap}`` of a prepared dataset directory (its vocab.json and meta.json ``special_ids``;
    a dataset prepared before ``special_ids`` were recorded has them at 0 and 1)."""
    path = Path(path)
    vocab_path = path / "vocab.json"
    if not vocab_path.exists():
        raise FileNotFoundError(f"{vocab_path}: no vocabulary (prepared with --no-vocab, or synthetic data)")
    return id_maps(json.loads(vocab_path.read_text()), json.loads((path / "meta.json").read_text()))


def id_maps(vocab: dict[str, list[str]], meta: dict) -> dict[str, IdMap]:
    """``{feature: IdMap}`` of a prepared dataset's vocab.json and meta.json contents (see ``load_id_maps``)."""
    special = meta.get("special_ids", {})
    normalize = _criteo_hash if meta.get("source", {}).get("kind") == "criteo" else None
    return {name: IdMap(values, special.get(name, {}).get("missing", MISSING_ID),
                        special.get(name, {}).get("rare", RARE_ID), normalize)
            for name, values in vocab.items()}


def _criteo_hash(values: pa.Array) -> pa.Array:
    """Criteo hashes as written in vocab.json: 8 lowercase hex digits (short ones zero-padded)."""
    return pc.utf8_lpad(pc.utf8_lower(values), 8, "0")
