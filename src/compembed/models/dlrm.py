"""DLRM (Naumov et al. 2019): bottom MLP, pairwise dot interaction, top MLP."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import MLP, DotInteraction, EmbeddingAligner, check_dense

__all__ = ["DLRM"]


class DLRM(nn.Module):
    """Deep Learning Recommendation Model over any embedding collection.

    ``z = [b, dot(b, e_1, ..., e_F)]`` with ``b = bottom(dense)``; ``logit = top(z)``.

    Args:
        embeddings: the categorical features' embeddings: any module with ``forward(features)``
            returning ``(B, F, D)`` or ``(B, sum d_f)`` and a ``configs`` list (one per feature with
            ``embedding_dim``), e.g. ``compembed.embedding.EmbeddingCollection``.
        num_dense: number of dense features (0: no bottom MLP).
        bottom_mlp: hidden sizes of the bottom MLP; its output has ``dim`` units.
        top_mlp: hidden sizes of the top MLP; its output is one logit.
        dim: width of the vectors that interact (default: the embedding width). Feature
            embeddings of another width are projected to it.

    Shape:
        ``forward(dense (B, num_dense), features) -> (B,)`` logits.
    """

    def __init__(
        self,
        embeddings: nn.Module,
        num_dense: int = 13,
        bottom_mlp: Sequence[int] = (512, 256, 64),
        top_mlp: Sequence[int] = (512, 256),
        dim: int | None = None,
    ) -> None:
        super().__init__()
        feature_dims = [c.embedding_dim for c in embeddings.configs]
        dim = dim or feature_dims[0]
        self.embeddings = embeddings
        self.align = EmbeddingAligner(feature_dims, dim)
        self.bottom = MLP([num_dense, *bottom_mlp, dim], final_relu=True) if num_dense > 0 else None
        self.interaction = DotInteraction()
        num_vectors = len(feature_dims) + (self.bottom is not None)
        top_in = DotInteraction.output_dim(num_vectors) + (dim if self.bottom is not None else 0)
        self.top = MLP([top_in, *top_mlp, 1])
        self.num_dense = num_dense

    def forward(self, dense: Tensor, features) -> Tensor:
        vectors = self.align(self.embeddings(features))  # (B, F, D)
        if self.bottom is None:
            return self.top(self.interaction(vectors)).squeeze(-1)
        check_dense(dense, self.num_dense, vectors)
        b = self.bottom(dense)  # (B, D)
        pairs = self.interaction(torch.cat([b.unsqueeze(1), vectors], dim=1))
        return self.top(torch.cat([b, pairs], dim=1)).squeeze(-1)
