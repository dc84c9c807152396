"""One embedding per categorical feature, built from plain configs, with memory accounting."""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..partitions import (
    ChineseRemainder,
    GeneralizedQuotientRemainder,
    Partition,
    QuotientRemainder,
    choose_divisors,
    choose_moduli,
)
from .cce import CCEEmbeddingBag
from .compositional import CompositionalEmbeddingBag, FullEmbeddingBag, HashEmbeddingBag
from .dhe import DHE_ACTIVATIONS, DHEEmbeddingBag
from .hybrid import HybridEmbeddingBag
from .init import OPERATIONS, default_std
from .md import MixedDimEmbeddingBag, md_feature_layout
from .path import PathEmbeddingBag
from .tt import TTEmbeddingBag, tt_feature_layout
from .pooling import MODES
from .robe import ROBEEmbeddingBag

__all__ = ["SCHEMES", "COLD_SCHEMES", "BUILDERS", "FeatureConfig", "FeatureReport", "EmbeddingCollection", "build_embedding_bag", "feature_configs"]

# The schemes a hybrid's cold ids may use: the operation-based ones and ROBE-Z.
COLD_SCHEMES = ("full", "hashing", "qr", "gqr", "crt", "robe")

# A bag input for one feature: ids (B, L), or 1-D ids with offsets, optionally with per-sample weights.
FeatureInput = Tensor | tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]


