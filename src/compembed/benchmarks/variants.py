"""The embedding designs the benchmark compares, each built from the same cardinalities.

A variant is an embedding module with ``configs`` and ``forward((B, F) ids) -> (B, F, D)``, plus
the optimizer that trains its tables. Every variant trains with sparse gradients and the same
SGD (``SparseSGD``: only the rows in the batch), except ``full-per-feature-torch-sgd``
(stock ``torch.optim.SGD``), ``fbgemm-full`` (FBGEMM's own SGD, fused into its backward) and the
``qr-*adagrad`` variants, trained as ``compembed train --optimizer adagrad`` / ``rowwise_adagrad``
builds its optimizers (``training.build_optimizers``: the tables' optimizer, ``torch.optim.Adagrad``
for the MLPs); ``qr-torch-adagrad`` puts the tables on ``torch.optim.Adagrad`` instead, what the
training loop used before it had the fast sparse optimizers. A variant's ``torch_reference`` is
the same model on ``torch.optim``: the benchmark reports the fast optimizers' speed-up against it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..embedding import EmbeddingCollection, feature_configs
from ..embedding.fused import FusedEmbeddingCollection
from ..embedding.init import default_std, factor_stds, uniform_
from ..optim import SparseSGD

__all__ = ["VARIANTS", "TRAIN_OPTIMIZERS", "Variant", "make_optimizer", "make_model_optimizers", "PooledQREmbeddings", "FBGEMMFullTables", "NoTables", "fbgemm_unavailable", "build_variant"]


@dataclass(frozen=True)
class Variant:
    """How to build one design: its collection class and config options."""

    name: str
    description: str
    build: Callable[[Sequence[int], int, int, int, torch.device], nn.Module]
    optimizer: str = "sparse-sgd"  # or "torch-sgd", "fused" (updated inside backward), or one of TRAIN_OPTIMIZERS
    full_tables: bool = False
    torch_reference: str | None = None  # the variant of the same model trained by torch.optim


# Optimizers built as `compembed train` builds them; "torch-" runs the tables on torch.optim (fast=False).
TRAIN_OPTIMIZERS = ("adagrad", "torch-adagrad", "rowwise_adagrad")


BENCH_LR = 0.01  # the learning rate of every variant (the worker's default ``lr``)


def _collection(cls, per_feature: Callable[[int], dict] | None = None, backend: str = "default", **options):
    """Build ``cls`` over the cardinalities with ``options``, plus ``per_feature(n)``'s options for each feature.

    ``backend`` (``FusedEmbeddingCollection`` only): "default" (the compiled kernel where it
    builds, sparse gradients), "pytorch" (``use_kernel=False``: the pure-PyTorch path), "fused"
    (the default plus ``fuse_sgd(BENCH_LR)``: SGD inside the backward, no sparse gradient).
    """
    def build(cards, dim, threshold, collisions, device):
        configs = feature_configs(cards, embedding_dim=dim, num_collisions=collisions, **options)
        if per_feature is not None:
            configs = [dataclasses.replace(c, **per_feature(c.num_embeddings)) for c in configs]
        module = cls(configs, threshold=threshold, sparse=True, device=device)
        if backend == "pytorch":
            module.use_kernel = False
        elif backend == "fused":
            module.fuse_sgd(BENCH_LR)
        return module
    return build


class PooledQREmbeddings(nn.Module):
    """The common reference design of QR embeddings (as in the DLRM reference code).

    Per feature, one ``nn.EmbeddingBag`` for the quotient and one for the remainder; each bag is
    pooled on its own and the two pooled vectors are multiplied. On one-hot input this is the same
    function as composing each id then pooling; on multi-hot bags it is not (sum of products vs
    product of sums). Features with ``n <= threshold`` get a full ``nn.EmbeddingBag``.

    Shape:
        ``forward((B, F) ids) -> (B, F, D)``.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int, threshold: int, collisions: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.configs = feature_configs(cardinalities, embedding_dim=dim, scheme="full")
        self.collisions = collisions
        self.compressed = [n > threshold for n in cardinalities]
        self.tables = nn.ModuleList()
        for n, compressed in zip(cardinalities, self.compressed):
            sizes = (-(-n // collisions), collisions) if compressed else (n,)
            bags = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum", sparse=True, device=device) for rows in sizes)
            for bag, std in zip(bags, factor_stds(default_std(n), "mult", sizes)):
                uniform_(bag.weight, std)
            self.tables.append(bags)

    def forward(self, ids: Tensor) -> Tensor:
        out = []
        for j, bags in enumerate(self.tables):
            x = ids[:, j : j + 1]
            if self.compressed[j]:
                out.append(bags[0](x // self.collisions) * bags[1](x % self.collisions))
            else:
                out.append(bags[0](x))
        return torch.stack(out, dim=1)


def fbgemm_unavailable() -> str | None:
    """Why FBGEMM's table-batched kernel cannot run here, or None when it can."""
    try:
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (  # noqa: F401
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as err:  # ImportError, or a broken native library (OSError/RuntimeError)
        return (f"fbgemm_gpu not importable ({type(err).__name__}: {err}); install with "
                "`pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0`")
    return None


class FBGEMMFullTables(nn.Module):
    """Full tables in FBGEMM's table-batched embedding kernel, its SGD fused into the backward.

    Shape:
        ``forward((B, F) ids) -> (B, F, D)``.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int, lr: float, device: torch.device) -> None:
        super().__init__()
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        on_gpu = torch.device(device).type == "cuda"
        location = EmbeddingLocation.DEVICE if on_gpu else EmbeddingLocation.HOST
        compute = ComputeDevice.CUDA if on_gpu else ComputeDevice.CPU
        self.configs = feature_configs(cardinalities, embedding_dim=dim, scheme="full")
        self.dim = dim
        self.tables = SplitTableBatchedEmbeddingBagsCodegen(
            [(n, dim, location, compute) for n in cardinalities], optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=lr, device=torch.device(device),
        )

    def forward(self, ids: Tensor) -> Tensor:
        batch, num = ids.shape
        indices = ids.t().reshape(-1)  # feature-major bags of one id
        offsets = torch.arange(indices.numel() + 1, device=ids.device)
        return self.tables(indices, offsets).view(batch, num, self.dim)


class NoTables(nn.Module):
    """No embedding tables: a fixed random ``(B, F, D)`` output with no gradient to any table.

    A DLRM step over it does only the dense work (MLPs, interaction, loss, SGD), the ceiling that
    every embedding scheme's step is measured against.

    Shape:
        ``forward((B, F) ids) -> (B, F, D)``.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.configs = feature_configs(cardinalities, embedding_dim=dim, scheme="full")
        self.register_buffer("vectors", torch.empty(0, len(self.configs), dim, device=device), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        if self.vectors.shape[0] < ids.shape[0]:
            generator = torch.Generator().manual_seed(0)
            self.vectors = torch.randn(ids.shape[0], *self.vectors.shape[1:], generator=generator).to(self.vectors)
        return self.vectors[: ids.shape[0]]


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("full-per-feature", "one nn.EmbeddingBag-style full table per feature (EmbeddingCollection)",
            _collection(EmbeddingCollection, scheme="full"), full_tables=True,
            torch_reference="full-per-feature-torch-sgd"),
    Variant("full-per-feature-torch-sgd", "as full-per-feature, trained by stock torch.optim.SGD",
            _collection(EmbeddingCollection, scheme="full"), optimizer="torch-sgd", full_tables=True),
    Variant("full-batched", "all full tables in one weight with row offsets (FusedEmbeddingCollection, PyTorch path)",
            _collection(FusedEmbeddingCollection, backend="pytorch", scheme="full"), full_tables=True),
    Variant("full-batched-fused", "as full-batched, compiled kernel with SGD fused into its backward",
            _collection(FusedEmbeddingCollection, backend="fused", scheme="full"), full_tables=True),
    Variant("fbgemm-full", "FBGEMM table-batched kernel, full tables, exact SGD fused in backward",
            lambda cards, dim, threshold, collisions, device: FBGEMMFullTables(cards, dim, lr=BENCH_LR, device=device),
            optimizer="fused", full_tables=True),
    Variant("hashing", "hashing trick, n/4 rows per feature, fused",
            _collection(FusedEmbeddingCollection, scheme="hashing")),
    Variant("qr-reference", "straightforward QR: per feature two EmbeddingBags, each pooled, then multiplied",
            lambda cards, dim, threshold, collisions, device: PooledQREmbeddings(cards, dim, threshold, collisions, device)),
    Variant("qr-collection", "QR-mult with the per-feature EmbeddingCollection (generic path)",
            _collection(EmbeddingCollection, scheme="qr", operation="mult")),
    Variant("qr", "QR-mult, fused (FusedEmbeddingCollection; compiled kernel where it builds, sparse gradients)",
            _collection(FusedEmbeddingCollection, scheme="qr", operation="mult")),
    Variant("qr-pytorch", "as qr, the pure-PyTorch path (use_kernel=False; what qr was before the kernel)",
            _collection(FusedEmbeddingCollection, backend="pytorch", scheme="qr", operation="mult")),
    Variant("qr-fused", "as qr, SGD fused into the compiled kernel's backward (fuse_sgd; no sparse gradient)",
            _collection(FusedEmbeddingCollection, backend="fused", scheme="qr", operation="mult")),
    Variant("qr-adagrad", "as qr, Adagrad as `compembed train` builds it (SparseAdagrad tables, torch Adagrad MLPs)",
            _collection(FusedEmbeddingCollection, scheme="qr", operation="mult"), optimizer="adagrad",
            torch_reference="qr-torch-adagrad"),
    Variant("qr-torch-adagrad", "as qr-adagrad, the tables on torch.optim.Adagrad (the training loop before)",
            _collection(FusedEmbeddingCollection, scheme="qr", operation="mult"), optimizer="torch-adagrad"),
    Variant("qr-rowwise-adagrad", "as qr-adagrad, row-wise Adagrad on the tables (`--optimizer rowwise_adagrad`)",
            _collection(FusedEmbeddingCollection, scheme="qr", operation="mult"), optimizer="rowwise_adagrad"),
    Variant("gqr", "generalized QR (k=3 mixed radix), mult, fused",
            _collection(FusedEmbeddingCollection, scheme="gqr", operation="mult", num_partitions=3)),
    Variant("crt", "Chinese remainder (k=3 coprime moduli), mult, fused",
            _collection(FusedEmbeddingCollection, scheme="crt", operation="mult", num_partitions=3)),
    Variant("hybrid", "hybrid: the 1% most frequent ids of a feature own rows, the rest QR-mult, fused",
            _collection(FusedEmbeddingCollection, per_feature=lambda n: dict(hot_rows=n // 100), scheme="hybrid",
                        cold_scheme="qr", operation="mult")),
    Variant("path", "path-based QR (quotient table + per-remainder MLP 16-64-16), per-feature modules",
            _collection(FusedEmbeddingCollection, scheme="path", hidden_dims=(64,))),
    Variant("path-fused", "as path, the small full tables' SGD fused into the compiled kernel (fuse_sgd)",
            _collection(FusedEmbeddingCollection, backend="fused", scheme="path", hidden_dims=(64,))),
    Variant("robe", "ROBE-Z (Z = D): one array per feature of n*D/4 values (hashing's bytes), per-feature modules",
            _collection(FusedEmbeddingCollection, scheme="robe")),
    Variant("hybrid-robe", "planner-robe's layout: the 1% most frequent ids of a feature own rows, the rest a ROBE-Z "
                           "array (Z = D) of (n - K)*D/4 values, per-feature modules",
            _collection(FusedEmbeddingCollection, per_feature=lambda n: dict(hot_rows=n // 100), scheme="hybrid",
                        cold_scheme="robe")),
    Variant("dhe", "DHE, no tables: 64 Gaussian hash values -> MLP 64-64-D per feature (Mish), per-feature modules",
            _collection(FusedEmbeddingCollection, scheme="dhe", dhe_hashes=64, dhe_hidden=(64,))),
    Variant("tt", "TT-Rec: 3 TT cores of rank 8 per feature (dense core gradients), per-feature modules",
            _collection(FusedEmbeddingCollection, scheme="tt", tt_rank=8)),
    Variant("tt-cache", "TT-Rec rank 8 with the 1% most frequent ids cached as full rows",
            _collection(FusedEmbeddingCollection, per_feature=lambda n: dict(tt_cache_rows=n // 100), scheme="tt",
                        tt_rank=8)),
    Variant("md", "mixed dimensions: 4 frequency blocks, power-law widths (alpha 0.3), projected to D",
            _collection(FusedEmbeddingCollection, scheme="md", md_alpha=0.3, md_blocks=4)),
    Variant("cce", "CCE: 2 columns of a clustered and a hashed table, n/8 rows each (hashing's bytes) plus the "
                   "per-id assignment; lookups only (no re-clustering in the timed steps), per-feature modules",
            _collection(FusedEmbeddingCollection, scheme="cce", cce_columns=2)),
    Variant("mlp-only", "no tables: a fixed random (B, F, D) input, the DLRM step's dense work alone",
            lambda cards, dim, threshold, collisions, device: NoTables(cards, dim, device)),
]}


def build_variant(name: str, cardinalities: Sequence[int], dim: int = 16, threshold: int = 200,
                  collisions: int = 4, device: torch.device | str = "cpu") -> nn.Module:
    """The embedding module of variant ``name`` (raises ``KeyError`` naming the known ones)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name].build(cardinalities, dim, threshold, collisions, torch.device(device))


def _train_optimizer(kind: str, lr: float):
    """``(OptimConfig, fast)`` of a ``TRAIN_OPTIMIZERS`` kind, one learning rate for tables and MLPs."""
    from ..training.config import OptimConfig

    return OptimConfig(name=kind.removeprefix("torch-"), lr=lr, embedding_lr=lr), not kind.startswith("torch-")


def _kind(variant: str) -> str:
    return VARIANTS[variant].optimizer if variant in VARIANTS else "sparse-sgd"


def make_optimizer(variant: str, params, lr: float) -> torch.optim.Optimizer | None:
    """The optimizer of the variant's embedding parameters (None when none are left to it)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return None
    kind = _kind(variant)
    if kind in TRAIN_OPTIMIZERS:
        from ..training.optim import table_optimizer

        config, fast = _train_optimizer(kind, lr)
        return table_optimizer(config, params, lr, fast=fast)
    if kind == "torch-sgd":
        return torch.optim.SGD(params, lr=lr)
    return SparseSGD(params, lr=lr)


def make_model_optimizers(variant: str, model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """The optimizers of a whole model over the variant's tables (``model.embeddings``).

    SGD variants: one optimizer over every parameter, as ``make_optimizer``. ``TRAIN_OPTIMIZERS``
    variants: ``training.build_optimizers``, the optimizers ``compembed train`` would use.
    """
    kind = _kind(variant)
    if kind in TRAIN_OPTIMIZERS:
        from ..training.optim import build_optimizers

        config, fast = _train_optimizer(kind, lr)
        return build_optimizers(model, config, fast=fast)
    opt = make_optimizer(variant, model.parameters(), lr)
    return [] if opt is None else [opt]
