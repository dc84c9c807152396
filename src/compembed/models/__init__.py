"""Recommendation models (DLRM, DCN) over an EmbeddingCollection."""
from .dcn import DCN
from .dlrm import DLRM
from .factory import ARCHS, FeatureSpec, ModelConfig, build_collection, build_model
from .layers import MLP, CrossNetwork, DotInteraction, EmbeddingAligner

__all__ = [
    "ARCHS", "DCN", "DLRM", "MLP", "CrossNetwork", "DotInteraction", "EmbeddingAligner", "FeatureSpec",
    "ModelConfig", "build_collection", "build_model",
]
