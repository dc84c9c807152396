"""What the bag modules share: their common arguments' checks, and ``nn.EmbeddingBag``'s forward over ``embed``.

A scheme whose module computes a vector per id and pools them (ROBE-Z, DHE, TT-Rec, mixed
dimensions, hybrid, and new ones) subclasses ``BagModule``; the checks below also serve the
modules with a per-id parent (compositional, path-based).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..validation import has_values
from .init import default_std
from .pooling import MODES, pool_bags

__all__ = ["BagModule", "ParameterCounts", "per_distinct_id", "check_mode", "check_padding_idx", "check_positive_int", "check_positive_ints", "check_int_in"]


class ParameterCounts:
    """The counts an embedding module (with ``num_embeddings`` and ``embedding_dim``) reports."""

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def full_table_parameters(self) -> int:
        """Parameters of the uncompressed ``n x D`` table this module replaces."""
        return self.num_embeddings * self.embedding_dim


class BagModule(ParameterCounts, nn.Module):
    """Base of a bag module: a per-id ``embed`` pooled over bags, a drop-in for ``nn.EmbeddingBag``.

    A subclass (one scheme) does three things:

    - ``__init__`` calls ``super().__init__(num_embeddings, embedding_dim, mode=..., sparse=...,
      include_last_offset=..., padding_idx=..., init_std=...)`` first (leaving out what the scheme
      does not take), then checks its own arguments (``check_positive_int``, ``check_int_in``) and
      creates its parameters;
    - ``embed(input)``: ids ``(*)`` -> vectors ``(*, D)``, checking the ids (``partitions.check_ids``);
    - ``reset_parameters()``, ``table_sizes`` and ``extra_repr()`` as the scheme needs (ending
      with ``bag_repr()``).

    The base checks ``num_embeddings`` and ``embedding_dim`` (positive ints), ``mode`` and
    ``padding_idx`` (``ValueError`` naming the argument and its value) and keeps them, with
    ``sparse``, ``include_last_offset`` and ``init_std`` (default ``1/sqrt(3n)``, a full table's),
    as attributes. It gives ``forward``, ``num_parameters`` (every parameter) and
    ``full_table_parameters``.

    Shape:
        ``forward(input, offsets=None, per_sample_weights=None)`` takes what ``nn.EmbeddingBag``
        takes: input ``(B, L)``, or 1-D input ``(N,)`` with ``offsets`` ``(B,)`` (``(B+1,)`` with
        ``include_last_offset``). Output ``(B, D)``; ids equal to ``padding_idx`` are left out of
        every bag.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_embeddings", num_embeddings)
        check_positive_int("embedding_dim", embedding_dim)
        check_mode(mode)
        check_padding_idx(padding_idx, num_embeddings)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.mode = mode
        self.sparse = sparse
        self.include_last_offset = include_last_offset
        self.padding_idx = padding_idx
        self.init_std = default_std(num_embeddings) if init_std is None else float(init_std)

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``, before pooling (each scheme defines it)."""
        raise NotImplementedError

    def forward(
        self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        return pool_bags(
            self.embed(input), input, offsets, per_sample_weights, self.mode,
            include_last_offset=self.include_last_offset, padding_idx=self.padding_idx,
        )

    def bag_repr(self) -> str:
        """The ``extra_repr`` tail of the bag options that differ from their defaults."""
        s = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        if self.sparse:
            s += ", sparse=True"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        return s


def per_distinct_id(ids: Tensor, rows_of) -> Tensor:
    """``rows_of(ids)`` ``(N, D)`` for int64 ids ``(N,)``, computed once per distinct id and gathered.

    For a scheme whose vector is a computation (an MLP, a tensor-train contraction) rather than a
    row read, a batch repeats ids (its hot ones; every id of a small feature) and each repeat would
    recompute the same vector. The result and the gradients equal those of ``rows_of(ids)`` up to
    float rounding (the repeats' gradients are summed before, not after, the computation's backward).
    Only where the ids have values: compiled or exported graphs keep the direct, shape-static path.
    """
    if not has_values(ids) or ids.numel() < 2:
        return rows_of(ids)
    distinct, inverse = torch.unique(ids, return_inverse=True)
    if distinct.numel() == ids.numel():
        return rows_of(ids)
    # index_select: its backward is index_add_, not indexing's sorting index_put_ (run L in
    # docs/performance.md: TT-Rec's DLRM step 1.13x); as fast as F.embedding's backward here
    return rows_of(distinct).index_select(0, inverse)


def check_mode(mode: str, scale_grad_by_freq: bool = False) -> None:
    """The pooling checks every bag module shares."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scale_grad_by_freq and mode == "max":
        raise ValueError("scale_grad_by_freq is not supported with mode='max' (nor is it in nn.EmbeddingBag)")


def check_padding_idx(padding_idx: int | None, num_embeddings: int) -> None:
    if padding_idx is not None and not 0 <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be in [0, {num_embeddings}), got {padding_idx}")


def check_positive_int(name: str, value: object) -> None:
    """``ValueError`` unless ``value`` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_positive_ints(name: str, values: tuple[int, ...]) -> None:
    """``ValueError`` unless every one of ``values`` (e.g. hidden layer sizes) is an int >= 1."""
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be positive ints, got {list(values)}")


def check_int_in(name: str, value: object, num_embeddings: int) -> None:
    """``ValueError`` unless ``value`` is an int in ``[0, num_embeddings]`` (e.g. a number of hot or cached ids)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= num_embeddings:
        raise ValueError(f"{name} must be an int in [0, num_embeddings={num_embeddings}], got {value!r}")
