"""Data-parallel training pieces: the DDP wrapper, the global-batch loss, and metrics across ranks.

Every rank holds the whole model (compressed tables are small enough to replicate) and trains on
its own shard of each global batch. DDP averages the dense gradients over ranks during ``backward``;
the embedding tables' sparse gradients are averaged by :func:`sync_sparse_gradients` (each rank's
rows gathered, on gloo and NCCL alike). For the update to equal a single process's on the whole global batch, each rank's
loss is weighted by its share of the global batch (:func:`global_batch_loss`), which matters when
the last batch is split unevenly.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .context import DistContext

__all__ = [
    "wrap_model", "unwrap_model", "sparse_parameters", "sync_sparse_gradients", "global_batch_loss", "global_count",
    "all_reduce_sums", "broadcast_object", "broadcast_tensor", "broadcast_module",
]

# Dtypes that neither gloo nor NCCL collectives take ("Invalid scalar type"), e.g. CCE's int16 assignment
# (k from 257 to 32768): they travel as their bytes.
BYTES_ONLY = (torch.int16, torch.uint16, torch.uint32, torch.uint64)


def sparse_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters whose gradients are sparse: those of every module with ``sparse=True`` (compembed's
    embedding modules and collections, ``nn.Embedding(sparse=True)``) but not of a module inside it whose
    gradients are dense whatever ``sparse`` says (``dense_gradients = True``: DHE's MLP, in a sparse
    collection); in a fixed name order (the same on every rank)."""
    dense = {id(p) for m in model.modules() if getattr(m, "dense_gradients", False) for p in m.parameters()}
    names = {}
    for prefix, module in model.named_modules():
        if getattr(module, "sparse", False) is True:
            for name, param in module.named_parameters(prefix=prefix):
                if param.requires_grad and id(param) not in dense:
                    names[name] = param
    return sorted(names.items())


def broadcast_tensor(tensor: Tensor, src: int = 0) -> None:
    """Overwrite ``tensor`` (contiguous) in place with rank ``src``'s, whatever its dtype (``BYTES_ONLY``
    dtypes as their bytes)."""
    with torch.no_grad():
        dist.broadcast(tensor.view(-1).view(torch.uint8) if tensor.dtype in BYTES_ONLY else tensor, src=src)


