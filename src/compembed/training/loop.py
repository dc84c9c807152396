"""The training loop: deterministic, checkpointed, resumable to the same result, loud on NaN.

The loop itself is here; the run directory and resume checks are in ``rundir``, the metrics log in
``metrics_log``, validation, best parameters and early stopping in ``validation``, dead-ReLU
detection in ``liveness`` and the learning-rate warm-up in ``optim``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
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
    DistContext, barrier, broadcast_module, global_batch_loss, global_count, init_from_env, shutdown,
    sync_sparse_gradients, wrap_model,
)
from ..models import build_model
from .config import TrainConfig, config_to_dict
from .datasets import open_data
from .device import autocast, check_precision, grad_scaler, prefetch, resolve_device
from .evaluate import EvalResult, evaluate
from .hooks import TrainStepHooks
from .liveness import DeadUnitsWarning, LiveUnits
from .memory import check_memory
from .metrics_log import MetricsLog
from .optim import LinearWarmup, build_optimizers, uses_sparse_gradients
from .report import MemoryReport, memory_report
from .rundir import BEST, CHECKPOINT, CONFIG, METRICS, SUMMARY, RunDir
from .validation import Validation

__all__ = ["DeadUnitsWarning", "NonFiniteLossError", "RunResult", "open_data", "train", "train_step", "CHECKPOINT",
           "METRICS", "SUMMARY", "CONFIG", "BEST"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped without applying that step."""


@dataclass
class RunResult:
    """The outcome of a run (``to_dict()`` is what ``summary.json`` holds).

    ``evals`` and ``model`` hold the parameters of the best ``val`` loss with ``keep_best``, else the last.
    """

    config: TrainConfig
    memory: MemoryReport
    evals: dict[str, EvalResult]
    steps: int
    samples: int
    train_loss: float | None
    train_seconds: float
    model: nn.Module | None = field(default=None, repr=False)
    best: dict[str, Any] | None = None
    stopped_early: bool = False
    dead_layers: list[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.train_seconds if self.train_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The summary; ``best`` is the lowest ``val`` loss seen (step, epoch, val_loss, and whether the
        final ``evals`` use its parameters), ``dead_layers`` the dead-ReLU warnings of the run."""
        return {
            "arch": self.config.model.arch, "label": self.config.model.label(), "steps": self.steps,
            "samples": self.samples, "train_loss": self.train_loss, "train_seconds": self.train_seconds,
            "samples_per_s": self.samples_per_s, "memory": self.memory.to_dict(),
            "evals": {k: v.to_dict() for k, v in self.evals.items()}, "best": self.best,
            "stopped_early": self.stopped_early, "dead_layers": self.dead_layers, "config": config_to_dict(self.config),
        }


def train_step(model: nn.Module, optimizers: list[Optimizer], batch: Batch, names: list[str],
               ctx: DistContext | None = None, precision: str = "fp32",
               scaler: torch.amp.GradScaler | None = None) -> float:
    """One SGD step on ``batch``; returns the batch's mean BCE. Raises before updating if it is not finite.

    With a multi-process ``ctx`` (``model`` wrapped by ``distributed.wrap_model``), ``batch`` is this
    rank's shard: the step equals one on the whole global batch and the returned loss is its mean.
    ``precision`` ``bf16``/``fp16`` runs the forward pass under autocast on the batch's device (the loss
    is taken in float32); ``scaler`` (fp16) scales the loss and skips steps whose gradients overflow.
    """
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    with autocast(precision, batch.labels.device):
        logits = model(batch.dense, batch.features(names))
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels)
    if ctx is not None and ctx.distributed:
        loss, value, _ = global_batch_loss(loss, len(batch), ctx)
    else:
        value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss is {value}")
    (loss if scaler is None else scaler.scale(loss)).backward()
    if ctx is not None:
        sync_sparse_gradients(model, ctx)
    for optimizer in optimizers:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)  # unscales the gradients first; skips the step on inf/NaN
    if scaler is not None:
        scaler.update()
    return value


def train(
    config: TrainConfig,
    dataset: CTRDataset | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device = "cpu",
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
        device: where to compute: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (see ``device.resolve_device``).
            Not part of the config: a run may be resumed on another device. On CUDA the next batches
            are gathered and pinned in a background thread.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message names epoch, batch and step).
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        ValueError: CUDA asked for but not available; ``precision`` fp16 on the CPU.
    """
    device = resolve_device(device)
    check_precision(config.precision, device)
    dataset = dataset if dataset is not None else open_data(config.data)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    # torchrun's environment: one rank of a data-parallel job (gloo: this loop computes on CPU); else one process
    ctx = init_from_env(backend="gloo")
    try:
        if not ctx.distributed:
            ctx = dataclasses.replace(ctx, device=device)
        elif ctx.device != device:
            raise ValueError(f"device {device}: this torchrun job computes on {ctx.device} (backend "
                             f"{ctx.backend}); run it without --device")
        return _train(config, dataset, out_dir, resume, progress, on_step, ctx)
    finally:
        torch.set_num_threads(threads)
        shutdown(ctx)


