"""A Criteo-like synthetic CTR generator whose true click probabilities are known.

The planted model ("world", fixed by ``seed`` and the config):

* 26 categorical features with the Criteo Kaggle cardinalities times ``cardinality_scale``. Id 0 of
  every feature means *missing* (as in prepared Criteo data; in value order); ids ``1..n-1`` are drawn from a Zipf-like
  law with a per-feature exponent over a random ranking of the ids (frequent ids are not small ids).
* Every id has its own random logit effect and a small latent vector: the click logit is
  ``bias + sum_f effect_f[id_f] + sum_{(f,g) in pairs} <v_f[id_f], v_g[id_g]> + <c, h>``,
  so each category's identity matters (ids that share an embedding row lose accuracy) and some of the
  signal lives in pairwise interactions, as DLRM models it.
* 13 dense counts driven by a hidden per-row factor ``h`` that also moves the logit, with missing
  values and a few negatives (as in Criteo's I2); ``Batch.dense`` holds ``log(1 + max(x, 0))``,
  missing as 0, exactly what ``compembed prepare criteo`` produces.
* The label is Bernoulli(sigmoid(logit)); ``Batch.click_prob`` is that probability.

Rows are generated in chunks of ``CHUNK_ROWS`` with a generator seeded by ``(seed, chunk index)``:
row ``i``'s content depends only on the config and ``i`` (not on ``num_rows``, batch size or order), and
any number of rows streams in bounded memory. The splits are consecutive row ranges: train first,
then validation, then test.

``info.counts`` holds every id's occurrences in the train split, computed on first use by drawing
only the ids of the train rows (a ``np.bincount`` per chunk and feature). With ``id_order="frequency"``
they are computed up front and the planted model is relabelled so that ids follow descending train
counts (ties in value order, the missing id included: ``missing_ids`` says where it went). Only the
labels of the ids change, so the click probabilities and the Bayes loss are exactly those of value
order; the labelling then depends on the train split (``num_rows`` and the fractions) too.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from .batch import Batch
from .criteo_spec import CATEGORICAL_NAMES, DENSE_NAMES, KAGGLE_CARDINALITIES
from .dataset import ID_ORDERS, DatasetInfo, _check_batching, count_batches, shard_bounds
from .vocab import frequency_ids, relabelled_counts

__all__ = ["CHUNK_ROWS", "SyntheticConfig", "SyntheticCTR", "scaled_cardinalities", "add_id_counts"]

CHUNK_ROWS = 16384  # fixed: changing it changes every row of every seed


def scaled_cardinalities(scale: float, min_values: int = 4, base: list[int] | None = None) -> list[int]:
    """Criteo Kaggle cardinalities times ``scale`` (at least ``min_values`` values, never more than the
    original), plus one for the missing id 0."""
    base = KAGGLE_CARDINALITIES if base is None else base
    return [1 + max(min(n, min_values), int(round(n * scale))) for n in base]


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic data; the defaults give a DLRM-learnable Criteo-like task.

    Attributes:
        num_rows: rows over all splits.
        cardinality_scale: factor on the Criteo Kaggle cardinalities (1.0 = 33.8M categories).
        seed: fixes the planted model and every row.
        val_fraction, test_fraction: shares of the rows in the validation and test splits.
        min_values: at least this many values per feature (capped by the Criteo count).
        cardinalities: explicit per-feature cardinalities (including the missing id) instead of scaling.
        zipf_exponent: mean exponent of the per-feature Zipf law (larger = more skewed).
        missing_rate: mean share of missing values per categorical feature.
        effect_std: std of the per-category logit effects (summed over features).
        latent_dim: size of the per-category latent vectors.
        num_pairs: number of feature pairs with a dot-product interaction in the logit.
        interaction_std: std of the total interaction term.
        dense_signal: std of the dense (hidden-factor) term of the logit.
        positive_rate: the intercept is set so about this share of labels is 1.
        id_order: ``value`` (ids as drawn) or ``frequency`` (ids relabelled by descending train count).
    """

    num_rows: int = 200_000
    cardinality_scale: float = 0.001
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    min_values: int = 4
    cardinalities: list[int] | None = None
    zipf_exponent: float = 1.05
    missing_rate: float = 0.1
    effect_std: float = 1.6
    latent_dim: int = 4
    num_pairs: int = 12
    interaction_std: float = 0.6
    dense_signal: float = 0.6
    positive_rate: float = 0.25
    id_order: str = "value"

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {self.num_rows}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError("need val_fraction, test_fraction >= 0 with a sum below 1")
        if self.cardinalities is not None:
            if len(self.cardinalities) != len(CATEGORICAL_NAMES) or min(self.cardinalities) < 2:
                raise ValueError(f"cardinalities needs {len(CATEGORICAL_NAMES)} values, each >= 2")
        elif self.cardinality_scale <= 0:
            raise ValueError(f"cardinality_scale must be > 0, got {self.cardinality_scale}")
        if not 0 < self.positive_rate < 1:
            raise ValueError("positive_rate must be in (0, 1)")
        if self.id_order not in ID_ORDERS:
            raise ValueError(f"id_order must be one of {ID_ORDERS}, got {self.id_order!r}")


