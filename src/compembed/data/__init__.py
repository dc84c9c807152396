"""Data: CTR dataset readers, preprocessing, the synthetic generator and batch loaders."""
from .batch import Batch

__all__ = ["Batch"]