@dataclass
class FeatureConfig:
    """How to embed one categorical feature.

    Attributes:
        name: feature name, used in errors and reports.
        num_embeddings: cardinality n (ids in ``[0, n)``).
        embedding_dim: output size D.
        scheme: ``full``, ``hashing`` (``ceil(n / num_collisions)`` buckets), ``qr`` (remainder
            modulus ``num_collisions``), ``gqr`` / ``crt`` (``num_partitions`` tables near
            ``n**(1/k)`` rows, or explicit ``factors``), ``path`` (QR with per-remainder MLPs),
            ``hybrid`` (the ``hot_rows`` first ids own rows, the others use ``cold_scheme``), ``robe``
            (ROBE-Z: hashed blocks of one shared array), ``dhe`` (Deep Hash Embedding: hash encoding + MLP),
            ``cce`` (CCE: per column a clustered and a hashed table, re-clustered during training).
        operation: how ``qr``/``gqr``/``crt`` combine their rows: ``mult``, ``add`` or ``concat``.
        num_collisions: ids per shared row for ``hashing``, ``qr`` and ``path``.
        num_partitions: k for ``gqr`` and ``crt`` when ``factors`` is not given.
        factors: explicit divisors (``gqr``) or pairwise coprime moduli (``crt``).
        hidden_dims: hidden layer sizes of the per-class MLPs of ``path``.
        mode: bag pooling, ``sum`` (default, DLRM's), ``mean`` or ``max``; the builders pass it to the
            modules explicitly (their own default is ``nn.EmbeddingBag``'s ``mean``).
        hot_rows: K for ``hybrid``: ids ``x < K`` (the most frequent, with frequency-ordered ids)
            get rows of their own; ``K >= n`` makes a full table.
        cold_scheme: for ``hybrid``, the scheme of the other ids, shifted to ``x - K``: one of
            ``COLD_SCHEMES``, with this config's operation, num_collisions, num_partitions, factors (and
            the robe options for a ``robe`` cold part).
        robe_size: ``robe``'s shared array length in values (0: ``ceil(n * D / num_collisions)``, the
            hashing trick's bytes, and at least one block; for a hybrid's robe cold part, n is its
            ``n - hot_rows`` cold ids).
        block_size: ``robe``'s Z, contiguous values per hashed block; divides D (0: Z = D).
        robe_signs: ``robe`` multiplies each block by a hashed sign.
        dhe_hashes: ``dhe``'s k, the hash encoding's size (even when ``dhe_gaussian``).
        dhe_hidden: hidden layer sizes of ``dhe``'s decoder MLP.
        dhe_gaussian: ``dhe`` Box-Mullers the uniform encoding to a Gaussian one (the paper's best).
        dhe_batchnorm: batch norm after each hidden layer of ``dhe``'s MLP.
        dhe_activation: ``mish`` or ``relu`` in ``dhe``'s MLP.
        hash_seed: with the feature's name, seeds the hash functions of ``robe``, ``dhe`` and ``cce``.
        tt_rank: for ``tt`` (TT-Rec, ``embedding.tt``), the TT-rank R of the 3 cores; a feature too
            small for it gets its largest useful rank (``tt_max_rank``).
        tt_cache_rows: for ``tt``, the K first (most frequent) ids read full cached rows.
        md_alpha: for ``md`` (mixed dimensions, ``embedding.md``), the power-law temperature (>= 0).
        md_blocks: for ``md``, the number of equal id ranges (at most n; fewer for smaller features).
        md_base_dim: for ``md``, the width of the most popular block (0: ``embedding_dim``).
        md_boundaries: for ``md``, explicit first ids of the blocks after the first (instead of md_blocks).
        cce_columns: for ``cce`` (``embedding.cce``), c, the columns of width D / c; divides D.
        cce_rows: for ``cce``, k, the rows of each column's two tables (0: ``ceil(n / (2 num_collisions))``,
            the hashing trick's values; capped at n; see ``cce_k``).
        cce_every: for ``cce``, re-cluster every this many global training steps (0: never by steps).
        cce_epoch_end: for ``cce``, re-cluster at the end of every epoch.
        cce_rounds: for ``cce``, the most re-clusterings (0: no limit); after the last round both tables
            keep learning. Each round costs about ``n k D`` multiply-adds per k-means pass (5 passes).
        cce_sample: for ``cce``, the ids k-means runs on (0: ``min(n, max(8 k, 65536))``).
    """

    name: str
    num_embeddings: int
    embedding_dim: int = 16
    scheme: str = "qr"
    operation: str = "mult"
    num_collisions: int = 4
    num_partitions: int = 3
    factors: tuple[int, ...] | None = None
    hidden_dims: tuple[int, ...] = (64,)
    mode: str = "sum"
    hot_rows: int = 0
    cold_scheme: str = "qr"
    # robe, dhe, tt and md (issue 11): the schemes' own options, checked below
    robe_size: int = 0
    block_size: int = 0
    robe_signs: bool = False
    dhe_hashes: int = 64
    dhe_hidden: tuple[int, ...] = (64,)
    dhe_gaussian: bool = True
    dhe_batchnorm: bool = False
    dhe_activation: str = "mish"
    hash_seed: int = 0
    tt_rank: int = 8
    tt_cache_rows: int = 0
    md_alpha: float = 0.3
    md_blocks: int = 4
    md_base_dim: int = 0
    md_boundaries: tuple[int, ...] | None = None
    # cce: the columns, rows and the re-clustering schedule, checked below
    cce_columns: int = 2
    cce_rows: int = 0
    cce_every: int = 1000
    cce_epoch_end: bool = False
    cce_rounds: int = 3
    cce_sample: int = 0

    def __post_init__(self) -> None:
        where = f"feature {self.name!r}"
        if isinstance(self.num_embeddings, bool) or not isinstance(self.num_embeddings, int) or self.num_embeddings < 1:
            raise ValueError(f"{where}: num_embeddings must be a positive int, got {self.num_embeddings!r}")
        if self.scheme not in BUILDERS:
            raise ValueError(f"{where}: scheme must be one of {tuple(BUILDERS)}, got {self.scheme!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"{where}: operation must be one of {OPERATIONS}, got {self.operation!r}")
        if self.mode not in MODES:
            raise ValueError(f"{where}: mode must be one of {MODES}, got {self.mode!r}")
        if self.num_collisions < 1:
            raise ValueError(f"{where}: num_collisions must be >= 1, got {self.num_collisions}")
        if self.num_partitions < 1:
            raise ValueError(f"{where}: num_partitions must be >= 1, got {self.num_partitions}")
        if isinstance(self.hot_rows, bool) or not isinstance(self.hot_rows, int) or self.hot_rows < 0:
            raise ValueError(f"{where}: hot_rows must be an int >= 0, got {self.hot_rows!r}")
        if self.cold_scheme not in COLD_SCHEMES:
            raise ValueError(f"{where}: cold_scheme must be one of {COLD_SCHEMES}, got {self.cold_scheme!r}")
        if self.factors is not None:
            self.factors = tuple(self.factors)
        self._check_tt_md(where)
        self.hidden_dims = tuple(self.hidden_dims)
        self.dhe_hidden = tuple(self.dhe_hidden)
        self._check_hashed(where)
        self._check_cce(where)

    def _check_cce(self, where: str) -> None:
        """The cce fields (checked for every scheme, so that a wrong value is never silent)."""
        for name, minimum in (("cce_columns", 1), ("cce_rows", 0), ("cce_every", 0), ("cce_rounds", 0),
                              ("cce_sample", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
        if not isinstance(self.cce_epoch_end, bool):
            raise ValueError(f"{where}: cce_epoch_end must be a bool, got {self.cce_epoch_end!r}")
        if self.scheme == "cce" and self.embedding_dim % self.cce_columns:
            raise ValueError(f"{where}: cce_columns c={self.cce_columns} must divide embedding_dim D={self.embedding_dim}")

    @property
    def cce_k(self) -> int:
        """CCE's rows per table: ``cce_rows``, or when 0 ``ceil(n / (2 num_collisions))`` (then the two
        tables hold the hashing trick's ``n D / num_collisions`` values), at most n."""
        return min(self.num_embeddings, self.cce_rows or -(-self.num_embeddings // (2 * self.num_collisions)))

    def _check_hashed(self, where: str) -> None:
        """The robe and dhe fields (checked for every scheme, so that a wrong value is never silent)."""
        def positive(name: str, value, minimum: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
        positive("robe_size", self.robe_size, 0)
        positive("block_size", self.block_size, 0)
        positive("dhe_hashes", self.dhe_hashes, 1)
        for h in self.dhe_hidden:
            positive("dhe_hidden sizes", h, 1)
        if self.dhe_activation not in DHE_ACTIVATIONS:
            raise ValueError(f"{where}: dhe_activation must be one of {tuple(DHE_ACTIVATIONS)}, got {self.dhe_activation!r}")
        if self.scheme == "robe" or (self.scheme == "hybrid" and self.cold_scheme == "robe"
                                     and self.hot_rows < self.num_embeddings):
            z, size = self.block_z, self.robe_values
            if self.embedding_dim % z:
                raise ValueError(f"{where}: block_size Z={z} must divide embedding_dim D={self.embedding_dim}")
            if size < z:
                raise ValueError(f"{where}: the robe array of {size} values is smaller than one block (block_size Z={z})")
        if self.scheme == "dhe" and self.dhe_gaussian and self.dhe_hashes % 2:
            raise ValueError(f"{where}: dhe_gaussian pairs the hashes (Box-Muller): dhe_hashes k={self.dhe_hashes} must be even")

    @property
    def block_z(self) -> int:
        """ROBE's block size Z (``block_size``, or D when 0)."""
        return self.block_size or self.embedding_dim

    @property
    def robe_values(self) -> int:
        """ROBE's array length: ``robe_size``, or when 0 ``ceil(n * D / num_collisions)`` but at least one block
        (n: the ids ROBE embeds, ``num_embeddings - hot_rows`` for a hybrid's cold part)."""
        n = max(0, self.num_embeddings - self.hot_rows) if self.scheme == "hybrid" else self.num_embeddings
        return self.robe_size or max(self.block_z, -(-n * self.embedding_dim // self.num_collisions))

    @property
    def hash_seed_of_feature(self) -> int:
        """The seed of this feature's hash functions: ``hash_seed`` mixed with the name, so features differ."""
        return zlib.crc32(f"{self.name}:{self.hash_seed}".encode())

    def _check_tt_md(self, where: str) -> None:
        def whole(value, low: int) -> bool:
            return not isinstance(value, bool) and isinstance(value, int) and value >= low
        if not whole(self.tt_rank, 1):
            raise ValueError(f"{where}: tt_rank must be an int >= 1, got {self.tt_rank!r}")
        if not whole(self.tt_cache_rows, 0):
            raise ValueError(f"{where}: tt_cache_rows must be an int >= 0, got {self.tt_cache_rows!r}")
        if isinstance(self.md_alpha, bool) or not isinstance(self.md_alpha, (int, float)) or not self.md_alpha >= 0:
            raise ValueError(f"{where}: md_alpha must be a number >= 0, got {self.md_alpha!r}")
        if not whole(self.md_blocks, 1):
            raise ValueError(f"{where}: md_blocks must be an int >= 1, got {self.md_blocks!r}")
        if not whole(self.md_base_dim, 0) or self.md_base_dim > self.embedding_dim:
            raise ValueError(f"{where}: md_base_dim must be an int in [0, embedding_dim={self.embedding_dim}] "
                             f"(0: embedding_dim), got {self.md_base_dim!r}")
        if self.md_boundaries is not None:
            self.md_boundaries = tuple(self.md_boundaries)

    def with_threshold(self, threshold: int) -> FeatureConfig:
        """The paper's threshold rule: only features with more than ``threshold`` categories are compressed."""
        if self.num_embeddings > threshold or self.scheme == "full":
            return self
        return dataclasses.replace(self, scheme="full")


# A builder makes the module of ``config`` over ``n`` ids (a hybrid's cold part has fewer than the
# feature's), with the keyword options ``mode``, ``sparse``, ``device``, ``dtype`` (and ``init_std``).
# A new scheme is one module file plus one line in ``BUILDERS``.
Builder = Callable[..., nn.Module]


def _full(c: FeatureConfig, n: int, **kw) -> nn.Module:
    return FullEmbeddingBag(n, c.embedding_dim, **kw)


def _hashing(c: FeatureConfig, n: int, **kw) -> nn.Module:
    return HashEmbeddingBag(n, c.embedding_dim, num_buckets=-(-n // c.num_collisions), **kw)


def _composed(partition: Callable[[FeatureConfig, int], Partition]) -> Builder:
    def build(c: FeatureConfig, n: int, **kw) -> nn.Module:
        return CompositionalEmbeddingBag(n, c.embedding_dim, partition(c, n), operation=c.operation, **kw)
    return build


def _path(c: FeatureConfig, n: int, **kw) -> nn.Module:
    return PathEmbeddingBag(n, c.embedding_dim, QuotientRemainder(n, c.num_collisions), hidden_dims=c.hidden_dims, **kw)


def _hybrid(c: FeatureConfig, n: int, **kw) -> nn.Module:
    """The ``min(hot_rows, n)`` first ids get their own rows; the rest go through ``cold_scheme``."""
    hot = min(c.hot_rows, n)
    cold = BUILDERS[c.cold_scheme](c, n - hot, init_std=default_std(n), **kw) if hot < n else None
    return HybridEmbeddingBag(n, c.embedding_dim, hot, cold, **kw)


def _robe(c: FeatureConfig, n: int, **kw) -> nn.Module:
    return ROBEEmbeddingBag(n, c.embedding_dim, c.robe_values, block_size=c.block_z, signs=c.robe_signs,
                            seed=c.hash_seed_of_feature, **kw)


def _cce(c: FeatureConfig, n: int, **kw) -> nn.Module:
    return CCEEmbeddingBag(n, c.embedding_dim, c.cce_k, c.cce_columns, every_steps=c.cce_every,
                           at_epoch_end=c.cce_epoch_end, max_rounds=c.cce_rounds, kmeans_sample=c.cce_sample,
                           seed=c.hash_seed_of_feature, **kw)


def _dhe(c: FeatureConfig, n: int, **kw) -> nn.Module:
    kw.pop("init_std", None)  # an MLP's own init
    return DHEEmbeddingBag(n, c.embedding_dim, c.dhe_hashes, c.dhe_hidden, gaussian=c.dhe_gaussian,
                           batchnorm=c.dhe_batchnorm, activation=c.dhe_activation, seed=c.hash_seed_of_feature, **kw)
def _tt(c: FeatureConfig, n: int, **kw) -> nn.Module:
    """TT-Rec with ``tt_rank`` capped at the feature's largest useful rank, ``min(tt_cache_rows, n)`` cached rows."""
    return TTEmbeddingBag(n, c.embedding_dim, **tt_feature_layout(n, c.embedding_dim, c.tt_rank, c.tt_cache_rows), **kw)


def _md(c: FeatureConfig, n: int, **kw) -> nn.Module:
    """Mixed dimensions over ``min(md_blocks, n)`` equal blocks (or ``md_boundaries``)."""
    layout = md_feature_layout(n, c.embedding_dim, float(c.md_alpha), c.md_blocks, c.md_boundaries, c.md_base_dim or None)
    return MixedDimEmbeddingBag(n, c.embedding_dim, **layout, **kw)


BUILDERS: dict[str, Builder] = {
    "full": _full,
    "hashing": _hashing,
    "qr": _composed(lambda c, n: QuotientRemainder(n, c.num_collisions)),
    "gqr": _composed(lambda c, n: GeneralizedQuotientRemainder(n, c.factors or choose_divisors(n, c.num_partitions))),
    "crt": _composed(lambda c, n: ChineseRemainder(n, c.factors or choose_moduli(n, c.num_partitions))),
    "path": _path,
    "hybrid": _hybrid,
    "robe": _robe,
    "dhe": _dhe,
    "tt": _tt,
    "md": _md,
    "cce": _cce,
}
SCHEMES = tuple(BUILDERS)


def build_embedding_bag(config: FeatureConfig, sparse: bool = False, **factory) -> nn.Module:
    """The embedding-bag module that ``config`` describes (built by its scheme's entry in ``BUILDERS``)."""
    try:
        return BUILDERS[config.scheme](config, config.num_embeddings, mode=config.mode, sparse=sparse, **factory)
    except (ValueError, TypeError) as err:
        raise type(err)(f"feature {config.name!r}: {err}") from None


@dataclass(frozen=True)
class FeatureReport:
    """Memory of one feature's embedding against the full ``n x D`` table.

    ``bytes`` counts the parameters and the ``index_bytes``: buffers that a scheme stores per id (CCE's
    assignment; a module's ``index_bytes`` property, 0 for the others).
    """

    name: str
    scheme: str
    num_embeddings: int
    embedding_dim: int
    table_sizes: tuple[int, ...]
    parameters: int
    bytes: int
    full_parameters: int
    full_bytes: int
    index_bytes: int = 0

    @property
    def compression_ratio(self) -> float:
        return self.full_parameters / self.parameters


class EmbeddingCollection(nn.Module):
    """One embedding bag per categorical feature.

    Args:
        features: one config per feature, in input column order.
        threshold: compress only features with more than ``threshold`` categories; the others get
            full tables (the paper's threshold rule; 0 compresses every feature as configured).
        sparse: sparse gradients for every table.
        output: ``"stack"`` gives ``(B, F, D)`` (all dims equal), ``"cat"`` gives ``(B, sum D)``.

    Shape:
        ``forward(features)`` with features either ``(B, F)`` integer ids (one id per feature and
        sample), or a mapping from feature name to ``(B, L)`` ids, ``(values, offsets)`` or
        ``(values, offsets, per_sample_weights)`` for multi-hot features.
    """

    def __init__(
        self,
        features: Sequence[FeatureConfig],
        threshold: int = 0,
        sparse: bool = False,
        output: str = "stack",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError("an EmbeddingCollection needs at least one feature")
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique, repeated: {duplicates}")
        if output not in ("stack", "cat"):
            raise ValueError(f"output must be 'stack' or 'cat', got {output!r}")
        if output == "stack" and len({f.embedding_dim for f in features}) > 1:
            raise ValueError("output='stack' needs one embedding_dim for all features; use output='cat'")
        self.threshold = threshold
        self.output = output
        self.configs = [f.with_threshold(threshold) for f in features]
        self.embeddings = nn.ModuleDict(
            (f.name, build_embedding_bag(f, sparse=sparse, device=device, dtype=dtype)) for f in self.configs
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.configs]

    def forward(self, features: Tensor | Mapping[str, FeatureInput]) -> Tensor:
        pooled = [self._lookup(j, name, features) for j, name in enumerate(self.embeddings)]
        check_batch_sizes(self.feature_names, pooled)
        return torch.stack(pooled, dim=1) if self.output == "stack" else torch.cat(pooled, dim=1)

    def _lookup(self, column: int, name: str, features: Tensor | Mapping[str, FeatureInput]) -> Tensor:
        if isinstance(features, Tensor):
            if features.dim() != 2 or features.shape[1] != len(self.embeddings):
                raise ValueError(
                    f"expected ids of shape (B, {len(self.embeddings)}), one column per feature, "
                    f"got {tuple(features.shape)}"
                )
            args: tuple = (features[:, column : column + 1],)
        else:
            if name not in features:
                raise KeyError(f"feature {name!r} is missing from the input (got {sorted(features)})")
            value = features[name]
            args = (value,) if isinstance(value, Tensor) else tuple(value)
        try:
            return self.embeddings[name](*args)
        except (IndexError, ValueError, TypeError) as err:
            raise type(err)(f"feature {name!r} (column {column}): {err}") from None

    def feature_module(self, name: str) -> nn.Module:
        """The module that describes feature ``name``: its partition, operation, mode and table widths."""
        return self.embeddings[name]

    def table_weights(self, name: str) -> list[Tensor]:
        """The weights ``(rows_t, d_t)`` of feature ``name``'s tables, in partition order."""
        return list(getattr(self.embeddings[name], "weights", ()))

    def report(self) -> list[FeatureReport]:
        """Per-feature parameters and bytes, against full tables of the same dtype."""
        reports = []
        for config, module in zip(self.configs, self.embeddings.values()):
            params = list(module.parameters())
            itemsize = params[0].element_size()
            sizes = getattr(module, "table_sizes", None) or tuple(getattr(getattr(module, "partition", None), "table_sizes", ()))
            full = config.num_embeddings * config.embedding_dim
            index = index_bytes(module)
            reports.append(
                FeatureReport(
                    name=config.name, scheme=_describe(config), num_embeddings=config.num_embeddings,
                    embedding_dim=config.embedding_dim, table_sizes=sizes,
                    parameters=sum(p.numel() for p in params),
                    bytes=sum(p.numel() * p.element_size() for p in params) + index,
                    full_parameters=full, full_bytes=full * itemsize, index_bytes=index,
                )
            )
        return reports

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_bytes(self) -> int:
        """Bytes of the parameters plus the index bytes (per-id buffers, see ``FeatureReport``)."""
        return sum(p.numel() * p.element_size() for p in self.parameters()) + index_bytes(self)

    @property
    def full_table_parameters(self) -> int:
        return sum(f.num_embeddings * f.embedding_dim for f in self.configs)

    @property
    def compression_ratio(self) -> float:
        """Full-table parameters divided by this collection's parameters."""
        return self.full_table_parameters / self.num_parameters

    def summary(self) -> str:
        """A plain-text table of the report, one line per feature plus the total."""
        reports = self.report()
        indexed = any(r.index_bytes for r in reports)  # an "index MiB" column (included in MiB) when some scheme has one
        rows = [("feature", "scheme", "n", "tables", "params", "MiB", *(("index MiB",) if indexed else ()), "ratio")]
        for r in reports:
            rows.append((
                r.name, r.scheme, f"{r.num_embeddings:,}", "+".join(map(str, r.table_sizes)) or "-",
                f"{r.parameters:,}", f"{r.bytes / 2**20:.2f}", *((f"{r.index_bytes / 2**20:.2f}",) if indexed else ()),
                f"{r.compression_ratio:.1f}x",
            ))
        rows.append((
            "total", "", f"{sum(f.num_embeddings for f in self.configs):,}", "", f"{self.num_parameters:,}",
            f"{self.num_bytes / 2**20:.2f}", *((f"{sum(r.index_bytes for r in reports) / 2**20:.2f}",) if indexed else ()),
            f"{self.compression_ratio:.1f}x",
        ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows)


def index_bytes(module: nn.Module) -> int:
    """Bytes of the per-id index buffers of ``module`` and its submodules (their ``index_bytes``, e.g. CCE's
    assignment), which the embedding needs besides its parameters."""
    return sum(int(getattr(m, "index_bytes", 0)) for m in module.modules())


def check_batch_sizes(names: Sequence[str], pooled: Sequence[Tensor]) -> None:
    """Raise a clear error unless every feature's pooled bags ``(B_f, D_f)`` have the same batch size."""
    if all(bags.shape[0] == pooled[0].shape[0] for bags in pooled):  # (no dict of sizes: traced, they are symbols)
        return
    sizes: dict[int, list[str]] = {}
    for name, bags in zip(names, pooled):
        sizes.setdefault(bags.shape[0], []).append(name)
    if len(sizes) > 1:
        groups = "; ".join(f"{size} bags: {', '.join(map(repr, group))}" for size, group in sizes.items())
        raise ValueError(f"the features have different batch sizes ({groups}); each needs one bag per row")


def feature_configs(
    cardinalities: Sequence[int], names: Sequence[str] | None = None, **options
) -> list[FeatureConfig]:
    """Configs for many features that share one scheme: ``feature_configs([1460, 583], scheme="qr")``."""
    names = list(names) if names is not None else [f"C{j + 1}" for j in range(len(cardinalities))]
    if len(names) != len(cardinalities):
        raise ValueError(f"{len(names)} names for {len(cardinalities)} cardinalities")
    return [FeatureConfig(name=name, num_embeddings=int(n), **options) for name, n in zip(names, cardinalities)]


def _describe(config: FeatureConfig) -> str:
    if config.scheme == "hybrid":
        if config.hot_rows >= config.num_embeddings:
            return f"hybrid[{config.num_embeddings}]"  # every id is hot: a full table
        return f"hybrid[{config.hot_rows}]+{_describe(dataclasses.replace(config, scheme=config.cold_scheme))}"
    if config.scheme == "robe":
        return f"robe-{config.block_z}"
    if config.scheme == "cce":
        return f"cce[c{config.cce_columns}, k{config.cce_k}]"
    if config.scheme == "dhe":
        return f"dhe{[config.dhe_hashes, *config.dhe_hidden]}"
    if config.scheme in ("full", "hashing", "path"):
        return config.scheme if config.scheme != "path" else f"path{list(config.hidden_dims)}"
    if config.scheme == "tt":
        return f"tt[r{config.tt_rank}" + (f", cache {config.tt_cache_rows}]" if config.tt_cache_rows else "]")
    if config.scheme == "md":
        return f"md[a{config.md_alpha:g}" + (f", d0 {config.md_base_dim}]" if config.md_base_dim else "]")
    return f"{config.scheme}-{config.operation}"
