"""ROBE-Z: every vector of a feature read from one shared array, in hashed blocks of Z values.

Random Offset Block Embedding (Desai et al., MLSys 2022). A feature's parameters are one circular
array ``M`` of ``size`` values, whatever its number of ids. The vector of id ``x`` is ``D / Z``
blocks of ``Z`` contiguous values; block ``i`` starts at ``h_i(x)``::

    e(x)[i*Z + j] = s_i(x) * M[(h_i(x) + j) mod size]        i < D/Z, j < Z

with ``h_i(x) = ((a_i x + b_i) mod p) mod size`` drawn from a universal family (``p = 2**31 - 1``),
wrap-around at the end of the array, and optionally a sign ``s_i(x) = 1 - 2 g_i(x)`` from a second
universal hash ``g_i`` to ``{0, 1}`` (else ``s_i = 1``). ``Z = D`` reads each vector as one block
(the hashing trick on a circular array, best memory locality); ``Z = 1`` hashes every value on its
own. The array can be any size, not a multiple of D: budgets are met to the value.

The array is stored as a ``(size, 1)`` parameter, so a lookup is one ``F.embedding`` over the
``(*, D/Z, Z)`` positions: sparse gradients (one "row" per value) work with every sparse optimizer of
the project (``SparseSGD``, ``SparseAdagrad``, ``RowWiseAdagrad`` (then one accumulator per value),
``SparseAdam``, sparse AMSGrad). The hash coefficients are buffers (saved in the state dict, drawn
from ``seed``); they are not learned and not counted in the bytes, as the partitions' strides are not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import check_ids
from .bag import BagModule, check_positive_int
from .init import uniform_

__all__ = ["PRIME", "ROBEEmbeddingBag", "hash_coefficients", "universal_hash"]

# The Mersenne prime 2**31 - 1: ids below it, a < p and x < p keep a*x + b within int64.
PRIME = 2**31 - 1


def hash_coefficients(count: int, seed: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``count`` universal hash functions ``(a, b)``, ``a`` in ``[1, p)`` and ``b`` in ``[0, p)``, each ``(count,)``
    int64, drawn from ``seed`` alone (not from torch's global generator)."""
    generator = torch.Generator().manual_seed(int(seed))
    a = torch.randint(1, PRIME, (count,), generator=generator, dtype=torch.int64)
    b = torch.randint(0, PRIME, (count,), generator=generator, dtype=torch.int64)
    return a.to(device), b.to(device)


def universal_hash(ids: Tensor, a: Tensor, b: Tensor, buckets: int) -> Tensor:
    """``((a * x + b) mod p) mod buckets`` for every id and every function: ids ``(*)`` -> ``(*, len(a))``."""
    return ((ids.long().unsqueeze(-1) * a + b) % PRIME) % buckets


class ROBEEmbeddingBag(BagModule):
    """ROBE-Z embedding bag over one shared array, with ``nn.EmbeddingBag``'s forward.

    Args:
        num_embeddings: number of categories n; ids must lie in ``[0, n)`` and n <= 2**31 - 1.
        embedding_dim: size D of each output vector.
        size: length of the shared array (the learned values), at least ``block_size``.
        block_size: Z, the contiguous values per hashed block; it divides D. Default D (one block).
        signs: multiply each block by a hashed sign in ``{-1, +1}``.
        mode: bag pooling, ``sum``, ``mean`` (default, as ``nn.EmbeddingBag``) or ``max``.
        sparse: sparse gradient for the array.
        include_last_offset: as ``nn.EmbeddingBag``.
        padding_idx: id whose vector is zero (left out of sums and means); it gets no gradient.
        seed: draws the hash functions (buffers ``hash_a``, ``hash_b``, and ``sign_a``, ``sign_b``).
        init_std: std of the array's values at init; default ``1/sqrt(3n)``, a full table's.

    Parameters: ``weight`` ``(size, 1)``.

    Shape:
        ``forward(input, offsets=None, per_sample_weights=None)``: input ``(B, L)``, or 1-D input
        ``(N,)`` with ``offsets`` ``(B,)`` (``(B+1,)`` with ``include_last_offset``) -> ``(B, D)``.
        ``embed(input)``: ids ``(*)`` -> ``(*, D)``; ``positions(input)``: ids ``(*)`` -> ``(*, D/Z, Z)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        size: int,
        block_size: int | None = None,
        signs: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        seed: int = 0,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=sparse,
                         include_last_offset=include_last_offset, padding_idx=padding_idx, init_std=init_std)
        block_size = embedding_dim if block_size is None else block_size
        check_robe_args(num_embeddings, embedding_dim, size, block_size)
        self.size = size
        self.block_size = block_size
        self.num_blocks = embedding_dim // block_size
        self.signs = signs
        self.seed = seed
        self.weight = nn.Parameter(torch.empty(size, 1, device=device, dtype=dtype))
        a, b = hash_coefficients(2 * self.num_blocks if signs else self.num_blocks, seed, device)
        self.register_buffer("hash_a", a[: self.num_blocks])
        self.register_buffer("hash_b", b[: self.num_blocks])
        if signs:
            self.register_buffer("sign_a", a[self.num_blocks :])
            self.register_buffer("sign_b", b[self.num_blocks :])
        else:  # plain attributes: torch.export miscounts buffers registered as None
            self.sign_a = self.sign_b = None
        self.register_buffer("block", torch.arange(block_size, device=device), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight, self.init_std)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """The one array's length (in values, not rows of D)."""
        return (self.size,)

    def positions(self, input: Tensor) -> Tensor:
        """Array positions ``(*, D/Z, Z)`` of the values of ids ``(*)``: block i starts at ``h_i(x)``."""
        check_ids(input, self.num_embeddings)
        starts = universal_hash(input, self.hash_a, self.hash_b, self.size)  # (*, D/Z)
        return (starts.unsqueeze(-1) + self.block) % self.size  # wrap around the end of the array

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``, before padding and pooling."""
        positions = self.positions(input)
        if self.sparse or positions.device.type != "cpu":
            values = F.embedding(positions, self.weight, sparse=self.sparse)  # (*, D/Z, Z, 1)
        else:  # dense on the CPU: index_select's backward (a serial index_add_) gives the same gradient as
            # embedding's for rows of one value, measured 8x faster (n = 500,000, size = 2,000,000, 16,384 ids)
            values = self.weight.view(-1).index_select(0, positions.reshape(-1)).view(*positions.shape, 1)
        if self.signs:
            sign = 1 - 2 * universal_hash(input, self.sign_a, self.sign_b, 2)  # (*, D/Z)
            values = values * sign.to(values.dtype)[..., None, None]
        return values.reshape(*input.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        s = (f"{self.num_embeddings}, {self.embedding_dim}, size={self.size}, block_size={self.block_size}, "
             f"mode={self.mode!r}")
        if self.signs:
            s += ", signs=True"
        return s + self.bag_repr()


def check_robe_args(num_embeddings: int, embedding_dim: int, size: int, block_size: int) -> None:
    """Clear errors for a ROBE-Z shape that cannot work (``num_embeddings`` and ``embedding_dim`` are positive ints)."""
    check_positive_int("size", size)
    check_positive_int("block_size", block_size)
    if num_embeddings > PRIME:
        raise ValueError(f"num_embeddings {num_embeddings} exceeds the hash prime 2**31 - 1")
    if embedding_dim % block_size:
        raise ValueError(f"block_size Z={block_size} must divide embedding_dim D={embedding_dim}")
    if size < block_size:
        raise ValueError(f"the array of size={size} values is smaller than one block (block_size Z={block_size})")