def _train(config: TrainConfig, dataset: CTRDataset, out_dir: str | Path | None, resume: bool, progress: bool,
           on_step: Callable[[dict[str, Any]], None] | None, ctx: DistContext = DistContext()) -> RunResult:
    torch.manual_seed(config.seed)
    # Sparse gradients are built by torch's own ops; say so explicitly, which also silences its warning.
    torch.sparse.check_sparse_tensor_invariants.disable()
    check_memory(config, dataset.info, ctx.device)  # a clear error before the allocator's, or the OOM killer
    # on its device before the optimizers see it, so that a resumed optimizer state lands there too
    model = build_model(config.model, dataset.info, sparse=uses_sparse_gradients(config.optim)).to(ctx.device)
    optimizers = build_optimizers(model, config.optim)
    scaler = grad_scaler(config.precision, ctx.device) if config.precision == "fp16" else None
    warmup = LinearWarmup(optimizers, config.optim.warmup_steps)
    names = list(dataset.info.categorical_names)
    run = RunDir(out_dir, ctx)
    state = run.start(config, model, optimizers, resume)
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])  # the loss scale continues too
    log = MetricsLog(run.file(METRICS, writer=True), state)
    validation = Validation(config, model, dataset, state["val"], log, run.file(BEST), ctx)

    def checkpoint() -> None:
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        run.checkpoint(config, model, optimizers, state)

    def limit_reached() -> bool:
        return config.max_steps > 0 and state["step"] >= config.max_steps

    def epoch_batches() -> int:
        return dataset.num_batches("train", config.batch_size, world_size=ctx.world_size)

    net = wrap_model(model, ctx)  # DDP over the ranks (the model itself in one process)
    # modules that change their own parameters at set steps (CCE re-clusters); they reset the optimizer state
    # a CCE re-clustering (seconds to minutes) is announced above the progress bar, on its stream
    notify = (lambda message: tqdm.write(message, file=sys.stderr)) if progress and ctx.is_main else None
    sync = (lambda module: broadcast_module(module, ctx)) if ctx.distributed else None
    step_hooks = TrainStepHooks(model, optimizers, notify=notify, sync=sync)
    live_units = LiveUnits(model)
    model.train()
    try:
        while not state["done"] and not validation.stopped and state["epoch"] < config.epochs and not limit_reached():
            epoch = state["epoch"]
            total = epoch_batches()
            if config.max_steps:
                total = min(total, state["batch"] + config.max_steps - state["step"])
            bar = tqdm(total=total, initial=state["batch"], unit="batch", desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not progress or not ctx.is_main, dynamic_ncols=True, leave=False)
            batches = dataset.loader("train", config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch,
                                     start_batch=state["batch"], rank=ctx.rank, world_size=ctx.world_size)
            loader = prefetch(batches, ctx.device)  # on CUDA: gathered and pinned ahead in a thread
            interval = _Interval()
            for batch in loader:
                step = state["step"] + 1
                logged = step % config.log_every == 0
                warmup.apply(step)
                if logged:
                    live_units.arm()  # measured in this step's forward pass
                started = time.perf_counter()
                try:
                    loss = train_step(net, optimizers, batch, names, ctx, config.precision, scaler)
                except NonFiniteLossError as err:
                    bar.close()
                    where = f"epoch {epoch + 1}, batch {state['batch']} (step {step})"
                    last = run.last_checkpoint()
                    hint = f"; the last good checkpoint is {last}" if last is not None else ""
                    raise NonFiniteLossError(f"{err} at {where}: training stopped (try a lower learning rate, "
                                             f"check the input for NaN/inf){hint}") from None
                state["train_seconds"] += time.perf_counter() - started
                state["batch"] += 1
                state["step"] = step
                rows = global_count(len(batch), ctx)  # all ranks' rows of this global batch
                state["samples"] += rows
                state["loss_sum"] += loss * rows
                state["loss_count"] += rows
                state["interval_loss_sum"] += loss * rows
                state["interval_count"] += rows
                interval.samples += rows
                step_hooks(step)  # before validation and the checkpoint, which then see its result
                bar.update(1)
                if logged:
                    mean, rate = _log_train(state, epoch, interval, optimizers, live_units, log, ctx)
                    bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:,.0f}" if rate else "-")
                if validation.due(step):
                    validation.run(step, epoch)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint()
                if on_step is not None:
                    on_step(state)
                if limit_reached() or validation.stopped:
                    break
            loader.close()  # stops a prefetching thread now, not when the generator is collected
            bar.close()
            if validation.stopped or (limit_reached() and state["batch"] < epoch_batches()):
                break  # stopped mid-epoch (early stopping, max_steps): the final evaluation follows
            step_hooks(state["step"], epoch_end=True)
            state["epoch"] += 1
            state["batch"] = 0
            validation.run(state["step"], epoch)
            checkpoint()
    finally:
        live_units.close()

    if not state["done"]:
        # the end of the run is evaluated too (unless it was at the end of an epoch); it is in the last epoch
        in_epoch = state["epoch"] - 1 if state["batch"] == 0 and state["epoch"] > 0 else state["epoch"]
        validation.run(state["step"], in_epoch)
        state["done"] = True
        checkpoint()  # the last parameters
    barrier(ctx)  # rank 0 has written the best parameters before any rank reads them
    result = _final_evaluation(config, model, optimizers, dataset, state, validation, log)
    run.write_summary(result.to_dict())
    return result


