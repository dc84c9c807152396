"""A run's directory: its files, the loop state, and the checks that make a resume continue the same run.

- ``config.toml``: the run's config, written at the start.
- ``checkpoint.safetensors``: the last parameters, the optimizers' state, the loop state, the RNG and
  the prepared dataset's identity (``data.store.dataset_identity``: a run resumes with its dataset
  moved or copied elsewhere); written every ``checkpoint_every`` steps, at the end of each epoch and
  of the run.
- ``best.safetensors``: the parameters of the lowest ``val`` loss so far (with ``keep_best``).
- ``metrics.jsonl``: training and evaluation records, as they come (see ``MetricsLog``).
- ``summary.json``: ``RunResult.to_dict()``, at the end.

Every file is written atomically, and only by rank 0 of a distributed job.
"""
from __future__ import annotations

import dataclasses
import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..data.store import dataset_identity
from ..distributed import DistContext
from ..io import atomic_write_bytes
from .checkpoint import CheckpointCorruptError, check_state, load_checkpoint, read_checkpoint_state, save_checkpoint
from .config import LEFT_OUT_AT, DataConfig, TrainConfig, config_from_dict, config_to_dict, load_config, save_config

__all__ = ["CHECKPOINT", "METRICS", "SUMMARY", "CONFIG", "BEST", "RunDir", "fresh_state", "check_resumable",
           "data_identity", "LOOP_SCHEMA", "BEST_SCHEMA", "TrainedRun", "load_run"]

CHECKPOINT, METRICS, SUMMARY, CONFIG = "checkpoint.safetensors", "metrics.jsonl", "summary.json", "config.toml"
BEST = "best.safetensors"
# Config fields that do not change the result, so a run may be resumed with other values.
_RESULT_NEUTRAL = {"eval_batch_size", "threads"}


def fresh_state(world_size: int = 1) -> dict[str, Any]:
    """The loop state of a run that has not started (JSON-able; saved with every checkpoint).

    ``val`` is the validation schedule's part (see ``validation.Validation``), ``dead_layers`` the
    dead-ReLU warnings given so far (layer -> message).
    """
    return {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "loss_sum": 0.0, "loss_count": 0,
            "interval_loss_sum": 0.0, "interval_count": 0, "train_seconds": 0.0, "records": 0, "done": False,
            "world_size": world_size, "val": {"last": None, "best": None, "bad": 0, "stopped_early": False},
            "dead_layers": {}}


# The types of the loop state (see checkpoint.check_state), checked when a checkpoint is loaded.
_RESULT = {"split": str, "samples": int, "loss": float, "accuracy": float, "auc": (float, None),
           "bayes_loss": (float, None)}  # an EvalResult
BEST_SCHEMA = {"step": int, "epoch": int, "loss": float, "result": _RESULT}
LOOP_SCHEMA = {"epoch": int, "batch": int, "step": int, "samples": int, "loss_sum": float, "loss_count": int,
               "interval_loss_sum": float, "interval_count": int, "train_seconds": float, "records": int,
               "done": bool, "world_size": int, "dead_layers": dict,
               "val": {"last": (None, {"step": int, "result": _RESULT}), "best": (None, BEST_SCHEMA), "bad": int,
                       "stopped_early": bool}}


def data_identity(data: DataConfig) -> str | None:
    """The identity of a run's prepared dataset (``data.store.dataset_identity``); None for synthetic data
    (its settings are the identity) or a directory without ``meta.json``."""
    return None if data.source == "synthetic" else dataset_identity(data.source)


