"""Path-based compositional embeddings: a base vector transformed by per-class MLPs."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import Partition
from ..validation import has_values
from .bag import BagModule, ParameterCounts, check_mode, check_positive_ints
from .compositional import check_module_args, check_norm_args
from .init import default_std, uniform_

__all__ = ["ClassMLP", "PathEmbedding", "PathEmbeddingBag"]


class ClassMLP(nn.Module):
    """One small MLP per class, applied to each input with the weights of its class.

    Layer ``l`` keeps the weights of all classes as a ``(num_classes, in*out)`` table; a batch looks
    up the classes it contains with one embedding lookup (sparse gradients when ``sparse``) and
    applies them with one batched matmul: no loop over ids or classes.

    Shape:
        ``forward(x, classes)``: x ``(N, dims[0])``, classes ``(N,)`` -> ``(N, dims[-1])``.
    """

    def __init__(
        self,
        num_classes: int,
        dims: Sequence[int],
        sparse: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dims = tuple(dims)
        self.sparse = sparse
        factory = {"device": device, "dtype": dtype}
        pairs = list(zip(self.dims[:-1], self.dims[1:]))
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_classes, i * o, **factory)) for i, o in pairs)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_classes, o, **factory)) for _, o in pairs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He init before each ReLU and 1/fan_in on the last layer keep E[|out|^2] = E[|x|^2]
        # on average, so the composed vector keeps the base table's spread.
        last = len(self.weights) - 1
        for l, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            fan_in = self.dims[l]
            uniform_(weight, math.sqrt((1.0 if l == last else 2.0) / fan_in))
            nn.init.zeros_(bias)

    def forward(self, x: Tensor, classes: Tensor) -> Tensor:
        # Look up only the classes present (sparse gradients touch just those rows). With few of
        # them (QR's remainders), applying every present class's layer to every input and keeping
        # each input's own is cheaper than gathering an (in x out) matrix per input.
        # Compiled, exported or on meta tensors, no shape may depend on the data: every class is
        # "present" (the same values; a sparse gradient then lists the absent classes' rows as
        # zeros), and the branch depends on the class count alone: with no more classes than
        # inputs of the layer, eager takes the first branch for every batch too.
        if has_values(classes):
            present, inverse = torch.unique(classes, return_inverse=True)
        else:
            present, inverse = torch.arange(self.num_classes, device=classes.device), classes
        for l, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            fan_in, fan_out = self.dims[l], self.dims[l + 1]
            matrices = F.embedding(present, weight, sparse=self.sparse).view(-1, fan_in, fan_out)
            biases = F.embedding(present, bias, sparse=self.sparse)
            if (present.numel() if has_values(classes) else self.num_classes) <= fan_in:
                every = torch.einsum("ni,cio->nco", x, matrices)  # (N, classes present, out)
                x = every.gather(1, inverse.view(-1, 1, 1).expand(-1, 1, fan_out)).squeeze(1)
            else:
                # index_select, not [inverse]: a backward by index_add_ instead of a sorting index_put_
                # (1.12x on the DLRM step, docs/performance.md, run L)
                x = torch.bmm(x.unsqueeze(1), matrices.index_select(0, inverse)).squeeze(1)
            x = x + biases.index_select(0, inverse)
            if l < len(self.weights) - 1:
                x = torch.relu(x)
        return x


class PathEmbedding(ParameterCounts, nn.Module):
    """Per-id path-based composition, a drop-in for ``nn.Embedding``.

    ``e(x) = M_{k, p_k(x)}( ... M_{2, p_2(x)}( W[p_1(x)] ))``: the first partition's table gives a
    base vector and each later partition's class picks its own MLP (``hidden_dims`` hidden layers
    with ReLU) that transforms it. With quotient-remainder, the quotient indexes the base table and
    each of the ``m`` remainders owns an MLP.

    Shape:
        input ``(*)`` integer ids -> output ``(*, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        partition: Partition,
        hidden_dims: Sequence[int] = (64,),
        padding_idx: int | None = None,
        sparse: bool = False,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_module_args(num_embeddings, embedding_dim, partition, padding_idx)
        if partition.num_tables < 2:
            raise ValueError("path-based composition needs a partition with at least 2 tables")
        hidden_dims = tuple(hidden_dims)
        check_positive_ints("hidden_dims", hidden_dims)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.partition = partition
        self.hidden_dims = hidden_dims
        self.padding_idx = padding_idx
        self.sparse = sparse
        self.init_std = default_std(num_embeddings) if init_std is None else float(init_std)
        factory = {"device": device, "dtype": dtype}
        sizes = partition.table_sizes
        self.weight = nn.Parameter(torch.empty(sizes[0], embedding_dim, **factory))
        dims = (embedding_dim, *hidden_dims, embedding_dim)
        self.paths = nn.ModuleList(ClassMLP(rows, dims, sparse=sparse, **factory) for rows in sizes[1:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight, self.init_std)
        for path in self.paths:
            path.reset_parameters()

    def embed(self, input: Tensor) -> Tensor:
        """Composed vectors ``(*, D)`` of ids ``(*)``, before any padding or pooling."""
        classes = self.partition(input).reshape(-1, self.partition.num_tables)
        x = F.embedding(classes[:, 0], self.weight, sparse=self.sparse)
        for j, path in enumerate(self.paths, start=1):
            x = path(x, classes[:, j])
        return x.view(*input.shape, self.embedding_dim)

    def forward(self, input: Tensor) -> Tensor:
        vectors = self.embed(input)
        if self.padding_idx is not None:
            vectors = torch.where((input == self.padding_idx).unsqueeze(-1), 0.0, vectors)
        return vectors

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, partition={self.partition!r}, "
            f"hidden_dims={list(self.hidden_dims)}" + (", sparse=True" if self.sparse else "")
        )


class PathEmbeddingBag(PathEmbedding):
    """Path-based composition pooled over bags, with ``nn.EmbeddingBag``'s forward.

    Signature: ``(num_embeddings, embedding_dim, partition, hidden_dims=(64,), *, max_norm=None,
    norm_type=2.0, scale_grad_by_freq=False, mode="mean", sparse=False, include_last_offset=False,
    padding_idx=None, init_std=None, device=None, dtype=None)``: everything after ``hidden_dims``
    keyword-only, with ``nn.EmbeddingBag``'s names and defaults. A path-composed vector is no
    table row, so ``max_norm`` and ``scale_grad_by_freq`` raise ``ValueError``.

    Shape:
        as ``CompositionalEmbeddingBag``: ``(B, L)`` input, or 1-D input with offsets -> ``(B, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        partition: Partition,
        hidden_dims: Sequence[int] = (64,),
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
        check_mode(mode, scale_grad_by_freq)
        super().__init__(
            num_embeddings, embedding_dim, partition, hidden_dims=hidden_dims, padding_idx=padding_idx,
            sparse=sparse, init_std=init_std, device=device, dtype=dtype,
        )
        check_norm_args(max_norm, norm_type, scale_grad_by_freq, sparse,
                        f"a base row transformed by the MLPs of {partition.num_tables - 1} more tables")
        self.max_norm, self.norm_type, self.scale_grad_by_freq = None, float(norm_type), False  # what is allowed
        self.mode = mode
        self.include_last_offset = include_last_offset

    forward = BagModule.forward  # the bag modules' pooling of ``embed`` (PathEmbedding's forward is per id)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"
