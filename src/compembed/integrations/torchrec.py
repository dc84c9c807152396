"""Compositional embeddings in TorchRec's terms, so that its planner and sharding treat them as tables.

A logical table of ``n`` rows compressed by a partition with ``k`` classes sets becomes ``k`` ordinary
TorchRec tables, ``"<table>__p0" .. "<table>__p{k-1}"``, with ``table_sizes[j]`` rows each. Three
pieces connect them to TorchRec:

- :class:`PartitionIdTransform` maps a ``KeyedJaggedTensor`` of logical ids (key ``"C3"``) to the
  KJT of the partition tables (keys ``"C3__p0"``, ``"C3__p1"``), using the partition's own
  ``(x // stride) % modulus`` arithmetic; lengths and weights are repeated per partition.
- :func:`partition_table_configs` gives standard ``EmbeddingBagConfig``s with the compressed row
  counts, which is all the sharding planner sees (its storage estimates are the compressed sizes).
- :class:`CompositionalEmbeddingBagCollection` has the ``EmbeddingBagCollection`` interface (KJT in,
  ``KeyedTensor`` out) and combines the looked-up rows. ``add`` and ``concat`` are linear, so each
  partition table can be pooled first (a TorchRec ``EmbeddingBagCollection``); ``mult`` on multi-hot
  bags is not, so those tables are looked up unpooled (a TorchRec ``EmbeddingCollection``), combined
  per id, and pooled afterwards. Declared one-hot features take the cheaper pooled path with ``mult``.

Hybrid tables (``hot_rows``: ids ``x < K`` own a row of a hot table ``"<table>__hot"``, the others are
shifted to ``x - K`` and partitioned as above) add the hot table as one more TorchRec table; the
transform routes each id to the hot feature ``"<feature>__hot"`` or to the partition features. Pooled,
a bag's vector is the hot table's pooled row plus the combined pooled cold rows, which is exact for
sums with ``add``/``concat`` and for one-hot bags; otherwise each id's vector is formed and then pooled.

``DistributedModelParallel`` finds the inner TorchRec collections and shards the partition tables like
any other tables; the wrapper itself holds no parameters and is replicated.

The id transform (with the id checks) and the other data-dependent steps are single ``torch.fx.wrap``
calls, so ``torchrec.fx.symbolic_trace`` and the train pipelines' tracer go through the wrapper, and
``TrainPipelineSparseDist(pipeline_postproc=True)`` runs the transform in its data-distribution stage.
TorchRec's quantisation swaps the inner collections for its int8 ones; a pass that leaves the per-id
tables float raises an error (see ``qconfig``).

Needs TorchRec (see the Makefile's install recipe): the core package never imports this module.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingBagCollectionInterface
    from torchrec.modules.embedding_modules import EmbeddingCollection as TorchRecEmbeddingCollection
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor
except ImportError as err:  # pragma: no cover - exercised only without TorchRec
    raise ImportError(
        "compembed.integrations.torchrec needs TorchRec on CPU: "
        "pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0, then its needs with torch pinned "
        "(see the Makefile's install recipe)"
    ) from err

from ..embedding import EmbeddingCollection, combine, default_std, factor_stds
from ..embedding.compositional import CompositionalEmbeddingBag, _table_dims
from ..embedding.hybrid import HybridEmbeddingBag, assemble
from ..embedding.init import OPERATIONS, uniform_
from ..partitions import Identity, Partition, check_ids
from ..validation import assert_in_graph, check_mode

__all__ = [
    "CompositionalEmbeddingBagCollection",
    "PartitionIdTransform",
    "hot_key",
    "partition_key",
    "partition_table_configs",
    "table_wise_constraints",
]

_MODES = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}


def partition_key(name: str, j: int) -> str:
    """Name of partition ``j``'s table or feature for the logical table or feature ``name``."""
    return f"{name}__p{j}"


def hot_key(name: str) -> str:
    """Name of the hot table or feature of the hybrid logical table or feature ``name``."""
    return f"{name}__hot"


