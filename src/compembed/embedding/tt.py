"""TT-Rec: an embedding table stored as a tensor train of three cores (Yin et al., MLSys 2021).

The ``n x D`` table is viewed as a tensor of shape ``(n1, n2, n3, d1, d2, d3)`` with
``n1 * n2 * n3 >= n`` and ``d1 * d2 * d3 = D``, and stored as three TT cores of TT-rank R:

- ``G1`` ``(n1, d1, R)``, ``G2`` ``(R, n2, d2, R)``, ``G3`` ``(R, n3, d3)`` in the paper's index
  order; here every core keeps its id digit first (``g1`` ``(n1, d1, R)``, ``g2``
  ``(n2, R, d2, R)``, ``g3`` ``(n3, R, d3)``) so that the slices of a batch are one gather each.

Id ``x`` is written in mixed radix ``(n1, n2, n3)``, most significant digit first:
``x = i1 * n2 * n3 + i2 * n3 + i3``. Its row is the contraction

    e(x)[j1, j2, j3] = sum_{r, s} G1[i1, j1, r] * G2[r, i2, j2, s] * G3[s, i3, j3]

with the output index ``j = j1 * d2 * d3 + j2 * d3 + j3``. The rows of a whole batch are computed
at once: three gathers and two batched matrix products (``torch.bmm``), no loop over ids.

Initialisation (the paper's "sampled Gaussian" TT init): every core is drawn from
``N(0, s**2)``; an entry of the product is a sum of ``R**2`` products of three independent
entries, so its variance is ``R**2 * s**6``. ``s = (sigma / R) ** (1/3)`` gives the product the
target std ``sigma`` (default ``1/sqrt(3n)``, a full table's, see ``init``).

Cache (the paper's cache of hot rows): with frequency-ordered ids (id 0 the most frequent, as
``compembed prepare --id-order frequency`` writes them; the hybrid tables make the same
assumption), the ``cache_rows`` first ids read a full ``(K, D)`` table instead of the train. The
cache starts as the TT rows of those ids (so caching does not change the function at init) and
is trained on its own. The paper fills the cache from the measured most frequent ids during
training; frequency-ordered ids make that a fixed range.

Gradients: with ``sparse=True`` every parameter gets a sparse gradient, so that the sparse
optimizers (lazy Adam/AMSGrad) can train the cores like any table: the cache over the rows used,
each core over the slices the batch uses. The slices are looked up once per distinct digit
(``torch.unique``), so a core's sparse gradient has at most its own size, whatever the batch;
with few slices per core (``~n**(1/3)``) most of them are used by a large batch. The cores are
stored flat, one row per slice (a sparse gradient cannot pass through a view of a parameter):
``core1`` ``(n1, d1 R)``, ``core2`` ``(n2, R d2 R)``, ``core3`` ``(n3, R d3)``; ``g1``, ``g2``, ``g3``
are their views in the shapes above.

Factorisation: ``n`` is split into ``(n1, n2, n3)`` near ``n**(1/3)`` whose product is the smallest
found ``>= n`` (unused ids of the last block are never read). ``D`` is split exactly into the three
most even factors (``16 -> (2, 2, 4)``, ``64 -> (4, 4, 4)``); a prime ``D`` gives ``(1, 1, D)``: a valid
train whose last core carries the whole width (less compression, but correct), so it is accepted.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import check_ids, integer_root
from ..validation import has_values
from .bag import BagModule, check_int_in, check_positive_int, per_distinct_id
from .hybrid import assemble

__all__ = ["TTEmbeddingBag", "tt_row_factors", "tt_dim_factors", "tt_max_rank", "tt_num_parameters", "tt_feature_layout"]


def tt_row_factors(num_embeddings: int) -> tuple[int, int, int]:
    """``(n1, n2, n3)`` near ``n**(1/3)`` with ``n1 * n2 * n3 >= n``, the product the smallest found."""
    n = num_embeddings
    best = None
    base = max(1, integer_root(n, 3))
    for n1 in range(base, base + 3):
        rest = -(-n // n1)
        n2 = max(1, integer_root(rest, 2))
        for m2 in (n2, n2 + 1):
            m3 = -(-rest // m2)
            candidate = (n1 * m2 * m3, max(n1, m2, m3), (n1, m2, m3))
            best = candidate if best is None or candidate < best else best
    return best[2]


def tt_dim_factors(embedding_dim: int) -> tuple[int, int, int]:
    """``(d1, d2, d3)``, ascending, with product exactly ``D``, the most even (smallest sum, then largest factor)."""
    d = embedding_dim
    triples = [(a, b, d // (a * b)) for a in range(1, d + 1) if d % a == 0
               for b in range(a, d // a + 1) if (d // a) % b == 0 and d // (a * b) >= b]
    return min(triples, key=lambda t: (sum(t), t[2]))


def tt_max_rank(row_factors: Sequence[int], dim_factors: Sequence[int]) -> int:
    """The largest useful TT-rank: beyond it a rank exceeds what the table's unfoldings can hold.

    The two bonds have ranks at most ``min(n1 d1, n2 n3 d2 d3)`` and ``min(n1 n2 d1 d2, n3 d3)``.
    """
    (n1, n2, n3), (d1, d2, d3) = row_factors, dim_factors
    return max(1, min(n1 * d1, n2 * n3 * d2 * d3, n1 * n2 * d1 * d2, n3 * d3))


def tt_num_parameters(row_factors: Sequence[int], dim_factors: Sequence[int], rank: int, cache_rows: int = 0) -> int:
    """Parameters of the three cores ``n1 d1 R + n2 R d2 R + n3 R d3`` plus a cache of ``K x D``."""
    (n1, n2, n3), (d1, d2, d3) = row_factors, dim_factors
    return n1 * d1 * rank + n2 * rank * d2 * rank + n3 * rank * d3 + cache_rows * d1 * d2 * d3


def tt_feature_layout(num_embeddings: int, embedding_dim: int, rank: int, cache_rows: int = 0) -> dict:
    """The module options a collection-wide ``rank`` and ``cache_rows`` give one feature: the default
    factors, the rank capped at ``tt_max_rank`` (a small feature cannot use a large rank) and at most
    ``n`` cached rows. ``TTEmbeddingBag(n, D, **layout)`` builds it; ``tt_num_parameters`` counts it."""
    rows, dims = tt_row_factors(num_embeddings), tt_dim_factors(embedding_dim)
    return dict(rank=min(rank, tt_max_rank(rows, dims)), row_factors=rows, dim_factors=dims,
                cache_rows=min(cache_rows, num_embeddings))


class TTEmbeddingBag(BagModule):
    """A TT-Rec table pooled over bags, a drop-in for ``nn.EmbeddingBag``.

    Args:
        num_embeddings: number of categories n; ids must lie in ``[0, n)``.
        embedding_dim: size D of each vector.
        rank: TT-rank R (both bonds), ``1 <= R <= tt_max_rank``.
        row_factors: ``(n1, n2, n3)`` with product ``>= n`` (default ``tt_row_factors(n)``).
        dim_factors: ``(d1, d2, d3)`` with product ``D`` (default ``tt_dim_factors(D)``).
        cache_rows: K: ids ``x < K`` (the most frequent, with frequency-ordered ids) read full rows.
        mode: bag pooling, ``sum``, ``mean`` (default, as ``nn.EmbeddingBag``) or ``max``.
        sparse: sparse gradients for the cache and the cores (see the module doc).
        include_last_offset: as ``nn.EmbeddingBag``.
        init_std: std of every id's vector at init (default ``1/sqrt(3n)``).

    Parameters: ``core1`` ``(n1, d1 R)``, ``core2`` ``(n2, R d2 R)``, ``core3`` ``(n3, R d3)`` (one row
    per slice; ``g1``, ``g2``, ``g3`` view them as ``(n1, d1, R)``, ``(n2, R, d2, R)``, ``(n3, R, d3)``),
    and ``cache`` ``(K, D)`` when ``K > 0``.

    Shape:
        ``forward``: ``nn.EmbeddingBag``'s (see ``BagModule``). ``embed(input)``: ids ``(*)`` -> ``(*, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        row_factors: Sequence[int] | None = None,
        dim_factors: Sequence[int] | None = None,
        cache_rows: int = 0,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=sparse,
                         include_last_offset=include_last_offset, init_std=init_std)
        check_positive_int("rank", rank)
        check_int_in("cache_rows", cache_rows, num_embeddings)
        self.row_factors = _factors("row_factors", row_factors, tt_row_factors(num_embeddings))
        self.dim_factors = _factors("dim_factors", dim_factors, tt_dim_factors(embedding_dim))
        if math.prod(self.row_factors) < num_embeddings:
            raise ValueError(f"row_factors {list(self.row_factors)} multiply to {math.prod(self.row_factors)}, "
                             f"fewer than num_embeddings={num_embeddings}")
        if math.prod(self.dim_factors) != embedding_dim:
            raise ValueError(f"dim_factors {list(self.dim_factors)} multiply to {math.prod(self.dim_factors)}, "
                             f"not embedding_dim={embedding_dim}")
        limit = tt_max_rank(self.row_factors, self.dim_factors)
        if rank > limit:
            raise ValueError(f"TT-rank {rank} does not fit: with row factors {list(self.row_factors)} and dim factors "
                             f"{list(self.dim_factors)} no rank above {limit} adds anything (the unfoldings' rank)")
        self.rank = rank
        self.cache_rows = cache_rows
        (n1, n2, n3), (d1, d2, d3) = self.row_factors, self.dim_factors
        factory = {"device": device, "dtype": dtype}
        self.core1 = nn.Parameter(torch.empty(n1, d1 * rank, **factory))
        self.core2 = nn.Parameter(torch.empty(n2, rank * d2 * rank, **factory))
        self.core3 = nn.Parameter(torch.empty(n3, rank * d3, **factory))
        self.cache = nn.Parameter(torch.empty(cache_rows, embedding_dim, **factory)) if cache_rows else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Gaussian cores whose product has std ``init_std``; the cache starts as the TT rows of its ids."""
        std = (self.init_std / self.rank) ** (1.0 / 3.0)
        for core in (self.core1, self.core2, self.core3):
            core.normal_(0.0, std)
        if self.cache is not None and self.cache.device.type != "meta":
            self.cache.copy_(self.tt_rows(torch.arange(self.cache_rows, device=self.cache.device)))

    @property
    def cores(self) -> list[Tensor]:
        """The flat cores (the parameters), one row per slice."""
        return [self.core1, self.core2, self.core3]

    @property
    def g1(self) -> Tensor:
        """``G1`` as ``(n1, d1, R)``."""
        return self.core1.view(self.row_factors[0], self.dim_factors[0], self.rank)

    @property
    def g2(self) -> Tensor:
        """``G2`` as ``(n2, R, d2, R)``."""
        return self.core2.view(self.row_factors[1], self.rank, self.dim_factors[1], self.rank)

    @property
    def g3(self) -> Tensor:
        """``G3`` as ``(n3, R, d3)``."""
        return self.core3.view(self.row_factors[2], self.rank, self.dim_factors[2])

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Slices of each core ``(n1, n2, n3)``, after the cache's rows ``K`` when there is a cache."""
        return ((self.cache_rows,) if self.cache is not None else ()) + tuple(self.row_factors)

    def digits(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixed-radix digits ``(i1, i2, i3)`` of int64 ids ``(N,)``, most significant first."""
        _, n2, n3 = self.row_factors
        return ids // (n2 * n3), (ids // n3) % n2, ids % n3

    def tt_rows(self, ids: Tensor) -> Tensor:
        """The train's rows ``(N, D)`` of valid int64 ids ``(N,)``: two batched products over the whole batch."""
        d1, d2, d3 = self.dim_factors
        r = self.rank
        n = ids.shape[0]
        i1, i2, i3 = self.digits(ids)
        a = self._slices(self.core1, i1).view(n, d1, r)  # (N, d1, R)
        b = self._slices(self.core2, i2).view(n, r, d2 * r)  # (N, R, d2 R)
        c = self._slices(self.core3, i3).view(n, r, d3)  # (N, R, d3)
        ab = torch.bmm(a, b).view(n, d1 * d2, r)  # (N, d1 d2, R)
        return torch.bmm(ab, c).view(n, d1 * d2 * d3)  # (N, D), j = (j1 d2 + j2) d3 + j3

    def _slices(self, core: Tensor, digits: Tensor) -> Tensor:
        """Rows ``(N, size)`` of a flat core for digits ``(N,)``; with sparse gradients, each distinct slice once."""
        if not self.sparse:
            return F.embedding(digits, core)
        return per_distinct_id(digits, lambda present: F.embedding(present, core, sparse=True))

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``, before pooling."""
        check_ids(input, self.num_embeddings)
        rows = per_distinct_id(input.long().reshape(-1), self._rows)  # a contraction per distinct id, not per occurrence
        return rows.reshape(*input.shape, self.embedding_dim)

    def _rows(self, ids: Tensor) -> Tensor:
        """Rows ``(N, D)`` of valid int64 ids ``(N,)``: the cache's for ``x < K``, the train's for the rest."""
        if self.cache is None:
            rows = self.tt_rows(ids)
        elif not has_values(ids):
            # Compiled, exported, meta or fake: no shape may depend on the data. Every id reads both
            # the cache (clamped into it) and the train and keeps its own; an unused part gets a zero gradient.
            hot = F.embedding(ids.clamp(max=self.cache_rows - 1), self.cache, sparse=self.sparse)
            rows = torch.where((ids < self.cache_rows).unsqueeze(-1), hot, self.tt_rows(ids))
        else:
            cached = ids < self.cache_rows
            hot, cold = ids[cached], ids[~cached]
            if not cold.numel():  # all cached: the cores get no gradient (not even an empty one)
                rows = F.embedding(hot, self.cache, sparse=self.sparse)
            elif not hot.numel():
                rows = self.tt_rows(cold)
            else:
                rows = assemble(cached, F.embedding(hot, self.cache, sparse=self.sparse), self.tt_rows(cold))
        return rows

    def extra_repr(self) -> str:
        s = (f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, row_factors={self.row_factors}, "
             f"dim_factors={self.dim_factors}, mode={self.mode!r}")
        if self.cache is not None:
            s += f", cache_rows={self.cache_rows}"
        return s + self.bag_repr()


def _factors(name: str, given: Sequence[int] | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if given is None:
        return default
    values = tuple(given)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be 3 positive ints (a 3-core tensor train), got {list(values)}")
    return values
