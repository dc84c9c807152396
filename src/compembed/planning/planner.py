"""Choose an embedding scheme per feature so that the tables meet a memory budget.

The planner spends bytes where the data says they matter. Inputs are the per-id occurrence counts
of the training split, with ids in frequency order (id 0 the most frequent), as
``compembed prepare ... --id-order frequency`` and ``compembed synth --id-order frequency`` write
them. The budget covers the tables and their optimizer state.

The rule, fixed before any study ran (its one knob, ``hot_share``, was not tuned on results):

1. ``hot_share`` of the rows the budget allows (default half) goes to *hot* rows: the ids with
   the most training occurrences over all features, whatever feature they belong to, get a row of
   their own. These are the rows that most occurrences use, so this maximises the share of
   training occurrences whose id keeps a unique, uncompressed row.
2. The rest goes to the *cold* ids of each feature (``id >= K``), which share a complementary
   composition: quotient-remainder with element-wise product at one collision count ``c`` for all
   features, the smallest ``c`` that fits; where ``c`` passes ``sqrt(n)``, the feature's smallest
   composition (QR at ``c = ceil(sqrt(n))`` or mixed radix with 3 tables). Every cold id still gets
   its own vector.
3. A feature whose ids all get hot rows, or whose cold part would need as many rows as ids, keeps a
   full table. If the cold parts' minimum does not fit beside the hot rows, hot rows are given up
   first.
4. Below the smallest unique composition of every feature (e.g. 10,000x, where no complementary
   partition fits), the cold ids are hashed instead: the hashing trick at one collision count ``c``
   for all features (``ceil((n - K) / c)`` rows each), with steps 1-3 otherwise unchanged, so the
   hot ids still keep rows of their own. This was added before any run at such a budget; above it
   plans are unchanged. A budget below one row per feature is refused, naming that minimum.

With ``cold="robe"`` (``compembed plan --cold robe``, the study's ``planner-robe``), step 1 is the
same and steps 2-4 are one: the bytes left after the hot rows become one ROBE-Z array per feature
(Z = D, as the study's ROBE method), its length in proportion to the feature's cold ids (one
compression level for every cold part, as the hashing trick at one ``c``), at least one block. The
array can be any length, so the budget is met to the value. The hot ids keep rows of their own;
ROBE shares values between the cold ids only. A feature whose array would hold its cold ids' full
table keeps a full table. This variant (CAFE's design: hot ids exact, the rest in a hashed store,
with ROBE-Z as the store) was added after the loss-vs-bytes study showed ROBE-Z ahead of the
compositions at several budgets; its rule has the same one knob, untuned.

Each feature becomes a ``FeatureConfig``: ``full``, ``qr``/``gqr``/``hashing``/``robe`` (no hot rows)
or ``hybrid`` with ``hot_rows = K``. Bytes are counted by ``budget.feature_bytes`` on exactly those configs, the same
arithmetic the tests check against the allocated collection.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..embedding import FeatureConfig
from ..partitions import GeneralizedQuotientRemainder, choose_divisors
from .budget import feature_bytes, format_bytes, robe_value_bytes, state_factor

__all__ = ["COLD_PARTS", "FeaturePlan", "Plan", "PlanError", "plan_tables", "plan_for_dataset", "budget_for_compression"]

# What the cold ids share (``plan_tables``' ``cold``): complementary compositions (steps 2-4) or ROBE-Z arrays.
COLD_PARTS = ("composition", "robe")


class PlanError(ValueError):
    """The inputs admit no plan (no counts, ids not in frequency order, budget below the minimum)."""


@dataclass(frozen=True)
class FeaturePlan:
    """One feature's planned embedding, its bytes and how many training occurrences keep own rows."""

    config: FeatureConfig
    hot_rows: int  # ids with a row of their own (n for a full table)
    occurrences: int  # training occurrences of the feature
    hot_occurrences: int  # of which on ids with a row of their own
    bytes: int  # tables plus optimizer state

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def coverage(self) -> float:
        return self.hot_occurrences / self.occurrences if self.occurrences else 1.0

    def overrides(self) -> dict[str, Any]:
        """The ``ModelConfig.features`` entry of this feature."""
        c = self.config
        out: dict[str, Any] = {"scheme": c.scheme}
        if c.scheme == "hybrid":
            out.update(hot_rows=c.hot_rows, cold_scheme=c.cold_scheme)
        cold = c.cold_scheme if c.scheme == "hybrid" else c.scheme
        if cold == "robe":
            out.update(robe_size=c.robe_size, block_size=c.block_size)
        if cold in ("qr", "gqr"):
            out["operation"] = c.operation
        if cold in ("qr", "hashing"):
            out["num_collisions"] = c.num_collisions
        if cold == "gqr":
            out["factors"] = list(c.factors)
        return out

    def describe(self) -> str:
        c = self.config
        cold = {"qr": f"qr-{c.operation}/{c.num_collisions}", "gqr": f"gqr-{c.operation}{list(c.factors or ())}",
                "hashing": f"hashing/{c.num_collisions}", "robe": f"robe[{c.robe_size:,}]"}
        if c.scheme == "full":
            return "full"
        if c.scheme == "hybrid":
            return f"hybrid {c.hot_rows:,} + {cold[c.cold_scheme]}"
        return cold[c.scheme]


