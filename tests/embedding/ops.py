"""Helpers of the embedding tests: count the aten ops a piece of code dispatches, pool bags by definition,
check a feature's counted bytes."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compembed.embedding import EmbeddingCollection, FeatureConfig, FusedEmbeddingCollection
from compembed.planning import feature_bytes


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside its context (``count``): a loop over ids would grow it with the ids."""

    def __enter__(self):
        self.count = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(module: nn.Module, ids: torch.Tensor) -> int:
    """The aten ops of one forward and backward of ``module`` on ``ids``, starting from no gradient
    (so that no count includes an accumulation)."""
    module.zero_grad(set_to_none=True)
    with OpCounter() as counter:
        module(ids).sum().backward()
    return counter.count


def slow_bags(
    vector_of: Callable[[int], Sequence[float] | torch.Tensor],
    ids: Sequence[int] | torch.Tensor,
    offsets: Sequence[int] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None,
    mode: str,
    dim: int,
    include_last_offset: bool = False,
) -> torch.Tensor:
    """``nn.EmbeddingBag``'s pooling by its definition, one bag at a time, in float64: ``vector_of(x)``
    is the vector ``(D,)`` of id ``x``; 1-D ``ids`` are cut into bags at ``offsets``. Output ``(B, D)``."""
    ids, offsets = [int(x) for x in ids], [int(o) for o in offsets]
    ends = offsets[1:] if include_last_offset else offsets[1:] + [len(ids)]
    out = []
    for start, stop in zip(offsets, ends):
        vectors = [torch.as_tensor(vector_of(ids[i]), dtype=torch.float64) * (1.0 if weights is None else weights[i])
                   for i in range(start, stop)]
        if not vectors:  # an empty bag is zeros
            out.append(torch.zeros(dim, dtype=torch.float64))
            continue
        stacked = torch.stack(vectors)
        out.append({"sum": stacked.sum(0), "mean": stacked.mean(0), "max": stacked.max(0).values}[mode])
    return torch.stack(out)


def allocated_bytes_as_counted(config: FeatureConfig) -> list[tuple[nn.Module, int]]:
    """``(module, bytes allocated)`` of the one feature ``config`` in each collection (plain and fused,
    sparse), after checking that the collection's report and ``num_bytes`` and planning's
    ``feature_bytes`` count exactly the bytes allocated, and that the report lists the module's tables."""
    out = []
    for cls in (EmbeddingCollection, FusedEmbeddingCollection):
        collection = cls([config], sparse=True)
        allocated = sum(p.untyped_storage().nbytes() for p in collection.parameters())
        (report,) = collection.report()
        assert report.bytes == allocated == collection.num_bytes == feature_bytes(config)
        module = collection.feature_module(config.name)
        assert report.table_sizes == module.table_sizes
        out.append((module, allocated))
    return out
