"""Atomic checkpoints: every tensor in one safetensors file, the rest as JSON in its metadata.

One file per checkpoint means there is never a moment where the tensors and the state that
describes them disagree: the file is written to a temporary name, fsynced and renamed over the old
one. Loading uses ``safetensors`` only (no pickle), so a checkpoint from anywhere is safe to open.

The file also holds a sha256 of every tensor and of the JSON state (metadata key
``compembed_sha256``); a load whose bytes fail it, or whose state is not what compembed writes,
raises ``CheckpointCorruptError`` ("checkpoint corrupt: PATH: what"). Checkpoints written before
the checksums existed load unverified.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim import Optimizer

from ..io import atomic_replace

__all__ = ["FORMAT", "CheckpointCorruptError", "save_checkpoint", "load_checkpoint", "read_checkpoint_state",
           "check_state"]

FORMAT = "compembed-checkpoint-1"
_META_KEY = "compembed"
_SUM_KEY = "compembed_sha256"  # outside the JSON it checks


class CheckpointCorruptError(ValueError):
    """A checkpoint whose bytes fail their checksum or whose stored state is damaged."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint corrupt: {path}: {problem}")


def _sha256(data: bytes | torch.Tensor) -> str:
    """The hex sha256 of bytes, or of a CPU tensor's dtype, shape and bytes."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_state(value: Any, schema: Any, path: Path | str, where: str) -> None:
    """Raise ``CheckpointCorruptError`` unless the JSON ``value`` has the types of ``schema``.

    A schema is a type (``int`` excludes bools, ``float`` admits ints, ``dict`` any mapping), None
    (the value is null), a tuple of alternatives, or a dict of schemas: a dict value must hold all of
    its keys (other keys are left alone).
    """
    if _fits(value, schema):
        return
    if isinstance(schema, tuple) and isinstance(value, dict):  # say what is wrong inside the object
        schema = next((s for s in schema if isinstance(s, dict)), schema)
    if isinstance(schema, dict) and isinstance(value, dict):
        for key, sub in schema.items():
            if key not in value:
                raise CheckpointCorruptError(path, f"{where} lacks {key!r}")
            check_state(value[key], sub, path, f"{where}.{key}")
    raise CheckpointCorruptError(path, f"{where} is {value!r:.80}, expected {_describe(schema)}")


def _fits(value: Any, schema: Any) -> bool:
    if isinstance(schema, tuple):
        return any(_fits(value, s) for s in schema)
    if schema is None:
        return value is None
    if isinstance(schema, dict):
        return isinstance(value, dict) and all(k in value and _fits(value[k], s) for k, s in schema.items())
    if schema in (int, float):
        return isinstance(value, (int, float) if schema is float else int) and not isinstance(value, bool)
    return isinstance(value, schema)


def _describe(schema: Any) -> str:
    if isinstance(schema, tuple):
        return " or ".join(_describe(s) for s in schema)
    if schema is None:
        return "null"
    name = "object" if isinstance(schema, dict) else schema.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


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
    tensors = {k: v.cpu() for k, v in tensors.items()}  # hashed here, and safetensors writes from the CPU anyway
    meta = json.dumps({"format": FORMAT, "state": state, "optimizer_plain": plain, "num_optimizers": len(optimizers)})
    sums = json.dumps({"meta": _sha256(meta.encode()), "tensors": {k: _sha256(v) for k, v in sorted(tensors.items())}})
    atomic_replace(lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: meta, _SUM_KEY: sums}), path)


# What compembed writes besides the tensors; older checkpoints have the same.
_META_SCHEMA = {"format": str, "state": dict, "optimizer_plain": dict, "num_optimizers": int}


def _read(path: Path, with_tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (checked against their checksums; none unless ``with_tensors``) and the metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path)) if with_tensors else {}
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointCorruptError(path, f"not a readable safetensors file: {err}") from None
    raw, sums = header.get(_META_KEY), header.get(_SUM_KEY)
    if raw is None:
        raise ValueError(f"checkpoint {path} has no compembed metadata (not written by compembed?)")
    if sums is not None:
        try:
            sums = json.loads(sums)
        except ValueError:
            raise CheckpointCorruptError(path, "its checksums are not valid JSON") from None
        check_state(sums, {"meta": str, "tensors": dict}, path, "checksums")
        if _sha256(raw.encode()) != sums["meta"]:
            raise CheckpointCorruptError(path, "its JSON state fails its checksum (sha256)")
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise CheckpointCorruptError(path, f"its JSON state is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointCorruptError(path, f"its JSON state is {meta!r:.80}, not an object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r:.80}, expected {FORMAT!r}")
    check_state(meta, _META_SCHEMA, path, "metadata")
    if sums is not None and with_tensors:
        _verify(path, tensors, sums["tensors"])
    return tensors, meta


def _verify(path: Path, tensors: dict[str, torch.Tensor], sums: dict[str, Any]) -> None:
    if set(tensors) != set(sums):
        missing, extra = sorted(set(sums) - set(tensors)), sorted(set(tensors) - set(sums))
        raise CheckpointCorruptError(path, f"its tensors differ from those written (missing {missing}, "
                                           f"unexpected {extra})")
    for name in sorted(tensors):
        if _sha256(tensors[name]) != sums[name]:
            raise CheckpointCorruptError(path, f"tensor {name!r} fails its checksum (sha256): the file changed "
                                               "after it was written")


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The JSON state stored with a checkpoint (its tensors are neither read nor verified)."""
    return _read(path, with_tensors=False)[1]["state"]


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
            try:
                state: dict[int, dict[str, Any]] = {}
                prefix = f"optim.{i}."
                for source in (tensors, meta["optimizer_plain"]):
                    for name, value in source.items():
                        if name.startswith(prefix):
                            pid, key = name[len(prefix):].split(".", 1)
                            state.setdefault(int(pid), {})[key] = value
                # Hyperparameters come from this run's config; only the accumulated state is restored.
                optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
            except (KeyError, ValueError, TypeError, RuntimeError) as err:
                raise CheckpointCorruptError(path, f"the state of optimizer {i} does not load: {err}") from None
        rng = tensors.get("rng.torch")
        if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
            raise CheckpointCorruptError(path, f"the RNG state 'rng.torch' is missing or malformed ({rng!r:.80})")
        try:
            torch.set_rng_state(rng)
        except RuntimeError as err:
            raise CheckpointCorruptError(path, f"the RNG state 'rng.torch' does not load: {err}") from None
    return meta["state"]
