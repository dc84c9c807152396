"""Uniform schemes sized to a budget: the baselines that a plan is compared with at matched bytes.

Each baseline has one knob, searched for the largest configuration that fits the budget, so that
every method gets (up to its knob's granularity) the same bytes:

- ``hashing``: ``ceil(n / c)`` rows per compressed feature, one ``c`` for all;
- ``qr``: quotient-remainder with element-wise product at ``c`` collisions, each feature's ``c``
  capped at ``ceil(sqrt(n))`` (beyond it QR grows again);
- ``gqr``: mixed radix with 3 tables, divisors ``(m, m, ceil(n / m**2))``, each feature's ``m``
  capped at its cube root (where the three tables are even, the smallest);
- ``robe``: ROBE-Z with Z = D and an array of ``ceil(n D / c)`` values (at least one block), then
  the bytes left added to the largest feature's array, so that it meets the budget to the value;
- ``dhe``: DHE with ``k = w`` hashes (``w`` even) and one hidden layer of ``w``, the largest ``w``
  that fits; a feature whose full table would be no larger than its DHE keeps the full table;
- ``tt``: TT-Rec with one TT-rank ``R`` for all features, the largest that fits (each feature's
  rank capped at its largest useful one, ``embedding.tt.tt_max_rank``); no cache;
- ``cce``: CCE with the ``FeatureConfig`` default of c columns and ``k = ceil(n / (2 c'))`` rows per
  table for a collision knob ``c'`` (the hashing trick's values at ``c'``), plus the index bytes of its
  per-id assignment (``n c`` bytes with k <= 256, 2 n c up to 32768, else 4 n c), which no knob removes:
  at D = 16, c = 2 and Adagrad that floor is 1/64 of the full tables' bytes, so CCE cannot reach much
  beyond 64x (a feature whose CCE would not be smaller keeps a full table);
- ``md``: mixed dimensions (4 equal blocks, ``alpha`` 0.3, the ``FeatureConfig`` defaults) with
  one base width ``d_0`` for all features, the largest that fits. Its minimum, every block of
  width 1, is about ``n`` values per feature, so ``md`` cannot go below about D-fold compression.

Features with at most ``threshold`` categories keep full tables (the paper's rule, DLRM's default
200), as the uniform methods are used in practice, unless those full tables alone leave no
configuration within the budget: then every feature is compressed (threshold 0), as the field's
methods do at their extreme ratios (e.g. 10,000x, where the small features' full tables are several
times the whole budget). The knob is the smallest that fits; the bytes it
leaves go to the largest features at one step finer (``c - 1``), so the methods end within a few
percent of the budget instead of up to a knob step below it. The result is the ``ModelConfig.features``
entry of every feature, so a run's config states every table exactly.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ..embedding import FeatureConfig
from ..partitions import integer_root
from .budget import feature_bytes, feature_values

__all__ = ["UNIFORM_METHODS", "match_budget"]

UNIFORM_METHODS = ("hashing", "qr", "gqr", "robe", "dhe", "tt", "md", "cce")
# Methods whose knob grows the bytes (DHE's width, TT-rank, md's base width): the largest knob that fits
# is searched (``_match_dhe``, ``_match_growing``).
_GROWING = ("dhe", "tt", "md")


def _feature(method: str, name: str, n: int, knob: int, dim: int, threshold: int) -> FeatureConfig:
    if n <= threshold or (knob <= 1 and method not in _GROWING):
        return FeatureConfig(name, n, dim, scheme="full")
    if method == "tt":
        return FeatureConfig(name, n, dim, scheme="tt", tt_rank=knob)
    if method == "md":
        return FeatureConfig(name, n, dim, scheme="md", md_base_dim=min(knob, dim))
    if method == "robe":
        return FeatureConfig(name, n, dim, scheme="robe", block_size=dim, robe_size=max(dim, -(-n * dim // knob)))
    if method == "cce":
        cce = FeatureConfig(name, n, dim, scheme="cce", cce_rows=max(1, -(-n // (2 * knob))))
        full = FeatureConfig(name, n, dim, scheme="full")
        return cce if feature_bytes(cce) < feature_bytes(full) else full
    if method == "dhe":
        dhe = FeatureConfig(name, n, dim, scheme="dhe", dhe_hashes=knob, dhe_hidden=(knob,))
        return dhe if feature_values(dhe) < n * dim else FeatureConfig(name, n, dim, scheme="full")
    if method == "hashing":
        return FeatureConfig(name, n, dim, scheme="hashing", num_collisions=knob)
    if method == "qr":
        return FeatureConfig(name, n, dim, scheme="qr", operation="mult", num_collisions=min(knob, math.isqrt(n - 1) + 1))
    m = min(knob, max(2, integer_root(n, 3)))
    return FeatureConfig(name, n, dim, scheme="gqr", operation="mult", factors=(m, m, -(-n // (m * m))))


def _overrides(config: FeatureConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"scheme": config.scheme}
    if config.scheme in ("hashing", "qr", "gqr"):
        out["operation"] = config.operation
    if config.scheme in ("hashing", "qr"):
        out["num_collisions"] = config.num_collisions
    if config.scheme == "gqr":
        out["factors"] = list(config.factors)
    if config.scheme == "robe":
        out.update(robe_size=config.robe_size, block_size=config.block_size)
    if config.scheme == "dhe":
        out.update(dhe_hashes=config.dhe_hashes, dhe_hidden=list(config.dhe_hidden))
    if config.scheme == "tt":
        out["tt_rank"] = config.tt_rank
    if config.scheme == "cce":
        out.update(cce_rows=config.cce_rows, cce_columns=config.cce_columns)
    if config.scheme == "md":
        out.update(md_alpha=config.md_alpha, md_blocks=config.md_blocks, md_base_dim=config.md_base_dim)
    return out


def match_budget(
    method: str, cardinalities: Sequence[int], budget: int, names: Sequence[str] | None = None,
    embedding_dim: int = 16, optimizer: str = "adagrad", itemsize: int = 4, threshold: int = 200,
) -> tuple[dict[str, dict[str, Any]], int, int] | None:
    """The largest ``method`` configuration within ``budget`` bytes (tables plus optimizer state).

    Returns ``(features, bytes, knob)``: the per-feature overrides, their bytes and the knob
    (``c``, ``m``, DHE's width ``w``, the TT-rank or the md base width); or None when even the
    smallest configuration of ``method``, with every feature compressed, exceeds the budget.
    """
    if method not in UNIFORM_METHODS:
        raise ValueError(f"method must be one of {UNIFORM_METHODS}, got {method!r}")
    names = list(names) if names is not None else [f"C{j + 1}" for j in range(len(cardinalities))]
    found = _match(method, cardinalities, budget, names, embedding_dim, optimizer, itemsize, threshold)
    if found is None and threshold > 0:  # the small features' full tables do not fit: compress them too
        found = _match(method, cardinalities, budget, names, embedding_dim, optimizer, itemsize, 0)
    return found


def _match(method, cardinalities, budget, names, embedding_dim, optimizer, itemsize, threshold):
    """``match_budget`` with features of at most ``threshold`` categories kept full."""
    largest = max(int(n) for n in cardinalities)

    def build(knob: int) -> tuple[list[FeatureConfig], int]:
        configs = [_feature(method, name, int(n), knob, embedding_dim, threshold) for name, n in zip(names, cardinalities)]
        return configs, sum(feature_bytes(c, optimizer, itemsize) for c in configs)

    if method == "dhe":
        return _match_dhe(names, cardinalities, budget, embedding_dim, optimizer, itemsize, threshold)
    if method in _GROWING:
        return _match_growing(method, build, names, cardinalities, budget, embedding_dim, optimizer, itemsize, threshold)
    # Bytes do not grow with the knob (the caps keep QR and mixed radix at their smallest), so the
    # smallest knob that fits is the largest configuration that fits.
    lo, hi = 1, max(2, largest * embedding_dim if method == "robe" else largest)
    if build(hi)[1] > budget:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if build(mid)[1] <= budget:
            hi = mid
        else:
            lo = mid
    knob = lo if build(lo)[1] <= budget else hi
    configs, size = build(knob)
    # One knob for all moves in steps (c = 4 -> 5 is 20% of the bytes): spend what is left by
    # taking the largest features one step down (c - 1) while the budget allows, so that every
    # method ends close to the budget rather than up to a step below it.
    for j in sorted(range(len(configs)), key=lambda j: -int(cardinalities[j])):
        finer = _feature(method, names[j], int(cardinalities[j]), knob - 1, embedding_dim, threshold)
        grown = size - feature_bytes(configs[j], optimizer, itemsize) + feature_bytes(finer, optimizer, itemsize)
        if grown <= budget:
            configs[j], size = finer, grown
    if method == "robe":
        size = _spend_on_largest_array(configs, budget, size, optimizer, itemsize)
    if method == "cce":
        size = _spend_on_cce_rows(configs, budget, size, optimizer, itemsize)
    return {c.name: _overrides(c) for c in configs}, size, knob


def _match_growing(method, build, names, cardinalities, budget, dim, optimizer, itemsize, threshold):
    """``match_budget`` for a knob that grows the bytes (tt's rank, md's base width): the largest knob
    that fits, then the largest features one step up while the budget allows."""
    top = dim if method == "md" else max(2, max(int(n) for n in cardinalities))  # tt: ranks are capped per feature
    if build(1)[1] > budget:
        return None
    lo, hi = 1, top + 1  # build(lo) fits; hi is the first knob known not to fit (or past the top)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if build(mid)[1] <= budget:
            lo = mid
        else:
            hi = mid
    knob = lo
    configs, size = build(knob)
    if knob < top:
        for j in sorted(range(len(configs)), key=lambda j: -int(cardinalities[j])):
            finer = _feature(method, names[j], int(cardinalities[j]), knob + 1, dim, threshold)
            grown = size - feature_bytes(configs[j], optimizer, itemsize) + feature_bytes(finer, optimizer, itemsize)
            if grown <= budget:
                configs[j], size = finer, grown
    return {c.name: _overrides(c) for c in configs}, size, knob
def _spend_on_largest_array(configs: list[FeatureConfig], budget: int, size: int, optimizer: str, itemsize: int) -> int:
    """Grow the largest ROBE array by the values that the bytes left pay for; returns the new total bytes."""
    arrays = [j for j, c in enumerate(configs) if c.scheme == "robe"]
    if not arrays:
        return size
    j = max(arrays, key=lambda j: configs[j].robe_size)
    before = feature_bytes(configs[j], optimizer, itemsize)
    per_value = feature_bytes(dataclasses.replace(configs[j], robe_size=configs[j].robe_size + 1), optimizer, itemsize) - before
    extra = (budget - size) // max(per_value, 1)
    while extra > 0:
        grown = dataclasses.replace(configs[j], robe_size=configs[j].robe_size + extra)
        total = size - before + feature_bytes(grown, optimizer, itemsize)
        if total <= budget:
            configs[j] = grown
            return total
        extra -= 1
    return size


def _spend_on_cce_rows(configs: list[FeatureConfig], budget: int, size: int, optimizer: str, itemsize: int) -> int:
    """Give the bytes left to CCE rows, largest features first: each gets the most rows (at most n) that
    the budget still allows (the assignment's dtype steps with k, so the knob's steps leave gaps);
    returns the new total bytes."""
    for j in sorted((j for j, c in enumerate(configs) if c.scheme == "cce"), key=lambda j: -configs[j].num_embeddings):
        before = feature_bytes(configs[j], optimizer, itemsize)

        def fits(rows: int) -> bool:
            return size - before + feature_bytes(dataclasses.replace(configs[j], cce_rows=rows), optimizer, itemsize) <= budget
        lo, hi = configs[j].cce_k, configs[j].num_embeddings  # lo fits; the most rows that fit lie in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        if lo != configs[j].cce_k:
            configs[j] = dataclasses.replace(configs[j], cce_rows=lo)
            size += feature_bytes(configs[j], optimizer, itemsize) - before
    return size


def _match_dhe(names: Sequence[str], cardinalities: Sequence[int], budget: int, dim: int, optimizer: str,
               itemsize: int, threshold: int) -> tuple[dict[str, dict[str, Any]], int, int] | None:
    """The widest DHE (``k = w`` hashes, one hidden layer of ``w``, ``w`` even) within ``budget``."""
    def build(width: int) -> tuple[list[FeatureConfig], int]:
        configs = [_feature("dhe", name, int(n), width, dim, threshold) for name, n in zip(names, cardinalities)]
        return configs, sum(feature_bytes(c, optimizer, itemsize) for c in configs)

    if build(2)[1] > budget:
        return None
    lo, hi = 1, 2  # widths 2*lo fit; find the first 2*hi that does not (bytes grow with the width)
    while build(2 * hi)[1] <= budget and hi < 2**16:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if build(2 * mid)[1] <= budget else (lo, mid)
    configs, size = build(2 * lo)
    return {c.name: _overrides(c) for c in configs}, size, 2 * lo
