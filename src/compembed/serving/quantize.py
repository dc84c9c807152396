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

A ROBE array (``robe``, and a hybrid's ROBE cold part) is read as rows of D consecutive values, each
row quantised the same way (``Int8ROBEEmbeddingBag``: the same bytes, ``rows * (D + 8)``); its ids read
single values at hashed positions, so it dequantises value by value with plain indexing. CCE's two
tables and mixed dimensions' block tables are quantised as tables (CCE keeps its assignment, mixed
dimensions its float projections); DHE has no table and stays float. TT-Rec's cores are not tables of
rows: it has no int8 form.

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
from ..embedding.cce import CCEEmbeddingBag
from ..embedding.compositional import CompositionalEmbeddingBag, combine
from ..embedding.dhe import DHEEmbeddingBag
from ..embedding.hybrid import HybridEmbeddingBag
from ..embedding.md import MixedDimEmbeddingBag
from ..embedding.path import PathEmbeddingBag
from ..embedding.robe import ROBEEmbeddingBag, universal_hash
from ..embedding.tt import TTEmbeddingBag
from ..partitions import check_ids

__all__ = ["NoInt8FormError", "Int8Table", "Int8CompositionalEmbeddingBag", "Int8HybridEmbeddingBag",
           "Int8PathEmbeddingBag", "Int8ROBEEmbeddingBag", "Int8CCEEmbeddingBag", "Int8MixedDimEmbeddingBag",
           "quantize_int8", "quantize_collection", "embedding_bytes"]

BYTES_PER_ROW_EXTRA = 8  # fp32 scale + fp32 bias


class NoInt8FormError(TypeError, ValueError):
    """A module with no int8 form (TT-Rec's). A ``TypeError`` (the module's type is the cause) and a
    ``ValueError``, so that the command line reports it as a usage error (exit code 2), not as a bug."""


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


def _copy_bag(target: nn.Module, module: nn.Module, buffers: tuple[str, ...] = ()) -> None:
    """Give an int8 module its float ``module``'s bag options (ids, D, pooling, padding; no sparse
    gradients: it is not trained) and CPU copies of the float module's ``buffers`` (hashes, assignment)."""
    target.num_embeddings, target.embedding_dim = module.num_embeddings, module.embedding_dim
    target.mode, target.include_last_offset = module.mode, module.include_last_offset
    target.padding_idx, target.sparse = module.padding_idx, False
    for name in buffers:
        target.register_buffer(name, getattr(module, name).detach().cpu().clone())


