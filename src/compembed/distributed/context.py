"""Process-group setup from ``torchrun``'s environment, and who does what.

``torchrun --nproc-per-node N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` for each process. :func:`init_from_env` reads them and joins the group (gloo on
CPU, NCCL when CUDA is available); without them it returns the single-process context, so the same
code runs with and without ``torchrun``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_from_env", "shutdown", "barrier"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        backend: ``"gloo"``, ``"nccl"``, or None when not distributed.
        device: where this rank computes.
        owns_group: this context created the process group (so :func:`shutdown` should end it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes checkpoints, logs and summaries."""
        return self.rank == 0


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (idempotent).

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
        timeout_s: how long a collective may wait for the slowest rank.

    Returns the single-process context when ``WORLD_SIZE`` is unset or 1.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, _device(backend, local_rank))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} are not set: start the job with torchrun")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: run with one process")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _device(backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, device, owns_group=True)


def shutdown(ctx: DistContext, timeout_s: float = 30.0) -> None:
    """End the process group if ``ctx`` started it, after the other ranks reach this point too.

    Without that wait a rank that finished its last collective may close its connections while a
    peer still waits for that collective's final message, which aborts the peer ("terminate called
    without an active exception"). A rank that never arrives (it failed elsewhere) is waited for at
    most ``timeout_s`` on gloo; torchrun then stops the job.
    """
    if not (ctx.owns_group and dist.is_initialized()):
        return
    try:
        if ctx.backend == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except RuntimeError:
        pass  # a peer is gone or stuck: end this rank anyway
    dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def _device(backend: str, local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