class _Interval:
    """Wall-clock time and samples since the last training record (not part of the loop state)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.samples = time.perf_counter(), 0

    def rate(self) -> float | None:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else None


def _log_train(state: dict[str, Any], epoch: int, interval: _Interval, optimizers: list[Optimizer],
               live_units: LiveUnits, log: MetricsLog, ctx: DistContext) -> tuple[float, float | None]:
    """Write the training record of the step just taken, warn of newly dead ReLU layers, start the next
    interval; returns the interval's mean loss and samples/s."""
    mean, rate = state["interval_loss_sum"] / state["interval_count"], interval.rate()
    live = live_units.collect(ctx)
    log.write({"kind": "train", "step": state["step"], "epoch": epoch, "batch": state["batch"],
               "samples": state["samples"], "loss": mean, "samples_per_s": rate,
               "lr": [group["lr"] for opt in optimizers for group in opt.param_groups], "live_units": live})
    for message in live_units.newly_dead(live, state["step"], state["dead_layers"]):
        if ctx.is_main:
            warnings.warn(message, DeadUnitsWarning)
    state["interval_loss_sum"], state["interval_count"] = 0.0, 0
    interval.reset()
    return mean, rate


def _final_evaluation(config: TrainConfig, model: nn.Module, optimizers: list[Optimizer], dataset: CTRDataset,
                      state: dict[str, Any], validation: Validation, log: MetricsLog) -> RunResult:
    """Evaluate every split with the final parameters (the best ones with ``keep_best``) and log it.

    Its records follow the done checkpoint, so a resumed finished run rewrites them (the log is cut
    back to the checkpoint's count) instead of doubling them.
    """
    params_step, known_val = validation.final_parameters(state["step"])
    splits = [s for s in config.eval_splits if dataset.info.split_sizes.get(s, 0) > 0]
    evals = {split: known_val if split == "val" and known_val is not None
             else evaluate(model, dataset, split, config.eval_batch_size) for split in splits}
    for result in evals.values():
        log.write({"kind": "eval", "step": state["step"], "epoch": state["epoch"], "final": True,
                   "params_step": params_step, **result.to_dict()})
    best = state["val"]["best"]
    return RunResult(
        config=config, memory=memory_report(model, optimizers), evals=evals, steps=state["step"], samples=state["samples"],
        train_loss=state["loss_sum"] / state["loss_count"] if state["loss_count"] else None,
        train_seconds=state["train_seconds"], model=model,
        best=None if best is None else {"step": best["step"], "epoch": best["epoch"], "val_loss": best["loss"],
                                        "used": params_step == best["step"]},
        stopped_early=state["val"]["stopped_early"], dead_layers=list(state["dead_layers"].values()),
    )
