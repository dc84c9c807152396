"""CCE, Clustered Compositional Embeddings ("Clustering the Sketch", Tsang and Ahle, NeurIPS 2023).

An id's D-dim vector is the concatenation of ``c`` columns of width ``D / c``. Column ``i`` has two
tables of ``k`` rows: a clustered table ``M1_i`` read at a stored assignment ``a_i(x)`` and a hashed
table ``M2_i`` read at a universal hash ``h_i(x)``::

    e(x) = concat_i ( M1_i[a_i(x)] + M2_i[h_i(x)] )        i < c

At first ``a_i`` is a random hash too (two hashes: a sketch). Every so often during training the
ids are re-clustered (``recluster``): for each column the current vectors of all n ids are
computed, k-means (a few Lloyd iterations from ``k`` seeded random points, on a deterministic
subsample of ids when n is large) finds ``k`` centroids, every id is assigned to its nearest
centroid, ``M1_i`` becomes the centroids, ``M2_i`` zero, and ``h_i`` is drawn afresh. Right after,
every id's vector is its centroid; then the hashed tables keep learning what the clusters miss.

Storage: the assignment is a per-id buffer ``(n, c)`` of the smallest integer type that holds
``[0, k)`` (``assignment_dtype``: uint8 up to k = 256, int16 up to 32768, else int32; 1, 2 or 4 bytes
per id and column), counted as *index bytes* in the accounting (``index_bytes``). It puts a floor
under CCE's bytes that no k removes: n c bytes at least. The hashes ``h_i`` are universal hash functions
``((a x + b) mod p) mod k`` with coefficients drawn from ``(seed, round)``: 16 bytes per column,
far cheaper than a stored ``(n, c)`` table, so they are computed, not stored. Every buffer (the
assignment, the hash coefficients and the round counter) is in the state dict, so a checkpoint
resumes the same clustering exactly.

The two tables of all columns are stored as two parameters ``(c k, D / c)`` (column ``i`` in rows
``[i k, (i + 1) k)``), so a lookup is two ``F.embedding`` calls: sparse gradients work with every
sparse optimizer of the project (``RowWiseAdagrad``: one accumulator per row of ``D / c``).

The training loop calls ``on_train_step(step, epoch_end)`` (``training.hooks``): the module
re-clusters every ``every_steps`` global steps and/or at each epoch end, at most ``max_rounds``
times; it returns the parameters it re-initialised, whose optimizer state the loop then resets.
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import check_ids
from .bag import BagModule
from .init import factor_std, uniform_
from .robe import PRIME, hash_coefficients, universal_hash

__all__ = ["CCEEmbeddingBag", "assignment_dtype", "cce_index_bytes", "check_cce_args", "kmeans"]

# ids per chunk x k centroids: the distance matrices stay below 2**20 values (4 MiB in float32). Measured
# against 2**22 on one thread, with the one-pass form of ``nearest``: 1.5-1.7x faster for k from 12,730 to
# 101,838 (8 wide), with the same distances bit for bit (tests/embedding/test_cce.py).
_DISTANCE_VALUES = 2**20
# On an accelerator the cost of a small chunk is a kernel launch per chunk (and a Python step of
# ``recluster`` per chunk of ids): with k in the hundreds of thousands, as CCE at Criteo's scale needs, a
# chunk of 2**20 values is one or two points, i.e. millions of launches for the n k distances. Chunks of
# 2**26 values (256 MiB in float32) make each launch a large matmul. Not measured here (no GPU was lent to
# this project's sessions); it only changes how the work is cut, not the distances of a point.
_DISTANCE_VALUES_ACCELERATOR = 2**26


def chunk_rows(num_centroids: int, device: torch.device) -> int:
    """Points per distance matrix against ``num_centroids`` centroids on ``device`` (at least one)."""
    values = _DISTANCE_VALUES if torch.device(device).type == "cpu" else _DISTANCE_VALUES_ACCELERATOR
    return max(1, values // num_centroids)


def assignment_dtype(num_rows: int) -> torch.dtype:
    """The smallest integer dtype that holds cluster indices ``[0, k)``: uint8, int16 or int32."""
    return torch.uint8 if num_rows <= 2**8 else torch.int16 if num_rows <= 2**15 else torch.int32


def cce_index_bytes(num_embeddings: int, num_columns: int, num_rows: int) -> int:
    """Bytes of a ``CCEEmbeddingBag``'s buffers: the ``(n, c)`` assignment (``assignment_dtype(k)``), the
    ``2 c`` int64 hash coefficients and the int64 round counter."""
    itemsize = torch.empty((), dtype=assignment_dtype(num_rows)).element_size()
    return itemsize * num_embeddings * num_columns + 16 * num_columns + 8


def _seed(seed: int, round: int, what: str) -> int:
    """A seed for ``what`` (``assign``, ``hash``, ``kmeans``) in clustering round ``round`` of a module seeded ``seed``."""
    return zlib.crc32(f"cce:{seed}:{round}:{what}".encode())


def nearest(points: Tensor, centroids: Tensor) -> Tensor:
    """Index ``(m,)`` of the nearest centroid ``(k, w)`` of each point ``(m, w)`` (squared Euclidean; ties: the
    lowest index), in chunks of points so that no distance matrix exceeds ``_DISTANCE_VALUES`` values
    (``_DISTANCE_VALUES_ACCELERATOR`` off the CPU: ``chunk_rows``)."""
    chunk = chunk_rows(centroids.shape[0], centroids.device)
    norms = (centroids * centroids).sum(1)
    # ||c||^2 - 2 p.c, written as p @ (-2 c) + ||c||^2: scaling by -2 is exact, so these are the bits of
    # ``norms - 2.0 * part @ centroids.T`` with one pass less over each distance matrix
    minus_twice = (-2.0 * centroids).T
    # Each chunk's labels go straight into one tensor. Kept as a list of small tensors, each allocated
    # right after a distance matrix, they pinned the freed matrices in the C heap: measured, 11.2 GB and
    # 3.4x the time for 60,000 points against k = 45,511 (the methods study's CCE at 2x was killed
    # for memory), against 0.25 GB this way, with the same labels.
    labels = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    for start in range(0, points.shape[0], chunk):
        labels[start : start + chunk] = torch.argmin((points[start : start + chunk] @ minus_twice).add_(norms), dim=1)
    return labels


def kmeans(points: Tensor, k: int, iterations: int, generator: torch.Generator) -> Tensor:
    """``k`` centroids ``(k, w)`` of ``points`` ``(m, w)``, ``m >= k``: ``k`` distinct points drawn with
    ``generator`` (a CPU generator), then ``iterations`` Lloyd steps; an empty cluster keeps its centroid.

    The distances are computed where ``points`` are; the cluster sums on the CPU, in point order (an
    accelerator's ``index_add_`` adds in no fixed order), so the result is the same run after run.
    """
    pick = torch.randperm(points.shape[0], generator=generator)[:k].to(points.device)
    centroids = points[pick].clone()
    on_cpu = points.cpu()
    for _ in range(iterations):
        labels = nearest(points, centroids).cpu()
        sums = torch.zeros(k, points.shape[1], dtype=points.dtype).index_add_(0, labels, on_cpu)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        means = torch.where(counts > 0, sums / counts.clamp(min=1).to(points.dtype), centroids.cpu())
        centroids = means.to(points.device)
    return centroids


class CCEEmbeddingBag(BagModule):
    """CCE embedding bag: ``c`` columns of clustered plus hashed rows, with ``nn.EmbeddingBag``'s forward.

    Args:
        num_embeddings: number of categories n; ids must lie in ``[0, n)`` and n <= 2**31 - 1.
        embedding_dim: size D of each output vector.
        num_rows: k, the rows of each column's two tables, ``1 <= k <= n``.
        num_columns: c, the columns; c divides D. Each column is ``D / c`` wide.
        every_steps: re-cluster when the global training step is a multiple of this (0: never by steps).
        at_epoch_end: re-cluster at the end of every epoch.
        max_rounds: re-cluster at most this many times (0: no limit).
        kmeans_iterations: Lloyd iterations per column and round (>= 1).
        kmeans_sample: k-means runs on this many ids (a seeded random subset; all ids are then
            assigned to the nearest centroid). 0: ``min(n, max(8 k, 65536))``. At least k are used.
        mode: bag pooling, ``sum``, ``mean`` (default, as ``nn.EmbeddingBag``) or ``max``.
        sparse: sparse gradients for both tables.
        include_last_offset: as ``nn.EmbeddingBag``.
        padding_idx: id whose vector is zero (left out of sums and means).
        seed: with the round, seeds the initial assignment, the hashes and the k-means.
        init_std: std of every id's vector at init (the sum of two rows); default ``1/sqrt(3n)``.

    Parameters: ``clustered`` (M1) and ``hashed`` (M2), each ``(c k, D / c)``.
    Buffers: ``assignment`` ``(n, c)`` of ``assignment_dtype(k)`` (values in ``[0, k)``), ``hash_a``, ``hash_b`` ``(c,)``
    int64, ``round`` (0-d int64, the re-clusterings done).

    Shape:
        ``forward``: ``nn.EmbeddingBag``'s (see ``BagModule``). ``embed(input)``: ids ``(*)`` -> ``(*, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_rows: int,
        num_columns: int = 2,
        every_steps: int = 0,
        at_epoch_end: bool = False,
        max_rounds: int = 0,
        kmeans_iterations: int = 4,
        kmeans_sample: int = 0,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        seed: int = 0,
        init_std: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # CCE's own checks first: they also cover n and D, with the messages CCE has always given
        check_cce_args(num_embeddings, embedding_dim, num_rows, num_columns, every_steps, max_rounds,
                       kmeans_iterations, kmeans_sample)
        super().__init__(num_embeddings, embedding_dim, mode=mode, sparse=sparse,
                         include_last_offset=include_last_offset, padding_idx=padding_idx, init_std=init_std)
        self.num_rows = num_rows
        self.num_columns = num_columns
        self.column_dim = embedding_dim // num_columns
        self.every_steps = every_steps
        self.at_epoch_end = bool(at_epoch_end)
        self.max_rounds = max_rounds
        self.kmeans_iterations = kmeans_iterations
        self.kmeans_sample = kmeans_sample or min(num_embeddings, max(8 * num_rows, 65_536))
        self.seed = seed
        shape = (num_columns * num_rows, self.column_dim)
        self.clustered = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.hashed = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.register_buffer("assignment", torch.empty(num_embeddings, num_columns, dtype=assignment_dtype(num_rows),
                                                       device=device))
        self.register_buffer("hash_a", torch.empty(num_columns, dtype=torch.int64, device=device))
        self.register_buffer("hash_b", torch.empty(num_columns, dtype=torch.int64, device=device))
        self.register_buffer("round", torch.zeros((), dtype=torch.int64, device=device))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Both tables uniform (each row ``init_std / sqrt(2)``, so their sum has ``init_std``), round 0:
        the assignment and the hashes are the seed's random hashes."""
        std = factor_std(self.init_std, "add", 2)
        uniform_(self.clustered, std)
        uniform_(self.hashed, std)
        a, b = hash_coefficients(self.num_columns, _seed(self.seed, 0, "assign"), self.assignment.device)
        ids = torch.arange(self.num_embeddings, device=self.assignment.device)
        self.assignment.copy_(universal_hash(ids, a, b, self.num_rows))
        self._set_hash(0)
        self.round.zero_()

    def _set_hash(self, round: int) -> None:
        a, b = hash_coefficients(self.num_columns, _seed(self.seed, round, "hash"), self.hash_a.device)
        self.hash_a.copy_(a)
        self.hash_b.copy_(b)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Rows of the two tables (``c k`` each, of width ``D / c``)."""
        return (self.clustered.shape[0], self.hashed.shape[0])

    @property
    def index_bytes(self) -> int:
        """Bytes of the buffers (assignment, hash coefficients, round): ``cce_index_bytes(n, c, k)``."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _column_offsets(self, device: torch.device) -> Tensor:
        return torch.arange(self.num_columns, device=device) * self.num_rows  # (c,): first row of each column

    def rows(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``(*, c)`` of valid int64 ids ``(*)`` in ``clustered`` and in ``hashed``."""
        offsets = self._column_offsets(ids.device)
        clustered = self.assignment[ids].long() + offsets
        hashed = universal_hash(ids, self.hash_a, self.hash_b, self.num_rows) + offsets
        return clustered, hashed

    def embed(self, input: Tensor) -> Tensor:
        """Vectors ``(*, D)`` of ids ``(*)``, before padding and pooling."""
        check_ids(input, self.num_embeddings)
        clustered, hashed = self.rows(input.long())
        vectors = (F.embedding(clustered, self.clustered, sparse=self.sparse)
                   + F.embedding(hashed, self.hashed, sparse=self.sparse))  # (*, c, D/c)
        return vectors.reshape(*input.shape, self.embedding_dim)

    # ---- clustering ---------------------------------------------------------------------------
    def _column_vectors(self, column: int, ids: Tensor) -> Tensor:
        """Column ``column``'s current vectors ``(m, D / c)`` of int64 ids ``(m,)``."""
        k = self.num_rows
        clustered = self.assignment[ids, column].long() + column * k
        hashed = universal_hash(ids, self.hash_a[column : column + 1], self.hash_b[column : column + 1], k)[:, 0]
        return self.clustered[clustered] + self.hashed[hashed + column * k]

    @torch.no_grad()
    def recluster(self) -> list[nn.Parameter]:
        """One clustering round (see the module doc); returns the re-initialised parameters
        (``clustered`` and ``hashed``), whose optimizer state should be reset.

        Deterministic: the subsample and the k-means starts come from a CPU generator seeded by
        ``(seed, round)``; the new hashes too. Cost: about ``n k D`` multiply-adds per k-means pass
        (``kmeans_iterations`` passes over the sample, one over all ids), e.g. 15 s on one busy CPU
        thread for n = 100,003, k = 12,730, D = 16, c = 2, 2 iterations over all ids.
        """
        next_round = int(self.round) + 1
        generator = torch.Generator().manual_seed(_seed(self.seed, next_round, "kmeans"))
        n, k, device = self.num_embeddings, self.num_rows, self.clustered.device
        sample_size = max(k, min(n, self.kmeans_sample))
        if sample_size < n:
            sample = torch.randperm(n, generator=generator)[:sample_size].sort().values.to(device)
        else:
            sample = torch.arange(n, device=device)
        chunk = chunk_rows(k, device)
        centroids, assignment = [], torch.empty_like(self.assignment)
        for column in range(self.num_columns):
            points = torch.cat([self._column_vectors(column, part) for part in sample.split(chunk)])
            means = kmeans(points, k, self.kmeans_iterations, generator)
            for part in torch.arange(n, device=device).split(chunk):
                assignment[part, column] = nearest(self._column_vectors(column, part), means).to(assignment.dtype)
            centroids.append(means)
        self.clustered.copy_(torch.cat(centroids))
        self.hashed.zero_()
        self.assignment.copy_(assignment)
        self._set_hash(next_round)
        self.round.fill_(next_round)
        return [self.clustered, self.hashed]

    def on_train_step(self, step: int, epoch_end: bool = False) -> list[nn.Parameter]:
        """The training loop's hook (``training.hooks``), after global step ``step`` (``epoch_end``:
        at the end of an epoch, after its last step's call). Re-clusters when due; returns the
        re-initialised parameters (empty when nothing changed). The decision depends on ``step``,
        ``epoch_end`` and the ``round`` buffer only, so a resumed run repeats it exactly."""
        return self.recluster() if self.due(step, epoch_end) else []

    def due(self, step: int, epoch_end: bool = False) -> bool:
        """Whether ``on_train_step(step, epoch_end)`` re-clusters (the loop announces it: it takes a while)."""
        due = self.at_epoch_end if epoch_end else bool(self.every_steps) and step % self.every_steps == 0
        return due and not (self.max_rounds and int(self.round) >= self.max_rounds)

    def extra_repr(self) -> str:
        s = (f"{self.num_embeddings}, {self.embedding_dim}, num_rows={self.num_rows}, "
             f"num_columns={self.num_columns}, mode={self.mode!r}")
        if self.every_steps:
            s += f", every_steps={self.every_steps}"
        if self.at_epoch_end:
            s += ", at_epoch_end=True"
        if self.max_rounds:
            s += f", max_rounds={self.max_rounds}"
        return s + self.bag_repr()


def check_cce_args(num_embeddings: int, embedding_dim: int, num_rows: int, num_columns: int, every_steps: int = 0,
                   max_rounds: int = 0, kmeans_iterations: int = 1, kmeans_sample: int = 0) -> None:
    """Clear errors for a CCE shape or schedule that cannot work."""
    def whole(name: str, value, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim),
                        ("num_rows", num_rows), ("num_columns", num_columns), ("kmeans_iterations", kmeans_iterations)):
        whole(name, value, 1)
    for name, value in (("every_steps", every_steps), ("max_rounds", max_rounds), ("kmeans_sample", kmeans_sample)):
        whole(name, value, 0)
    if num_embeddings > PRIME:
        raise ValueError(f"num_embeddings {num_embeddings} exceeds the hash prime 2**31 - 1")
    if num_rows > num_embeddings:
        raise ValueError(f"num_rows k={num_rows} must be at most num_embeddings n={num_embeddings}")
    if embedding_dim % num_columns:
        raise ValueError(f"num_columns c={num_columns} must divide embedding_dim D={embedding_dim}")
