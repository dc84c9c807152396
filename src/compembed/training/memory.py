"""A run's memory, checked before anything is allocated.

A model too large for the machine fails late and badly without this check: torch's allocator refuses
it deep inside a module's constructor ("DefaultCPUAllocator: can't allocate memory"), or the kernel's
OOM killer ends the process once the tables are initialised and touched. ``check_memory`` builds the
model on the meta device (nothing is allocated), counts its parameters, buffers and the optimizer
state they will get, and refuses a run that needs more than the device has available.

The count is a lower bound of what training allocates: batches, activations and gradients come on
top. So a run it refuses cannot fit, and a run it lets through may still be too large.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import build_model
from ..models.factory import FeatureSpec
from ..planning import STATE_FACTORS, format_bytes
from .config import TrainConfig
from .optim import split_parameters, uses_sparse_gradients

__all__ = ["InsufficientMemoryError", "ModelMemory", "model_memory", "available_memory", "check_memory"]


class InsufficientMemoryError(ValueError):
    """The run's model and optimizer state need more memory than its device has available."""


@dataclass(frozen=True)
class ModelMemory:
    """Bytes a run's model holds: ``model`` (parameters and buffers) and ``state`` (its optimizers' state)."""

    model: int
    state: int

    @property
    def total(self) -> int:
        return self.model + self.state


def _state_bytes(params: list[torch.Tensor], optimizer: str, rowwise: bool) -> int:
    """Optimizer-state bytes of ``params``: one accumulator per row (a 1-D parameter: per value) when
    ``rowwise``, else ``planning.STATE_FACTORS`` values per value (row-wise Adagrad's dense layers use Adagrad)."""
    if rowwise:
        return sum(p.shape[0] * p.element_size() for p in params)
    factor = STATE_FACTORS["adagrad" if optimizer == "rowwise_adagrad" else optimizer]
    return int(sum(p.numel() * p.element_size() * factor for p in params))


def model_memory(config: TrainConfig, info: FeatureSpec) -> ModelMemory:
    """The bytes of ``config``'s model over ``info``'s features and of its optimizer state, counted on the
    meta device (nothing is allocated)."""
    model: nn.Module = build_model(config.model, info, sparse=uses_sparse_gradients(config.optim), device="meta")
    tables, dense = split_parameters(model)
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    name = config.optim.name
    state = _state_bytes(tables, name, rowwise=name == "rowwise_adagrad") + _state_bytes(dense, name, rowwise=False)
    return ModelMemory(held, state)


def _meminfo(path: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable + SwapFree`` in bytes (Linux), or None where the file or the fields are missing."""
    try:
        fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        return sum(int(fields[k].split()[0]) * 1024 for k in ("MemAvailable", "SwapFree"))
    except (OSError, KeyError, ValueError):
        return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory this process's cgroup may still take (its limit less its usage; v2, else v1), or None."""
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            text = (root / limit).read_text().strip()
            if text == "max":
                return None
            return max(0, int(text) - int((root / usage).read_text()))
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: torch.device | str) -> tuple[int, str] | None:
    """``(bytes, where they were read)`` a new allocation on ``device`` can take, or None where unknown.

    CPU: ``MemAvailable + SwapFree`` of ``/proc/meminfo``, capped by the cgroup's limit less its usage
    (hand-written: psutil is not a dependency and does not read cgroup limits). CUDA: the free memory
    ``torch.cuda.mem_get_info`` reports.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free on {device}"
    if device.type != "cpu":
        return None
    found = [(b, w) for b, w in ((_meminfo(), "MemAvailable + SwapFree in /proc/meminfo"),
                                 (_cgroup_room(), "the cgroup's memory limit less its usage")) if b is not None]
    return min(found) if found else None


def check_memory(config: TrainConfig, info: FeatureSpec, device: torch.device | str,
                 available: tuple[int, str] | None = None, training: bool = True) -> ModelMemory:
    """Refuse a run (``InsufficientMemoryError``) whose model, and optimizer state when ``training``, alone
    exceed the memory ``device`` has available (``available``: that memory, as ``available_memory`` gives
    it; read when None). Returns the count (``state`` 0 when not ``training``)."""
    need = model_memory(config, info)
    if not training:  # evaluating or serving a run: no optimizer
        need = ModelMemory(need.model, 0)
    available = available if available is not None else available_memory(device)
    if available is not None and need.total > available[0]:
        have, where = available
        parts = (f"{format_bytes(need.model)} of parameters and buffers, {format_bytes(need.state)} of "
                 f"{config.optim.name} state" if training else "its parameters and buffers")
        raise InsufficientMemoryError(
            f"the model needs at least {format_bytes(need.total)} ({parts}), more than the {format_bytes(have)} "
            f"available ({where}); make the tables smaller: `compembed plan DATA --budget SIZE` fits them to a "
            f"budget, or choose a smaller --robe-size, more --collisions or another --scheme")
    return need
