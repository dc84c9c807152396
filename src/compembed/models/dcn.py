"""DCN (Wang et al. 2017): a cross network and a deep network side by side."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import MLP, CrossNetwork, check_dense

__all__ = ["DCN"]


class DCN(nn.Module):
    """Deep & Cross Network over any embedding collection.

    ``x0 = [dense, e_1, ..., e_F]``; ``logit = w . [cross(x0), deep(x0)] + b``. Feature widths may
    differ (the vectors are concatenated), so every scheme lines up without projection.

    Args:
        embeddings: module with ``forward(features) -> (B, F, D)`` or ``(B, sum d_f)`` and ``configs``.
        num_dense: number of dense features.
        cross_layers: number of cross layers.
        deep_mlp: layer sizes of the deep network (ReLU after each).

    Shape:
        ``forward(dense (B, num_dense), features) -> (B,)`` logits.
    """

    def __init__(
        self,
        embeddings: nn.Module,
        num_dense: int = 13,
        cross_layers: int = 6,
        deep_mlp: Sequence[int] = (512, 256, 64),
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.num_dense = num_dense
        x0_dim = num_dense + sum(c.embedding_dim for c in embeddings.configs)
        self.cross = CrossNetwork(x0_dim, cross_layers)
        self.deep = MLP([x0_dim, *deep_mlp], final_relu=True)
        self.head = MLP([x0_dim + self.deep.dims[-1], 1])

    def forward(self, dense: Tensor, features) -> Tensor:
        embedded = self.embeddings(features).flatten(1)  # (B, sum d_f)
        if self.num_dense:
            check_dense(dense, self.num_dense, embedded)
        x0 = torch.cat([dense, embedded], dim=1) if self.num_dense else embedded
        return self.head(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(-1)
