"""A fast drop-in for ``EmbeddingCollection``: every table of every feature in a few fused weights.

``EmbeddingCollection`` runs one module per feature, and a compressed feature does one lookup per
partition table: 26 Criteo features with quotient-remainder make ~50 small kernel calls forward
and as many backward. Here every partition table of every operation-based feature (full,
hashing, qr, gqr, crt) is a block of rows in one weight per table width, so a batch of one-hot
ids ``(B, F)`` needs:

1. one vectorised index computation for all tables, since every scheme is a ``RadixPartition``:
   ``row_t = (x[:, col_t] // stride_t) % modulus_t + offset_t`` for the stacked per-table vectors;
2. one gather per weight (``embedding_bag`` over bags of one row, sparse gradients when ``sparse``);
3. one combine per group of features that share an operation and table widths, on strided views
   of the gathered rows, each block written straight to its features' output positions
   (``_Compose``; its backward writes every table's gradient in place, ready for the sparse
   gradient). With full or hashed tables only, the gathered rows are the output as they are.

The combine uses ``combine`` of ``compositional`` on the same operands in the same order, so the
result and its gradients equal ``EmbeddingCollection``'s. Path-based features keep their own
modules, as do the field's schemes (robe, dhe, tt, md, cce) and hybrids with a ROBE cold part.

Hybrid features (``HybridEmbeddingBag``) are fused too: the hot table and the cold tables are
fused tables whose ids are a range ``[low, high)`` (hot ``[0, K)``, cold ``[K, n)``), indexed by
``x - low``. Every table is gathered for every sample (an id outside a table's range reads that
table's first row); the compose step selects the hot row or the combined cold rows with the mask
``x < K``; the sparse gradient leaves the unused slots out (the dense one gets zeros there), so
only the rows an id used receive a gradient (lazy sparse optimizers see no others). On a one-hot
batch of 2048 x 26 Criteo features (cardinalities / 10, hybrid 1% + QR-mult/4, sparse, CPU,
forward + backward) this measured at least as fast as running each hybrid as its own module:
best of 40, 7.1 vs 8.3 ms on 1 thread and 5.3 vs 8.1 ms on 2 (medians noisier: 8.5 vs 8.3 ms on 1
thread; QR alone 4.5 ms). Bags (a dict input with multi-hot features) compose each id's vector and then pool it,
as ``CompositionalEmbeddingBag`` does; they run one feature at a time over the fused weights.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..partitions import ID_DTYPES, check_ids
from ..validation import assert_in_graph, check_mode, tracing
from .collection import (
    EmbeddingCollection, FeatureConfig, FeatureInput, FeatureReport, build_embedding_bag, check_batch_sizes,
)
from .compositional import CompositionalEmbeddingBag, combine
from .hybrid import HybridEmbeddingBag, assemble
from .init import factor_stds, uniform_
from .kernels import kernel_ops, kernel_unavailable
from .pooling import pool_bags

__all__ = ["FusedEmbeddingCollection"]


@dataclass(frozen=True)
class _Table:
    """One fused table: ids ``x`` in ``[low, high)`` use row ``((x - low) // stride) % modulus``."""

    rows: int
    width: int
    stride: int
    modulus: int
    low: int
    high: int


@dataclass(frozen=True)
class _Spec:
    """How a feature's tables (in its module's ``weights`` order) make its vector.

    ``select``: a hybrid's hot table (table 0) and its cold tables are alternatives, chosen by
    ``x < tables[0].high``; otherwise every table is used and ``operation`` combines them.
    """

    operation: str
    tables: tuple[_Table, ...]
    select: bool = False


@dataclass(frozen=True)
class _Group:
    """Features combined together: same operation, same table widths (one output block)."""

    operation: str
    widths: tuple[int, ...]
    features: tuple[int, ...]  # feature indices (= input columns), in slot order
    runs: tuple[tuple[int, int], ...]  # per table: (which gathered weight, first slot); len(features) slots
    select: bool = False  # run 0 is a hybrid's hot table, the other runs its cold tables (see _Spec)


@dataclass(frozen=True)
class _Layout:
    """What ``_Compose`` needs: the groups, and where each output block goes.

    ``places[i]`` is ``(index, span)`` for block ``i`` (the groups, then the path features): the
    output positions along dim 1 (features of a ``(B, F, D)`` output when every feature has one
    width, else columns of a ``(B, sum D)`` one), and ``(start, stop)`` when they are contiguous.
    """

    groups: tuple[_Group, ...]
    places: tuple[tuple[Tensor, tuple[int, int] | None], ...]
    out_shape: tuple[int, ...]
    num_gathered: int
    masks: tuple[Tensor | None, ...]  # per group: (B, n) hot mask of a select group, else None
    zero_unused: bool  # dense gradients: the slots an id did not use must get exactly zero


class FusedEmbeddingCollection(EmbeddingCollection):
    """``EmbeddingCollection`` with all operation-based tables fused into one weight per width.

    Same constructor, forward, ``report()``, ``summary()`` and accounting as
    ``EmbeddingCollection``; with the same seed it draws the same initial values, and
    ``load_collection_state_dict`` takes an ``EmbeddingCollection``'s state dict.

    Parameters: ``weights[str(width)]`` holds, for every fused table of that width (hybrid
    features' hot and cold tables included), its rows at ``row_offset`` (see ``table_layout()``);
    ``embeddings`` holds only the path-based modules.

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
        self._fused = [_fusable(m) for m in layout.values()]
        self._specs = {j: _spec(m) for j, m in enumerate(layout.values()) if self._fused[j]}
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
                self._buffers[name] = buffer.to(device) if buffer is not None else None

    # ---- layout -----------------------------------------------------------------------------
    def _build_groups(self, layout: Mapping[str, nn.Module]) -> None:
        keys: dict[tuple[str, tuple[int, ...], bool], list[int]] = {}
        for j, spec in self._specs.items():
            keys.setdefault((spec.operation, tuple(t.width for t in spec.tables), spec.select), []).append(j)
        # Slots of each width, in group order then table order then feature order, so that every
        # (group, table) is a contiguous run of slots: the combine works on views.
        slots: dict[int, list[tuple[int, int]]] = {w: [] for _, widths, _ in keys for w in widths}
        self._widths = list(slots)  # the gathered weights, in this order
        weight_of = {w: k for k, w in enumerate(self._widths)}
        self.groups: list[_Group] = []
        for (op, widths, select), members in keys.items():
            runs = []
            for t, w in enumerate(widths):
                runs.append((weight_of[w], len(slots[w])))
                slots[w].extend((f, t) for f in members)
            self.groups.append(_Group(op, widths, tuple(members), tuple(runs), select))
        self._rows: dict[int, int] = {}
        self._offsets: dict[tuple[int, int], int] = {}  # (feature, table) -> first row in its weight
        for w, entries in slots.items():
            row = 0
            for f, t in entries:
                self._offsets[f, t] = row
                row += self._specs[f].tables[t].rows
            self._rows[w] = row
        for w, entries in slots.items():
            def vector(values) -> Tensor:
                return torch.tensor(values, dtype=torch.int64)
            tables = [self._specs[f].tables[t] for f, t in entries]
            self.register_buffer(f"_col_{w}", vector([f for f, _ in entries]), persistent=False)
            self.register_buffer(f"_stride_{w}", vector([t.stride for t in tables]), persistent=False)
            self.register_buffer(f"_mod_{w}", vector([t.modulus for t in tables]), persistent=False)
            self.register_buffer(f"_off_{w}", vector([self._offsets[e] for e in entries]), persistent=False)
            # Id ranges, only where some table of this width covers part of its feature's ids (hybrids).
            ranged = any((t.low, t.high) != (0, self.configs[f].num_embeddings) for t, (f, _) in zip(tables, entries))
            if ranged:  # (no None buffers otherwise: torch.export cannot name them)
                self.register_buffer(f"_low_{w}", vector([t.low for t in tables]), persistent=False)
                self.register_buffer(f"_high_{w}", vector([t.high for t in tables]), persistent=False)
        self.register_buffer(
            "_cardinalities", torch.tensor([c.num_embeddings for c in self.configs], dtype=torch.int64), persistent=False
        )
        # Where each output block goes: the groups, then the path features, straight into
        # feature order (no concatenation, no permutation afterwards).
        dims = [c.embedding_dim for c in self.configs]
        by_feature = len(set(dims)) == 1
        starts = [sum(dims[:j]) for j in range(len(dims))]
        self._path_features = [j for j, fused in enumerate(self._fused) if not fused]
        self._spans = []
        for i, members in enumerate([g.features for g in self.groups] + [(j,) for j in self._path_features]):
            index = list(members) if by_feature else [
                c for f in members for c in range(starts[f], starts[f] + dims[f])]
            contiguous = index == list(range(index[0], index[0] + len(index)))
            self._spans.append((index[0], index[0] + len(index)) if contiguous else None)
            self.register_buffer(f"_place_{i}", torch.tensor(index, dtype=torch.int64), persistent=False)
        self._out_shape = (len(dims), dims[0]) if by_feature else (sum(dims),)
        self._gather_is_output = (by_feature and len(self.groups) == 1 and len(self.groups[0].widths) == 1
                                  and not self._path_features)  # one table per feature, all in feature order
        self._build_kernel_layout(by_feature)

    def _build_kernel_layout(self, by_feature: bool) -> None:
        """The compiled kernel's per-feature slot lists (``kernels``), where it applies: one table
        width, one embedding_dim, no hybrids, add or mult (or one table per feature)."""
        self.use_kernel = True  # set False to force the pure-PyTorch path
        self._fused_sgd_lr: float | None = None
        self._sgd_hooks: list = []
        ranged = any(getattr(self, f"_low_{w}", None) is not None for w in self._widths)
        eligible = (by_feature and len(self._widths) == 1 and not ranged and bool(self.groups)
                    and all(not g.select and (len(g.widths) == 1 or g.operation in ("add", "mult")) for g in self.groups))
        self._kernel_reason = None if eligible else (
            "layout not supported by the kernel (needs one table width and embedding_dim, no hybrids, add/mult)")
        if not eligible:
            return
        ptr, slots, out, ops = [0], [], [], []
        for group in self.groups:
            for i, f in enumerate(group.features):
                slots.extend(start + i for _, start in group.runs)
                ptr.append(len(slots))
                out.append(f)
                ops.append(1 if group.operation == "mult" else 0)
        for name, values in (("ptr", ptr), ("slots", slots), ("out", out), ("op", ops)):
            self.register_buffer(f"_kernel_{name}", torch.tensor(values, dtype=torch.int64), persistent=False)

    # ---- compiled kernel and fused SGD ----------------------------------------------------------
    def kernel_status(self) -> str | None:
        """Why this collection runs its pure-PyTorch path (layout, dtype, device, dense gradients,
        ``use_kernel`` off, or the build failed: ``kernels.kernel_unavailable()``), or None when it
        runs the compiled kernel."""
        if self._kernel_reason is not None:
            return self._kernel_reason
        if not self.use_kernel:
            return "use_kernel is False"
        if not self.sparse:
            return "dense gradients (sparse=False) use the PyTorch path"
        weight = self.weights[str(self._widths[0])]
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return f"the kernel runs float32 on CPU, the weights are {weight.dtype} on {weight.device}"
        if tracing():  # the extension has no fake-tensor implementation, and its build takes a lock
            return "compiled or exported: the kernel cannot be traced, the PyTorch path can"
        return kernel_unavailable()

    def fuse_sgd(self, lr: float | None) -> None:
        """Train the fused tables with SGD inside the backward: ``W[i] -= lr * g_i`` for every row a
        batch used (repeated rows add up in batch order), equal to ``optim.SparseSGD(lr)`` after
        the backward; ``weights`` then get no ``.grad`` (an optimizer holding them skips them).
        ``lr=None`` turns it off. With the kernel the update is done row by row in its backward (no
        sparse gradient); on the PyTorch path a hook applies it as each gradient is accumulated."""
        if lr is not None and not lr >= 0.0:
            raise ValueError(f"fuse_sgd: invalid learning rate {lr}")
        for hook in self._sgd_hooks:
            hook.remove()
        self._sgd_hooks = []
        self._fused_sgd_lr = None if lr is None else float(lr)
        if lr is None:
            return
        for weight in self.weights.values():
            self._sgd_hooks.append(weight.register_post_accumulate_grad_hook(self._sgd_hook))

    def _sgd_hook(self, weight: Tensor) -> None:
        """The PyTorch path's fused SGD: SparseSGD's ops (``g * -lr``, ``scatter_add_``), then no grad."""
        grad, weight.grad = weight.grad, None
        if grad is None:  # the kernel's backward has updated the rows already
            return
        with torch.no_grad():
            if grad.is_sparse:
                rows, values = grad._indices()[0], grad._values()
                step = torch.mul(values, -self._fused_sgd_lr).reshape(rows.shape[0], -1)
                weight.view(weight.shape[0], -1).scatter_add_(0, rows.unsqueeze(1).expand_as(step), step)
            else:
                weight.add_(grad, alpha=-self._fused_sgd_lr)

    def _forward_kernel(self, ids: Tensor) -> Tensor:
        paths = [self.embeddings[self.feature_names[j]](ids[:, j : j + 1]) for j in self._path_features]
        width = self._widths[0]
        vectors = [getattr(self, f"_{name}_{width}") for name in ("col", "stride", "mod", "off")]
        vectors += [getattr(self, f"_kernel_{name}") for name in ("ptr", "slots", "out", "op")]
        out = _KernelLookup.apply(self, vectors, self.weights[str(width)], ids.contiguous(), *paths)
        return out.flatten(1) if self.output == "cat" else out

    def _reset_feature(self, feature: int, module: nn.Module) -> None:
        for t, std in _init_order(module):
            uniform_(self._table(feature, t), std)

    def _table(self, feature: int, table: int) -> Tensor:
        """The rows ``(rows_t, d_t)`` of one feature's table ``t``: a view of its fused weight."""
        spec = self._specs[feature].tables[table]
        start = self._offsets[feature, table]
        return self.weights[str(spec.width)][start : start + spec.rows]

    def feature_module(self, name: str) -> nn.Module:
        # Fused features: the layout module (parameters on the meta device; the values are views of
        # ``weights``, see ``table_weights``). Path features: the module itself.
        return self._layout[name]

    def table_weights(self, name: str) -> list[Tensor]:
        feature = self.feature_names.index(name)
        if not self._fused[feature]:
            return super().table_weights(name)
        return [self._table(feature, t) for t in range(len(self._specs[feature].tables))]

    def table_layout(self) -> list[dict]:
        """Where each fused table lives: feature, table index, weight key, first row, rows, and the
        table's parameter name in the feature's own module (``param``, e.g. ``weights.0`` or ``hot``)."""
        out = []
        for f, spec in self._specs.items():
            params = _table_names(self._layout[self.configs[f].name])
            for t, table in enumerate(spec.tables):
                out.append(dict(feature=self.configs[f].name, table=t, weight=str(table.width),
                                row_offset=self._offsets[f, t], rows=table.rows, param=params[t]))
        return out

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, features: Tensor | Mapping[str, FeatureInput]) -> Tensor:
        if isinstance(features, Mapping):
            one_hot = self._stack_one_hot(features)
            if one_hot is None:
                return self._forward_bags(features)
            features = one_hot
        features = self._checked_ids(features)
        if self.kernel_status() is None:
            return self._forward_kernel(features)
        indices = [self._rows_of(features, w) for w in self._widths]
        gathered = [_gather(self.weights[str(w)], r, self.sparse, v) for w, (r, v) in zip(self._widths, indices)]
        valid = [v for _, v in indices]
        if self._gather_is_output:  # e.g. full or hashed tables only: the gathered rows are the output
            return gathered[0] if self.output == "stack" else gathered[0].flatten(1)
        paths = [self.embeddings[self.feature_names[j]](features[:, j : j + 1]).unsqueeze(1) for j in self._path_features]
        layout = _Layout(
            groups=tuple(self.groups), out_shape=self._out_shape, num_gathered=len(gathered),
            places=tuple((getattr(self, f"_place_{i}"), span) for i, span in enumerate(self._spans)),
            masks=tuple(_run(g, 0, valid) if g.select else None for g in self.groups),  # the hot table's range
            zero_unused=not self.sparse,
        )
        compose = _compose if tracing() else _Compose.apply
        out = compose(layout, *gathered, *paths)  # (B, F, D) or (B, sum D)
        return out.flatten(1) if self.output == "cat" and out.dim() == 3 else out

    def _rows_of(self, ids: Tensor, width: int) -> tuple[Tensor, Tensor | None]:
        """Row ``(B, T_w)`` of every table of width ``width`` for one-hot ids ``(B, F)``, and where
        tables cover only part of the ids, whether each id is in its table's range (``(B, T_w)``)."""
        cols, strides = getattr(self, f"_col_{width}"), getattr(self, f"_stride_{width}")
        moduli, offsets = getattr(self, f"_mod_{width}"), getattr(self, f"_off_{width}")
        low, high = getattr(self, f"_low_{width}", None), getattr(self, f"_high_{width}", None)
        x, valid = ids[:, cols], None
        if low is not None:
            valid = (x >= low) & (x < high)
            x = torch.where(valid, x - low, 0)  # out of range: the table's first row, never used
        return torch.remainder(torch.div(x, strides, rounding_mode="floor"), moduli) + offsets, valid

    def _checked_ids(self, ids: Tensor) -> Tensor:
        """``ids`` ``(B, F)`` as int64 (converted once from any integer dtype), checked against each feature's range."""
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[1] != len(self.configs):
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"expected ids of shape (B, {len(self.configs)}), one column per feature, got {shape}")
        if ids.dtype not in ID_DTYPES:
            raise TypeError(f"ids must be an integer tensor (int64 or int32), got dtype {ids.dtype}")
        ids = ids.long()  # a no-op for int64
        mode = check_mode(ids)
        if mode == "graph":  # compiled, exported or on an accelerator: one device-side assert, no sync
            assert_in_graph(((ids >= 0) & (ids < self._cardinalities)).all(),
                            "compembed: an id is out of its feature's range [0, num_embeddings) (run the batch "
                            "eagerly on the CPU to see which one)")
        if mode != "eager" or ids.numel() == 0:
            return ids
        low, high = torch.aminmax(ids, dim=0)  # per column: two small reductions, one pass
        if bool((low < 0).any() | (high >= self._cardinalities).any()):
            row, col = (int(i) for i in ((ids < 0) | (ids >= self._cardinalities)).nonzero()[0])
            config = self.configs[col]
            raise IndexError(
                f"feature {config.name!r} (column {col}): id {int(ids[row, col])} at row {row} is out of "
                f"range [0, {config.num_embeddings})"
            )
        return ids

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
        check_batch_sizes(self.feature_names, pooled)
        return torch.stack(pooled, dim=1) if self.output == "stack" else torch.cat(pooled, dim=1)

    def _bag(self, feature: int, input: Tensor, offsets: Tensor | None = None,
             per_sample_weights: Tensor | None = None) -> Tensor:
        """One feature's pooled bags ``(B, D)``: compose each id's vector, then pool (as the module does)."""
        module = self._layout[self.configs[feature].name]
        check_ids(input, module.num_embeddings)
        ids, spec = input.long(), self._specs[feature]

        def lookup(t: int, x: Tensor) -> Tensor:
            # Gather from the whole fused weight at the table's row offset: a sparse gradient
            # cannot flow back through a slice of the weight.
            table = spec.tables[t]
            rows = torch.remainder(torch.div(x - table.low, table.stride, rounding_mode="floor"), table.modulus)
            return F.embedding(rows + self._offsets[feature, t], self.weights[str(table.width)], sparse=self.sparse)

        if spec.select:  # a hybrid: hot ids read table 0, the others combine the cold tables
            is_hot = ids < spec.tables[0].high
            cold = ids[~is_hot]
            vectors = assemble(is_hot, lookup(0, ids[is_hot]),
                               combine([lookup(t, cold) for t in range(1, len(spec.tables))], spec.operation))
        else:
            vectors = combine([lookup(t, ids) for t in range(len(spec.tables))], spec.operation)
        return pool_bags(vectors, input, offsets, per_sample_weights, module.mode)

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
                for t, param in enumerate(_table_names(module)):
                    key = prefix + param
                    if key not in state_dict:
                        raise KeyError(f"feature {name!r}: {key!r} is missing from the state dict")
                    target = self._table(f, t)
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