@dataclass
class _Feature:
    cdf: np.ndarray  # float64 (v,) cumulative Zipf probabilities of ranks 1..v
    ids: np.ndarray  # int32 (v,) the id of rank r (a permutation of 1..v)
    missing: float
    effect: np.ndarray  # float32 (n,) logit effect per id (id ``missing_id`` = missing)
    latent: np.ndarray  # float32 (n, k)
    missing_id: int = 0

    def relabel(self, new_ids: np.ndarray) -> None:
        """Give every id ``i`` the label ``new_ids[i]`` (the same model under other labels)."""
        self.ids = new_ids[self.ids].astype(np.int32)
        self.missing_id = int(new_ids[self.missing_id])
        self.effect = relabelled_counts(self.effect, new_ids)
        self.latent = relabelled_counts(self.latent, new_ids)


class SyntheticCTR:
    """Criteo-like synthetic CTR data (a ``CTRDataset``) with known click probabilities.

    Shuffling permutes blocks of ``CHUNK_ROWS`` rows of the split and the rows inside each block (the
    rows are i.i.d., so this is as good as a full shuffle and keeps generation chunked). Generated
    chunks are cached up to ``cache_rows`` rows, so small data sets are generated once.
    """

    def __init__(self, config: SyntheticConfig | None = None, cache_rows: int = 1_000_000) -> None:
        self.config = cfg = config or SyntheticConfig()
        cards = cfg.cardinalities or scaled_cardinalities(cfg.cardinality_scale, cfg.min_values)
        n_val = int(round(cfg.num_rows * cfg.val_fraction))
        n_test = int(round(cfg.num_rows * cfg.test_fraction))
        n_train = cfg.num_rows - n_val - n_test
        self.split_ranges = {
            "train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, cfg.num_rows)
        }
        self.info = DatasetInfo(
            dense_names=list(DENSE_NAMES), categorical_names=list(CATEGORICAL_NAMES),
            cardinalities=list(cards), split_sizes={k: b - a for k, (a, b) in self.split_ranges.items()},
            bayes_known=True, id_order=cfg.id_order,
        )
        self._build_world(cards)
        counts = None
        if cfg.id_order == "frequency":
            counts = self._count_train_ids()
            for f, feat in enumerate(self.features):
                new_ids = frequency_ids(counts[f])
                feat.relabel(new_ids)
                counts[f] = relabelled_counts(counts[f], new_ids)
        self.info.counts = _LazyCounts(self.info.categorical_names, self._count_train_ids, counts)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_chunks = max(2, cache_rows // CHUNK_ROWS)

    @property
    def missing_ids(self) -> list[int]:
        """The id that means *missing*, per feature (0 in value order)."""
        return [feat.missing_id for feat in self.features]

    def _count_train_ids(self) -> list[np.ndarray]:
        """int64 ``(cardinality,)`` occurrences of every id in the train rows, per feature (ids drawn only)."""
        n_train = self.split_ranges["train"][1]
        counts = [np.zeros(n, dtype=np.int64) for n in self.info.cardinalities]
        for c in range(math.ceil(n_train / CHUNK_ROWS)):
            ids = self._draw_ids(np.random.default_rng([self.config.seed, 1, c]), CHUNK_ROWS)
            add_id_counts(counts, ids[: n_train - c * CHUNK_ROWS])
        return counts

    # ----------------------------------------------------------------- the planted model
    def _build_world(self, cards: list[int]) -> None:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 0x5EED])
        nf, k = len(cards), cfg.latent_dim
        # Per-feature share of the effect variance: a few features matter a lot, most a little.
        weights = rng.dirichlet(np.full(nf, 0.7))
        self.features: list[_Feature] = []
        for f, n in enumerate(cards):
            v = n - 1
            s = cfg.zipf_exponent + rng.uniform(-0.15, 0.15)
            p = np.arange(1, v + 1, dtype=np.float64) ** -s
            cdf = np.cumsum(p)
            cdf /= cdf[-1]
            ids = (rng.permutation(v) + 1).astype(np.int32)
            missing = float(min(0.9, rng.exponential(cfg.missing_rate)))
            std = cfg.effect_std * math.sqrt(weights[f])
            effect = (rng.standard_normal(n) * std).astype(np.float32)
            latent = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
            self.features.append(_Feature(cdf, ids, missing, effect, latent))
        pairs = set()
        max_pairs = nf * (nf - 1) // 2
        while len(pairs) < min(cfg.num_pairs, max_pairs):
            a, b = sorted(rng.choice(nf, 2, replace=False).tolist())
            pairs.add((a, b))
        self.pairs = sorted(pairs)
        self.pair_scale = cfg.interaction_std / math.sqrt(max(1, len(self.pairs)))
        # Dense counts: x_j = expm1(max(0, mu_j + sd_j * (a_j . h + noise))), h a 2-d hidden factor.
        nd = len(DENSE_NAMES)
        self.dense_mu = rng.uniform(0.5, 4.0, nd)
        self.dense_sd = rng.uniform(0.5, 1.5, nd)
        self.dense_load = rng.standard_normal((nd, 2)) * 0.8
        self.dense_missing = np.minimum(0.6, rng.exponential(0.15, nd))
        self.hidden_coef = rng.standard_normal(2)
        self.hidden_coef *= cfg.dense_signal / np.linalg.norm(self.hidden_coef)
        # Intercept: match the positive rate on a calibration sample (own seed, not a data row).
        self.bias = 0.0
        logit = self._logit(*self._draw(np.random.default_rng([cfg.seed, 0xCA1]), 50_000)[:2])
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (1 / (1 + np.exp(-(logit + mid)))).mean() < cfg.positive_rate:
                lo = mid
            else:
                hi = mid
        self.bias = (lo + hi) / 2

    def _draw_ids(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """int32 ``(m, 26)`` ids: the first draws from ``rng`` of every chunk."""
        ids = np.empty((m, len(self.features)), dtype=np.int32)
        for f, feat in enumerate(self.features):
            rank = np.searchsorted(feat.cdf, rng.random(m), side="right").clip(max=len(feat.ids) - 1)
            col = feat.ids[rank]
            col[rng.random(m) < feat.missing] = feat.missing_id
            ids[:, f] = col
        return ids

    def _draw(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``m`` rows of (ids int32 (m, 26), hidden (m, 2), raw dense int64 (m, 13), dense missing (m, 13))."""
        ids = self._draw_ids(rng, m)
        hidden = rng.standard_normal((m, 2))
        z = hidden @ self.dense_load.T + rng.standard_normal((m, len(self.dense_mu))) * 0.6
        raw = np.floor(np.expm1(np.maximum(0.0, self.dense_mu + self.dense_sd * z))).astype(np.int64)
        raw[:, 1] -= (rng.random(m) < 0.05).astype(np.int64) * (raw[:, 1] + 1)  # a few -1s, like Criteo's I2
        dmiss = rng.random(raw.shape) < self.dense_missing
        return ids, hidden, raw, dmiss

    def _logit(self, ids: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        logit = np.full(len(ids), self.bias, dtype=np.float64) + hidden @ self.hidden_coef
        for f, feat in enumerate(self.features):
            logit += feat.effect[ids[:, f]]
        for a, b in self.pairs:
            va, vb = self.features[a].latent[ids[:, a]], self.features[b].latent[ids[:, b]]
            logit += self.pair_scale * np.einsum("ij,ij->i", va, vb)
        return logit

    # ----------------------------------------------------------------- chunks
    def chunk(self, c: int) -> dict[str, np.ndarray]:
        """Rows ``[c*CHUNK_ROWS, (c+1)*CHUNK_ROWS)`` (cached): ``sparse`` int32 (m, 26) ids, ``dense`` float32
        (m, 13) log-transformed, ``dense_raw`` int64 (m, 13) counts, ``dense_missing`` bool (m, 13),
        ``click_prob`` float32 (m,), ``labels`` uint8 (m,)."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        rng = np.random.default_rng([self.config.seed, 1, c])
        ids, hidden, raw, dmiss = self._draw(rng, CHUNK_ROWS)
        prob = 1 / (1 + np.exp(-self._logit(ids, hidden)))
        labels = (rng.random(CHUNK_ROWS) < prob).astype(np.uint8)
        dense = np.log1p(np.where(dmiss, 0, np.maximum(raw, 0))).astype(np.float32)
        out = {"sparse": ids, "dense": dense, "dense_raw": raw, "dense_missing": dmiss,
               "click_prob": prob.astype(np.float32), "labels": labels}
        self._cache[c] = out
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return out

    def rows(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Rows ``[lo, hi)`` (global row indices), as in ``chunk``."""
        parts = []
        for c in range(lo // CHUNK_ROWS, (hi - 1) // CHUNK_ROWS + 1):
            base = c * CHUNK_ROWS
            ch = self.chunk(c)
            parts.append({k: v[max(lo, base) - base : min(hi, base + CHUNK_ROWS) - base] for k, v in ch.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def take(self, rows: np.ndarray) -> Batch:
        """The batch of global row indices ``rows`` (int64), in that order."""
        m = len(rows)
        dense = np.empty((m, len(DENSE_NAMES)), dtype=np.float32)
        sparse = np.empty((m, len(self.features)), dtype=np.int64)
        labels = np.empty(m, dtype=np.float32)
        prob = np.empty(m, dtype=np.float32)
        chunks = rows // CHUNK_ROWS
        for c in np.unique(chunks):
            sel = chunks == c
            ch, r = self.chunk(int(c)), rows[sel] - int(c) * CHUNK_ROWS
            dense[sel], sparse[sel] = ch["dense"][r], ch["sparse"][r]
            labels[sel], prob[sel] = ch["labels"][r], ch["click_prob"][r]
        return Batch(dense=torch.from_numpy(dense), sparse=torch.from_numpy(sparse),
                     labels=torch.from_numpy(labels), click_prob=torch.from_numpy(prob))

    # ----------------------------------------------------------------- CTRDataset
    def num_batches(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ) -> int:
        return count_batches(self._range(split)[1] - self._range(split)[0], batch_size, world_size, drop_last)

    def loader(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, start_batch: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False,
    ) -> Iterator[Batch]:
        _check_batching(batch_size, rank, world_size)
        start, stop = self._range(split)
        n = stop - start
        order = _BlockOrder(n, CHUNK_ROWS, seed) if shuffle else None
        for i in range(start_batch, count_batches(n, batch_size, world_size, drop_last)):
            lo, hi = shard_bounds(n, batch_size, i, rank, world_size)
            pos = order.rows(lo, hi) if order is not None else np.arange(lo, hi, dtype=np.int64)
            yield self.take(pos + start)

    def _range(self, split: str) -> tuple[int, int]:
        if split not in self.split_ranges:
            raise KeyError(f"unknown split {split!r}; synthetic data has {list(self.split_ranges)}")
        return self.split_ranges[split]

    def bayes_loss(self, split: str = "test") -> float:
        """Expected BCE of the true probabilities on ``split`` (the Bayes-optimal loss), from its rows."""
        from .dataset import bayes_loss

        lo, hi = self._range(split)
        total, n = 0.0, 0
        for a in range(lo, hi, CHUNK_ROWS):
            r = self.rows(a, min(hi, a + CHUNK_ROWS))
            total += bayes_loss(r["click_prob"], r["labels"].astype(np.float32)) * len(r["labels"])
            n += len(r["labels"])
        return total / max(1, n)

    def to_dict(self) -> dict:
        return asdict(self.config)


def add_id_counts(counts: list[np.ndarray], ids: np.ndarray) -> None:
    """Add the occurrences of the ids ``(m, F)`` to ``counts`` (one int64 array per column), in place."""
    for f, c in enumerate(counts):
        c += np.bincount(ids[:, f], minlength=len(c))


class _LazyCounts(Mapping):
    """Feature name -> id counts, from ``compute()`` (a list in ``names`` order) on first use."""

    def __init__(self, names: list[str], compute: Callable[[], list[np.ndarray]],
                 counts: list[np.ndarray] | None = None) -> None:
        self._names, self._compute = list(names), compute
        self._counts = None if counts is None else dict(zip(self._names, counts))

    def __getitem__(self, name: str) -> np.ndarray:
        if self._counts is None:
            self._counts = dict(zip(self._names, self._compute()))
        return self._counts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class _BlockOrder:
    """A seeded permutation of ``0..n-1``: blocks of ``block`` positions permuted, then the rows in each."""

    n: int
    block: int
    seed: int
    _perms: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0xB10C])
        nb = max(1, math.ceil(self.n / self.block))
        self.blocks = rng.permutation(nb)
        sizes = np.minimum(self.block, self.n - self.blocks * self.block)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])

    def _perm(self, b: int) -> np.ndarray:
        if b not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            size = min(self.block, self.n - b * self.block)
            self._perms[b] = np.random.default_rng([self.seed, 0xB10C, b]).permutation(size) + b * self.block
        return self._perms[b]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows at positions ``[lo, hi)`` of the order."""
        out = []
        j = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            b = int(self.blocks[j])
            end = min(hi, int(self.starts[j + 1]))
            out.append(self._perm(b)[lo - self.starts[j] : end - self.starts[j]])
            lo, j = end, j + 1
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)