def partition_table_configs(
    table: EmbeddingBagConfig, partition: Partition, operation: str = "mult", hot_rows: int = 0
) -> list[EmbeddingBagConfig]:
    """Standard TorchRec configs of the tables that replace the logical ``table``.

    Table ``j`` has ``partition.table_sizes[j]`` rows, feature names ``"<feature>__p{j}"`` and the
    centred init whose combination has the spread of the full table's init (see ``embedding.init``).
    With ``hot_rows = K > 0`` (a hybrid) the partition covers the ``n - K`` cold ids and a first
    table ``"<table>__hot"`` of ``K`` rows, drawn as a full table of ``n`` rows, comes before them.
    """
    n = table.num_embeddings
    if not 0 <= hot_rows < n:
        raise ValueError(f"table {table.name!r}: hot_rows must be in [0, {n}) with a partition, got {hot_rows}")
    if partition.num_embeddings != n - hot_rows:
        raise ValueError(
            f"table {table.name!r}: partition covers {partition.num_embeddings} ids "
            f"but the table has {n - hot_rows}" + (f" cold ids ({n} - hot_rows {hot_rows})" if hot_rows else "")
        )
    if operation not in OPERATIONS:
        raise ValueError(f"table {table.name!r}: operation must be one of {OPERATIONS}, got {operation!r}")
    dims = _table_dims(operation, table.embedding_dim, partition.num_tables, None)
    stds = factor_stds(default_std(n), operation, partition.table_sizes)
    hot = [(hot_key, hot_rows, table.embedding_dim, default_std(n))] if hot_rows else []
    tables = hot + [(functools.partial(partition_key, j=j), rows, dim, std)
                    for j, (rows, dim, std) in enumerate(zip(partition.table_sizes, dims, stds))]
    return [
        EmbeddingBagConfig(
            num_embeddings=rows,
            embedding_dim=dim,
            name=key(table.name),
            feature_names=[key(f) for f in table.feature_names],
            pooling=table.pooling,
            data_type=table.data_type,
            init_fn=functools.partial(uniform_, std=table_std),
        )
        for key, rows, dim, table_std in tables
    ]


