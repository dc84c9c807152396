"""Recommendation models (DLRM, DCN) over an EmbeddingCollection."""
