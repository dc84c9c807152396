"""Operation-based compositional embeddings, with the hashing trick and full tables as special cases."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import Hashing, Identity, Partition
from .bag import check_mode, check_padding_idx, check_positive_int
from .init import OPERATIONS, default_std, factor_stds, uniform_
from .pooling import check_bag_inputs, pool_bags

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
        max_norm, norm_type: as ``nn.Embedding``: each looked-up row whose ``norm_type``-norm
            exceeds ``max_norm`` is renormalised to ``max_norm`` in place. Only for a single table
            (full or hashing): a composed vector is not a row, so ``ValueError`` otherwise.
        scale_grad_by_freq: as ``nn.Embedding``, scale each row's gradient by the inverse of its
            count in the batch. Only for a single table, ``ValueError`` otherwise.

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
        *,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
    ) -> None:
        super().__init__()
        check_module_args(num_embeddings, embedding_dim, partition, padding_idx)
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        check_norm_args(max_norm, norm_type, scale_grad_by_freq, sparse,
                        None if partition.num_tables == 1 else f"operation={operation!r} of {partition.num_tables} tables")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)
        self.scale_grad_by_freq = scale_grad_by_freq
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.partition = partition
        self.operation = operation
        self.padding_idx = padding_idx
        self.sparse = sparse
        self.init_std = default_std(num_embeddings) if init_std is None else float(init_std)
        self.table_dims = _table_dims(operation, embedding_dim, partition.num_tables, table_dims)
        self._create_tables({"device": device, "dtype": dtype})
        self.reset_parameters()

    def _create_tables(self, factory: dict) -> None:
        """Register the tables (``weights``, one per partition), uninitialised."""
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, dim, **factory))
            for rows, dim in zip(self.partition.table_sizes, self.table_dims)
        )

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
        rows = [
            F.embedding(classes[..., j], w, max_norm=self.max_norm, norm_type=self.norm_type,
                        scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse)
            for j, w in enumerate(self.weights)
        ]
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
        return s + lookup_repr(self)


class CompositionalEmbeddingBag(CompositionalEmbedding):
    """Compositional embedding pooled over bags, a drop-in for ``nn.EmbeddingBag``.

    Each id's vector is composed first, then the bag pools those vectors (sum, mean or max, with
    optional ``per_sample_weights``). Pooling each table first and combining afterwards would be a
    different function for ``mult`` on bags of several ids.

    Signature: ``nn.EmbeddingBag``'s with the scheme's own arguments after ``embedding_dim``:
    ``(num_embeddings, embedding_dim, partition, operation="mult", *, max_norm=None, norm_type=2.0,
    scale_grad_by_freq=False, mode="mean", sparse=False, include_last_offset=False,
    padding_idx=None, table_dims=None, init_std=None, device=None, dtype=None)``. Everything after
    ``operation`` is keyword-only, with ``nn.EmbeddingBag``'s names and defaults (``mode="mean"``).
    ``max_norm`` and ``scale_grad_by_freq`` need a single table (see ``CompositionalEmbedding``);
    ``scale_grad_by_freq`` is refused with ``mode="max"``, as torch does.

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
        *,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        table_dims: Sequence[int] | None = None,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_mode(mode, scale_grad_by_freq)
        super().__init__(
            num_embeddings, embedding_dim, partition, operation=operation, table_dims=table_dims,
            padding_idx=padding_idx, sparse=sparse, init_std=init_std, device=device, dtype=dtype,
            max_norm=max_norm, norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq,
        )
        self.mode = mode
        self.include_last_offset = include_last_offset

    def forward(
        self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        if self._one_lookup():
            # One table: a single fused embedding_bag, as nn.EmbeddingBag does.
            check_bag_inputs(input, offsets, per_sample_weights, self.include_last_offset)
            rows = self.partition(input)[..., 0]
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.to(self.weights[0].dtype)
            return F.embedding_bag(
                rows, self.weights[0], offsets, max_norm=self.max_norm, norm_type=self.norm_type,
                scale_grad_by_freq=self.scale_grad_by_freq, mode=self.mode, sparse=self.sparse,
                per_sample_weights=per_sample_weights, include_last_offset=self.include_last_offset,
                padding_idx=self.padding_idx,
            )
        return pool_bags(
            self.embed(input), input, offsets, per_sample_weights, self.mode,
            include_last_offset=self.include_last_offset, padding_idx=self.padding_idx,
        )

    def _one_lookup(self) -> bool:
        """Whether one ``F.embedding_bag`` over the single table computes this module exactly.

        embedding_bag's padding works on rows, so it fits only where rows are ids (a full table),
        and it has no sparse gradient for ``max``.
        """
        rows_are_ids = self.padding_idx is None or isinstance(self.partition, Identity)
        return len(self.weights) == 1 and rows_are_ids and not (self.sparse and self.mode == "max")

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", mode={self.mode!r}"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        return s


class HashEmbeddingBag(CompositionalEmbeddingBag):
    """The hashing trick: id ``x`` uses row ``x % num_buckets`` of one table (ids collide).

    ``HashEmbeddingBag(num_embeddings, embedding_dim, num_buckets, *, **options)`` with the
    keyword options of ``CompositionalEmbeddingBag`` (``nn.EmbeddingBag``'s, ``mode="mean"``).
    ``max_norm`` and ``scale_grad_by_freq`` act on the shared rows.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, num_buckets: int, **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, Hashing(num_embeddings, num_buckets), **kwargs)


class FullEmbeddingBag(CompositionalEmbeddingBag):
    """The uncompressed baseline, a true drop-in for ``nn.EmbeddingBag``: one row per id.

    Same positional arguments, defaults (``mode="mean"``) and state dict (``{"weight": (n, D)}``)
    as ``nn.EmbeddingBag``, ``from_pretrained`` included; the table is ``weight`` (``weights`` is
    ``[weight]``, the interface the composed modules share). Differences: the default init is
    ``uniform(-1/sqrt(n), 1/sqrt(n))`` (``init_std``, keyword-only) instead of ``N(0, 1)``; ids
    are checked; ``sparse=True`` works with ``mode="max"``. ``padding_idx``'s row is zero at init
    and, as in torch, left out of every bag.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Tensor | None = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init_std: float | None = None,
    ) -> None:
        if _weight is not None and tuple(_weight.shape) != (num_embeddings, embedding_dim):
            raise ValueError(f"_weight must have shape (num_embeddings, embedding_dim) = "
                             f"({num_embeddings}, {embedding_dim}), got {tuple(_weight.shape)}")
        super().__init__(
            num_embeddings, embedding_dim, Identity(num_embeddings), max_norm=max_norm, norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse,
            include_last_offset=include_last_offset, padding_idx=padding_idx, init_std=init_std,
            device="meta" if _weight is not None else device, dtype=dtype,  # a given table is not drawn
        )
        if _weight is not None:
            self.weight = nn.Parameter(_weight)

    def _create_tables(self, factory: dict) -> None:
        self.weight = nn.Parameter(torch.empty(self.num_embeddings, self.embedding_dim, **factory))

    @property
    def weights(self) -> list[Tensor]:
        """``[weight]``: the single table, listed as the composed modules list theirs."""
        return [self.weight]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> FullEmbeddingBag:
        """The bag over the given table ``embeddings`` ``(n, D)`` (used as is, not copied), as
        ``nn.EmbeddingBag.from_pretrained``; ``freeze`` turns its gradient off."""
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must be a 2-D tensor (num_embeddings, embedding_dim), got {shape}")
        rows, dim = embeddings.shape
        bag = cls(rows, dim, max_norm, norm_type, scale_grad_by_freq, mode, sparse, embeddings,
                  include_last_offset, padding_idx)
        bag.weight.requires_grad = not freeze
        return bag

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}" + lookup_repr(self)
        return s + (", include_last_offset=True" if self.include_last_offset else "")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the table was named ``weight`` hold it as ``weights.0``.
        old, new = prefix + "weights.0", prefix + "weight"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_norm_args(
    max_norm: float | None, norm_type: float, scale_grad_by_freq: bool, sparse: bool, composed: str | None
) -> None:
    """Check ``max_norm``, ``norm_type`` and ``scale_grad_by_freq``; ``composed`` describes how a
    vector is composed of several tables (None for a single table), where neither applies."""
    number = (int, float)
    if max_norm is not None and (isinstance(max_norm, bool) or not isinstance(max_norm, number) or not max_norm > 0):
        raise ValueError(f"max_norm must be a positive number or None, got {max_norm!r}")
    if isinstance(norm_type, bool) or not isinstance(norm_type, number) or not norm_type > 0:
        raise ValueError(f"norm_type must be a positive number, got {norm_type!r}")
    if not isinstance(scale_grad_by_freq, bool):
        raise ValueError(f"scale_grad_by_freq must be a bool, got {scale_grad_by_freq!r}")
    if scale_grad_by_freq and sparse:
        raise ValueError("scale_grad_by_freq is not supported with sparse=True (torch has no sparse gradient for it)")
    if composed is None:
        return
    if max_norm is not None:
        raise ValueError(f"max_norm cannot be applied to a composed vector ({composed}): it renormalises looked-up "
                         "rows; use it with full or hashing tables")
    if scale_grad_by_freq:
        raise ValueError(f"scale_grad_by_freq cannot be applied to a composed vector ({composed}): it scales the "
                         "gradient of looked-up rows; use it with full or hashing tables")


def lookup_repr(module: nn.Module) -> str:
    """The ``extra_repr`` tail of the lookup options that differ from their defaults."""
    s = ""
    if module.padding_idx is not None:
        s += f", padding_idx={module.padding_idx}"
    if module.max_norm is not None:
        s += f", max_norm={module.max_norm}, norm_type={module.norm_type}"
    if module.scale_grad_by_freq:
        s += ", scale_grad_by_freq=True"
    if module.sparse:
        s += ", sparse=True"
    return s


def check_module_args(num_embeddings: int, embedding_dim: int, partition: Partition, padding_idx: int | None) -> None:
    """The argument checks every composed embedding module shares."""
    if not isinstance(partition, Partition):
        raise TypeError(f"partition must be a compembed.partitions.Partition, got {type(partition).__name__}")
    if partition.num_embeddings != num_embeddings:
        raise ValueError(f"partition covers {partition.num_embeddings} ids but num_embeddings is {num_embeddings}")
    check_positive_int("embedding_dim", embedding_dim)
    check_padding_idx(padding_idx, num_embeddings)


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
