"""A fast drop-in for ``EmbeddingCollection``: every table of every feature in a few fused weights.

``EmbeddingCollection`` runs one module per feature, and a compressed feature does one lookup per
partition table: 26 Criteo features with quotient-remainder make ~50 small kernel calls forward
and as many backward. Here every partition table of every operation-based feature (full,
hashing, qr, gqr, crt) is a block of rows in one weight per table width, so a batch of one-hot
ids ``(B, F)`` needs:

1. one vectorised index computation for all tables, since every scheme is a ``RadixPartition``:
   ``row_t = (x[:, col_t] // stride_t) % modulus_t + offset_t`` for the stacked per-table vectors;
2. one gather per weight (``F.embedding``, sparse gradients when ``sparse``);
3. one combine per group of features that share an operation and table widths, on strided views.

The combine uses ``combine`` of ``compositional`` on the same operands in the same order, so the
result and its gradients equal ``EmbeddingCollection``'s. Path-based features keep their own
modules. Bags (a dict input with multi-hot features) compose each id's vector and then pool it,
as ``CompositionalEmbeddingBag`` does; they run one feature at a time over the fused weights.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..partitions import check_ids
from .collection import EmbeddingCollection, FeatureConfig, FeatureInput, FeatureReport, build_embedding_bag
from .compositional import CompositionalEmbeddingBag, combine
from .init import factor_std, uniform_
from .pooling import pool_bags

__all__ = ["FusedEmbeddingCollection"]


@dataclass(frozen=True)
class _Group:
    """Features combined together: same operation, same table widths (one output block)."""

    operation: str
    widths: tuple[int, ...]
    features: tuple[int, ...]  # feature indices (= input columns), in slot order


class FusedEmbeddingCollection(EmbeddingCollection):
    """``EmbeddingCollection`` with all operation-based tables fused into one weight per width.

    Same constructor, forward, ``report()``, ``summary()`` and accounting as
    ``EmbeddingCollection``; with the same seed it draws the same initial values, and
    ``load_collection_state_dict`` takes an ``EmbeddingCollection``'s state dict.

    Parameters: ``weights[str(width)]`` holds, for every fused table of that width, its rows at
    ``row_offset`` (see ``table_layout()``); ``embeddings`` holds only the path-based modules.

    Shape:
        ``forward(features)``: ``(B, F)`` ids -> ``(B, F, D)`` (``stack``) or ``(B, sum D)``
        (``cat``); or a dict as ``EmbeddingCollection`` takes.
    """

    def __init__(
        self,
        features: Sequence[FeatureConfig],
        threshold: int = 0,
        sparse: bool = False,
        output: str = "stack",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # The parent checks the configs and builds every module on the meta device (no memory):
        # those modules give the layout (partitions, table widths, init) and the report.
        super().__init__(features, threshold=threshold, sparse=sparse, output=output, device="meta", dtype=dtype)
        self.sparse = sparse
        layout = dict(self.embeddings)
        self.embeddings = nn.ModuleDict()
        self._fused = [isinstance(m, CompositionalEmbeddingBag) for m in layout.values()]
        self._build_groups(layout)
        self.weights = nn.ParameterDict(
            {str(w): nn.Parameter(torch.empty(rows, w, device=device, dtype=dtype)) for w, rows in self._rows.items()}
        )
        # Initialise in feature order exactly as the per-feature modules would, so that one seed
        # gives one model whichever collection class builds it.
        for j, (config, module) in enumerate(zip(self.configs, layout.values())):
            if self._fused[j]:
                self._reset_feature(j, module)
            else:
                self.embeddings[config.name] = build_embedding_bag(config, sparse=sparse, device=device, dtype=dtype)
                layout[config.name] = self.embeddings[config.name]
        self._layout = layout  # plain dict: the meta modules are not submodules
        if device is not None:  # the index vectors live beside the weights
            for name, buffer in self._buffers.items():
                self._buffers[name] = buffer.to(device)

    # ---- layout -----------------------------------------------------------------------------
    def _build_groups(self, layout: Mapping[str, nn.Module]) -> None:
        keys: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for j, module in enumerate(layout.values()):
            if self._fused[j]:
                op = module.operation if len(module.weights) > 1 else "single"
                keys.setdefault((op, module.table_dims), []).append(j)
        # Slots of each width, in group order then table order then feature order, so that every
        # (group, table) is a contiguous run of slots: the combine works on views.
        slots: dict[int, list[tuple[int, int]]] = {}  # width -> [(feature, table)]
        self.groups: list[_Group] = []
        for (op, widths), members in keys.items():
            for t, w in enumerate(widths):
                slots.setdefault(w, []).extend((f, t) for f in members)
            self.groups.append(_Group(op, widths, tuple(members)))
        # The runs of slots of each weight, one per (group, table) in that order.
        self._run_lengths = {w: [len(g.features) for g in self.groups for d in g.widths if d == w] for w in slots}
        self._rows: dict[int, int] = {}
        self._offsets: dict[tuple[int, int], int] = {}  # (feature, table) -> first row in its weight
        modules = list(layout.values())
        for w, entries in slots.items():
            row = 0
            for f, t in entries:
                self._offsets[f, t] = row
                row += modules[f].partition.table_sizes[t]
            self._rows[w] = row
        for w, entries in slots.items():
            def vector(values) -> Tensor:
                return torch.tensor(values, dtype=torch.int64)
            self.register_buffer(f"_col_{w}", vector([f for f, _ in entries]), persistent=False)
            self.register_buffer(f"_stride_{w}", vector([modules[f].partition.strides[t] for f, t in entries]), persistent=False)
            self.register_buffer(f"_mod_{w}", vector([modules[f].partition.moduli[t] for f, t in entries]), persistent=False)
            self.register_buffer(f"_off_{w}", vector([self._offsets[f, t] for f, t in entries]), persistent=False)
        self.register_buffer(
            "_cardinalities", torch.tensor([c.num_embeddings for c in self.configs], dtype=torch.int64), persistent=False
        )
        # Output blocks come group by group, then the path features: the permutation back to
        # feature order (identity in the common one-scheme case, then skipped).
        order = [f for g in self.groups for f in g.features] + [j for j, fused in enumerate(self._fused) if not fused]
        self._order = order
        inverse = sorted(range(len(order)), key=order.__getitem__)
        self._inverse = None if inverse == list(range(len(order))) else inverse
        if self._inverse is not None:
            dims = [self.configs[f].embedding_dim for f in order]
            starts = [sum(dims[:i]) for i in range(len(dims))]
            columns = [c for i in inverse for c in range(starts[i], starts[i] + dims[i])]
            for name, perm in (("feature", inverse), ("column", columns)):
                perm = torch.tensor(perm, dtype=torch.int64)
                self.register_buffer(f"_{name}_perm", perm, persistent=False)
                self.register_buffer(f"_{name}_unperm", torch.argsort(perm), persistent=False)

    def _reset_feature(self, feature: int, module: CompositionalEmbeddingBag) -> None:
        std = factor_std(module.init_std, module.operation, len(module.weights))
        for t in range(len(module.weights)):
            uniform_(self._table(feature, t, module), std)

    def _table(self, feature: int, table: int, module: nn.Module | None = None) -> Tensor:
        """The rows ``(rows_t, d_t)`` of one feature's table ``t``: a view of its fused weight."""
        module = module if module is not None else self._layout[self.configs[feature].name]
        width = module.table_dims[table]
        start = self._offsets[feature, table]
        return self.weights[str(width)][start : start + module.partition.table_sizes[table]]

    def feature_module(self, name: str) -> nn.Module:
        # Fused features: the layout module (parameters on the meta device; the values are views of
        # ``weights``, see ``table_weights``). Path features: the module itself.
        return self._layout[name]

    def table_weights(self, name: str) -> list[Tensor]:
        feature = self.feature_names.index(name)
        if not self._fused[feature]:
            return super().table_weights(name)
        module = self._layout[name]
        return [self._table(feature, t, module) for t in range(len(module.weights))]

    def table_layout(self) -> list[dict]:
        """Where each fused table lives: feature, table index, weight key, first row, rows."""
        out = []
        for f, module in enumerate(self._layout.values()):
            if self._fused[f]:
                for t, rows in enumerate(module.partition.table_sizes):
                    out.append(dict(feature=self.configs[f].name, table=t, weight=str(module.table_dims[t]),
                                    row_offset=self._offsets[f, t], rows=rows))
        return out

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, features: Tensor | Mapping[str, FeatureInput]) -> Tensor:
        if isinstance(features, Mapping):
            one_hot = self._stack_one_hot(features)
            if one_hot is None:
                return self._forward_bags(features)
            features = one_hot
        self._check_ids(features)
        gathered = {
            w: _gather(weight, self._rows_of(features, w), self.sparse)  # (B, T_w, w)
            for w, weight in ((int(k), v) for k, v in self.weights.items())
        }
        # Split each gather into its (group, table) runs with one op: its backward is one cat,
        # where separate slices would each zero-fill a gradient of the whole gather.
        runs = {w: iter(torch.split(g, self._run_lengths[w], dim=1) if len(self._run_lengths[w]) > 1 else (g,))
                for w, g in gathered.items()}
        blocks = [combine([next(runs[w]) for w in g.widths], g.operation) for g in self.groups]  # (B, F_g, D_g)
        blocks += [
            self.embeddings[name](features[:, j : j + 1]).unsqueeze(1)
            for j, name in enumerate(self.feature_names) if not self._fused[j]
        ]
        return self._assemble(blocks)

    def _rows_of(self, ids: Tensor, width: int) -> Tensor:
        """Row ``(B, T_w)`` of every table of width ``width`` for one-hot ids ``(B, F)``."""
        cols, strides = getattr(self, f"_col_{width}"), getattr(self, f"_stride_{width}")
        moduli, offsets = getattr(self, f"_mod_{width}"), getattr(self, f"_off_{width}")
        return torch.remainder(torch.div(ids[:, cols], strides, rounding_mode="floor"), moduli) + offsets

    def _assemble(self, blocks: list[Tensor]) -> Tensor:
        if self.output == "stack":
            out = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
            return out if self._inverse is None else _Permute.apply(out, self._feature_perm, self._feature_unperm)
        out = torch.cat([b.flatten(1) for b in blocks], dim=1)
        return out if self._inverse is None else _Permute.apply(out, self._column_perm, self._column_unperm)

    def _check_ids(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[1] != len(self.configs):
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"expected ids of shape (B, {len(self.configs)}), one column per feature, got {shape}")
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be an int64 tensor, got dtype {ids.dtype}")
        if ids.numel() == 0:
            return
        low, high = torch.aminmax(ids, dim=0)  # per column: two small reductions, one pass
        if bool((low < 0).any() | (high >= self._cardinalities).any()):
            row, col = (int(i) for i in ((ids < 0) | (ids >= self._cardinalities)).nonzero()[0])
            config = self.configs[col]
            raise IndexError(
                f"feature {config.name!r} (column {col}): id {int(ids[row, col])} at row {row} is out of "
                f"range [0, {config.num_embeddings})"
            )

    def _stack_one_hot(self, features: Mapping[str, FeatureInput]) -> Tensor | None:
        """The ``(B, F)`` ids when every feature is a ``(B, 1)`` tensor (bags of one), else None."""
        columns = []
        for name in self.feature_names:
            if name not in features:
                raise KeyError(f"feature {name!r} is missing from the input (got {sorted(features)})")
            value = features[name]
            if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != 1:
                return None
            columns.append(value)
        return torch.cat(columns, dim=1) if len({c.shape[0] for c in columns}) == 1 else None

    def _forward_bags(self, features: Mapping[str, FeatureInput]) -> Tensor:
        pooled = []
        for j, name in enumerate(self.feature_names):
            if not self._fused[j]:
                pooled.append(self._lookup(j, name, features))
                continue
            value = features[name]
            args = (value,) if isinstance(value, Tensor) else tuple(value)
            try:
                pooled.append(self._bag(j, *args))
            except (IndexError, ValueError, TypeError, RuntimeError) as err:
                raise type(err)(f"feature {name!r} (column {j}): {err}") from None
        return torch.stack(pooled, dim=1) if self.output == "stack" else torch.cat(pooled, dim=1)

    def _bag(self, feature: int, input: Tensor, offsets: Tensor | None = None,
             per_sample_weights: Tensor | None = None) -> Tensor:
        """One feature's pooled bags ``(B, D)``: compose each id's vector, then pool (as the module does)."""
        module = self._layout[self.configs[feature].name]
        check_ids(input, module.num_embeddings)
        classes = module.partition.classes(input.long())
        # Gather from the whole fused weight at the table's row offset: a sparse gradient cannot
        # flow back through a slice of the weight.
        rows = [
            F.embedding(classes[..., t] + self._offsets[feature, t], self.weights[str(width)], sparse=self.sparse)
            for t, width in enumerate(module.table_dims)
        ]
        return pool_bags(combine(rows, module.operation), input, offsets, per_sample_weights, module.mode)

    # ---- accounting and state ---------------------------------------------------------------
    def report(self) -> list[FeatureReport]:
        # The layout modules have the per-feature parameter shapes (meta tensors for fused tables),
        # so the parent's accounting applies unchanged.
        return EmbeddingCollection.report(SimpleNamespace(configs=self.configs, embeddings=self._layout))

    @torch.no_grad()
    def load_collection_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy the parameters of an ``EmbeddingCollection`` with the same configs into this one."""
        for f, (name, module) in enumerate(self._layout.items()):
            prefix = f"embeddings.{name}."
            if self._fused[f]:
                for t in range(len(module.weights)):
                    key = f"{prefix}weights.{t}"
                    if key not in state_dict:
                        raise KeyError(f"feature {name!r}: {key!r} is missing from the state dict")
                    target = self._table(f, t, module)
                    if state_dict[key].shape != target.shape:
                        raise ValueError(
                            f"feature {name!r} table {t}: shape {tuple(state_dict[key].shape)} != {tuple(target.shape)}"
                        )
                    target.copy_(state_dict[key])
            else:
                module.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})

    @classmethod
    def from_collection(cls, collection: EmbeddingCollection) -> FusedEmbeddingCollection:
        """A fused copy of ``collection`` (same configs, same parameter values, same device and dtype)."""
        param = next(collection.parameters())
        fused = cls(collection.configs, sparse=_is_sparse(collection), output=collection.output,
                    device=param.device, dtype=param.dtype)
        fused.load_collection_state_dict(collection.state_dict())
        return fused


def _gather(weight: Tensor, rows: Tensor, sparse: bool) -> Tensor:
    """``weight[rows]`` for rows ``(B, T)`` -> ``(B, T, w)``, with a sparse gradient when ``sparse``."""
    if sparse:
        return _SparseGather.apply(weight, rows)
    flat = rows.reshape(-1)
    offsets = torch.arange(flat.numel(), device=flat.device)
    return F.embedding_bag(flat, weight, offsets, mode="sum").view(*rows.shape, weight.shape[1])


class _SparseGather(torch.autograd.Function):
    """Row gather whose gradient is the sparse ``(rows, upstream)`` pair itself.

    Forward runs ``embedding_bag`` over bags of one row: on CPU its kernel (FBGEMM's, with
    prefetching) is several times faster than ``embedding``'s ``index_select`` on large tables.
    Backward wraps the upstream gradient as the values of a sparse COO gradient, where
    ``embedding_bag``'s own sparse backward copies it once more through ``index_select``.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor) -> Tensor:
        flat = rows.reshape(-1)
        offsets = torch.arange(flat.numel(), device=flat.device)
        ctx.save_for_backward(flat)
        ctx.weight_shape = weight.shape
        return F.embedding_bag(flat, weight, offsets, mode="sum").view(*rows.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (flat,) = ctx.saved_tensors
        values = grad.reshape(flat.numel(), ctx.weight_shape[1])
        return torch.sparse_coo_tensor(flat.unsqueeze(0), values, ctx.weight_shape, check_invariants=False), None


class _Permute(torch.autograd.Function):
    """``x.index_select(1, perm)`` for a permutation: its gradient is a gather by the inverse
    permutation, not ``index_select``'s zero-fill and scatter-add."""

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, unperm: Tensor) -> Tensor:
        ctx.save_for_backward(unperm)
        return x.index_select(1, perm)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (unperm,) = ctx.saved_tensors
        return grad.index_select(1, unperm), None, None


def _is_sparse(collection: EmbeddingCollection) -> bool:
    return any(getattr(m, "sparse", False) for m in collection.embeddings.values())
