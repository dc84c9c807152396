"""Mixed-dimension embeddings (Ginart et al., "Mixed Dimension Embeddings with Application to
Memory-Efficient Recommendation Systems", ISIT 2021 / arXiv 1909.11810).

The ids are split into blocks by popularity and each block gets its own width: popular ids get
wide vectors, rare ones narrow vectors. Block ``i`` holds a table ``(n_i, d_i)`` and, when
``d_i < D``, a projection ``(d_i, D)`` to the model's width (a block of width D has none). The
vector of id ``x`` in block ``i`` is ``E_i[x - start_i] @ P_i``.

Widths follow the paper's power-law rule with temperature ``alpha``: ``d_i = d_0 * (p_i / p_0) **
alpha``, rounded, at least 1, where ``p_i`` is the mean access probability of an id of block
``i`` and ``d_0`` the base width of the most popular block (``base_dim``, default D). ``alpha = 0``
gives every block width ``d_0``; larger ``alpha`` narrows the rare blocks more. (The paper sets
``d = lambda * p ** alpha`` with ``lambda`` fixed by the top block's width or a budget; the
reference implementation applies it to whole tables with ``p ~ 1/n``. Here it is applied to
blocks of one feature's ids, as the paper's method describes.)

Id order: ids must be in frequency order (id 0 the most frequent), as ``compembed prepare
--id-order frequency`` and ``compembed synth --id-order frequency`` write them (``DatasetInfo.
id_order == "frequency"``), so that a block is a range of ids. The popularities ``p_i`` are taken
from ``popularity`` (per-block mean id probabilities, e.g. from training counts) when given, else
from a Zipf law with exponent 1 over the ranks (id ``x`` has probability ``~ 1/(x + 1)``), the usual
shape of categorical frequencies; the block mean is then ``(H_b - H_a) / (b - a)`` with harmonic
numbers ``H``. Blocks are equal ranges of ids (``num_blocks``) unless ``boundaries`` are given.

Gradients: with ``sparse=True`` every parameter gets a sparse gradient (so that the sparse
optimizers, lazy Adam/AMSGrad, can train it): the tables over the rows used, each projection over
all its ``d_i`` rows when its block is used (it is read as a lookup of all its rows).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import check_ids
from ..validation import has_values
from .bag import BagModule
from .init import uniform_

__all__ = ["MixedDimEmbeddingBag", "md_blocks", "md_dims", "md_num_parameters", "md_feature_layout", "zipf_block_popularity"]


def md_blocks(num_embeddings: int, num_blocks: int = 4, boundaries: Sequence[int] | None = None) -> tuple[int, ...]:
    """Block starts ``(0, s_1, ..., s_{k-1})``: ``boundaries`` (the starts after 0) or ``num_blocks`` equal ranges."""
    n = num_embeddings
    if boundaries is not None:
        cuts = tuple(boundaries)
        if any(isinstance(c, bool) or not isinstance(c, int) for c in cuts) or list(cuts) != sorted(set(cuts)) \
                or (cuts and not 0 < cuts[0] <= cuts[-1] < n):
            raise ValueError(f"boundaries must be strictly increasing ints in (0, num_embeddings={n}) (the first id "
                             f"of each block after the first), got {list(cuts)}")
        return (0, *cuts)
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
    if num_blocks > n:
        raise ValueError(f"num_blocks={num_blocks} does not fit: more blocks than the {n} ids (num_embeddings)")
    return tuple(b * n // num_blocks for b in range(num_blocks))


def zipf_block_popularity(num_embeddings: int, starts: Sequence[int]) -> tuple[float, ...]:
    """Mean probability of an id of each block under Zipf(1) ranks (unnormalised: ``(H_b - H_a) / (b - a)``)."""
    ends = (*starts[1:], num_embeddings)
    edges = torch.tensor([*starts, num_embeddings], dtype=torch.float64)
    harmonic = torch.special.digamma(edges + 1) + 0.5772156649015329  # H_m, exact for integers
    sizes = torch.tensor([b - a for a, b in zip(starts, ends)], dtype=torch.float64)
    return tuple((torch.diff(harmonic) / sizes).tolist())


def md_dims(embedding_dim: int, popularity: Sequence[float], alpha: float, base_dim: int | None = None) -> tuple[int, ...]:
    """The power-law widths ``round(d_0 * (p_i / p_0) ** alpha)``, clipped to ``[1, d_0]``."""
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0 (the power-law temperature), got {alpha!r}")
    base = embedding_dim if base_dim is None else base_dim
    if isinstance(base, bool) or not isinstance(base, int) or not 1 <= base <= embedding_dim:
        raise ValueError(f"base_dim must be an int in [1, embedding_dim={embedding_dim}], got {base!r}")
    top = popularity[0]
    if top <= 0 or any(p < 0 for p in popularity):
        raise ValueError(f"popularity must be non-negative with a positive first block, got {list(popularity)}")
    return tuple(min(base, max(1, round(base * (p / top) ** alpha))) for p in popularity)


def md_num_parameters(num_embeddings: int, embedding_dim: int, starts: Sequence[int], dims: Sequence[int]) -> int:
    """``sum n_i d_i`` over the blocks plus ``d_i D`` for each projected block (``d_i < D``)."""
    sizes = [b - a for a, b in zip(starts, (*starts[1:], num_embeddings))]
    return sum(n * d + (d * embedding_dim if d < embedding_dim else 0) for n, d in zip(sizes, dims))


def md_feature_layout(num_embeddings: int, embedding_dim: int, alpha: float, num_blocks: int = 4,
                      boundaries: Sequence[int] | None = None, base_dim: int | None = None) -> dict:
    """The module options that collection-wide settings give one feature: at most ``n`` equal blocks
    (or ``boundaries``), and their power-law widths under Zipf(1) popularity.
    ``MixedDimEmbeddingBag(n, D, **layout)`` builds it; ``md_num_parameters`` counts it."""
    starts = md_blocks(num_embeddings, min(num_blocks, num_embeddings), boundaries)
    dims = md_dims(embedding_dim, zipf_block_popularity(num_embeddings, starts), alpha, base_dim)
    return dict(boundaries=starts[1:], block_dims=dims)


class MixedDimEmbeddingBag(BagModule):
    """Mixed-dimension embedding pooled over bags, a drop-in for ``nn.EmbeddingBag``.

    Args:
        num_embeddings: number of categories n; ids (in frequency order) must lie in ``[0, n)``.
        embedding_dim: output size D.
        alpha: power-law temperature (>= 0), used when ``block_dims`` is not given.
        num_blocks: equal ranges of ids, when ``boundaries`` is not given.
        boundaries: the first id of each block after the first, strictly increasing in ``(0, n)``.
        base_dim: width ``d_0`` of the most popular block, ``1 <= d_0 <= D`` (default D).
        popularity: mean id probability of each block (default: Zipf(1), see the module doc).
        block_dims: explicit widths, one per block, each in ``[1, D]`` (overrides the power law).
        mode: bag pooling, ``sum``, ``mean`` (default, as ``nn.EmbeddingBag``) or ``max``.
        sparse: sparse gradients for the block tables and the projections (see the module doc).
        include_last_offset: as ``nn.EmbeddingBag``.
        init_std: std of every id's vector at init (default ``1/sqrt(3n)``, a full table's).

    Parameters: ``tables[i]`` ``(n_i, d_i)`` and, for ``d_i < D``, ``projections[str(i)]`` ``(d_i, D)``.

    Shape:
        ``forward``: ``nn.EmbeddingBag``'s (see ``BagModule``). ``embed(input)``: ids ``(*)`` -> ``(*, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        alpha: float = 0.3,
        num_blocks: int = 4,
        boundaries: Sequence[int] | None = None,
        base_dim: int | None = None,
        popularity: Sequence[float] | None = None,
        block_dims: Sequence[int] | None = None,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=sparse,
                         include_last_offset=include_last_offset, init_std=init_std)
        self.starts = md_blocks(num_embeddings, num_blocks, boundaries)
        k = len(self.starts)
        if block_dims is None:
            if popularity is None:
                popularity = zipf_block_popularity(num_embeddings, self.starts)
            elif len(popularity) != k:
                raise ValueError(f"popularity has {len(popularity)} values for {k} blocks")
            block_dims = md_dims(embedding_dim, popularity, alpha, base_dim)
        block_dims = tuple(block_dims)
        if len(block_dims) != k or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= embedding_dim
                                       for d in block_dims):
            raise ValueError(f"block_dims must be {k} ints in [1, embedding_dim={embedding_dim}], got {list(block_dims)}")
        self.block_dims = block_dims
        factory = {"device": device, "dtype": dtype}
        sizes = [b - a for a, b in zip(self.starts, (*self.starts[1:], num_embeddings))]
        self.tables = nn.ParameterList(nn.Parameter(torch.empty(rows, d, **factory)) for rows, d in zip(sizes, block_dims))
        self.projections = nn.ParameterDict(
            {str(i): nn.Parameter(torch.empty(d, embedding_dim, **factory)) for i, d in enumerate(block_dims)
             if d < embedding_dim})
        self.register_buffer("_cuts", torch.tensor(self.starts[1:], dtype=torch.int64, device=device), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Tables with std ``init_std``, projections with std ``1/sqrt(d_i)``: every vector gets std ``init_std``."""
        for i, table in enumerate(self.tables):
            uniform_(table, self.init_std)
            if str(i) in self.projections:
                uniform_(self.projections[str(i)], self.block_dims[i] ** -0.5)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Rows of each block's table."""
        return tuple(t.shape[0] for t in self.tables)

    def block_of(self, ids: Tensor) -> Tensor:
        """Block index ``(*)`` of int64 ids ``(*)``."""
        return torch.bucketize(ids, self._cuts, right=True)

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``, before pooling: one gather (and projection) per block."""
        check_ids(input, self.num_embeddings)
        ids = input.long().reshape(-1).contiguous()
        if len(self.tables) == 1:
            out = self._block(0, ids)
        elif not has_values(ids):
            # Compiled, exported, meta or fake: no shape may depend on the data. Every block looks up
            # every id (clamped into its range) and each id keeps its own block's vector; an unused
            # block gets a zero gradient.
            blocks = self.block_of(ids)
            out = self.tables[0].new_zeros(ids.shape[0], self.embedding_dim)
            for i, table in enumerate(self.tables):
                local = (ids - self.starts[i]).clamp(0, table.shape[0] - 1)
                out = torch.where((blocks == i).unsqueeze(-1), self._block(i, local), out)
        else:
            blocks = self.block_of(ids)
            out = self.tables[0].new_empty(ids.shape[0], self.embedding_dim)
            for i in range(len(self.tables)):  # a loop over the few blocks, not over ids
                member = blocks == i
                local = ids[member] - self.starts[i]
                if local.numel():  # an unused block's parameters get no gradient (not even zeros)
                    out[member] = self._block(i, local)
        return out.reshape(*input.shape, self.embedding_dim)

    def _block(self, i: int, local: Tensor) -> Tensor:
        """``E_i[local] @ P_i`` ``(N_i, D)`` for ids ``local`` ``(N_i,)`` of block ``i`` (shifted to its start)."""
        rows = F.embedding(local, self.tables[i], sparse=self.sparse)
        if str(i) not in self.projections:
            return rows
        projection = self.projections[str(i)]
        if self.sparse:  # all d_i rows as a lookup, so that its gradient is sparse too
            projection = F.embedding(torch.arange(projection.shape[0], device=local.device), projection, sparse=True)
        # in the tables' dtype whatever autocast made of the product (bf16), as the unprojected block is:
        # the blocks' vectors share one output
        return (rows @ projection).to(rows.dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, starts={self.starts}, block_dims={self.block_dims}, "
                f"mode={self.mode!r}" + self.bag_repr())
