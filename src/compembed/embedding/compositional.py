"""Operation-based compositional embeddings, with the hashing trick and full tables as special cases."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import Hashing, Identity, Partition
from .init import OPERATIONS, default_std, factor_stds, uniform_
from .pooling import MODES, check_bag_inputs, pool_bags

__all__ = [
    "CompositionalEmbedding",
    "CompositionalEmbeddingBag",
    "HashEmbeddingBag",
    "FullEmbeddingBag",
]


class CompositionalEmbedding(nn.Module):
    """Per-id compositional embedding, a drop-in for ``nn.Embedding``.

    The vector of id ``x`` combines one row of each partition's table:
    ``e(x) = op(W_1[p_1(x)], ..., W_k[p_k(x)])`` with ``op`` one of ``concat``, ``add``, ``mult``.
    With a complementary partition every id gets its own vector for ``sum(|P_j|)`` rows instead of n.

    Args:
        num_embeddings: number of categories n; ids must lie in ``[0, n)``.
        embedding_dim: size D of each output vector.
        partition: the partition scheme; its ``num_embeddings`` must equal ``num_embeddings``.
        operation: ``"mult"`` (default, the paper's best), ``"add"`` or ``"concat"``.
        table_dims: with ``concat``, the width of each table (summing to D); default an even split.
        padding_idx: id whose vector is zero and receives no gradient.
        sparse: sparse gradients for every table.
        init_std: std of the combined vector at init; default ``1/sqrt(3n)`` (see ``init``).

    Shape:
        input ``(*)`` integer ids -> output ``(*, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        partition: Partition,
        operation: str = "mult",
        table_dims: Sequence[int] | None = None,
        padding_idx: int | None = None,
        sparse: bool = False,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_module_args(num_embeddings, embedding_dim, partition, padding_idx)
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.partition = partition
        self.operation = operation
        self.padding_idx = padding_idx
        self.sparse = sparse
        self.init_std = default_std(num_embeddings) if init_std is None else float(init_std)
        self.table_dims = _table_dims(operation, embedding_dim, partition.num_tables, table_dims)
        factory = {"device": device, "dtype": dtype}
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, dim, **factory))
            for rows, dim in zip(partition.table_sizes, self.table_dims)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight, std in zip(self.weights, factor_stds(self.init_std, self.operation, self.partition.table_sizes)):
            uniform_(weight, std)

    @property
    def num_parameters(self) -> int:
        return sum(w.numel() for w in self.weights)

    @property
    def full_table_parameters(self) -> int:
        """Parameters of the uncompressed ``n x D`` table this module replaces."""
        return self.num_embeddings * self.embedding_dim

    def embed(self, input: Tensor) -> Tensor:
        """Combined vectors ``(*, D)`` of ids ``(*)``, before any padding or pooling."""
        classes = self.partition(input)
        rows = [F.embedding(classes[..., j], w, sparse=self.sparse) for j, w in enumerate(self.weights)]
        return combine(rows, self.operation)

    def forward(self, input: Tensor) -> Tensor:
        vectors = self.embed(input)
        if self.padding_idx is not None:
            vectors = torch.where((input == self.padding_idx).unsqueeze(-1), 0.0, vectors)
        return vectors

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, partition={self.partition!r}, operation={self.operation!r}"
        if self.operation == "concat":
            s += f", table_dims={self.table_dims}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.sparse:
            s += ", sparse=True"
        return s


