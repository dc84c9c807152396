"""Frequency-aware hybrid embeddings: the most frequent ids get rows of their own, the rest are compressed.

With frequency-ordered ids (id 0 the most frequent value of the feature), the ``K`` most frequent
ids ("hot", ``x < K``) each own one row of a full table ``H`` of ``K`` rows, and the other
``n - K`` ids ("cold") are shifted to ``x - K`` in ``[0, n - K)`` and embedded by any
operation-based scheme (full, hashing, qr, gqr, crt) or by a ROBE-Z array (``embedding.robe``)::

    e(x) = H[x]          if x < K
    e(x) = cold(x - K)   otherwise

Only the tables an id actually uses take part in its lookup and its gradient: a hot id puts no
row (not even a zero one) into the cold tables' sparse gradient, so lazy sparse optimizers
(SparseAdam, sparse AMSGrad) leave the state of unused rows alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import Partition, check_ids
from ..validation import has_values, tracing
from .bag import BagModule, check_int_in, check_mode
from .compositional import CompositionalEmbedding, CompositionalEmbeddingBag, check_norm_args, lookup_repr
from .init import uniform_
from .robe import ROBEEmbeddingBag

__all__ = ["HybridEmbeddingBag", "assemble"]


class HybridEmbeddingBag(BagModule):
    """Hot ids ``x < K`` look up their own row; cold ids go through a compressed scheme; then bags pool.

    Args:
        num_embeddings: number of categories n; ids must lie in ``[0, n)``.
        embedding_dim: size D of each output vector.
        hot_rows: K, the number of hot ids with rows of their own, ``0 <= K <= n``. ``K = 0`` is the
            cold scheme over all ids; ``K = n`` is a full table (and needs ``cold=None``).
        cold: the embedding of the ``n - K`` cold ids: a ``Partition`` of ``n - K`` ids (a
            ``CompositionalEmbeddingBag`` with ``operation`` is built over it) or an already built
            ``CompositionalEmbedding`` / ``CompositionalEmbeddingBag`` / ``ROBEEmbeddingBag`` of ``n - K``
            ids and width D.
        operation: how a ``cold`` partition's tables combine: ``mult``, ``add`` or ``concat``.

    Keyword-only, with ``nn.EmbeddingBag``'s names and defaults:
        max_norm, norm_type, scale_grad_by_freq: as ``nn.EmbeddingBag``, for the hot rows and a
            single-table cold part (full or hashing); a composed or ROBE cold part raises ``ValueError``.
            A cold module built from a partition gets them; a given one must have the same.
        mode: bag pooling, ``sum``, ``mean`` (default) or ``max`` (each id's vector is composed first).
        sparse: sparse gradients for the hot table (and for a cold module built from a partition;
            a given cold module must have the same setting).
        include_last_offset: as ``nn.EmbeddingBag``.
        padding_idx: an id left out of every bag (as ``nn.EmbeddingBag``'s).
        init_std: std of every id's vector at init: the hot rows are drawn with it, and a cold
            module built from a partition composes to it. Default ``1/sqrt(3n)``, a full table's.

    Parameters: ``hot`` ``(K, D)`` (absent when ``K = 0``) and the cold module's tables
    (``cold.weights``, or a ROBE cold part's array ``cold.weight`` ``(size, 1)``). ``weights`` lists them
    all, hot first; ``table_sizes`` gives their rows.

    Shape:
        ``forward``: ``nn.EmbeddingBag``'s (see ``BagModule``). ``embed(input)``: ids ``(*)`` -> ``(*, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        hot_rows: int,
        cold: Partition | CompositionalEmbedding | None = None,
        operation: str = "mult",
        *,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=sparse,
                         include_last_offset=include_last_offset, padding_idx=padding_idx, init_std=init_std)
        check_int_in("hot_rows", hot_rows, num_embeddings)
        check_mode(mode, scale_grad_by_freq)
        check_norm_args(max_norm, norm_type, scale_grad_by_freq, sparse, None)  # a composed cold part refuses them itself
        self.hot_rows = hot_rows
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)
        self.scale_grad_by_freq = scale_grad_by_freq
        self.cold = self._cold_module(cold, operation, device, dtype)  # initialised as it is built
        if hot_rows:
            self.hot = nn.Parameter(torch.empty(hot_rows, embedding_dim, device=device, dtype=dtype))
            uniform_(self.hot, self.init_std)
        else:
            self.register_parameter("hot", None)

    def _cold_module(self, cold, operation, device, dtype) -> CompositionalEmbedding | ROBEEmbeddingBag | None:
        num_cold = self.num_embeddings - self.hot_rows
        if num_cold == 0:
            if cold is not None:
                raise ValueError(f"hot_rows = num_embeddings = {self.num_embeddings} leaves no cold ids: cold must be None")
            return None
        if cold is None:
            raise ValueError(f"cold is needed for the {num_cold} cold ids (num_embeddings - hot_rows)")
        if not isinstance(cold, (Partition, CompositionalEmbedding, ROBEEmbeddingBag)):
            raise TypeError(f"cold must be a Partition, a CompositionalEmbedding(Bag) or a ROBEEmbeddingBag, "
                            f"got {type(cold).__name__}")
        if cold.num_embeddings != num_cold:
            raise ValueError(
                f"cold covers {cold.num_embeddings} ids but there are num_embeddings - hot_rows = "
                f"{self.num_embeddings} - {self.hot_rows} = {num_cold} cold ids"
            )
        if isinstance(cold, Partition):
            return CompositionalEmbeddingBag(
                num_cold, self.embedding_dim, cold, operation=operation, max_norm=self.max_norm,
                norm_type=self.norm_type, scale_grad_by_freq=self.scale_grad_by_freq, mode=self.mode,
                sparse=self.sparse, init_std=self.init_std, device=device, dtype=dtype,
            )
        if cold.embedding_dim != self.embedding_dim:
            raise ValueError(f"cold has embedding_dim {cold.embedding_dim}, the hybrid {self.embedding_dim}")
        if cold.padding_idx is not None or cold.sparse != self.sparse:
            raise ValueError(f"cold must have no padding_idx and sparse={self.sparse}")
        if isinstance(cold, ROBEEmbeddingBag):
            if self.max_norm is not None or self.scale_grad_by_freq:
                raise ValueError("a ROBE cold part has no max_norm or scale_grad_by_freq (its vectors are hashed blocks)")
            return cold
        mine = (self.max_norm, self.norm_type, self.scale_grad_by_freq)
        if (cold.max_norm, cold.norm_type, cold.scale_grad_by_freq) != mine:
            raise ValueError(f"cold must have the hybrid's max_norm={mine[0]}, norm_type={mine[1]}, "
                             f"scale_grad_by_freq={mine[2]}")
        return cold

    def reset_parameters(self) -> None:
        """Cold tables first (as the cold scheme draws them), then the hot rows."""
        if self.cold is not None:
            self.cold.reset_parameters()
        if self.hot is not None:
            uniform_(self.hot, self.init_std)

    @property
    def weights(self) -> list[Tensor]:
        """Every table ``(rows_t, d_t)``: the hot table (when ``K > 0``), then the cold tables."""
        if self.cold is None:
            cold = []
        else:
            cold = [self.cold.weight] if isinstance(self.cold, ROBEEmbeddingBag) else list(self.cold.weights)
        return ([self.hot] if self.hot is not None else []) + cold

    @property
    def table_sizes(self) -> tuple[int, ...]:
        return tuple(w.shape[0] for w in self.weights)

    def split(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Route valid int64 ids ``(*)``: ``(is_hot (*), hot rows (H,), cold ids (C,))``.

        The hot rows are the hot ids themselves, the cold ids are shifted to ``x - K``; both keep
        the order of ``ids`` (row-major).
        """
        is_hot = ids < self.hot_rows
        return is_hot, ids[is_hot], ids[~is_hot] - self.hot_rows

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``, before pooling."""
        check_ids(input, self.num_embeddings)
        ids = input.long()
        if self.cold is None:
            return self._hot_vectors(ids)
        if self.hot is None:
            return self.cold.embed(ids)
        if not tracing() and not has_values(ids):  # meta or fake tensors: shapes only, no data to split on
            hot = F.embedding(ids.clamp(max=self.hot_rows - 1), self.hot, sparse=self.sparse)
            cold = self.cold.embed((ids - self.hot_rows).clamp(min=0))
            return torch.where((ids < self.hot_rows).unsqueeze(-1), hot, cold)
        is_hot, hot_rows, cold_ids = self.split(ids)
        return assemble(is_hot, self._hot_vectors(hot_rows), self.cold.embed(cold_ids))

    def _hot_vectors(self, rows: Tensor) -> Tensor:
        return F.embedding(rows, self.hot, max_norm=self.max_norm, norm_type=self.norm_type,
                           scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, hot_rows={self.hot_rows}, mode={self.mode!r}"
        s += lookup_repr(self)
        if self.include_last_offset:
            s += ", include_last_offset=True"
        return s


def assemble(is_hot: Tensor, hot: Tensor, cold: Tensor) -> Tensor:
    """Per-id vectors ``(*, D)``: ``hot`` ``(H, D)`` where ``is_hot`` ``(*)`` holds, ``cold`` ``(C, D)`` elsewhere.

    Each gets the gradient of its own positions only.
    """
    out = hot.new_empty(*is_hot.shape, hot.shape[-1])
    out[is_hot] = hot
    out[~is_hot] = cold
    return out