class Int8ROBEEmbeddingBag(nn.Module):
    """``ROBEEmbeddingBag`` with an int8 array: the same hashed positions, each value dequantised on its own.

    The array is read as rows of D consecutive values (the last row padded with the array's final
    value, which leaves its range as it is); each row keeps a uint8 code per value plus an fp32 scale and
    bias (its minimum), the byte-rowwise rule of the tables, so ``ceil(size / D) * (D + 8)`` bytes. A
    value reads back as ``code * scale + bias``, within ``scale / 2`` of its float value.
    Hand-written rather than ``Int8Table``'s kernel: that kernel returns whole rows, and an id's values
    lie at hashed positions across rows (a row per value would gather D times the data).

    Buffers: ``codes`` uint8 ``(R, D)``, ``scale`` and ``bias`` float32 ``(R,)``, and the float module's
    hash coefficients. Shape: as ``ROBEEmbeddingBag``; ``embed(ids (*)) -> (*, D)``.
    """

    positions = ROBEEmbeddingBag.positions  # the float module's hashed positions (*, D/Z, Z), ids checked

    def __init__(self, module: ROBEEmbeddingBag, weight: Tensor) -> None:
        super().__init__()
        _copy_bag(self, module, ("hash_a", "hash_b") + (("sign_a", "sign_b") if module.signs else ()))
        self.size, self.block_size, self.num_blocks, self.signs = (module.size, module.block_size, module.num_blocks,
                                                                   module.signs)
        if not module.signs:
            self.sign_a = self.sign_b = None
        self.register_buffer("block", torch.arange(module.block_size), persistent=False)
        flat = weight.detach().to("cpu", torch.float32).reshape(-1)
        d, rows = self.embedding_dim, -(-self.size // self.embedding_dim)
        padded = torch.cat([flat, flat[-1:].expand(rows * d - self.size)]).view(rows, d)
        low, high = padded.min(1).values, padded.max(1).values
        scale = (high - low) / 255
        step = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)  # a constant row: codes 0
        self.register_buffer("codes", torch.round((padded - low.unsqueeze(1)) / step).clamp(0, 255).to(torch.uint8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", low)

    def embed(self, input: Tensor) -> Tensor:
        position = self.positions(input)  # (*, D/Z, Z)
        row, column = position // self.embedding_dim, position % self.embedding_dim
        values = self.codes[row, column].float() * self.scale[row] + self.bias[row]
        if self.signs:
            sign = 1 - 2 * universal_hash(input, self.sign_a, self.sign_b, 2)  # (*, D/Z)
            values = values * sign.to(values.dtype).unsqueeze(-1)
        return values.reshape(*input.shape, self.embedding_dim)

    def dequantized(self) -> Tensor:
        """The float32 array ``(size, 1)`` the codes stand for."""
        values = self.codes.float() * self.scale.unsqueeze(1) + self.bias.unsqueeze(1)
        return values.reshape(-1)[: self.size].unsqueeze(1)

    forward = BagModule.forward  # pools ``embed`` as every bag module does (padding_idx included)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, size={self.size}, block_size={self.block_size}, "
                f"int8 rows of {self.embedding_dim} values")


class Int8CCEEmbeddingBag(nn.Module):
    """``CCEEmbeddingBag`` with its clustered and hashed tables in int8 (``c k`` rows of ``D / c`` each); the
    assignment and the hash coefficients are kept as they are, so an id reads the same rows.

    Shape: as ``CCEEmbeddingBag``; ``embed(ids (*)) -> (*, D)``.
    """

    rows = CCEEmbeddingBag.rows  # the float module's rows (*, c) in each table
    _column_offsets = CCEEmbeddingBag._column_offsets

    def __init__(self, module: CCEEmbeddingBag) -> None:
        super().__init__()
        _copy_bag(self, module, ("assignment", "hash_a", "hash_b"))
        self.num_rows, self.num_columns = module.num_rows, module.num_columns
        self.clustered, self.hashed = Int8Table(module.clustered), Int8Table(module.hashed)

    def embed(self, input: Tensor) -> Tensor:
        check_ids(input, self.num_embeddings)
        clustered, hashed = self.rows(input.long())
        return (self.clustered(clustered) + self.hashed(hashed)).reshape(*input.shape, self.embedding_dim)

    forward = BagModule.forward  # pools ``embed`` as every bag module does (padding_idx included)


class Int8MixedDimEmbeddingBag(nn.Module):
    """``MixedDimEmbeddingBag`` with each block's table ``(n_i, d_i)`` in int8; the projections to D stay
    float (as the path scheme's MLPs do).

    Every block looks up every id (clamped into its range) and each id keeps its own block's vector: no
    data-dependent shapes, so it exports as one graph (the float module does the same when exported).

    Shape: as ``MixedDimEmbeddingBag``; ``embed(ids (*)) -> (*, D)``.
    """

    def __init__(self, module: MixedDimEmbeddingBag) -> None:
        super().__init__()
        _copy_bag(self, module)
        self.starts, self.block_dims = module.starts, module.block_dims
        self.tables = nn.ModuleList(Int8Table(t) for t in module.tables)
        self.projections = nn.ParameterDict({k: nn.Parameter(p.detach().cpu().clone(), requires_grad=False)
                                             for k, p in module.projections.items()})
        self.register_buffer("_cuts", module._cuts.detach().cpu().clone(), persistent=False)

    def embed(self, input: Tensor) -> Tensor:
        check_ids(input, self.num_embeddings)
        ids = input.long().reshape(-1).contiguous()
        blocks = torch.bucketize(ids, self._cuts, right=True)
        out = None
        for i, table in enumerate(self.tables):  # a loop over the few blocks, not over ids
            vectors = table((ids - self.starts[i]).clamp(0, table.rows - 1))
            if str(i) in self.projections:
                vectors = vectors @ self.projections[str(i)]
            out = vectors if out is None else torch.where((blocks == i).unsqueeze(-1), vectors, out)
        return out.reshape(*input.shape, self.embedding_dim)

    forward = BagModule.forward  # pools ``embed`` as every bag module does (padding_idx included)


class Int8HybridEmbeddingBag(nn.Module):
    """``HybridEmbeddingBag`` with an int8 hot table and int8 cold tables (or an int8 ROBE array).

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
        self.cold = None if module.cold is None else _int8_module(module.cold, weights[first:])

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
        return Int8HybridEmbeddingBag(module, weights)
    if isinstance(module, CompositionalEmbeddingBag):
        return Int8CompositionalEmbeddingBag(module, weights)
    if isinstance(module, ROBEEmbeddingBag):
        return Int8ROBEEmbeddingBag(module, weights[0] if weights else module.weight)
    if isinstance(module, CCEEmbeddingBag):
        return Int8CCEEmbeddingBag(module)
    if isinstance(module, MixedDimEmbeddingBag):
        return Int8MixedDimEmbeddingBag(module)
    if isinstance(module, DHEEmbeddingBag):  # no table: its MLP stays float, as the path scheme's MLPs do
        return copy.deepcopy(module).eval()
    if isinstance(module, PathEmbeddingBag):
        return Int8PathEmbeddingBag(module)
    reason = " (TT-Rec's cores are not tables of rows)" if isinstance(module, TTEmbeddingBag) else ""
    raise NoInt8FormError(f"no int8 form of {type(module).__name__}{reason}")


@torch.no_grad()
def quantize_collection(collection: EmbeddingCollection) -> EmbeddingCollection:
    """An ``EmbeddingCollection`` (per-feature modules, same configs and output) of int8 modules with the
    tables of ``collection`` (an ``EmbeddingCollection`` or a ``FusedEmbeddingCollection``)."""
    # The per-feature modules are built on the meta device (no memory), then replaced.
    out = EmbeddingCollection(collection.configs, threshold=0, output=collection.output, device="meta")
    for name in collection.feature_names:
        try:
            out.embeddings[name] = _int8_module(collection.feature_module(name), collection.table_weights(name))
        except NoInt8FormError as err:
            raise NoInt8FormError(f"feature {name!r}: {err}; serve this model in float32, without --int8") from None
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
