"""DHE, Deep Hash Embedding: a dense hash encoding of the id, decoded by an MLP. No table.

Kang et al., KDD 2021. Id ``x`` is encoded by k universal hashes to ``[0, m)``
(``h_j(x) = ((a_j x + b_j) mod p) mod m``, ``p = 2**31 - 1``), each turned into a real value:

- uniform: ``u_j = 2 h_j / (m - 1) - 1`` in ``[-1, 1]``;
- gaussian (the paper's best): Box-Muller on pairs, with ``v_j = (h_j + 1) / m`` in ``(0, 1]``:
  ``z_j = sqrt(-2 ln v_j) cos(2 pi v_{j+k/2})``, ``z_{j+k/2} = sqrt(-2 ln v_j) sin(2 pi v_{j+k/2})``
  for ``j < k/2`` (k even).

The encoding ``(k,)`` is fixed (not learned); the decoder is an MLP ``k -> hidden... -> D`` with an
activation (Mish, the paper's choice, or ReLU) and optional batch norm after each hidden layer, and
a linear output layer. Its parameters are the feature's memory: ``k h_1 + h_1 + ... + h_L D + D``
(plus ``2 h`` per batch-norm layer), independent of n.

Gradients are dense (an MLP, no rows to select): ``sparse=True`` is accepted and ignored, so a
collection can mix DHE with sparse-gradient tables under one optimizer that takes both (SGD,
Adagrad, the project's sparse optimizers). The hash coefficients and batch-norm running statistics
are buffers: saved in the state dict, not learned, not counted in the bytes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import check_ids
from .bag import BagModule, check_positive_int, check_positive_ints, per_distinct_id
from .robe import PRIME, hash_coefficients, universal_hash

__all__ = ["DHE_ACTIVATIONS", "DHEEmbeddingBag", "dhe_parameters"]

class Mish(nn.Mish):
    """``x * tanh(softplus(x))``, composed of three ops rather than ``F.mish``'s one kernel: on CPU
    (torch 2.13, one thread, 35,000 x 64 values, forward and backward) the composite measured 1.35x
    the fused kernel's speed, and Mish was 29% of DHE's lookup time (hand-written for that measurement;
    values equal ``F.mish`` to 3e-8 in float32)."""

    def forward(self, input: Tensor) -> Tensor:
        return input * torch.tanh(F.softplus(input))


DHE_ACTIVATIONS = {"mish": Mish, "relu": nn.ReLU}


def dhe_parameters(num_hashes: int, hidden_dims: Sequence[int], embedding_dim: int, batchnorm: bool = False) -> int:
    """Learned values of a DHE decoder ``k -> hidden_dims -> D`` (weights, biases, batch-norm scales and shifts)."""
    dims = (num_hashes, *hidden_dims, embedding_dim)
    linear = sum(i * o + o for i, o in zip(dims[:-1], dims[1:]))
    return linear + (2 * sum(hidden_dims) if batchnorm else 0)


class DHEEmbeddingBag(BagModule):
    """Deep Hash Embedding pooled over bags, with ``nn.EmbeddingBag``'s forward.

    Args:
        num_embeddings: number of categories n; ids must lie in ``[0, n)`` and n <= 2**31 - 1.
        embedding_dim: size D of each output vector.
        num_hashes: k >= 1, the encoding's size (even with ``gaussian``).
        hidden_dims: the decoder's hidden layer sizes (may be empty: one linear layer ``k -> D``).
        buckets: m, the range of each hash (the paper's 10**6).
        gaussian: Box-Muller the uniform values into standard normal ones.
        batchnorm: batch norm after each hidden layer's linear map (training needs batches of 2+ ids).
        activation: ``mish`` or ``relu``.
        mode: bag pooling, ``sum``, ``mean`` (default, as ``nn.EmbeddingBag``) or ``max``.
        sparse: accepted for the common interface and ignored: DHE's gradients are always dense
            (``self.sparse`` is False, so that distributed training reduces them as dense ones).
        include_last_offset: as ``nn.EmbeddingBag``.
        padding_idx: id whose vector is zero (left out of sums and means).
        seed: draws the hash functions (buffers ``hash_a``, ``hash_b``).

    Parameters: ``mlp`` (``nn.Sequential`` of ``Linear``, optional ``BatchNorm1d``, activation).

    Shape:
        ``forward(input, offsets=None, per_sample_weights=None)``: input ``(B, L)``, or 1-D input
        ``(N,)`` with ``offsets`` ``(B,)`` (``(B+1,)`` with ``include_last_offset``) -> ``(B, D)``.
        ``encode(input)``: ids ``(*)`` -> ``(*, k)``; ``embed(input)``: ids ``(*)`` -> ``(*, D)``.
    """

    dense_gradients = True  # no table: its gradients are dense whatever ``sparse`` says

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_hashes: int = 64,
        hidden_dims: Sequence[int] = (64,),
        buckets: int = 10**6,
        gaussian: bool = True,
        batchnorm: bool = False,
        activation: str = "mish",
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # sparse=False whatever was asked: the gradients are dense (DDP reduces them as dense ones)
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=False,
                         include_last_offset=include_last_offset, padding_idx=padding_idx)
        hidden_dims = tuple(hidden_dims)
        check_dhe_args(num_embeddings, num_hashes, hidden_dims, buckets, gaussian)
        if activation not in DHE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(DHE_ACTIVATIONS)}, got {activation!r}")
        self.num_hashes = num_hashes
        self.hidden_dims = hidden_dims
        self.buckets = buckets
        self.gaussian = gaussian
        self.batchnorm = batchnorm
        self.activation = activation
        self.seed = seed
        a, b = hash_coefficients(num_hashes, seed, device)
        self.register_buffer("hash_a", a)
        self.register_buffer("hash_b", b)
        factory = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = []
        dims = (num_hashes, *hidden_dims)
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(fan_in, fan_out, **factory))
            if batchnorm:
                layers.append(nn.BatchNorm1d(fan_out, **factory))
            layers.append(DHE_ACTIVATIONS[activation]())
        layers.append(nn.Linear(dims[-1], embedding_dim, **factory))
        self.mlp = nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        for layer in self.mlp:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    @property
    def table_sizes(self) -> tuple[int, ...]:
        return ()  # no table

    def encode(self, input: Tensor) -> Tensor:
        """The dense hash encoding ``(*, k)`` of ids ``(*)`` (uniform in [-1, 1], or standard normal)."""
        check_ids(input, self.num_embeddings)
        return self._encode(input)

    def _encode(self, input: Tensor) -> Tensor:
        hashes = universal_hash(input, self.hash_a, self.hash_b, self.buckets)  # (*, k) in [0, m)
        dtype = self.mlp[0].weight.dtype
        if not self.gaussian:
            return (hashes.to(dtype) * (2.0 / (self.buckets - 1)) - 1.0) if self.buckets > 1 else hashes.to(dtype)
        # float32 holds every h + 1 <= m exactly up to m = 2**24 (float64 beyond it, or for a float64 MLP)
        work = torch.float64 if dtype == torch.float64 or self.buckets > 2**24 else torch.float32
        v = (hashes.to(work) + 1.0) / self.buckets  # (0, 1]: the log stays finite
        v1, v2 = v.chunk(2, dim=-1)
        radius = torch.sqrt(-2.0 * torch.log(v1))
        angle = 2.0 * math.pi * v2
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).to(dtype)

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``: the MLP applied to every distinct id's encoding at once.

        With batch norm in training the batch statistics are over every occurrence, as the paper
        trains it, so the MLP then runs on each occurrence; otherwise once per distinct id.
        """
        check_ids(input, self.num_embeddings)
        ids = input.reshape(-1)
        if self.batchnorm and self.training:
            rows = self.decode(ids)
        else:
            rows = per_distinct_id(ids.long(), self.decode)
        return rows.view(*input.shape, self.embedding_dim)

    def decode(self, ids: Tensor) -> Tensor:
        """The MLP's vectors ``(N, D)`` of ids ``(N,)`` (already checked)."""
        return self.mlp(self._encode(ids))

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, num_hashes={self.num_hashes}, "
                f"hidden_dims={list(self.hidden_dims)}, buckets={self.buckets}, gaussian={self.gaussian}, "
                f"mode={self.mode!r}")


def check_dhe_args(num_embeddings: int, num_hashes: int, hidden_dims: tuple[int, ...], buckets: int,
                   gaussian: bool) -> None:
    """Clear errors for a DHE shape that cannot work (``num_embeddings`` is a positive int)."""
    check_positive_int("num_hashes k", num_hashes)
    check_positive_int("buckets m", buckets)
    check_positive_ints("hidden_dims", hidden_dims)
    if num_embeddings > PRIME:
        raise ValueError(f"num_embeddings {num_embeddings} exceeds the hash prime 2**31 - 1")
    if gaussian and num_hashes % 2:
        raise ValueError(f"gaussian encoding (Box-Muller) pairs the hashes: num_hashes k={num_hashes} must be even")
