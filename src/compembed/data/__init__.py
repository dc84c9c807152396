"""Data: CTR dataset readers, preprocessing, the synthetic generator and batch loaders."""
from .batch import Batch
from .dataset import ArrayDataset, CTRDataset, DatasetInfo, bayes_loss, count_batches, shard_bounds
from .store import DatasetFormatError, open_dataset
from .synthetic import SyntheticConfig, SyntheticCTR, scaled_cardinalities

__all__ = [
    "Batch",
    "DatasetInfo",
    "CTRDataset",
    "ArrayDataset",
    "bayes_loss",
    "count_batches",
    "shard_bounds",
    "open_dataset",
    "DatasetFormatError",
    "SyntheticConfig",
    "SyntheticCTR",
    "scaled_cardinalities",
]
