"""The training loop: deterministic, checkpointed, resumable to the same result, loud on NaN."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from tqdm.auto import tqdm

from ..data.batch import Batch
from ..data.dataset import CTRDataset
from ..distributed import (
    DistContext, global_batch_loss, global_count, init_from_env, shutdown, sync_sparse_gradients, wrap_model,
)
from ..models import build_model
from ..io import atomic_write_bytes
from .checkpoint import load_checkpoint, read_checkpoint_state, save_checkpoint
from .config import DataConfig, TrainConfig, config_to_dict, save_config
from .evaluate import EvalResult, evaluate
from .optim import build_optimizers, uses_sparse_gradients
from .report import MemoryReport, memory_report

__all__ = ["NonFiniteLossError", "RunResult", "open_data", "train", "train_step", "CHECKPOINT", "METRICS",
           "SUMMARY", "CONFIG"]

CHECKPOINT, METRICS, SUMMARY, CONFIG = "checkpoint.safetensors", "metrics.jsonl", "summary.json", "config.toml"
# Config fields that do not change the result, so a run may be resumed with other values.
_RESULT_NEUTRAL = {"eval_batch_size", "threads"}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped without applying that step."""


@dataclass
class RunResult:
    """The outcome of a run (``to_dict()`` is what ``summary.json`` holds)."""

    config: TrainConfig
    memory: MemoryReport
    evals: dict[str, EvalResult]
    steps: int
    samples: int
    train_loss: float | None
    train_seconds: float
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.train_seconds if self.train_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.config.model.arch, "label": self.config.model.label(), "steps": self.steps,
            "samples": self.samples, "train_loss": self.train_loss, "train_seconds": self.train_seconds,
            "samples_per_s": self.samples_per_s, "memory": self.memory.to_dict(),
            "evals": {k: v.to_dict() for k, v in self.evals.items()}, "config": config_to_dict(self.config),
        }


def open_data(config: DataConfig) -> CTRDataset:
    """The dataset a data config names: the synthetic generator or a prepared directory."""
    if config.source == "synthetic":
        from ..data.synthetic import SyntheticConfig, SyntheticCTR

        return SyntheticCTR(SyntheticConfig(num_rows=config.rows, cardinality_scale=config.cardinality_scale,
                                            seed=config.seed, id_order=config.id_order))
    from ..data import open_dataset

    return open_dataset(config.source)


def train_step(model: nn.Module, optimizers: list[Optimizer], batch: Batch, names: list[str],
               ctx: DistContext | None = None) -> float:
    """One SGD step on ``batch``; returns the batch's mean BCE. Raises before updating if it is not finite.

    With a multi-process ``ctx`` (``model`` wrapped by ``distributed.wrap_model``), ``batch`` is this
    rank's shard: the step equals one on the whole global batch and the returned loss is its mean.
    """
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(model(batch.dense, batch.features(names)), batch.labels)
    if ctx is not None and ctx.distributed:
        loss, value, _ = global_batch_loss(loss, len(batch), ctx)
    else:
        value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss is {value}")
    loss.backward()
    if ctx is not None:
        sync_sparse_gradients(model, ctx)
    for optimizer in optimizers:
        optimizer.step()
    return value


class _MetricsLog:
    """Append-only JSONL of training and evaluation records.

    The loop state counts the records written; on resume the file is cut back to the count the
    checkpoint saw, so records from after the checkpoint (rewritten by the resumed run) are not doubled.
    """

    def __init__(self, path: Path | None, state: dict[str, Any]) -> None:
        self.path, self.state = path, state
        if path is None:
            return
        lines = path.read_text().splitlines()[: state["records"]] if path.exists() else []
        atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())

    def write(self, record: dict[str, Any]) -> None:
        self.state["records"] += 1
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "loss_sum": 0.0, "loss_count": 0,
            "interval_loss_sum": 0.0, "interval_count": 0, "train_seconds": 0.0, "records": 0, "done": False}