@dataclass(frozen=True)
class Plan:
    """Per-feature schemes that fit ``budget`` bytes (tables plus ``optimizer`` state)."""

    features: tuple[FeaturePlan, ...]
    budget: int
    optimizer: str
    embedding_dim: int
    itemsize: int
    hot_share: float

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.features)

    @property
    def full_bytes(self) -> int:
        """Full tables of every feature, with the same optimizer state."""
        per_value = self.itemsize * (1.0 + state_factor(self.optimizer, self.embedding_dim))
        return int(round(sum(f.config.num_embeddings for f in self.features) * self.embedding_dim * per_value))

    @property
    def compression(self) -> float:
        return self.full_bytes / self.bytes

    @property
    def coverage(self) -> float:
        """Share of all training occurrences whose id keeps a row of its own."""
        total = sum(f.occurrences for f in self.features)
        return sum(f.hot_occurrences for f in self.features) / total if total else 1.0

    def configs(self) -> list[FeatureConfig]:
        return [f.config for f in self.features]

    def overrides(self) -> dict[str, dict[str, Any]]:
        """``ModelConfig.features``: every feature's planned scheme, by name."""
        return {f.name: f.overrides() for f in self.features}

    def summary(self) -> str:
        """A plain-text table: per feature its scheme, bytes and coverage, then the totals."""
        rows = [("feature", "n", "plan", "bytes", "coverage")]
        for f in self.features:
            rows.append((f.name, f"{f.config.num_embeddings:,}", f.describe(), format_bytes(f.bytes), f"{f.coverage:.1%}"))
        rows.append(("total", f"{sum(f.config.num_embeddings for f in self.features):,}",
                     f"{self.compression:.1f}x smaller than full tables", format_bytes(self.bytes), f"{self.coverage:.1%}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i in (1, 3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        head = (f"budget {format_bytes(self.budget)} for tables + {self.optimizer} state (D={self.embedding_dim}, "
                f"{8 * self.itemsize}-bit); planned {format_bytes(self.bytes)}; coverage = share of training "
                f"occurrences whose id keeps a row of its own")
        return "\n".join([head, *lines])


def budget_for_compression(cardinalities: Sequence[int], ratio: float, embedding_dim: int = 16,
                           optimizer: str = "adagrad", itemsize: int = 4) -> int:
    """The budget ``ratio`` times smaller than full tables (with their optimizer state)."""
    if not ratio >= 1:
        raise PlanError(f"compression must be >= 1, got {ratio}")
    full = sum(cardinalities) * embedding_dim * itemsize * (1.0 + state_factor(optimizer, embedding_dim))
    return int(full / ratio)


def plan_for_dataset(info, budget: int, **options) -> Plan:
    """``plan_tables`` for a dataset's ``DatasetInfo`` (it must carry training counts in frequency order)."""
    counts = getattr(info, "counts", None)
    if not counts:
        raise PlanError("the dataset has no per-id training counts; prepare it again with "
                        "`compembed prepare ... --id-order frequency` (or `compembed synth --id-order frequency`), "
                        "which records them")
    if getattr(info, "id_order", "value") != "frequency":
        raise PlanError("the dataset's ids are in value order; the planner's hot rows need frequency order: "
                        "prepare it again with --id-order frequency")
    return plan_tables(info.cardinalities, [counts[name] for name in info.categorical_names], budget,
                       names=info.categorical_names, **options)


def plan_tables(
    cardinalities: Sequence[int],
    counts: Sequence[np.ndarray],
    budget: int,
    names: Sequence[str] | None = None,
    embedding_dim: int = 16,
    optimizer: str = "adagrad",
    itemsize: int = 4,
    hot_share: float = 0.5,
    operation: str = "mult",
    cold: str = "composition",
) -> Plan:
    """Plan every feature's embedding within ``budget`` bytes (see the module doc for the rule).

    Args:
        cardinalities: ids per feature.
        counts: per feature, training occurrences of each id (length n, non-increasing: frequency order).
        budget: bytes for the tables plus their optimizer state.
        names: feature names (default ``C1..``).
        embedding_dim, itemsize: D and bytes per value (4 for fp32).
        optimizer: whose state counts (``sgd`` none, ``adagrad`` 1x, ``adam`` 2x, ``amsgrad`` 3x,
            ``rowwise_adagrad`` 1/D).
        hot_share: share of the budget's rows for hot rows, in [0, 1].
        operation: how the cold compositions combine (``mult`` or ``add``).
        cold: what the cold ids share: ``composition`` (steps 2-4) or ``robe`` (one ROBE-Z array per
            feature; see the module doc).
    """
    names = list(names) if names is not None else [f"C{j + 1}" for j in range(len(cardinalities))]
    sizes = [int(n) for n in cardinalities]
    counts = [np.asarray(c, dtype=np.int64) for c in counts]
    if not (len(names) == len(sizes) == len(counts)):
        raise PlanError(f"{len(names)} names, {len(sizes)} cardinalities and {len(counts)} count arrays")
    if not 0.0 <= hot_share <= 1.0:
        raise PlanError(f"hot_share must lie in [0, 1], got {hot_share}")
    if cold not in COLD_PARTS:
        raise PlanError(f"cold must be one of {COLD_PARTS}, got {cold!r}")
    if operation not in ("mult", "add"):
        raise PlanError(f"operation must be 'mult' or 'add' (cold tables of one width), got {operation!r}")
    for name, n, c in zip(names, sizes, counts):
        if c.shape != (n,):
            raise PlanError(f"feature {name!r}: {c.shape[0] if c.ndim == 1 else c.shape} counts for {n} ids")
        if n > 1 and (np.diff(c) > 0).any():
            at = int(np.flatnonzero(np.diff(c) > 0)[0]) + 1
            raise PlanError(f"feature {name!r}: ids are not in frequency order (id {at} has {c[at]} training "
                            f"occurrences, id {at - 1} only {c[at - 1]}); prepare the data with --id-order frequency")
    row_bytes = embedding_dim * itemsize * (1.0 + state_factor(optimizer, embedding_dim))
    if cold == "robe":
        return _robe_plan(names, sizes, counts, int(budget), embedding_dim, optimizer, itemsize, hot_share, row_bytes)
    rows = int(budget // row_bytes)
    hashed = sum(sizes) > rows and rows < sum(_floor_rows(n) for n in sizes)  # step 4: no composition fits
    cold_rows, floor_rows = (_hashed_rows, _one_row) if hashed else (_cold_rows, _floor_rows)
    make = _Maker(names, sizes, embedding_dim, operation, hashed)

    if rows >= sum(sizes):
        hot = list(sizes)
        collisions = 1
    else:
        minimum = sum(floor_rows(n) for n in sizes)
        if rows < minimum:
            raise PlanError(f"a budget of {format_bytes(budget)} is below the smallest plan: "
                            f"{format_bytes(minimum * row_bytes)} ({minimum:,} rows of D={embedding_dim} with "
                            f"{optimizer} state: one hashed row per feature)")
        allowance = int(hot_share * rows)
        while True:
            hot = _hottest(counts, allowance)
            cold_min = sum(floor_rows(n - k) for n, k in zip(sizes, hot))
            if sum(hot) + cold_min <= rows or allowance == 0:
                break
            allowance = max(0, allowance - (sum(hot) + cold_min - rows))
        collisions = _smallest_collisions([n - k for n, k in zip(sizes, hot)], rows - sum(hot), cold_rows)
        # The collision level moves in steps, so rows are often left over: they become hot rows too
        # (more hot rows leave fewer cold ids, whose rows at the same level can only shrink).
        for _ in range(8):
            left = rows - sum(hot) - sum(cold_rows(n - k, collisions) for n, k in zip(sizes, hot))
            more = _hottest(counts, sum(hot) + left)
            if left <= 0 or more == hot:
                break
            hot = more
    configs = [make.config(j, k, collisions) for j, k in enumerate(hot)]
    return _assemble(configs, counts, budget, optimizer, embedding_dim, itemsize, hot_share)


def _assemble(configs: list[FeatureConfig], counts: Sequence[np.ndarray], budget: float, optimizer: str,
              embedding_dim: int, itemsize: int, hot_share: float) -> Plan:
    features = []
    for config, c in zip(configs, counts):
        n = config.num_embeddings
        own = n if config.scheme == "full" else (config.hot_rows if config.scheme == "hybrid" else 0)
        features.append(FeaturePlan(config=config, hot_rows=own, occurrences=int(c.sum()),
                                    hot_occurrences=int(c[:own].sum()),
                                    bytes=feature_bytes(config, optimizer, itemsize)))
    plan = Plan(tuple(features), int(budget), optimizer, embedding_dim, itemsize, hot_share)
    assert plan.bytes <= budget, (plan.bytes, budget)  # the search above only admits plans that fit
    return plan


def _robe_plan(names: list[str], sizes: list[int], counts: list[np.ndarray], budget: int, dim: int, optimizer: str,
               itemsize: int, hot_share: float, row_bytes: float) -> Plan:
    """``plan_tables`` with ``cold="robe"``: step 1, then one ROBE-Z array (Z = D) per feature's cold ids
    (``row_bytes``: a hot row and its optimizer state, as ``plan_tables`` computed it)."""
    value_bytes = robe_value_bytes(optimizer, dim, itemsize)
    rows = int(budget // row_bytes)
    if rows >= sum(sizes):
        hot = list(sizes)
    else:
        minimum = len(sizes) * dim * value_bytes
        if budget < minimum:
            raise PlanError(f"a budget of {format_bytes(budget)} is below the smallest plan: {format_bytes(minimum)} "
                            f"(one ROBE block of D={dim} values with {optimizer} state per feature)")
        allowance = int(hot_share * rows)
        while True:  # hot rows are given up first where the arrays' minimum does not fit beside them
            hot = _hottest(counts, allowance)
            need = sum(dim for n, k in zip(sizes, hot) if k < n) * value_bytes
            over = sum(hot) * row_bytes + need - budget
            if over <= 0 or allowance == 0:
                break
            allowance = max(0, allowance - math.ceil(over / row_bytes))
    values = int((budget - sum(hot) * row_bytes) // value_bytes)
    arrays = _robe_arrays([n - k for n, k in zip(sizes, hot)], values, dim)
    configs = []
    for name, n, k, size in zip(names, sizes, hot, arrays):
        base = FeatureConfig(name=name, num_embeddings=n, embedding_dim=dim, scheme="full")
        if k >= n or size >= (n - k) * dim:  # no cold ids, or an array as large as their full table
            configs.append(base)
        elif k == 0:
            configs.append(dataclasses.replace(base, scheme="robe", robe_size=size, block_size=dim))
        else:
            configs.append(dataclasses.replace(base, scheme="hybrid", hot_rows=k, cold_scheme="robe",
                                               robe_size=size, block_size=dim))
    return _assemble(configs, counts, budget, optimizer, dim, itemsize, hot_share)


def _robe_arrays(cold: Sequence[int], values: int, dim: int) -> list[int]:
    """Array lengths for features with ``cold`` cold ids that sum to at most ``values``: in proportion to
    the cold ids, each at least one block of ``dim`` values (a feature whose share falls below it gets
    one block and the others share the rest); the values the rounding leaves go to the largest feature."""
    arrays = [0] * len(cold)
    free = [j for j, c in enumerate(cold) if c > 0]
    small: list[int] = []
    while free:
        rest, total = values - dim * len(small), sum(cold[j] for j in free)
        below = [j for j in free if rest * cold[j] < dim * total]
        if not below:
            break
        small += below
        free = [j for j in free if j not in below]
    for j in small:
        arrays[j] = dim
    if free:
        rest, total = values - dim * len(small), sum(cold[j] for j in free)
        for j in free:
            arrays[j] = rest * cold[j] // total
        arrays[max(free, key=lambda j: cold[j])] += rest - sum(arrays[j] for j in free)
    return arrays


def _hottest(counts: Sequence[np.ndarray], allowance: int) -> list[int]:
    """Per feature, how many of its most frequent ids are among the ``allowance`` most frequent of all
    (ids never seen in training excluded; ties at the cut go to the earlier features)."""
    seen = [int((c > 0).sum()) for c in counts]
    if allowance >= sum(seen):
        return seen
    if allowance <= 0:
        return [0] * len(counts)
    cut = np.partition(np.concatenate(counts), -allowance)[-allowance]  # the allowance-th largest count
    hot = [int((c > cut).sum()) for c in counts]
    left = allowance - sum(hot)
    for j, c in enumerate(counts):
        tied = min(left, int((c == cut).sum()))
        hot[j] += tied
        left -= tied
    return hot


def _qr_rows(n: int, c: int) -> int:
    return -(-n // c) + min(c, n)


def _gqr3(n: int) -> tuple[int, ...]:
    return choose_divisors(n, 3)


def _floor_rows(n: int) -> int:
    """The fewest rows that give ``n`` ids unique vectors here: QR near ``sqrt(n)``, mixed radix k = 3, or n."""
    if n <= 0:
        return 0
    options = [n, _qr_rows(n, max(1, math.isqrt(n - 1) + 1))]
    if n >= 8:
        options.append(sum(GeneralizedQuotientRemainder(n, _gqr3(n)).table_sizes))
    return min(options)


def _cold_rows(n: int, c: int) -> int:
    """Rows of ``n`` cold ids at collision level ``c`` (non-increasing in ``c``)."""
    if n <= 0:
        return 0
    if c <= 1:
        return n
    if c * c <= n:
        return min(n, _qr_rows(n, c))
    return _floor_rows(n)


def _hashed_rows(n: int, c: int) -> int:
    """Rows of ``n`` cold ids hashed at ``c`` collisions (step 4)."""
    return -(-n // c) if n > 0 else 0


def _one_row(n: int) -> int:
    """The fewest rows of ``n`` hashed ids: one."""
    return 1 if n > 0 else 0


def _smallest_collisions(cold: Sequence[int], rows: int, cold_rows=_cold_rows) -> int:
    """The smallest collision level whose cold rows fit in ``rows`` (the caller made the largest fit)."""
    lo, hi = 1, max(2, max(cold, default=2))
    if sum(cold_rows(n, lo) for n in cold) <= rows:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sum(cold_rows(n, mid) for n in cold) <= rows:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass
class _Maker:
    """Turns (feature, hot rows, collision level) into the ``FeatureConfig`` whose rows ``_cold_rows`` counted."""

    names: list[str]
    sizes: list[int]
    embedding_dim: int
    operation: str
    hashed: bool = False  # step 4: cold ids hashed

    def config(self, j: int, hot: int, collisions: int) -> FeatureConfig:
        n, name = self.sizes[j], self.names[j]
        base = FeatureConfig(name=name, num_embeddings=n, embedding_dim=self.embedding_dim, scheme="full",
                             operation=self.operation)
        cold = n - hot
        rows = (_hashed_rows if self.hashed else _cold_rows)(cold, collisions)
        if cold == 0 or rows >= cold:
            return base
        if self.hashed:
            scheme = dict(scheme="hashing", num_collisions=collisions)
        elif collisions * collisions <= cold:
            scheme = dict(scheme="qr", num_collisions=collisions)
        elif rows == _qr_rows(cold, math.isqrt(cold - 1) + 1):
            scheme = dict(scheme="qr", num_collisions=math.isqrt(cold - 1) + 1)
        else:
            scheme = dict(scheme="gqr", num_partitions=3, factors=_gqr3(cold))
        if hot == 0:
            return dataclasses.replace(base, **scheme)
        return dataclasses.replace(base, scheme="hybrid", hot_rows=hot, cold_scheme=scheme.pop("scheme"), **scheme)

