"""Optimizers whose step on a sparse gradient touches only the rows present in the batch."""
from .sparse import RowWiseAdagrad, SparseAdagrad, SparseSGD

__all__ = ["SparseSGD", "SparseAdagrad", "RowWiseAdagrad"]
