"""Row-wise int8 tables for inference: every embedding table, composed tables included.

Each table ``W`` ``(rows, d)`` is stored as torch's byte-rowwise format
(``torch.ops.quantized.embedding_bag_byte_prepack``, FBGEMM's layout): per row, ``d`` uint8 codes
followed by an fp32 scale and an fp32 bias (the row's minimum), so ``rows * (d + 8)`` bytes instead of
``rows * d * 4``. A row reads back as ``code * scale + bias``; the error per value is at most
``scale / 2 = (max - min) / 510`` of its row.

Lookups use ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` over bags of one row (a
gather with the dequantisation fused in), torch's own CPU kernel. It was chosen over a plain
``codes[rows] * scale + bias`` because it runs on CPU and ``torch.export`` traces it (it has a
fake-tensor kernel), and it never makes a float copy of a table. It has no CUDA kernel in torch
itself (FBGEMM-GPU provides one), so int8 models run on CPU.

``quantize_int8(model)`` returns a copy of a trained DLRM or DCN whose embedding collection is a
per-feature ``EmbeddingCollection`` of int8 modules, whichever collection (fused or not) it was
trained with; the path scheme's base table is quantised and its per-class MLPs stay float. The
model's own layers (MLPs, cross network) stay float as well.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..embedding import EmbeddingCollection
from ..embedding.bag import BagModule
from ..embedding.compositional import CompositionalEmbeddingBag, combine
from ..embedding.hybrid import HybridEmbeddingBag
from ..embedding.path import PathEmbeddingBag
from ..partitions import check_ids

__all__ = ["Int8Table", "Int8CompositionalEmbeddingBag", "Int8HybridEmbeddingBag", "Int8PathEmbeddingBag",
           "quantize_int8", "quantize_collection", "embedding_bytes"]

BYTES_PER_ROW_EXTRA = 8  # fp32 scale + fp32 bias


class Int8Table(nn.Module):
    """One table ``(rows, d)`` in int8 row-wise form; ``forward(rows (*)) -> (*, d)`` float32 rows.

    Buffer ``packed``: uint8 ``(rows, d + 8)``, each row's codes then its fp32 scale and bias.
    """

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"a table is 2-D (rows, d), got shape {tuple(weight.shape)}")
        w = weight.detach().to("cpu", torch.float32).contiguous()
        self.register_buffer("packed", torch.ops.quantized.embedding_bag_byte_prepack(w))
        self.rows, self.dim = w.shape

    def forward(self, rows: Tensor) -> Tensor:
        flat = rows.reshape(-1).contiguous()  # the kernel takes contiguous ids only
        offsets = torch.arange(flat.numel(), device=flat.device)  # bags of one row
        out = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            self.packed, flat, offsets, False, 0, False, None, None, False)
        return out.view(*rows.shape, self.dim)

    def dequantized(self) -> Tensor:
        """The float32 table ``(rows, d)`` the codes stand for."""
        return self(torch.arange(self.rows))

    @property
    def num_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def extra_repr(self) -> str:
        return f"{self.rows}, {self.dim}, int8 row-wise ({self.num_bytes:,} bytes)"


class Int8CompositionalEmbeddingBag(nn.Module):
    """``CompositionalEmbeddingBag`` (full, hashing, qr, gqr, crt) with int8 tables: the same partition,
    operation and pooling, each id's vector composed from dequantised rows, then pooled.

    Shape: as ``CompositionalEmbeddingBag``; ``embed(ids (*)) -> (*, D)``.
    """

    def __init__(self, module: CompositionalEmbeddingBag, weights: list[Tensor]) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = module.num_embeddings, module.embedding_dim
        self.partition, self.operation, self.mode = module.partition, module.operation, module.mode
        self.include_last_offset, self.padding_idx = module.include_last_offset, module.padding_idx
        self.tables = nn.ModuleList(Int8Table(w) for w in weights)

    def embed(self, input: Tensor) -> Tensor:
        classes = self.partition(input)  # checks the ids
        return combine([table(classes[..., j]) for j, table in enumerate(self.tables)], self.operation)

    forward = BagModule.forward  # pools ``embed`` as every bag module does (padding_idx included)


class Int8HybridEmbeddingBag(nn.Module):
    """``HybridEmbeddingBag`` with an int8 hot table and int8 cold tables.

    Every id reads both the hot table and the cold scheme (an id outside one's range reads its row 0),
    and ``x < K`` selects: no data-dependent shapes, so it exports as one graph.
    """

    def __init__(self, module: HybridEmbeddingBag, weights: list[Tensor]) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.hot_rows = module.num_embeddings, module.embedding_dim, module.hot_rows
        self.mode, self.include_last_offset = module.mode, module.include_last_offset
        self.padding_idx = module.padding_idx
        first = 1 if module.hot is not None else 0
        self.hot = Int8Table(weights[0]) if first else None
        self.cold = Int8CompositionalEmbeddingBag(module.cold, weights[first:]) if module.cold is not None else None

    def embed(self, input: Tensor) -> Tensor:
        check_ids(input, self.num_embeddings)
        ids = input.long()
        if self.cold is None:
            return self.hot(ids)
        if self.hot is None:
            return self.cold.embed(ids)
        is_hot = ids < self.hot_rows
        hot = self.hot(torch.where(is_hot, ids, 0))
        cold = self.cold.embed(torch.where(is_hot, 0, ids - self.hot_rows))
        return torch.where(is_hot.unsqueeze(-1), hot, cold)

    forward = BagModule.forward  # pools ``embed`` as every bag module does (padding_idx included)


class Int8PathEmbeddingBag(nn.Module):
    """``PathEmbeddingBag`` with an int8 base table; the per-class MLPs (``paths``) stay float."""

    def __init__(self, module: PathEmbeddingBag) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = module.num_embeddings, module.embedding_dim
        self.partition, self.mode = module.partition, module.mode
        self.include_last_offset, self.padding_idx = module.include_last_offset, module.padding_idx
        self.base = Int8Table(module.weight)
        self.paths = copy.deepcopy(module.paths)

    def embed(self, input: Tensor) -> Tensor:
        classes = self.partition(input).reshape(-1, self.partition.num_tables)
        x = self.base(classes[:, 0])
        for j, path in enumerate(self.paths, start=1):
            x = path(x, classes[:, j])
        return x.view(*input.shape, self.embedding_dim)

    forward = BagModule.forward  # pools ``embed`` as every bag module does (padding_idx included)


def _int8_module(module: nn.Module, weights: list[Tensor]) -> nn.Module:
    if isinstance(module, HybridEmbeddingBag):
        if module.cold is not None and not isinstance(module.cold, CompositionalEmbeddingBag):
            raise TypeError(f"no int8 form of a HybridEmbeddingBag with a {type(module.cold).__name__} cold part")
        return Int8HybridEmbeddingBag(module, weights)
    if isinstance(module, CompositionalEmbeddingBag):
        return Int8CompositionalEmbeddingBag(module, weights)
    if isinstance(module, PathEmbeddingBag):
        return Int8PathEmbeddingBag(module)
    raise TypeError(f"no int8 form of {type(module).__name__}")


@torch.no_grad()
def quantize_collection(collection: EmbeddingCollection) -> EmbeddingCollection:
    """An ``EmbeddingCollection`` (per-feature modules, same configs and output) of int8 modules with the
    tables of ``collection`` (an ``EmbeddingCollection`` or a ``FusedEmbeddingCollection``)."""
    # The per-feature modules are built on the meta device (no memory), then replaced.
    out = EmbeddingCollection(collection.configs, threshold=0, output=collection.output, device="meta")
    for name in collection.feature_names:
        out.embeddings[name] = _int8_module(collection.feature_module(name), collection.table_weights(name))
    return out


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (DLRM or DCN, anything whose ``embeddings`` is an embedding collection) in eval
    mode whose tables are int8 row-wise; ``model`` itself is left as it is."""
    quantized = quantize_collection(model.embeddings)
    # deepcopy everything but the float collection, which the memo replaces by the int8 one
    return copy.deepcopy(model, memo={id(model.embeddings): quantized}).eval()


def embedding_bytes(collection: nn.Module) -> int:
    """Exact bytes of an embedding collection's state (float or int8 tables, path MLPs, anything saved)."""
    return sum(t.numel() * t.element_size() for t in collection.state_dict().values())