def check_resumable(stored: dict[str, Any], config: TrainConfig, path: Path, same_data: bool = False) -> None:
    """Raise unless ``config`` gives the same result as the checkpoint's ``stored`` config (as a dict).

    Keys the stored config lacks (written before they existed) count as their defaults. ``same_data``:
    the checkpoint's dataset has this run's identity, so a new path to it (moved, copied, mounted
    elsewhere) is no difference.
    """
    try:
        stored = config_to_dict(config_from_dict(stored, where=str(path)))
    except ValueError:
        pass  # compare as stored: the differences name what changed
    current = config_to_dict(config)
    diffs = []
    for section in sorted(set(stored) | set(current)):
        a, b = stored.get(section, {}), current.get(section, {})
        if section == "train":  # keys left out at their default: show the value
            a, b = {**LEFT_OUT_AT, **a}, {**LEFT_OUT_AT, **b}
        for key in sorted(set(a) | set(b)):
            neutral = ((section == "train" and key in _RESULT_NEUTRAL)
                       or (section == "data" and key == "source" and same_data))
            if a.get(key) != b.get(key) and not neutral:
                diffs.append(f"[{section}] {key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    if diffs:
        raise ValueError(f"cannot resume from {path}: the config differs, so the result would too:\n  " + "\n  ".join(diffs))


class RunDir:
    """The run directory ``out`` (None: nothing is written and nothing can be resumed).

    Every rank reads it (to resume); only the main rank of ``ctx`` writes.
    """

    def __init__(self, out: str | Path | None, ctx: DistContext) -> None:
        self.path = Path(out) if out is not None else None
        self.ctx = ctx

    def file(self, name: str, writer: bool = False) -> Path | None:
        """The path of ``name`` in the directory; None without a directory, or for ``writer`` on a rank
        that does not write."""
        if self.path is None or (writer and not self.ctx.is_main):
            return None
        return self.path / name

    def start(self, config: TrainConfig, model: nn.Module, optimizers: list[Optimizer], resume: bool) -> dict[str, Any]:
        """Prepare the directory and return the loop state: fresh, or restored with ``model`` and
        ``optimizers`` from the checkpoint when ``resume`` (after checking that it is the same run).

        Raises:
            FileExistsError: the directory holds a run and ``resume`` is False.
            ValueError: the checkpoint's config, dataset (its identity, wherever it lies now) or world
                size differs from this run's.
        """
        state = fresh_state(self.ctx.world_size)
        if self.path is None:
            return state
        ckpt = self.path / CHECKPOINT
        if ckpt.exists() and not resume:
            raise FileExistsError(f"{self.path} already holds a run ({CHECKPOINT}); pass resume (--resume) to "
                                  "continue it or choose another output directory")
        if ckpt.exists():
            stored = read_checkpoint_state(ckpt)
            check_state(stored, {"loop": dict, "config": dict}, ckpt, "state")
            if not all(isinstance(section, dict) for section in stored["config"].values()):
                raise CheckpointCorruptError(ckpt, "its stored config is not a table of sections")
            identity, then = data_identity(config.data), stored.get("data")
            if identity is not None and then is not None and identity != then:
                raise ValueError(f"cannot resume from {ckpt}: {config.data.source} holds another dataset than the "
                                 f"run's ({identity}, the run's {then}: prepared from other data or otherwise), so "
                                 f"the result would differ")
            check_resumable(stored["config"], config, ckpt, same_data=identity is not None and then == identity)
            # keys a checkpoint lacks (written before they existed) start fresh; its world size is 1
            state = {**fresh_state(), **load_checkpoint(ckpt, model, optimizers)["loop"]}
            check_state(state, LOOP_SCHEMA, ckpt, "loop state")
            if state["world_size"] != self.ctx.world_size:
                raise ValueError(f"cannot resume from {ckpt}: it was written by {state['world_size']} process(es), "
                                 f"now {self.ctx.world_size}; resume with the same torchrun --nproc-per-node")
        self.path.mkdir(parents=True, exist_ok=True)
        if self.ctx.is_main:
            save_config(config, self.path / CONFIG)
        return state

    def checkpoint(self, config: TrainConfig, model: nn.Module, optimizers: list[Optimizer],
                   state: dict[str, Any]) -> None:
        """Save the last parameters, the optimizers' state and the loop state (main rank only)."""
        path = self.file(CHECKPOINT, writer=True)
        if path is not None:
            save_checkpoint(path, model, optimizers, {"loop": state, "config": config_to_dict(config),
                                                      "data": data_identity(config.data)})

    def last_checkpoint(self) -> Path | None:
        """The checkpoint on disk, if any (for error messages)."""
        path = self.file(CHECKPOINT)
        return path if path is not None and path.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        path = self.file(SUMMARY, writer=True)
        if path is not None:
            atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())


@dataclass
class TrainedRun:
    """A finished (or interrupted) run read back: its config, dataset, model and the parameters loaded."""

    config: TrainConfig
    dataset: Any  # a CTRDataset
    model: nn.Module
    checkpoint: Path


def load_run(run_dir: str | Path, last: bool = False, data: str | None = None) -> TrainedRun:
    """The model of the run in ``run_dir`` with the parameters ``compembed evaluate`` uses: those of the
    best validation loss (``best.safetensors``) when the run kept them and not ``last``, else the last
    (``checkpoint.safetensors``). ``data``: open this prepared dataset instead of the run's own.

    Raises:
        FileNotFoundError / NotADirectoryError: ``run_dir`` is not a run directory.
    """
    from ..models import build_model
    from .datasets import open_data
    from .memory import check_memory

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(errno.ENOENT, "no such run directory", str(run_dir))
    if not run_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory, so not a run of `compembed train`", str(run_dir))
    config = load_config(run_dir / CONFIG)
    if data:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=data))
    dataset = open_data(config.data)
    check_memory(config, dataset.info, "cpu", training=False)
    model = build_model(config.model, dataset.info)
    best = run_dir / BEST
    checkpoint = best if best.exists() and not last else run_dir / CHECKPOINT
    load_checkpoint(checkpoint, model)
    return TrainedRun(config, dataset, model.eval(), checkpoint)