def _fusable(module: nn.Module) -> bool:
    """Operation-based bags and their hybrids are fused; other schemes (and a hybrid with a ROBE cold
    part) keep their own modules."""
    if isinstance(module, HybridEmbeddingBag):
        return module.cold is None or isinstance(module.cold, CompositionalEmbeddingBag)
    return isinstance(module, CompositionalEmbeddingBag)


def _spec(module: CompositionalEmbeddingBag | HybridEmbeddingBag) -> _Spec:
    """The fused tables of a feature's module, in the order of its ``weights``."""
    if isinstance(module, HybridEmbeddingBag):
        n, k = module.num_embeddings, module.hot_rows
        hot = (_Table(k, module.embedding_dim, 1, k, 0, k),) if k else ()
        if module.cold is None:
            return _Spec("single", hot)
        cold = _spec(module.cold)
        tables = tuple(dataclasses.replace(t, low=k, high=n) for t in cold.tables)
        return _Spec(cold.operation, hot + tables, select=bool(hot))
    p = module.partition
    tables = tuple(_Table(rows, w, s, m, 0, module.num_embeddings)
                   for rows, w, s, m in zip(p.table_sizes, module.table_dims, p.strides, p.moduli))
    return _Spec(module.operation if len(tables) > 1 else "single", tables)