def _check_resumable(stored: dict[str, Any], config: TrainConfig, path: Path) -> None:
    current = config_to_dict(config)
    diffs = []
    for section in sorted(set(stored) | set(current)):
        a, b = stored.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key) and not (section == "train" and key in _RESULT_NEUTRAL):
                diffs.append(f"[{section}] {key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    if diffs:
        raise ValueError(f"cannot resume from {path}: the config differs, so the result would too:\n  " + "\n  ".join(diffs))


def train(
    config: TrainConfig,
    dataset: CTRDataset | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train and evaluate the model ``config`` describes.

    Args:
        config: the run (model, optimizer, data, schedule, seed).
        dataset: the data (default: ``open_data(config.data)``).
        out_dir: where ``config.toml``, ``checkpoint.safetensors``, ``metrics.jsonl`` and
            ``summary.json`` go (None: nothing is written and nothing can be resumed).
        resume: continue the run in ``out_dir`` from its checkpoint (a fresh start if there is none).
            The result equals that of an uninterrupted run: data order, parameters, optimizer state
            and the RNG all continue from the checkpoint.
        progress: show a tqdm bar with samples/s and the loss.
        on_step: called with the loop state after every step (tests use it to interrupt a run).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message names epoch, batch and step).
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
    """
    dataset = dataset if dataset is not None else open_data(config.data)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    # torchrun's environment: one rank of a data-parallel job (gloo: this loop computes on CPU); else one process
    ctx = init_from_env(backend="gloo")
    try:
        return _train(config, dataset, out_dir, resume, progress, on_step, ctx)
    finally:
        torch.set_num_threads(threads)
        shutdown(ctx)


def _train(config: TrainConfig, dataset: CTRDataset, out_dir: str | Path | None, resume: bool, progress: bool,
           on_step: Callable[[dict[str, Any]], None] | None, ctx: DistContext = DistContext()) -> RunResult:
    torch.manual_seed(config.seed)
    # Sparse gradients are built by torch's own ops; say so explicitly, which also silences its warning.
    torch.sparse.check_sparse_tensor_invariants.disable()
    model = build_model(config.model, dataset.info, sparse=uses_sparse_gradients(config.optim))
    optimizers = build_optimizers(model, config.optim)
    names = list(dataset.info.categorical_names)
    state = {**_fresh_state(), "world_size": ctx.world_size}

    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / CHECKPOINT if out is not None else None
    if out is not None:
        if ckpt.exists() and not resume:
            raise FileExistsError(f"{out} already holds a run ({CHECKPOINT}); pass resume (--resume) to continue it "
                                  "or choose another output directory")
        if ckpt.exists():
            stored = read_checkpoint_state(ckpt)
            _check_resumable(stored["config"], config, ckpt)
            state = load_checkpoint(ckpt, model, optimizers)["loop"]
            if state.get("world_size", 1) != ctx.world_size:
                raise ValueError(f"cannot resume from {ckpt}: it was written by {state.get('world_size', 1)} "
                                 f"process(es), now {ctx.world_size}; resume with the same torchrun --nproc-per-node")
        out.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:  # only rank 0 writes
            save_config(config, out / CONFIG)
    log = _MetricsLog(out / METRICS if out is not None and ctx.is_main else None, state)

    def checkpoint() -> None:
        if ckpt is not None and ctx.is_main:
            save_checkpoint(ckpt, model, optimizers, {"loop": state, "config": config_to_dict(config)})

    def limit_reached() -> bool:
        return config.max_steps > 0 and state["step"] >= config.max_steps

    splits = [s for s in config.eval_splits if dataset.info.split_sizes.get(s, 0) > 0]
    net = wrap_model(model, ctx)  # DDP over the ranks (the model itself in one process)
    model.train()
    while not state["done"] and state["epoch"] < config.epochs and not limit_reached():
        epoch = state["epoch"]
        total = dataset.num_batches("train", config.batch_size, world_size=ctx.world_size)
        if config.max_steps:
            total = min(total, state["batch"] + config.max_steps - state["step"])
        bar = tqdm(total=total, initial=state["batch"], unit="batch", desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress or not ctx.is_main, dynamic_ncols=True, leave=False)
        loader = dataset.loader("train", config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch,
                                start_batch=state["batch"], rank=ctx.rank, world_size=ctx.world_size)
        interval_start, interval_samples = time.perf_counter(), 0
        for batch in loader:
            started = time.perf_counter()
            try:
                loss = train_step(net, optimizers, batch, names, ctx)
            except NonFiniteLossError as err:
                bar.close()
                where = f"epoch {epoch + 1}, batch {state['batch']} (step {state['step'] + 1})"
                hint = f"; the last good checkpoint is {ckpt}" if ckpt is not None and ckpt.exists() else ""
                raise NonFiniteLossError(f"{err} at {where}: training stopped (try a lower learning rate, "
                                         f"check the input for NaN/inf){hint}") from None
            state["train_seconds"] += time.perf_counter() - started
            state["batch"] += 1
            state["step"] += 1
            rows = global_count(len(batch), ctx)  # all ranks' rows of this global batch
            state["samples"] += rows
            state["loss_sum"] += loss * rows
            state["loss_count"] += rows
            state["interval_loss_sum"] += loss * rows
            state["interval_count"] += rows
            interval_samples += rows
            bar.update(1)
            if state["step"] % config.log_every == 0:
                elapsed = time.perf_counter() - interval_start
                mean = state["interval_loss_sum"] / state["interval_count"]
                rate = interval_samples / elapsed if elapsed > 0 else None
                log.write({"kind": "train", "step": state["step"], "epoch": epoch, "batch": state["batch"],
                           "samples": state["samples"], "loss": mean, "samples_per_s": rate})
                bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:,.0f}" if rate else "-")
                state["interval_loss_sum"], state["interval_count"] = 0.0, 0
                interval_start, interval_samples = time.perf_counter(), 0
            if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                checkpoint()
            if on_step is not None:
                on_step(state)
            if limit_reached():
                break
        bar.close()
        if limit_reached() and state["batch"] < dataset.num_batches("train", config.batch_size,
                                                                    world_size=ctx.world_size):
            break  # stopped mid-epoch by max_steps: the final evaluation follows
        state["epoch"] += 1
        state["batch"] = 0
        if state["epoch"] < config.epochs and not limit_reached() and "val" in splits:
            result = evaluate(model, dataset, "val", config.eval_batch_size)
            log.write({"kind": "eval", "step": state["step"], "epoch": epoch, **result.to_dict()})
        checkpoint()

    evals = {split: evaluate(model, dataset, split, config.eval_batch_size) for split in splits}
    if not state["done"]:
        for result in evals.values():
            log.write({"kind": "eval", "step": state["step"], "epoch": state["epoch"], "final": True,
                       **result.to_dict()})
        state["done"] = True
        checkpoint()
    result = RunResult(
        config=config, memory=memory_report(model), evals=evals, steps=state["step"], samples=state["samples"],
        train_loss=state["loss_sum"] / state["loss_count"] if state["loss_count"] else None,
        train_seconds=state["train_seconds"], model=model,
    )
    if out is not None and ctx.is_main:
        atomic_write_bytes(out / SUMMARY, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return result
