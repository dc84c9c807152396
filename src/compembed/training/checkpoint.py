"""Atomic checkpoints: every tensor in one safetensors file, the rest as JSON in its metadata.

One file per checkpoint means there is never a moment where the tensors and the state that
describes them disagree: the file is written to a temporary name, fsynced and renamed over the old
one. Loading uses ``safetensors`` only (no pickle), so a checkpoint from anywhere is safe to open.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim import Optimizer

from ..io import atomic_replace

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "read_checkpoint_state"]

FORMAT = "compembed-checkpoint-1"
_META_KEY = "compembed"


def _optimizer_tensors(index: int, optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for pid, entries in optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            name = f"optim.{index}.{pid}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().contiguous()
            else:
                plain[name] = value
    return tensors, plain


def save_checkpoint(path: Path, model: nn.Module, optimizers: list[Optimizer], state: dict[str, Any]) -> None:
    """Write the model, the optimizers' state and ``state`` (JSON-able) to ``path`` atomically."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    plain: dict[str, Any] = {}
    for i, optimizer in enumerate(optimizers):
        t, p = _optimizer_tensors(i, optimizer)
        tensors.update(t)
        plain.update(p)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": FORMAT, "state": state, "optimizer_plain": plain, "num_optimizers": len(optimizers)}
    atomic_replace(lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)}), path)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is not a readable safetensors file: {err}") from None
    if raw is None:
        raise ValueError(f"checkpoint {path} has no compembed metadata (not written by compembed?)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return tensors, meta


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The JSON state stored with a checkpoint."""
    return _read(path)[1]["state"]


def load_checkpoint(path: Path, model: nn.Module, optimizers: list[Optimizer] | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizers``, built the same way as when saved) from ``path``; return its state."""
    tensors, meta = _read(path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit this model (was it written with another config?): {err}") from None
    if optimizers is not None:
        if meta["num_optimizers"] != len(optimizers):
            raise ValueError(f"checkpoint {path} holds {meta['num_optimizers']} optimizers, this run has {len(optimizers)}")
        for i, optimizer in enumerate(optimizers):
            state: dict[int, dict[str, Any]] = {}
            prefix = f"optim.{i}."
            for source in (tensors, meta["optimizer_plain"]):
                for name, value in source.items():
                    if name.startswith(prefix):
                        pid, key = name[len(prefix):].split(".", 1)
                        state.setdefault(int(pid), {})[key] = value
            # Hyperparameters come from this run's config; only the accumulated state is restored.
            optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
    return meta["state"]