def _init_order(module: CompositionalEmbeddingBag | HybridEmbeddingBag) -> list[tuple[int, float]]:
    """``(table, std)`` in the order the module itself draws its tables (a hybrid: cold, then hot)."""
    if isinstance(module, HybridEmbeddingBag):
        first = 1 if module.hot is not None else 0
        cold = [(first + t, std) for t, std in _init_order(module.cold)] if module.cold is not None else []
        return cold + ([(0, module.init_std)] if first else [])
    return list(enumerate(factor_stds(module.init_std, module.operation, module.partition.table_sizes)))


def _table_names(module: nn.Module) -> list[str]:
    """The parameter name of each of the module's ``weights`` (its state-dict key within the module)."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names[id(w)] for w in module.weights]


def _run(group: _Group, table: int, tensors: Sequence[Tensor]) -> Tensor:
    """The ``(B, n, ...)`` view of one table's run of slots in per-width tensors."""
    k, start = group.runs[table]
    return tensors[k][:, start : start + len(group.features)]


def _gather(weight: Tensor, rows: Tensor, sparse: bool, valid: Tensor | None = None) -> Tensor:
    """``weight[rows]`` for rows ``(B, T)`` -> ``(B, T, w)``, with a sparse gradient when ``sparse``.

    ``valid`` ``(B, T)``: the entries that count; the others get no place in the sparse gradient
    (their dense gradient is zero by construction). Compiled, the sparse gradient keeps them as
    zero-valued rows (of a hybrid's tables an id does not use): lazy sparse optimizers then see
    those rows too.
    """
    if sparse and not tracing():
        return _SparseGather.apply(weight, rows, valid)
    if sparse:  # compiled: the compiler cannot trace _SparseGather's backward; this one has no `valid`
        return F.embedding(rows, weight, sparse=True)
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
    def forward(ctx, weight: Tensor, rows: Tensor, valid: Tensor | None) -> Tensor:
        flat = rows.reshape(-1)
        offsets = torch.arange(flat.numel(), device=flat.device)
        ctx.save_for_backward(flat, valid)
        ctx.weight_shape = weight.shape
        return F.embedding_bag(flat, weight, offsets, mode="sum").view(*rows.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat, valid = ctx.saved_tensors
        values = grad.reshape(flat.numel(), ctx.weight_shape[1])
        if valid is not None:  # only the rows the ids used
            keep = valid.reshape(-1).nonzero().squeeze(1)
            flat, values = flat.index_select(0, keep), values.index_select(0, keep)
        return torch.sparse_coo_tensor(flat.unsqueeze(0), values, ctx.weight_shape, check_invariants=False), None, None


class _KernelLookup(torch.autograd.Function):
    """The compiled lookup+combine (``kernels``); backward gives the weight's sparse gradient, or
    with ``fuse_sgd`` updates the rows itself and gives none. Path features' outputs ``(B, D)``
    are copied to their positions."""

    @staticmethod
    def forward(ctx, module, vectors: list[Tensor], weight: Tensor, ids: Tensor, *paths: Tensor) -> Tensor:
        out, rows, gathered = kernel_ops().fused_forward(ids, weight, *vectors, len(module.configs))
        for j, path in zip(module._path_features, paths):
            out[:, j] = path
        ctx.vectors, ctx.lr, ctx.path_features = vectors[4:], module._fused_sgd_lr, module._path_features
        ctx.save_for_backward(weight, rows, gathered)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        weight, rows, gathered = ctx.saved_tensors
        grad = grad.contiguous()
        paths = [grad[:, j] for j in ctx.path_features]
        update = ctx.lr is not None and ctx.needs_input_grad[2]
        grads = kernel_ops().fused_backward(grad, gathered, rows, *ctx.vectors, weight.detach(),
                                            ctx.lr if update else 0.0, update)
        if update or not ctx.needs_input_grad[2]:
            return (None, None, None, None, *paths)
        sparse = torch.sparse_coo_tensor(rows.reshape(1, -1), grads.reshape(-1, weight.shape[1]), weight.shape,
                                         check_invariants=False)
        return (None, None, sparse, None, *paths)


class _Compose(torch.autograd.Function):
    """Combine each group's gathered rows and write the blocks straight into feature order.

    Forward runs ``combine`` on views of the gathered rows (the same operations as
    ``CompositionalEmbeddingBag``, so the same values) and copies each block to its output
    positions. Backward writes each table's gradient into one contiguous ``(B, T_w, w)`` tensor per
    gathered weight, which the gather turns into its sparse gradient as is. Autograd's own version
    (split, combine, cat, permute) makes two extra copies of the output each way.
    """

    @staticmethod
    def forward(ctx, layout: _Layout, *inputs: Tensor) -> Tensor:
        ctx.layout = layout
        ctx.save_for_backward(*inputs[: layout.num_gathered])
        return _compose(layout, *inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        layout, gathered = ctx.layout, ctx.saved_tensors
        grads = [torch.empty_like(g) for g in gathered]
        batch = grad.shape[0]
        blocks = [grad[:, span[0] : span[1]] if span is not None else grad.index_select(1, index)
                  for index, span in layout.places]  # (B, n, D), or (B, n * D) columns
        for group, block, mask in zip(layout.groups, blocks, layout.masks):
            block = block.view(batch, len(group.features), -1)
            parts, targets = _parts(group, gathered), _parts(group, grads)
            if group.select:  # the hot row's gradient where the id is hot, the cold rows' elsewhere
                # (a sparse gradient leaves the unused slots out; a dense one needs them zero)
                hot = mask.unsqueeze(-1)
                targets[0].copy_(torch.where(hot, block, 0.0) if layout.zero_unused else block)
                cold = torch.where(hot, 0.0, block) if layout.zero_unused else block
                _combine_backward(cold, parts[1:], targets[1:], group.operation)
            else:
                _combine_backward(block, parts, targets, group.operation)
        paths = [block.view(batch, 1, -1) for block in blocks[len(layout.groups) :]]
        return (None, *grads, *paths)


def _compose(layout: _Layout, *inputs: Tensor) -> Tensor:
    """``_Compose``'s forward: the gathered rows (then the path features' vectors) -> the output.

    Compiled or exported, this runs as it is, under autograd: the compiler fuses the copies that
    ``_Compose``'s hand-written backward avoids in eager mode, and it cannot trace that backward.
    """
    gathered = inputs[: layout.num_gathered]
    out = inputs[0].new_empty(inputs[0].shape[0], *layout.out_shape)
    blocks = [_combine_group(group, _parts(group, gathered), mask) for group, mask in zip(layout.groups, layout.masks)]
    blocks += inputs[layout.num_gathered :]  # path features, (B, 1, D) each
    for block, (index, span) in zip(blocks, layout.places):
        block = block if out.dim() == 3 else block.flatten(1)
        if span is not None:
            out[:, span[0] : span[1]] = block
        else:
            out.index_copy_(1, index, block)
    return out


def _parts(group: _Group, tensors: Sequence[Tensor]) -> list[Tensor]:
    """The views ``(B, n, w_t)`` of a group's tables in the gathered (or gradient) tensors."""
    return [_run(group, t, tensors) for t in range(len(group.runs))]


def _combine_group(group: _Group, parts: list[Tensor], mask: Tensor | None) -> Tensor:
    """A group's block ``(B, n, D)``: the combined rows, or for hybrids the hot row where ``mask``."""
    if group.select:
        return torch.where(mask.unsqueeze(-1), parts[0], combine(parts[1:], group.operation))
    return combine(parts, group.operation)


def _combine_backward(grad: Tensor, parts: list[Tensor], out: list[Tensor], operation: str) -> None:
    """Write the gradient of ``combine(parts, operation)`` w.r.t. each part into ``out``.

    The same products in the same order as autograd's backward of ``combine``: for
    ``((a0 * a1) * a2)``, ``g2 = g * (a0 * a1)``, then ``g1 = (g * a2) * a0``, ``g0 = (g * a2) * a1``.
    """
    if len(parts) == 1 or operation == "add":
        for target in out:
            target.copy_(grad)
    elif operation == "concat":
        start = 0
        for part, target in zip(parts, out):
            target.copy_(grad[..., start : start + part.shape[-1]])
            start += part.shape[-1]
    else:
        prefix = [parts[0]]  # prefix[j] = a0 * ... * aj, as the forward computed it
        for part in parts[1:-1]:
            prefix.append(prefix[-1] * part)
        for j in range(len(parts) - 1, 0, -1):
            torch.mul(grad, prefix[j - 1], out=out[j])
            if j > 1:
                grad = grad * parts[j]
            else:
                torch.mul(grad, parts[1], out=out[0])


def _is_sparse(collection: EmbeddingCollection) -> bool:
    return any(getattr(m, "sparse", False) for m in collection.embeddings.values())
