"""Byte arithmetic of embedding tables: rows per scheme, optimizer state, budgets as text.

Everything here is closed-form on the partitions (no tensor is allocated), so a planner can try
thousands of configurations; ``tests/planning`` checks it against the bytes that
``EmbeddingCollection`` actually allocates.
"""
from __future__ import annotations

import math
import re

from ..embedding import FeatureConfig
from ..embedding.cce import cce_index_bytes
from ..embedding.dhe import dhe_parameters
from ..embedding.md import md_feature_layout, md_num_parameters
from ..embedding.tt import tt_feature_layout, tt_num_parameters
from ..partitions import ChineseRemainder, GeneralizedQuotientRemainder, QuotientRemainder, choose_divisors, choose_moduli

__all__ = ["STATE_FACTORS", "state_factor", "robe_value_bytes", "feature_rows", "feature_values", "feature_bytes", "parse_bytes", "format_bytes"]

# Optimizer state per parameter, in parameters: Adagrad keeps one sum of squares per value, Adam two
# moments, AMSGrad also the running maximum, row-wise Adagrad one value per row (1/D per value).
STATE_FACTORS = {"sgd": 0.0, "adagrad": 1.0, "adam": 2.0, "amsgrad": 3.0, "rowwise_adagrad": None}


def state_factor(optimizer: str, embedding_dim: int) -> float:
    """Optimizer-state values per table value for ``optimizer`` (row-wise Adagrad: ``1 / D``)."""
    if optimizer not in STATE_FACTORS:
        raise ValueError(f"optimizer must be one of {sorted(STATE_FACTORS)}, got {optimizer!r}")
    factor = STATE_FACTORS[optimizer]
    return 1.0 / embedding_dim if factor is None else factor


