"""Multi-process data-parallel training with torch.distributed (DDP), started by ``torchrun``.

Typical use inside a training loop::

    ctx = init_from_env()                        # gloo on CPU, NCCL on GPU; single process without torchrun
    net = wrap_model(model, ctx)                 # DDP when world_size > 1
    for batch in dataset.loader("train", b, rank=ctx.rank, world_size=ctx.world_size):
        local = bce(net(...), batch.labels)
        loss, global_mean, n = global_batch_loss(local, len(batch), ctx)
        loss.backward(); sync_sparse_gradients(net, ctx); step()
    if ctx.is_main: save_checkpoint(...)         # only rank 0 writes
"""
from .context import DistContext, barrier, init_from_env, shutdown
from .ddp import (
    all_reduce_sums,
    broadcast_module,
    broadcast_object,
    broadcast_tensor,
    global_batch_loss,
    global_count,
    sparse_parameters,
    sync_sparse_gradients,
    unwrap_model,
    wrap_model,
)

__all__ = [
    "DistContext", "all_reduce_sums", "barrier", "broadcast_module", "broadcast_object", "broadcast_tensor", "global_batch_loss", "global_count",
    "init_from_env",
    "shutdown", "sparse_parameters", "sync_sparse_gradients", "unwrap_model", "wrap_model",
]
