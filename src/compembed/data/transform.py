"""Dense feature transforms, chosen per column from train-split statistics and recorded in meta.json.

* ``log1p``: negatives clipped to 0, then ``log(1 + x)`` (Criteo's standard preprocessing).
* ``standardize``: ``(x - mean) / std`` with the train split's mean and (population) std; std 0 -> 1.
* ``none``: the raw values.
* ``auto`` (a request, not a transform): ``log1p`` for a count-like column, ``standardize`` otherwise.
  Count-like: train values ``0 <= min``, ``max <= AUTO_LOG1P_MAX``, and ``min <= max - min`` (the values
  start near zero for their spread). A column far from zero for its spread, such as a Unix timestamp
  or a year, would be squashed by ``log1p`` to a near-constant, so it is standardized.

A missing value becomes 0 after the transform (the train mean under ``standardize``). Raw values come
in as float64 with NaN marking missing entries. ``DenseTransform.apply`` maps new raw values exactly as
preparation did; ``load_dense_transforms`` reads a prepared dataset's transforms back.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["DENSE_TRANSFORMS", "AUTO_LOG1P_MAX", "DenseStats", "DenseTransform", "choose_transforms",
           "apply_transforms", "load_dense_transforms"]

DENSE_TRANSFORMS = ("log1p", "standardize", "auto", "none")
AUTO_LOG1P_MAX = 1e6


class DenseStats:
    """Streaming per-column count, min, max, mean and std of float64 values (NaN = missing).

    Sums are taken around a per-column shift (the first value seen), so the variance of values far from
    zero (timestamps) keeps its precision.
    """

    def __init__(self, num_columns: int) -> None:
        self.count = np.zeros(num_columns, dtype=np.int64)
        self.min = np.full(num_columns, np.inf)
        self.max = np.full(num_columns, -np.inf)
        self.shift = np.full(num_columns, np.nan)
        self.s1 = np.zeros(num_columns)
        self.s2 = np.zeros(num_columns)

    def add(self, x: np.ndarray) -> None:
        """Add rows ``x``: float64 ``(m, num_columns)``."""
        valid = ~np.isnan(x)
        if not valid.any():
            return
        first = np.where(valid.any(0), x[valid.argmax(0), np.arange(x.shape[1])], np.nan)
        self.shift = np.where(np.isnan(self.shift), first, self.shift)
        d = np.where(valid, x - self.shift, 0.0)
        self.count += valid.sum(0)
        self.s1 += d.sum(0)
        self.s2 += (d * d).sum(0)
        self.min = np.minimum(self.min, np.where(valid, x, np.inf).min(0))
        self.max = np.maximum(self.max, np.where(valid, x, -np.inf).max(0))

    def column(self, j: int) -> dict:
        """``{count, min, max, mean, std}`` of column ``j`` (min .. std None when it has no values)."""
        n = int(self.count[j])
        if n == 0:
            return {"count": 0, "min": None, "max": None, "mean": None, "std": None}
        m = self.s1[j] / n
        var = max(0.0, self.s2[j] / n - m * m)
        return {"count": n, "min": float(self.min[j]), "max": float(self.max[j]),
                "mean": float(self.shift[j] + m), "std": float(np.sqrt(var))}


@dataclass
class DenseTransform:
    """The transform of one dense column (``kind`` log1p, standardize or none) and its train statistics.

    ``mean``/``std`` are what ``standardize`` uses (std already 1 where the train std was 0); ``stats``
    are the train split's ``{count, min, max, mean, std}`` (None where not computed).
    """

    kind: str
    mean: float = 0.0
    std: float = 1.0
    stats: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("log1p", "standardize", "none"):
            raise ValueError(f"dense transform must be log1p, standardize or none, got {self.kind!r}")

    @classmethod
    def choose(cls, requested: str, stats: dict | None) -> "DenseTransform":
        """The transform for ``requested`` (one of ``DENSE_TRANSFORMS``) given a column's train ``stats``."""
        if requested not in DENSE_TRANSFORMS:
            raise ValueError(f"dense transform must be one of {DENSE_TRANSFORMS}, got {requested!r}")
        kind = requested
        if requested == "auto":
            if stats is None:
                raise ValueError("the auto dense transform needs train statistics")
            lo, hi = stats["min"], stats["max"]
            count_like = lo is not None and 0 <= lo and hi <= AUTO_LOG1P_MAX and lo <= hi - lo
            kind = "log1p" if count_like else "standardize"
        if kind != "standardize":
            return cls(kind, stats=stats)
        if stats is None or stats["count"] == 0:
            return cls(kind, 0.0, 1.0, stats)
        return cls(kind, stats["mean"], stats["std"] if stats["std"] > 0 else 1.0, stats)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """float32 transformed values of raw float64 values (NaN = missing -> 0)."""
        x = np.asarray(raw, dtype=np.float64)
        missing = np.isnan(x)
        if self.kind == "log1p":
            out = np.log1p(np.maximum(np.where(missing, 0.0, x), 0.0))
        elif self.kind == "standardize":
            out = np.where(missing, 0.0, (x - self.mean) / self.std)
        else:
            out = np.where(missing, 0.0, x)
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DenseTransform":
        return cls(d["kind"], float(d.get("mean", 0.0)), float(d.get("std", 1.0)), d.get("stats"))


def choose_transforms(requested: str, stats: DenseStats | None, num_columns: int) -> list[DenseTransform]:
    """One transform per column for ``requested`` (``stats`` may be None for log1p and none)."""
    return [DenseTransform.choose(requested, None if stats is None else stats.column(j)) for j in range(num_columns)]


def apply_transforms(transforms: list[DenseTransform], raw: np.ndarray) -> np.ndarray:
    """float32 ``(m, D)`` of raw float64 ``(m, D)`` values (NaN = missing), column ``j`` by ``transforms[j]``."""
    out = np.empty(raw.shape, dtype=np.float32)
    for j, t in enumerate(transforms):
        out[:, j] = t.apply(raw[:, j])
    return out


def load_dense_transforms(path: str | os.PathLike) -> dict[str, DenseTransform]:
    """``{column: DenseTransform}`` of a prepared dataset directory, from its meta.json, in column order.

    A dataset prepared before transforms were recorded used one transform for every column: log1p for
    Criteo and synthetic data, ``preprocessing.dense_transform`` for a table.
    """
    meta = json.loads((Path(path) / "meta.json").read_text())
    names = meta["info"]["dense_names"]
    if "dense_transforms" in meta:
        return {name: DenseTransform.from_dict(meta["dense_transforms"][name]) for name in names}
    kind = meta.get("preprocessing", {}).get("dense_transform", "log1p")
    return {name: DenseTransform(kind) for name in names}