def _scheme_rows(scheme: str, n: int, config: FeatureConfig) -> int:
    """Rows of an operation-based scheme over ``n`` ids (all tables of one width D, as mult/add use)."""
    if scheme == "full":
        return n
    if scheme == "hashing":
        return -(-n // config.num_collisions)
    if scheme == "qr":
        return sum(QuotientRemainder(n, config.num_collisions).table_sizes)
    if scheme == "gqr":
        return sum(GeneralizedQuotientRemainder(n, config.factors or choose_divisors(n, config.num_partitions)).table_sizes)
    if scheme == "crt":
        return sum(ChineseRemainder(n, config.factors or choose_moduli(n, config.num_partitions)).table_sizes)
    raise ValueError(f"feature {config.name!r}: no closed-form row count for scheme {scheme!r}")


def feature_rows(config: FeatureConfig) -> int:
    """Table rows of one feature's embedding, in units of ``embedding_dim`` values.

    Raises for what this closed form does not cover: path-based features (they also hold MLPs) and
    ``concat`` compositions, hybrid cold parts included (their tables have other widths); count those
    on the module.
    """
    if config.scheme == "path":
        raise ValueError(f"feature {config.name!r}: path-based features hold MLPs; count them on the module")
    composed = config.cold_scheme if config.scheme == "hybrid" else config.scheme
    if config.operation == "concat" and composed in ("qr", "gqr", "crt"):
        raise ValueError(f"feature {config.name!r}: concat tables have other widths; count them on the module")
    if config.scheme == "hybrid":
        cold = config.num_embeddings - config.hot_rows
        return config.hot_rows + (_scheme_rows(config.cold_scheme, cold, config) if cold > 0 else 0)
    return _scheme_rows(config.scheme, config.num_embeddings, config)


def feature_values(config: FeatureConfig) -> int:
    """Learned values of one feature's embedding: its tables' rows x D, ``robe``'s array (a hybrid's
    robe cold part: ``K D`` hot values plus the array), ``dhe``'s MLP, the closed form of ``tt`` (three
    cores and a cache) and ``md`` (blocks and projections), or ``cce``'s two tables per column (``2 c k``
    rows of ``D / c``: ``2 k D``; its index bytes are not values)."""
    n, dim = config.num_embeddings, config.embedding_dim
    if _robe_cold(config):
        return config.hot_rows * dim + config.robe_values
    if config.scheme == "cce":
        return 2 * config.cce_k * dim
    if config.scheme == "robe":
        return config.robe_values
    if config.scheme == "dhe":
        return dhe_parameters(config.dhe_hashes, config.dhe_hidden, dim, config.dhe_batchnorm)
    if config.scheme == "tt":
        layout = tt_feature_layout(n, dim, config.tt_rank, config.tt_cache_rows)
        return tt_num_parameters(layout["row_factors"], layout["dim_factors"], layout["rank"], layout["cache_rows"])
    if config.scheme == "md":
        layout = md_feature_layout(n, dim, float(config.md_alpha), config.md_blocks, config.md_boundaries,
                                   config.md_base_dim or None)
        return md_num_parameters(n, dim, (0, *layout["boundaries"]), layout["block_dims"])
    return feature_rows(config) * dim


def robe_value_bytes(optimizer: str, embedding_dim: int, itemsize: int = 4) -> float:
    """Bytes of one value of a ROBE array with its optimizer state. Row-wise Adagrad keeps one value per
    row, and the array's rows are single values: one accumulator per value."""
    return itemsize * (2.0 if optimizer == "rowwise_adagrad" else 1.0 + state_factor(optimizer, embedding_dim))


def feature_bytes(config: FeatureConfig, optimizer: str = "sgd", itemsize: int = 4) -> int:
    """Bytes of one feature's tables (or ``robe`` array, or ``dhe`` MLP) plus their optimizer state.

    Row-wise Adagrad keeps one value per row: ``robe``'s array has rows of one value (one per value);
    ``dhe``'s layers have a row per output (weight ``(out, in)``) and per value (1-D biases, batch norm).
    ``cce`` adds its index bytes (``embedding.cce.cce_index_bytes``: the ``(n, c)`` assignment, the
    hash coefficients and the round counter), which have no optimizer state; its rows are ``D / c`` wide.
    """
    values = feature_values(config)
    if config.scheme == "cce":
        index = cce_index_bytes(config.num_embeddings, config.cce_columns, config.cce_k)
        if optimizer == "rowwise_adagrad":
            return (values + 2 * config.cce_columns * config.cce_k) * itemsize + index
        return int(round(values * itemsize * (1.0 + state_factor(optimizer, config.embedding_dim)))) + index
    if config.scheme == "robe":
        return int(round(values * robe_value_bytes(optimizer, config.embedding_dim, itemsize)))
    if _robe_cold(config) and optimizer == "rowwise_adagrad":  # hot rows: one value per row; the array: per value
        hot = config.hot_rows * (config.embedding_dim + 1) * itemsize
        return hot + int(config.robe_values * robe_value_bytes(optimizer, config.embedding_dim, itemsize))
    if config.scheme == "dhe" and optimizer == "rowwise_adagrad":
        dims = (config.dhe_hashes, *config.dhe_hidden, config.embedding_dim)
        rows = sum(2 * o for o in dims[1:]) + (2 * sum(config.dhe_hidden) if config.dhe_batchnorm else 0)
        return (values + rows) * itemsize
    return int(round(values * itemsize * (1.0 + state_factor(optimizer, config.embedding_dim))))


def _robe_cold(config: FeatureConfig) -> bool:
    """A hybrid whose cold ids (there are some) read a ROBE array."""
    return config.scheme == "hybrid" and config.cold_scheme == "robe" and config.hot_rows < config.num_embeddings


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """``"64MiB"``, ``"1.5GB"``, ``"200000"`` -> bytes (binary units ``KiB``/``MiB``/``GiB``, decimal ``KB``/``MB``/``GB``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"budget {text!r} is not a size like 64MiB, 1.5GB or 200000 (bytes)")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = value * _UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"budget must be a positive size, got {text!r}")
    return int(size)


def format_bytes(size: float) -> str:
    """Bytes as ``812 B``, ``12.3 MiB`` (binary units)."""
    if abs(size) < 1024:
        return f"{size:,.0f} B"
    for unit in ("KiB", "MiB"):
        size /= 1024
        if abs(size) < 1024:
            return f"{size:,.1f} {unit}"
    return f"{size / 1024:,.1f} GiB"