class PartitionIdTransform(torch.nn.Module):
    """Maps a KJT of logical features to the KJT of their partition tables, validating the ids.

    Args:
        partitions: feature name -> partition. Features without one pass through unchanged.
        hot_rows: feature name -> K for hybrid features: ids ``x < K`` go to feature ``f__hot`` (row
            ``x``), the others, shifted to ``x - K``, to the partition features (whose partition
            covers the ``n - K`` cold ids).
        num_embeddings: feature name -> table rows of features without a partition: their ids are
            checked to lie in ``[0, n)`` as the partitioned ones are (sharded TorchRec would map an
            out-of-range id silently to row 0).
        one_hot: features whose bags must hold at most one id (checked, with a clear error).

    A module without parameters whose work is one opaque call (``torch.fx.wrap``): symbolic tracing
    (``torchrec.fx.symbolic_trace``, the train pipelines' tracer) records it as one node instead of
    tracing its data-dependent checks, and ``TrainPipelineSparseDist(pipeline_postproc=True)`` can run
    it in the data-distribution stage like any TorchRec postproc module.

    Shape:
        ``(features)`` a KJT with keys ``[f, ...]`` and values ``(N,)`` -> a KJT with keys
        ``[f__p0, .., f__p{k-1}, ...]`` (in input key order), each with ``f``'s lengths and weights and
        values the class of each id in that partition. A hybrid feature gives ``[f__hot, f__p0, ..]``:
        its hot ids with their per-bag counts, then its cold ids' classes with theirs.
    """

    def __init__(
        self,
        partitions: Mapping[str, Partition],
        hot_rows: Mapping[str, int] | None = None,
        num_embeddings: Mapping[str, int] | None = None,
        one_hot: Collection[str] = (),
    ) -> None:
        super().__init__()
        self.partitions = dict(partitions)
        self.hot_rows = dict(hot_rows or {})
        self.num_embeddings = dict(num_embeddings or {})
        self.one_hot_features = sorted(one_hot)

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return _transform_ids(self, features)

    @staticmethod
    def _check_one_hot(name: str, lengths: Tensor) -> None:
        mode = check_mode(lengths)  # the one switch of compembed.validation
        if mode == "graph":  # traced or on an accelerator: a device-side assert, no host sync
            assert_in_graph((lengths <= 1).all(), f"compembed: feature {name!r} was declared one-hot but a "
                            "bag holds more than one id; leave it out of one_hot to combine per id")
        elif mode == "eager" and lengths.numel() and int(lengths.max()) > 1:
            raise ValueError(
                f"feature {name!r} was declared one-hot but bag {int(lengths.argmax())} holds "
                f"{int(lengths.max())} ids; leave it out of one_hot to combine per id"
            )

    def transform(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The eager body of ``forward``."""
        keys: list[str] = []
        values, lengths, weights = [], [], []
        has_weights = features.weights_or_none() is not None
        for name, bags in features.to_dict().items():
            partition = self.partitions.get(name)
            ids, bag_lengths, bag_weights = bags.values(), bags.lengths(), bags.weights_or_none()
            if name in self.one_hot_features:
                self._check_one_hot(name, bag_lengths)
            if partition is None:
                if name in self.num_embeddings:
                    try:
                        check_ids(ids, self.num_embeddings[name])
                    except (IndexError, TypeError) as err:
                        raise type(err)(f"feature {name!r}: {err}") from None
                keys.append(name)
                values.append(ids)
                lengths.append(bag_lengths)
                weights.append(bag_weights)
                continue
            k = partition.num_tables
            hot = self.hot_rows.get(name, 0)
            try:
                if hot:
                    check_ids(ids, hot + partition.num_embeddings)
                    is_hot = ids < hot
                    bag = torch.repeat_interleave(torch.arange(bag_lengths.numel(), device=ids.device), bag_lengths)
                    hot_lengths = torch.bincount(bag[is_hot], minlength=bag_lengths.numel()).to(bag_lengths.dtype)
                    keys.append(hot_key(name))
                    values.append(ids[is_hot])
                    lengths.append(hot_lengths)
                    weights.append(bag_weights[is_hot] if has_weights else None)
                    ids, bag_lengths = ids[~is_hot] - hot, bag_lengths - hot_lengths
                    bag_weights = bag_weights[~is_hot] if has_weights else None
                classes = partition(ids)  # (N, k), validates the ids
            except (IndexError, TypeError) as err:
                raise type(err)(f"feature {name!r}: {err}") from None
            keys.extend(partition_key(name, j) for j in range(k))
            values.append(classes.t().reshape(-1))  # partition 0's classes, then partition 1's, ...
            lengths.append(bag_lengths.repeat(k))
            weights.append(bag_weights.repeat(k) if has_weights else None)
        return KeyedJaggedTensor(
            keys=keys,
            values=torch.cat(values),
            lengths=torch.cat(lengths),
            weights=torch.cat(weights) if has_weights else None,
            stride=features.stride(),
        )


# The data-dependent steps, each one node under torch.fx symbolic tracing (they run eagerly).
@torch.fx.wrap
def _transform_ids(transform: PartitionIdTransform, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
    return transform.transform(features)


@torch.fx.wrap
def _assemble(is_hot: Tensor, hot: Tensor, cold: Tensor) -> Tensor:
    return assemble(is_hot, hot, cold)


@torch.fx.wrap
def _pool(vectors: Tensor, offsets: Tensor, weights: Tensor | None, mode: str) -> Tensor:
    """Pool per-id vectors ``(N, D)`` into ``(B, D)`` bags given by ``offsets`` ``(B + 1,)``."""
    positions = torch.arange(vectors.shape[0], device=vectors.device)
    return F.embedding_bag(
        positions, vectors, offsets, mode=mode, per_sample_weights=weights, include_last_offset=True
    )


class CompositionalEmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """A drop-in for TorchRec's ``EmbeddingBagCollection`` whose tables are compositional.

    Args:
        tables: the logical tables, as one would give ``EmbeddingBagCollection`` (SUM or MEAN pooling).
        partitions: table name -> partition of its ids; tables without one stay ordinary tables.
        operation: ``mult``, ``add`` or ``concat``, for all tables or per table name.
        one_hot: ``True`` or the feature names whose bags hold at most one id. With ``mult`` these
            pool each partition table first (cheaper, and identical for such bags); other ``mult``
            features are looked up unpooled and combined per id before pooling. Checked at forward.
        is_weighted: the input KJT carries per-id weights (sum pooling).
        hot_rows: table name -> K for hybrid tables: ids ``x < K`` own a row of the table's hot
            table, the others use its partition, which covers the ``n - K`` cold ids (``x - K``).
        device: where the tables live.

    Shape:
        ``forward(features)``: a KJT with the tables' feature names, batch B -> a ``KeyedTensor``
        keyed by feature name, values ``(B, sum D)``, as ``EmbeddingBagCollection`` returns.
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        partitions: Mapping[str, Partition],
        operation: str | Mapping[str, str] = "mult",
        one_hot: bool | Collection[str] = False,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
        hot_rows: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        names = [t.name for t in tables]
        if not tables or len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError(f"tables must be non-empty with unique, non-empty names, got {names}")
        unknown = sorted(set(partitions) - set(names))
        if unknown:
            raise ValueError(f"partitions name tables that do not exist: {unknown}")
        self.hot_rows = {t: k for t, k in (hot_rows or {}).items() if k}
        unknown = sorted(set(self.hot_rows) - set(partitions))
        if unknown:
            raise ValueError(f"hot_rows name tables without a partition of their cold ids: {unknown}")
        features = [f for t in tables for f in t.feature_names]
        if not all(t.feature_names for t in tables) or len(set(features)) != len(features):
            raise ValueError("every table needs feature names, and each feature may feed only one table")
        self._tables = list(tables)
        self._is_weighted = is_weighted
        self.partitions = dict(partitions)
        self.operations = {t: operation if isinstance(operation, str) else operation.get(t, "mult") for t in partitions}
        self.modes: dict[str, str] = {}
        pooled: list[EmbeddingBagConfig] = []
        unpooled: list[EmbeddingConfig] = []
        checked: list[EmbeddingBagConfig] = []  # pooled although bags of several ids would differ
        self.unpooled_tables: set[str] = set()
        for table in self._tables:
            if table.pooling not in _MODES:
                raise ValueError(f"table {table.name!r}: pooling must be SUM or MEAN, got {table.pooling}")
            self.modes[table.name] = _MODES[table.pooling]
            partition = self.partitions.get(table.name)
            if partition is None:
                pooled.append(table)
                continue
            operation, hot = self.operations[table.name], self.hot_rows.get(table.name, 0)
            configs = partition_table_configs(table, partition, operation, hot_rows=hot)
            declared = one_hot if isinstance(one_hot, bool) else all(f in one_hot for f in table.feature_names)
            mult = operation == "mult" and partition.num_tables > 1
            # Pooling each table first is exact when the combine is linear (and, for a hybrid, when
            # hot and cold ids are summed, not averaged together); for one-id bags it is exact too,
            # except for mult with weights.
            exact = not mult and (not hot or self.modes[table.name] == "sum")
            if exact or (declared and not (mult and is_weighted)):
                pooled.extend(configs)
                if not exact:
                    checked.append(table)
            else:
                self.unpooled_tables.add(table.name)
                unpooled.extend(_unpooled_config(c) for c in configs)
        self.transform = PartitionIdTransform(
            {f: self.partitions[t.name] for t in self._tables if t.name in self.partitions for f in t.feature_names},
            {f: self.hot_rows[t.name] for t in self._tables if t.name in self.hot_rows for f in t.feature_names},
            num_embeddings={f: t.num_embeddings for t in self._tables if t.name not in self.partitions
                            for f in t.feature_names},
            one_hot=[f for t in checked for f in t.feature_names],
        )
        # TorchRec's sharders find these two by type; the planner sees only the compressed tables.
        self.pooled = EmbeddingBagCollection(pooled, is_weighted=is_weighted, device=device) if pooled else None
        if len({c.embedding_dim for c in unpooled}) > 1:
            raise ValueError("unpooled (multi-hot mult) tables must share one embedding_dim, as TorchRec requires")
        self.unpooled = TorchRecEmbeddingCollection(unpooled, device=device) if unpooled else None
        self._embedding_names = features
        self._lengths_per_embedding = [t.embedding_dim for t in self._tables for _ in t.feature_names]
        self._device = torch.device(device) if device is not None else torch.device("cpu")

    # EmbeddingBagCollectionInterface
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The logical (uncompressed) tables, which is what models such as DLRM read dims and names from."""
        return self._tables

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return self._device

    def partition_table_configs(self) -> list[EmbeddingBagConfig | EmbeddingConfig]:
        """The TorchRec configs of every table actually stored (compressed sizes)."""
        pooled = self.pooled.embedding_bag_configs() if self.pooled is not None else []
        unpooled = self.unpooled.embedding_configs() if self.unpooled is not None else []
        return [*pooled, *unpooled]

    @property
    def one_hot_features(self) -> list[str]:
        """The features pooled per table although their combine is not linear: checked one-hot at forward."""
        return self.transform.one_hot_features

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        parts = self.transform(features)  # validates the ids (and the declared one-hot bags)
        pooled = self.pooled(parts).to_dict() if self.pooled is not None else {}
        per_id = self.unpooled(parts) if self.unpooled is not None else {}
        bags = features.to_dict()
        outputs = []
        for table in self._tables:
            partition = self.partitions.get(table.name)
            for name in table.feature_names:
                if partition is None:
                    outputs.append(pooled[name])
                    continue
                keys = [partition_key(name, j) for j in range(partition.num_tables)]
                operation, hot = self.operations[table.name], self.hot_rows.get(table.name, 0)
                if table.name in self.unpooled_tables:
                    vectors = combine([per_id[key].values() for key in keys], operation)  # (N, D)
                    if hot:
                        vectors = _assemble(bags[name].values() < hot, per_id[hot_key(name)].values(), vectors)
                    weights = bags[name].weights() if self._is_weighted else None
                    outputs.append(_pool(vectors, bags[name].offsets(), weights, self.modes[table.name]))
                else:
                    out = combine([pooled[key] for key in keys], operation)
                    outputs.append(pooled[hot_key(name)] + out if hot else out)
        return KeyedTensor(
            keys=self._embedding_names,
            values=torch.cat(outputs, dim=1),
            length_per_key=self._lengths_per_embedding,
        )

    # Quantisation. torch.ao's passes (which TorchRec's quantize_embeddings and quantize_inference_model
    # run) set ``qconfig`` on every module they visit and delete it at the end of convert, after the
    # swaps: the deletion is where the wrapper checks that its partition tables were quantised together.
    @property
    def qconfig(self):
        try:
            return self.__dict__["_qconfig"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no qconfig") from None

    @qconfig.setter
    def qconfig(self, value) -> None:
        self.__dict__["_qconfig"] = value

    @qconfig.deleter
    def qconfig(self) -> None:
        del self.__dict__["_qconfig"]
        if self.unpooled is None or isinstance(self.unpooled, QuantEmbeddingCollection):
            return
        how = (
            f"its per-id tables ({', '.join(sorted(self.unpooled_tables))}: multi-hot mult, held in a TorchRec "
            "EmbeddingCollection, which quantize_embeddings maps only when asked) stay float. Quantise them "
            "with torchrec.inference.modules.quantize_inference_model, or pass quantize_embeddings "
            "additional_qconfig_spec_keys=[torchrec.EmbeddingCollection] and additional_mapping="
            "{torchrec.EmbeddingCollection: torchrec.quant.embedding_modules.EmbeddingCollection}"
        )
        if isinstance(self.pooled, QuantEmbeddingBagCollection):
            raise ValueError(f"quantisation swapped the pooled partition tables of {type(self).__name__} but {how}")
        warnings.warn(f"a quantisation pass left every partition table of {type(self).__name__} in float: {how}",
                      stacklevel=2)

    # Weights
    def partition_weights(self, table: str) -> list[Tensor]:
        """The ``k`` stored tables of a partitioned logical table, a hybrid's hot table first (unsharded
        module only)."""
        keys = [partition_key(table, j) for j in range(self.partitions[table].num_tables)]
        keys = [hot_key(table)] * (table in self.hot_rows) + keys
        if table in self.unpooled_tables:
            return [self.unpooled.embeddings[key].weight for key in keys]
        return [self.pooled.embedding_bags[key].weight for key in keys]

    @classmethod
    def from_collection(
        cls,
        collection: EmbeddingCollection,
        one_hot: bool | Collection[str] = False,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
    ) -> CompositionalEmbeddingBagCollection:
        """The TorchRec equivalent of a compembed ``EmbeddingCollection`` (per-feature or fused), with a
        copy of its weights.

        Every feature must be an operation-based bag (full, hashing, qr, gqr, crt), or a hybrid of one,
        with sum or mean pooling; path-based embeddings have no TorchRec form here.
        """
        tables, partitions, operations, hot_rows = [], {}, {}, {}
        for config in collection.configs:
            module = collection.feature_module(config.name)
            mode, composed = getattr(module, "mode", None), module
            if isinstance(module, HybridEmbeddingBag):
                composed = module.cold  # None when every id is hot: then a full table
                hot_rows[config.name] = module.hot_rows if composed is not None else 0
            if not isinstance(composed, (CompositionalEmbeddingBag, type(None))) or mode not in ("sum", "mean"):
                cold_reason = composed is not module and not isinstance(composed, (CompositionalEmbeddingBag, type(None)))
                scheme = repr(config.scheme) + (f" (cold part {config.cold_scheme!r})" if cold_reason else "")
                raise ValueError(
                    f"feature {config.name!r}: scheme {scheme} with mode {config.mode!r} has no "
                    "TorchRec form here (needs an operation-based scheme, or a hybrid of one, with sum or "
                    "mean pooling); train such tables data-parallel (torchrun), replicated on every rank"
                )
            if composed is not None and composed.padding_idx is not None:
                raise ValueError(f"feature {config.name!r}: padding_idx has no TorchRec equivalent")
            tables.append(
                EmbeddingBagConfig(
                    num_embeddings=config.num_embeddings, embedding_dim=config.embedding_dim, name=config.name,
                    feature_names=[config.name], pooling=PoolingType[mode.upper()],
                )
            )
            partitions[config.name] = composed.partition if composed is not None else Identity(config.num_embeddings)
            operations[config.name] = composed.operation if composed is not None else "mult"
        out = cls(tables, partitions, operations, one_hot=one_hot, is_weighted=is_weighted, device=device,
                  hot_rows=hot_rows)
        with torch.no_grad():
            for name in collection.feature_names:
                for target, source in zip(out.partition_weights(name), collection.table_weights(name)):
                    target.copy_(source)
        return out


def table_wise_constraints(module: CompositionalEmbeddingBagCollection) -> dict:
    """Planner constraints that shard every stored table of ``module`` whole onto one rank.

    Table-wise is the sharding seen to work on CPU with gloo (row-wise was not).
    """
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType

    return {
        config.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
        for config in module.partition_table_configs()
    }


def _unpooled_config(config: EmbeddingBagConfig) -> EmbeddingConfig:
    return EmbeddingConfig(
        num_embeddings=config.num_embeddings, embedding_dim=config.embedding_dim, name=config.name,
        feature_names=list(config.feature_names), data_type=config.data_type, init_fn=config.init_fn,
    )
