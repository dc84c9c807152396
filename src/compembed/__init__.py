"""compembed: compositional embeddings from complementary partitions for memory-efficient recommenders.

Shi, Mudigere, Naumov, Yang, "Compositional Embeddings Using Complementary Partitions for
Memory-Efficient Recommendation Systems", KDD 2020 (arXiv:1909.02107).
"""
from .embedding import (
    CompositionalEmbedding,
    CompositionalEmbeddingBag,
    EmbeddingCollection,
    FeatureConfig,
    FullEmbeddingBag,
    HashEmbeddingBag,
    HybridEmbeddingBag,
    PathEmbedding,
    PathEmbeddingBag,
    feature_configs,
)
from .partitions import ChineseRemainder, GeneralizedQuotientRemainder, Hashing, Identity, QuotientRemainder
from .validation import set_validation, trusted_inputs, validation_enabled

__version__ = "0.1.0"

__all__ = [
    "QuotientRemainder",
    "GeneralizedQuotientRemainder",
    "ChineseRemainder",
    "Hashing",
    "Identity",
    "CompositionalEmbedding",
    "CompositionalEmbeddingBag",
    "HashEmbeddingBag",
    "FullEmbeddingBag",
    "PathEmbedding",
    "PathEmbeddingBag",
    "HybridEmbeddingBag",
    "EmbeddingCollection",
    "FeatureConfig",
    "feature_configs",
    "set_validation",
    "trusted_inputs",
    "validation_enabled",
]