def broadcast_module(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers of ``module`` (in place; nothing in one process)."""
    if ctx.distributed:
        for tensor in [*module.parameters(), *module.buffers()]:
            broadcast_tensor(tensor, src)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` on ``ctx.device``, in DDP when the job has several ranks.

    DDP all-reduces the dense gradients during ``backward`` (overlapped with it, in buckets); it
    detects sparse gradients only for ``nn.Embedding``, so the sparse tables are left to
    :func:`sync_sparse_gradients`, to be called after ``backward``. Every rank starts from rank 0's
    parameters and buffers. DDP also re-sends rank 0's buffers before every forward, except those of a
    ``BYTES_ONLY`` dtype, which it cannot send: they are sent once here, and a module that changes them
    must keep the ranks equal itself (the training loop broadcasts a re-clustered CCE module).

    A table trained with dense gradients (a module with ``sparse=False``) may go unused by one rank's
    batch: mixed dimensions' blocks, TT-Rec's cache, a hybrid's hot rows look up only the ids they hold.
    DDP then waits for a gradient that never comes, and the ranks' collectives no longer match. With
    such tables DDP looks for unused parameters after every forward (``find_unused_parameters``, a
    walk over the autograd graph); with sparse tables it has only the MLPs, always used, and does not.
    """
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    sparse = sparse_parameters(model)
    for _, param in sparse:  # DDP broadcasts only the parameters it manages
        broadcast_tensor(param)
    sparse_ids = {id(p) for _, p in sparse}
    if not any(p.requires_grad and id(p) not in sparse_ids for p in model.parameters()):
        for buffer in model.buffers():  # nothing dense to reduce: no DDP, so no buffer sync either
            broadcast_tensor(buffer)
        return model  # the sparse sync does it all
    bytes_only = [(name, b) for name, b in model.named_buffers() if b.dtype in BYTES_ONLY]
    for _, buffer in bytes_only:  # buffers DDP cannot send
        broadcast_tensor(buffer)
    ignored = [n for n, _ in sparse] + [n for n, _ in bytes_only]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    dense_tables = any(getattr(m, "sparse", None) is False and any(True for _ in m.parameters()) for m in model.modules())
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=dense_tables)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the one to checkpoint and evaluate)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_sparse_gradients(model: nn.Module, ctx: DistContext) -> None:
    """Average the sparse table gradients over ranks, as DDP does for the dense ones.

    Each rank's gradient rows are gathered (three collectives for all tables together: the row
    counts, the row indices, the row values) and concatenated; the result is a sparse gradient
    holding every rank's rows divided by ``world_size``, uncoalesced (the optimizers sum
    duplicate rows). A rank whose batch reached no row of a table contributes no rows.
    """
    if not ctx.distributed:
        return
    params = [p for _, p in sparse_parameters(unwrap_model(model))]
    if not params:
        return
    device = params[0].device
    rows, values = [], []
    for p in params:
        grad = p.grad
        if grad is not None and not grad.is_sparse:
            raise RuntimeError("a parameter of a sparse=True module has a dense gradient; "
                               "build the model with sparse=False to train it with dense gradients")
        if grad is None:
            rows.append(torch.empty(0, dtype=torch.int64, device=device))
            values.append(p.new_empty((0, *p.shape[1:])))
        else:
            grad = grad.coalesce()
            rows.append(grad.indices()[0])
            values.append(grad.values())
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)
    all_counts = _all_gather_padded(counts, ctx)  # world x (k,)
    all_rows = _all_gather_padded(torch.cat(rows), ctx)
    all_values = _all_gather_padded(torch.cat([v.reshape(-1) for v in values]), ctx)
    row_numel = [p[0].numel() if p.dim() > 1 else 1 for p in params]
    gathered: list[list[tuple[Tensor, Tensor]]] = [[] for _ in params]
    for counts_r, rows_r, values_r in zip(all_counts, all_rows, all_values):
        sizes = counts_r.tolist()
        rows_split = rows_r.split(sizes)
        values_split = values_r.split([n * d for n, d in zip(sizes, row_numel)])
        for i, (r, v) in enumerate(zip(rows_split, values_split)):
            gathered[i].append((r, v))
    for p, parts in zip(params, gathered):
        index = torch.cat([r for r, _ in parts]).unsqueeze(0)
        vals = torch.cat([v for _, v in parts]).view(-1, *p.shape[1:]) / ctx.world_size
        p.grad = torch.sparse_coo_tensor(index, vals, p.shape) if index.numel() else None


def _all_gather_padded(tensor: Tensor, ctx: DistContext) -> list[Tensor]:
    """Every rank's 1-D ``tensor`` (lengths may differ between ranks)."""
    length = torch.tensor([tensor.numel()], dtype=torch.int64, device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(ctx.world_size)]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    padded = tensor.new_zeros(max(sizes))
    padded[: tensor.numel()] = tensor
    out = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded)
    return [o[:n] for o, n in zip(out, sizes)]


def global_batch_loss(local_mean: Tensor, local_count: int, ctx: DistContext) -> tuple[Tensor, float, int]:
    """Scale this rank's mean loss so that DDP's gradient average is the global batch's mean gradient.

    Args:
        local_mean: this rank's mean loss over its ``local_count`` samples (a scalar with grad).
        local_count: samples of this rank's shard (may differ between ranks on the last batch).

    Returns:
        ``(loss to backward, global mean loss as a float, global sample count)``; in one process the
        loss itself, its value and ``local_count``. One small all-reduce per step.
    """
    if not ctx.distributed:
        return local_mean, local_mean.item(), local_count
    stats = torch.stack([local_mean.detach().double() * local_count, torch.tensor(float(local_count), dtype=torch.float64, device=local_mean.device)])
    dist.all_reduce(stats)
    total, count = stats[0].item(), int(stats[1].item())
    # DDP divides the summed gradients by world_size: weight this rank by world_size * n_r / N.
    scale = ctx.world_size * local_count / count if count else 0.0
    return local_mean * scale, total / count if count else float("nan"), count


def global_count(local_count: int, ctx: DistContext) -> int:
    """Samples of the global batch: the sum of every rank's ``local_count``."""
    if not ctx.distributed:
        return local_count
    count = torch.tensor([local_count], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(count)
    return int(count.item())


def all_reduce_sums(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each value over all ranks (one collective); identity in one process."""
    if not ctx.distributed:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (a picklable Python object)."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
