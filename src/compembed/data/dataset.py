"""The dataset interface every CTR source implements, and an array-backed implementation.

Batch order and sharding (the contract the trainer and the distributed code rely on):

* A split's rows are visited in an *order*: ``0..N-1`` unshuffled, or a permutation fixed by
  ``seed`` (pass a different seed per epoch). The order depends only on ``(N, shuffle, seed)``.
* Global batch ``i`` is positions ``[i*G, min((i+1)*G, N))`` of that order, with
  ``G = batch_size * world_size``.
* Rank ``r`` gets the contiguous slice ``[i*G + (r*n)//W, i*G + ((r+1)*n)//W)`` of global batch ``i``
  (``n`` rows in it, ``W = world_size``): ``batch_size`` rows when the global batch is full. So the
  union over ranks of their shard of global batch ``i`` is exactly global batch ``i`` of a single
  process with ``batch_size * world_size``, in rank order.
* Every rank yields the same number of batches (``num_batches``), so collectives stay in step. With
  ``drop_last=False`` the final global batch may be short, and a rank's shard of it may even be empty
  (0 rows) when fewer rows than ranks remain; use ``drop_last=True`` for distributed training.
* ``start_batch`` skips the first batches of the epoch without reading them (resuming mid-epoch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from .batch import Batch

__all__ = [
    "SPLITS",
    "ID_ORDERS",
    "DatasetInfo",
    "CTRDataset",
    "ArrayDataset",
    "shard_bounds",
    "count_batches",
    "bayes_loss",
]

SPLITS = ("train", "val", "test")
ID_ORDERS = ("value", "frequency")


@dataclass
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``categorical_names`` lists the single-valued features first (the columns of ``Batch.sparse``), then
    the multi-hot ones (``Batch.multi_hot`` keys); ``cardinalities`` follows the same order. Ids of a
    feature with cardinality ``n`` lie in ``[0, n)``.

    ``counts`` (None where unknown, e.g. a dataset prepared before counts were recorded): feature name ->
    int64 ``(cardinality,)`` occurrences of each id in the train split (every id in a multi-hot bag
    counts). ``id_order``: ``value`` (ids follow the sorted values) or ``frequency`` (id 0 is the most
    frequent in the train split, ties in value order; so the ``K`` hottest ids are ``id < K``).
    ``to_dict``/``from_dict`` (the JSON in ``meta.json``) leave ``counts`` out: it is stored as an array
    beside the dataset, and it takes no part in ``==``.
    """

    dense_names: list[str]
    categorical_names: list[str]
    cardinalities: list[int]
    multi_hot_names: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    bayes_known: bool = False
    counts: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    id_order: str = "value"

    def __post_init__(self) -> None:
        if self.id_order not in ID_ORDERS:
            raise ValueError(f"id_order must be one of {ID_ORDERS}, got {self.id_order!r}")

    @property
    def single_names(self) -> list[str]:
        """Single-valued categorical features, in ``Batch.sparse`` column order."""
        return [n for n in self.categorical_names if n not in self.multi_hot_names]

    @property
    def num_dense(self) -> int:
        return len(self.dense_names)

    def to_dict(self) -> dict:
        return {
            "dense_names": list(self.dense_names),
            "categorical_names": list(self.categorical_names),
            "cardinalities": [int(c) for c in self.cardinalities],
            "multi_hot_names": list(self.multi_hot_names),
            "split_sizes": {k: int(v) for k, v in self.split_sizes.items()},
            "bayes_known": bool(self.bayes_known),
            "id_order": self.id_order,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(
            dense_names=list(d["dense_names"]), categorical_names=list(d["categorical_names"]),
            cardinalities=[int(c) for c in d["cardinalities"]],
            multi_hot_names=list(d.get("multi_hot_names", [])),
            split_sizes={k: int(v) for k, v in d.get("split_sizes", {}).items()},
            bayes_known=bool(d.get("bayes_known", False)), id_order=d.get("id_order", "value"),
        )


@runtime_checkable
class CTRDataset(Protocol):
    """A CTR dataset with train/val/test splits that yields ``Batch``es (see the module doc)."""

    info: DatasetInfo

    def loader(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, start_batch: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False,
    ) -> Iterable[Batch]: ...

    def num_batches(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ) -> int: ...


def count_batches(num_rows: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches per rank (the same on every rank) for ``num_rows`` rows."""
    _check_batching(batch_size, 0, world_size)
    g = batch_size * world_size
    return num_rows // g if drop_last else math.ceil(num_rows / g)


def shard_bounds(
    num_rows: int, batch_size: int, batch_idx: int, rank: int = 0, world_size: int = 1
) -> tuple[int, int]:
    """Positions ``[start, stop)`` in the epoch's order of rank ``rank``'s shard of global batch ``batch_idx``."""
    g = batch_size * world_size
    lo = batch_idx * g
    n = max(0, min(g, num_rows - lo))
    return lo + (rank * n) // world_size, lo + ((rank + 1) * n) // world_size


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def bayes_loss(click_prob: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Mean binary cross-entropy of the true click probabilities against the labels.

    The Bayes-optimal expected loss: no model can do better in expectation on data drawn from the
    planted model. Probabilities are clipped to ``[1e-7, 1 - 1e-7]``.
    """
    p = torch.as_tensor(click_prob, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
    y = torch.as_tensor(labels, dtype=torch.float64)
    return float(torch.nn.functional.binary_cross_entropy(p, y))


class ArrayDataset:
    """A CTR dataset held in NumPy arrays (in memory or memory-mapped from disk).

    Args:
        info: the dataset's description (``split_sizes`` is filled from ``splits``).
        dense: float32 ``(N, num_dense)``.
        sparse: integer ``(N, F)`` ids of the single-valued features.
        labels: ``(N,)`` labels in {0, 1} (any numeric dtype).
        splits: split name -> row indices (int array) or a ``(start, stop)`` range.
        multi_hot: name -> ``(values (M,), row_offsets (N + 1,))`` in CSR layout.
        click_prob: float32 ``(N,)`` true click probabilities, or None.

    Shuffling is a full permutation of the split's rows; each batch gathers its rows, so the arrays
    may be memory-mapped (the page cache keeps them hot).
    """

    def __init__(
        self,
        info: DatasetInfo,
        dense: np.ndarray,
        sparse: np.ndarray,
        labels: np.ndarray,
        splits: dict[str, np.ndarray | tuple[int, int]],
        multi_hot: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        click_prob: np.ndarray | None = None,
    ) -> None:
        self.dense, self.sparse, self.labels = dense, sparse, labels
        self.multi_hot = multi_hot or {}
        self.click_prob = click_prob
        self.splits = splits
        sizes = {k: (v[1] - v[0] if isinstance(v, tuple) else len(v)) for k, v in splits.items()}
        self.info = DatasetInfo(**{**info.to_dict(), "split_sizes": sizes, "bayes_known": click_prob is not None},
                                counts=info.counts)

    def _rows(self, split: str) -> np.ndarray | tuple[int, int]:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; this dataset has {sorted(self.splits)}")
        return self.splits[split]

    def num_batches(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ) -> int:
        self._rows(split)
        return count_batches(self.info.split_sizes[split], batch_size, world_size, drop_last)

    def loader(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, start_batch: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False,
    ) -> Iterator[Batch]:
        _check_batching(batch_size, rank, world_size)
        rows = self._rows(split)
        n = self.info.split_sizes[split]
        order: np.ndarray | None = None
        if shuffle:
            order = np.random.default_rng(seed).permutation(n)
            if not isinstance(rows, tuple):
                order = np.asarray(rows)[order]
            else:
                order += rows[0]
        nb = count_batches(n, batch_size, world_size, drop_last)
        for i in range(start_batch, nb):
            lo, hi = shard_bounds(n, batch_size, i, rank, world_size)
            if order is not None:
                idx = order[lo:hi]
            elif isinstance(rows, tuple):
                idx = slice(rows[0] + lo, rows[0] + hi)
            else:
                idx = np.asarray(rows[lo:hi])
            yield self.take(idx)

    def take(self, idx: np.ndarray | slice) -> Batch:
        """The batch of rows ``idx`` (indices or a slice), in that order."""
        multi = {}
        for name, (values, offsets) in self.multi_hot.items():
            multi[name] = _gather_bags(values, offsets, idx)
        return Batch(
            dense=torch.from_numpy(np.array(self.dense[idx], dtype=np.float32)),
            sparse=torch.from_numpy(np.array(self.sparse[idx], dtype=np.int64)),
            labels=torch.from_numpy(np.array(self.labels[idx], dtype=np.float32)),
            multi_hot=multi,
            click_prob=None if self.click_prob is None
            else torch.from_numpy(np.array(self.click_prob[idx], dtype=np.float32)),
        )


def _gather_bags(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of a CSR bag column as ``(values (M,), offsets (B,))`` in EmbeddingBag's layout."""
    if isinstance(idx, slice):
        lo, hi = int(offsets[idx.start]), int(offsets[idx.stop])
        vals = np.asarray(values[lo:hi], dtype=np.int64)
        offs = np.asarray(offsets[idx.start:idx.stop], dtype=np.int64) - lo
    else:
        starts = np.asarray(offsets[idx], dtype=np.int64)
        lengths = np.asarray(offsets[idx + 1], dtype=np.int64) - starts
        offs = np.zeros(len(idx), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offs[1:])
        # position k of the output bag j reads values[starts[j] + k]
        src = np.repeat(starts - offs, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        vals = np.asarray(values[src], dtype=np.int64)
    return torch.from_numpy(vals), torch.from_numpy(offs)
