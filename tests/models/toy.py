"""A small learnable CTR task shared by the model, training and CLI tests."""
from __future__ import annotations

import numpy as np

from compembed.data import ArrayDataset, DatasetInfo

CARDINALITIES = [60, 40, 9]


def toy_dataset(rows: int = 2048, seed: int = 0, nan_row: int | None = None, multi_hot: bool = False) -> ArrayDataset:
    """Labels from a planted logit: per-id effects of 3 categorical features plus a dense term.

    Each category's identity matters, so every embedding scheme can lower the loss well below the
    label entropy. ``nan_row`` puts a NaN in that row's dense features; ``multi_hot`` adds a bag feature.
    """
    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, n, rows) for n in CARDINALITIES], axis=1)
    effects = [rng.normal(0, 1.5, n) for n in CARDINALITIES]
    dense = rng.normal(0, 1, (rows, 4)).astype(np.float32)
    logit = sum(e[sparse[:, j]] for j, e in enumerate(effects)) + dense[:, 0]
    names, cards = ["a", "b", "c"], list(CARDINALITIES)
    bags = None
    if multi_hot:
        lengths = rng.integers(1, 4, rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = rng.integers(0, 12, offsets[-1])
        tag_effect = rng.normal(0, 1, 12)
        logit = logit + np.add.reduceat(tag_effect[values], offsets[:-1])
        bags = {"tags": (values, offsets)}
        names, cards = names + ["tags"], cards + [12]
    prob = 1 / (1 + np.exp(-logit))
    labels = (rng.random(rows) < prob).astype(np.float32)
    if nan_row is not None:
        dense[nan_row, 1] = np.nan
    info = DatasetInfo(dense_names=[f"d{j}" for j in range(4)], categorical_names=names, cardinalities=cards,
                       multi_hot_names=["tags"] if multi_hot else [])
    n_train, n_val = rows * 3 // 4, rows // 8
    splits = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, rows)}
    return ArrayDataset(info, dense, sparse, labels, splits, multi_hot=bags, click_prob=prob.astype(np.float32))
