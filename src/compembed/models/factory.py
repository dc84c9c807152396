"""One place that turns a plain config into a model: swap the collection or the model here."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..embedding import COLD_SCHEMES, SCHEMES, EmbeddingCollection, FeatureConfig, FusedEmbeddingCollection, feature_configs
from ..embedding.init import OPERATIONS
from ..schema import check_fields, check_value, field_types
from .dcn import DCN
from .dlrm import DLRM

__all__ = ["ARCHS", "ModelConfig", "FeatureSpec", "build_collection", "build_model"]

ARCHS = ("dlrm", "dcn")
# The ModelConfig fields of the robe, dhe, tt, md and cce options: None (unset) keeps FeatureConfig's
# default and leaves them out of stored configs and sweep keys; set, they go to every feature as they are.
SCHEME_FIELDS = ("robe_size", "block_size", "robe_signs", "dhe_hashes", "dhe_hidden", "dhe_gaussian", "dhe_batchnorm",
                 "dhe_activation", "tt_rank", "tt_cache_rows", "md_alpha", "md_blocks", "md_base_dim",
                 "cce_columns", "cce_rows", "cce_every", "cce_epoch_end", "cce_rounds", "cce_sample")


class FeatureSpec(Protocol):
    """What the model needs to know of a dataset (``compembed.data.DatasetInfo`` has it)."""

    dense_names: Sequence[str]
    categorical_names: Sequence[str]
    cardinalities: Sequence[int]


@dataclass
class ModelConfig:
    """A recommendation model and its embedding scheme (defaults: the paper's Criteo setup).

    Attributes:
        arch: ``dlrm`` or ``dcn``.
        embedding_dim: D, the width of every feature's vector.
        scheme: ``full``, ``hashing``, ``qr``, ``gqr``, ``crt``, ``path``, ``hybrid``, ``robe``, ``dhe``,
            ``tt``, ``md`` or ``cce`` (see ``FeatureConfig``).
        operation: ``mult``, ``add`` or ``concat`` for ``qr``/``gqr``/``crt``.
        num_collisions: ids per shared row (``hashing``, ``qr``, ``path``).
        num_partitions: k tables for ``gqr`` and ``crt``.
        path_hidden: hidden sizes of the per-class MLPs of ``path``.
        hot_rows: for ``hybrid``, the K most frequent ids (with frequency-ordered ids) of every
            compressed feature get rows of their own (a feature with ``n <= K`` gets a full table).
        cold_scheme: for ``hybrid``, the scheme of the other ids (``full``, ``hashing``, ``qr``,
            ``gqr`` or ``crt``, with the options above).
        robe_size, block_size, robe_signs, dhe_hashes, dhe_hidden, dhe_gaussian, dhe_batchnorm,
            dhe_activation, tt_rank, tt_cache_rows, md_alpha, md_blocks, md_base_dim, cce_columns, cce_rows,
            cce_every, cce_epoch_end, cce_rounds, cce_sample: the options of ``robe``, ``dhe``, ``tt``
            (TT-Rec), ``md`` (mixed dimensions) and ``cce`` (CCE, re-clustered) of every feature
            (``SCHEME_FIELDS``; see ``FeatureConfig``). None, the default, keeps ``FeatureConfig``'s default.
        threshold: compress only features with more categories than this (0: all; 200 is DLRM's default).
        bottom_mlp: DLRM bottom MLP hidden sizes (output: ``embedding_dim``).
        top_mlp: DLRM top MLP hidden sizes (output: one logit).
        cross_layers: DCN cross layers.
        deep_mlp: DCN deep network layer sizes.
        features: per-feature overrides of the ``FeatureConfig`` fields above, by feature name, e.g.
            ``{"C3": {"scheme": "hybrid", "hot_rows": 5000, "num_collisions": 8}}`` (TOML:
            ``[model.features.C3]``). ``compembed plan`` writes them. An overridden feature is built
            as its entry says, whatever ``threshold``.
        name: a label for reports (default: derived from the scheme, see ``label``).
    """

    arch: str = "dlrm"
    embedding_dim: int = 16
    scheme: str = "qr"
    operation: str = "mult"
    num_collisions: int = 4
    num_partitions: int = 3
    path_hidden: tuple[int, ...] = (64,)
    hot_rows: int = 0
    cold_scheme: str = "qr"
    # robe, dhe, tt and md (issue 11; SCHEME_FIELDS): passed to every feature's FeatureConfig when set.
    # None (FeatureConfig's default) leaves them out of the saved config, so older configs keep their sweep keys.
    robe_size: int | None = None
    block_size: int | None = None
    robe_signs: bool | None = None
    dhe_hashes: int | None = None
    dhe_hidden: tuple[int, ...] | None = None
    dhe_gaussian: bool | None = None
    dhe_batchnorm: bool | None = None
    dhe_activation: str | None = None
    tt_rank: int | None = None
    tt_cache_rows: int | None = None
    md_alpha: float | None = None
    md_blocks: int | None = None
    md_base_dim: int | None = None
    cce_columns: int | None = None
    cce_rows: int | None = None
    cce_every: int | None = None
    cce_epoch_end: bool | None = None
    cce_rounds: int | None = None
    cce_sample: int | None = None
    threshold: int = 200
    bottom_mlp: tuple[int, ...] = (512, 256, 64)
    top_mlp: tuple[int, ...] = (512, 256)
    cross_layers: int = 6
    deep_mlp: tuple[int, ...] = (512, 256, 64)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        check_fields(self, "model config")
        settable = field_types(FeatureConfig).keys() - {"name", "num_embeddings", "embedding_dim"}
        for feature, overrides in self.features.items():
            unknown = sorted(set(overrides) - settable)
            if unknown:
                raise ValueError(f"model config: features.{feature}: unknown key(s) {unknown}; known: {sorted(settable)}")
            # lists, not tuples, as a config read from TOML has them (so stored and current configs compare equal)
            self.features[feature] = {
                k: _plain(check_value(v, field_types(FeatureConfig)[k], f"features.{feature}.{k}", "model config"))
                for k, v in overrides.items()}
        layers = {name: getattr(self, name) for name in ("path_hidden", "bottom_mlp", "top_mlp", "deep_mlp")}
        checks = [
            (self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}"),
            (self.scheme in SCHEMES, f"scheme must be one of {SCHEMES}, got {self.scheme!r}"),
            (self.operation in OPERATIONS, f"operation must be one of {OPERATIONS}, got {self.operation!r}"),
            (self.embedding_dim >= 1, f"embedding_dim must be >= 1, got {self.embedding_dim}"),
            (self.num_collisions >= 1, f"num_collisions must be >= 1, got {self.num_collisions}"),
            (self.num_partitions >= 1, f"num_partitions must be >= 1, got {self.num_partitions}"),
            (self.hot_rows >= 0, f"hot_rows must be >= 0, got {self.hot_rows}"),
            (self.cold_scheme in COLD_SCHEMES, f"cold_scheme must be one of {COLD_SCHEMES}, got {self.cold_scheme!r}"),
            (self.threshold >= 0, f"threshold must be >= 0, got {self.threshold}"),
            *_tt_md_checks(self),
            *_cce_checks(self),
            (self.cross_layers >= 0, f"cross_layers must be >= 0, got {self.cross_layers}"),
            (len(self.deep_mlp) >= 1, "deep_mlp needs at least one layer"),
            *((min(sizes, default=1) >= 1, f"{name} sizes must be >= 1, got {list(sizes)}") for name, sizes in layers.items()),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"model config: {message}")

    def label(self) -> str:
        """``name`` if set, else a short name of the scheme: ``qr-mult/4``, ``hybrid1000+qr-mult/4``,
        ``planned[full 12, hybrid 14]``."""
        if self.name:
            return self.name
        if self.features:
            schemes = [v.get("scheme", self.scheme) for v in self.features.values()]
            return "planned[" + ", ".join(f"{s} {schemes.count(s)}" for s in sorted(set(schemes))) + "]"
        if self.scheme == "hybrid":
            return f"hybrid{self.hot_rows}+{dataclasses.replace(self, scheme=self.cold_scheme).label()}"
        if self.scheme == "full":
            return "full"
        if self.scheme in ("tt", "md"):
            f = FeatureConfig("label", 1, self.embedding_dim, **self.scheme_options())
            if self.scheme == "tt":
                return f"tt/r{f.tt_rank}" + (f"+cache{f.tt_cache_rows}" if f.tt_cache_rows else "")
            return f"md/a{f.md_alpha:g}/b{f.md_blocks}" + (f"/d{f.md_base_dim}" if f.md_base_dim else "")
        if self.scheme == "cce":
            f = FeatureConfig("label", 1, self.embedding_dim, **self.scheme_options())
            rows = f"-k{f.cce_rows}" if f.cce_rows else f"/{self.num_collisions}"
            return f"cce-c{f.cce_columns}{rows}"
        if self.scheme == "robe":
            size = f"-{self.robe_size}" if self.robe_size else f"/{self.num_collisions}"
            return f"robe-z{self.block_size or self.embedding_dim}{size}"
        if self.scheme == "dhe":
            defaults = FeatureConfig("", 1)
            hidden = self.dhe_hidden if self.dhe_hidden is not None else defaults.dhe_hidden
            return f"dhe{self.dhe_hashes or defaults.dhe_hashes}-{'-'.join(map(str, hidden))}"
        if self.scheme in ("hashing", "qr", "path"):
            head = {"hashing": "hashing", "qr": f"qr-{self.operation}", "path": f"path{list(self.path_hidden)}"}
            return f"{head[self.scheme]}/{self.num_collisions}"
        return f"{self.scheme}-{self.operation}/k{self.num_partitions}"

    def scheme_options(self) -> dict[str, Any]:
        """The robe, dhe, tt, md and cce options that are set (``SCHEME_FIELDS`` not None), as
        ``FeatureConfig`` keywords."""
        return {k: getattr(self, k) for k in SCHEME_FIELDS if getattr(self, k) is not None}


def _tt_md_checks(c: ModelConfig) -> list[tuple[bool, str]]:
    def ok(name: str, test) -> bool:
        value = getattr(c, name)
        return value is None or test(value)
    return [
        (ok("tt_rank", lambda v: v >= 1), f"tt_rank must be >= 1, got {c.tt_rank}"),
        (ok("tt_cache_rows", lambda v: v >= 0), f"tt_cache_rows must be >= 0, got {c.tt_cache_rows}"),
        (ok("md_alpha", lambda v: v >= 0), f"md_alpha must be >= 0, got {c.md_alpha}"),
        (ok("md_blocks", lambda v: v >= 1), f"md_blocks must be >= 1, got {c.md_blocks}"),
        (ok("md_base_dim", lambda v: 0 <= v <= c.embedding_dim),
         f"md_base_dim must be in [0, embedding_dim={c.embedding_dim}] (0: embedding_dim), got {c.md_base_dim}"),
    ]


def _cce_checks(c: ModelConfig) -> list[tuple[bool, str]]:
    def ok(name: str, test) -> bool:
        value = getattr(c, name)
        return value is None or test(value)
    return [
        (ok("cce_columns", lambda v: v >= 1 and c.embedding_dim % v == 0),
         f"cce_columns must be >= 1 and divide embedding_dim={c.embedding_dim}, got {c.cce_columns}"),
        *((ok(name, lambda v: v >= 0), f"{name} must be >= 0, got {getattr(c, name)}")
          for name in ("cce_rows", "cce_every", "cce_rounds", "cce_sample")),
    ]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_collection(
    config: ModelConfig, info: FeatureSpec, sparse: bool = False, fused: bool = True, **factory
) -> EmbeddingCollection:
    """The embedding collection for ``info``'s categorical features under ``config``'s scheme.

    ``fused`` (the default) keeps every table in a few weights (``FusedEmbeddingCollection``: the
    same model, initial values and outputs, 1.3-1.7x faster DLRM training steps on CPU); otherwise
    one module per feature (``EmbeddingCollection``). The two have different state-dict keys.
    """
    configs = feature_configs(
        info.cardinalities, info.categorical_names, embedding_dim=config.embedding_dim, scheme=config.scheme,
        operation=config.operation, num_collisions=config.num_collisions, num_partitions=config.num_partitions,
        hidden_dims=config.path_hidden, hot_rows=config.hot_rows, cold_scheme=config.cold_scheme,
        **config.scheme_options(),
    )
    unknown = sorted(set(config.features) - set(info.categorical_names))
    if unknown:
        raise ValueError(f"model config: features {unknown} are not in the data (its features: "
                         f"{list(info.categorical_names)})")
    if config.features:
        # Overridden features are built as their entry says: the threshold rule applies to the rest.
        configs = [_override(c, config.features[c.name]) if c.name in config.features
                   else c.with_threshold(config.threshold) for c in configs]
    cls = FusedEmbeddingCollection if fused else EmbeddingCollection
    return cls(configs, threshold=0 if config.features else config.threshold, sparse=sparse, **factory)


def _override(feature: FeatureConfig, overrides: dict[str, Any]) -> FeatureConfig:
    try:
        return dataclasses.replace(feature, **overrides)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model config: features.{feature.name}: {err}") from None


def build_model(config: ModelConfig, info: FeatureSpec, sparse: bool = False, fused: bool = True,
                device: torch.device | str | None = None) -> nn.Module:
    """The DLRM or DCN that ``config`` describes, over ``info``'s features.

    ``sparse`` gives the embedding tables sparse gradients (for SGD, Adagrad, sparse Adam/AMSGrad);
    ``fused`` chooses the collection (see ``build_collection``); ``device`` is where its parameters
    are made (``meta``: sizes only, nothing allocated).
    """
    embeddings = build_collection(config, info, sparse=sparse, fused=fused, device=device)
    num_dense = len(info.dense_names)
    with torch.device(device) if device is not None else contextlib.nullcontext():  # the MLPs' layers
        if config.arch == "dlrm":
            return DLRM(embeddings, num_dense, bottom_mlp=config.bottom_mlp, top_mlp=config.top_mlp,
                        dim=config.embedding_dim)
        return DCN(embeddings, num_dense, cross_layers=config.cross_layers, deep_mlp=config.deep_mlp)


def config_dict(config: ModelConfig) -> dict:
    """The config as plain TOML/JSON-friendly values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
