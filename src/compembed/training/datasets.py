"""The dataset a run's data config names."""
from __future__ import annotations

from ..data.dataset import CTRDataset
from .config import DataConfig

__all__ = ["open_data"]


def open_data(config: DataConfig) -> CTRDataset:
    """The dataset a data config names: the synthetic generator or a prepared directory."""
    if config.source == "synthetic":
        from ..data.synthetic import SyntheticConfig, SyntheticCTR

        return SyntheticCTR(SyntheticConfig(num_rows=config.rows, cardinality_scale=config.cardinality_scale,
                                            seed=config.seed, id_order=config.id_order))
    from ..data import open_dataset

    return open_dataset(config.source)