class CompositionalEmbeddingBag(CompositionalEmbedding):
    """Compositional embedding pooled over bags, a drop-in for ``nn.EmbeddingBag``.

    Each id's vector is composed first, then the bag pools those vectors (sum, mean or max, with
    optional ``per_sample_weights``). Pooling each table first and combining afterwards would be a
    different function for ``mult`` on bags of several ids.

    Shape:
        ``forward(input, offsets=None, per_sample_weights=None)`` takes what ``nn.EmbeddingBag``
        takes: input ``(B, L)``, or 1-D input ``(N,)`` with ``offsets`` ``(B,)`` (``(B+1,)`` with
        ``include_last_offset``). Output ``(B, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        partition: Partition,
        operation: str = "mult",
        mode: str = "sum",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        table_dims: Sequence[int] | None = None,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(
            num_embeddings, embedding_dim, partition, operation=operation, table_dims=table_dims,
            padding_idx=padding_idx, sparse=sparse, init_std=init_std, device=device, dtype=dtype,
        )
        self.mode = mode
        self.include_last_offset = include_last_offset

    def forward(
        self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        if len(self.weights) == 1 and self._row_is_id_safe():
            # One table: a single fused embedding_bag, as nn.EmbeddingBag does.
            check_bag_inputs(input, offsets, per_sample_weights, self.include_last_offset)
            rows = self.partition(input)[..., 0]
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.to(self.weights[0].dtype)
            return F.embedding_bag(
                rows, self.weights[0], offsets, mode=self.mode, sparse=self.sparse,
                per_sample_weights=per_sample_weights, include_last_offset=self.include_last_offset,
            )
        return pool_bags(
            self.embed(input), input, offsets, per_sample_weights, self.mode,
            include_last_offset=self.include_last_offset, padding_idx=self.padding_idx,
        )

    def _row_is_id_safe(self) -> bool:
        # embedding_bag's own padding works on rows, not ids, and it has no sparse max gradient.
        return self.padding_idx is None and not (self.sparse and self.mode == "max")

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", mode={self.mode!r}"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        return s


class HashEmbeddingBag(CompositionalEmbeddingBag):
    """The hashing trick: id ``x`` uses row ``x % num_buckets`` of one table (ids collide)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, num_buckets: int, **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, Hashing(num_embeddings, num_buckets), **kwargs)


class FullEmbeddingBag(CompositionalEmbeddingBag):
    """The uncompressed baseline: one row per id, with the same interface as the compressed modules."""

    def __init__(self, num_embeddings: int, embedding_dim: int, **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, Identity(num_embeddings), **kwargs)


def check_module_args(num_embeddings: int, embedding_dim: int, partition: Partition, padding_idx: int | None) -> None:
    """The argument checks every composed embedding module shares."""
    if not isinstance(partition, Partition):
        raise TypeError(f"partition must be a compembed.partitions.Partition, got {type(partition).__name__}")
    if partition.num_embeddings != num_embeddings:
        raise ValueError(f"partition covers {partition.num_embeddings} ids but num_embeddings is {num_embeddings}")
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
    if padding_idx is not None and not 0 <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be in [0, {num_embeddings}), got {padding_idx}")


def combine(rows: Sequence[Tensor], operation: str) -> Tensor:
    """Combine the k looked-up rows ``(*, d_j)`` of each id into one vector ``(*, D)``."""
    if len(rows) == 1:
        return rows[0]
    if operation == "concat":
        return torch.cat(list(rows), dim=-1)
    out = rows[0]
    for row in rows[1:]:
        out = out + row if operation == "add" else out * row
    return out


def _table_dims(operation: str, dim: int, k: int, table_dims: Sequence[int] | None) -> tuple[int, ...]:
    if operation != "concat":
        if table_dims is not None and any(d != dim for d in table_dims):
            raise ValueError(f"table_dims only applies to concat; with {operation!r} every table has dim {dim}")
        return (dim,) * k
    if table_dims is None:
        if dim < k:
            raise ValueError(f"concat splits embedding_dim={dim} across {k} tables: it needs dim >= {k}")
        base, extra = divmod(dim, k)
        return tuple(base + (1 if j < extra else 0) for j in range(k))
    table_dims = tuple(int(d) for d in table_dims)
    if len(table_dims) != k or any(d < 1 for d in table_dims) or sum(table_dims) != dim:
        raise ValueError(
            f"table_dims {list(table_dims)} must give {k} positive widths summing to embedding_dim={dim}"
        )
    return table_dims
