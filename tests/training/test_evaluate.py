"""Evaluation metrics against direct computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compembed.data import ArrayDataset, DatasetInfo, SyntheticConfig, SyntheticCTR
from compembed.training import evaluate


class FixedScores(nn.Module):
    """A 'model' whose logit is the first dense feature."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Module()

    def forward(self, dense, features):
        return dense[:, 0]


def exact_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_metrics_match_direct_computation():
    rng = np.random.default_rng(0)
    n = 500
    scores = np.round(rng.normal(0, 2, n), 1).astype(np.float32)  # with ties
    labels = (rng.random(n) < 1 / (1 + np.exp(-scores))).astype(np.float32)
    info = DatasetInfo(dense_names=["s"], categorical_names=["c"], cardinalities=[2])
    data = ArrayDataset(info, scores[:, None], np.zeros((n, 1), dtype=np.int64), labels, {"test": (0, n)})
    result = evaluate(FixedScores(), data, "test", batch_size=64)
    p = 1 / (1 + np.exp(-scores.astype(np.float64)))
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert abs(result.loss - bce) < 1e-9
    assert result.accuracy == np.mean((scores > 0) == (labels == 1))
    assert abs(result.auc - exact_auc(scores, labels)) < 1e-6
    assert result.bayes_loss is None and result.samples == n


def test_bayes_loss_on_synthetic_data():
    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=3))

    class Zero(FixedScores):
        def forward(self, dense, features):
            return torch.zeros(dense.shape[0])

    result = evaluate(Zero(), data, "test")
    assert abs(result.bayes_loss - data.bayes_loss("test")) < 1e-6
    assert abs(result.loss - np.log(2)) < 1e-9
    assert result.auc == 0.5


def test_one_class_split_has_no_auc():
    info = DatasetInfo(dense_names=["s"], categorical_names=["c"], cardinalities=[2])
    data = ArrayDataset(info, np.ones((8, 1), np.float32), np.zeros((8, 1), np.int64), np.ones(8, np.float32),
                        {"test": (0, 8)})
    assert evaluate(FixedScores(), data, "test").auc is None


def test_a_loader_giving_more_rows_than_its_batches_is_refused_by_name():
    n = 100
    info = DatasetInfo(dense_names=["s"], categorical_names=["c"], cardinalities=[2])
    data = ArrayDataset(info, np.zeros((n, 1), dtype=np.float32), np.zeros((n, 1), dtype=np.int64),
                        np.zeros(n, dtype=np.float32), {"test": (0, n)})

    class Overlong:  # says 2 batches of 64, then yields 3
        info = data.info

        def num_batches(self, split, batch_size, **kw):
            return 2

        def loader(self, split, batch_size, **kw):
            yield from (data.take(slice(0, 64)) for _ in range(3))

    with pytest.raises(ValueError, match=r"split 'test': the loader gave more than the 128 rows of its 2 batches"):
        evaluate(FixedScores(), Overlong(), "test", batch_size=64)
