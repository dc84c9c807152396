"""Embedding modules: compositional, path-based, hybrid, hashing, ROBE-Z, DHE, TT-Rec, CCE, mixed-dimension and full tables, and a per-feature collection."""
from .collection import (
    BUILDERS,
    COLD_SCHEMES,
    SCHEMES,
    EmbeddingCollection,
    FeatureConfig,
    FeatureReport,
    build_embedding_bag,
    feature_configs,
)
from .cce import CCEEmbeddingBag
from .compositional import CompositionalEmbedding, CompositionalEmbeddingBag, FullEmbeddingBag, HashEmbeddingBag, combine
from .dhe import DHEEmbeddingBag
from .fused import FusedEmbeddingCollection
from .hybrid import HybridEmbeddingBag
from .init import default_std, factor_std, factor_stds
from .md import MixedDimEmbeddingBag
from .path import ClassMLP, PathEmbedding, PathEmbeddingBag
from .pooling import pool_bags
from .robe import ROBEEmbeddingBag
from .tt import TTEmbeddingBag

__all__ = [
    "CompositionalEmbedding",
    "CompositionalEmbeddingBag",
    "HashEmbeddingBag",
    "FullEmbeddingBag",
    "PathEmbedding",
    "PathEmbeddingBag",
    "HybridEmbeddingBag",
    "ROBEEmbeddingBag",
    "DHEEmbeddingBag",
    "TTEmbeddingBag",
    "MixedDimEmbeddingBag",
    "CCEEmbeddingBag",
    "ClassMLP",
    "EmbeddingCollection",
    "FusedEmbeddingCollection",
    "FeatureConfig",
    "FeatureReport",
    "SCHEMES",
    "COLD_SCHEMES",
    "BUILDERS",
    "build_embedding_bag",
    "feature_configs",
    "combine",
    "default_std",
    "factor_std",
    "factor_stds",
    "pool_bags",
]
