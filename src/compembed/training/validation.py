"""Validation during training: when to evaluate ``val``, the best parameters so far, and early stopping.

``val`` is evaluated every ``eval_every`` steps (if set), at the end of every epoch and at the end of
the run, at most once per step. Each evaluation is a ``metrics.jsonl`` record. The lowest loss so far
is the best: with ``keep_best`` its parameters are saved (``best.safetensors`` in the run directory,
else in memory) and the final evaluation uses them. With ``early_stopping`` = P the run stops after P
evaluations in a row without a lower loss than the best.

The schedule's progress lives in the loop state, so that a resumed run continues it exactly::

    state["val"] = {"last": {"step", "result"} | None,   # the last evaluation
                    "best": {"step", "epoch", "loss", "result"} | None,
                    "bad": int,                            # evaluations since the best
                    "stopped_early": bool}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.dataset import CTRDataset
from ..distributed import DistContext, broadcast_object
from .checkpoint import check_state, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluate import EvalResult, evaluate
from .metrics_log import MetricsLog
from .rundir import BEST_SCHEMA

__all__ = ["Validation"]


class Validation:
    """The validation schedule of one run.

    Args:
        config: the run's config (``eval_every``, ``early_stopping``, ``keep_best``, ``eval_batch_size``).
        model: the model being trained (not a DDP wrapper).
        dataset: evaluated on its ``val`` split; the schedule is off when that split is empty or not
            among ``config.eval_splits``.
        state: the loop state's ``val`` part (updated in place).
        log: where evaluation records go.
        best_path: where the best parameters go (None: kept in memory).
        ctx: the job. Rank 0 evaluates and every rank takes its result, so all ranks decide alike;
            only rank 0 writes ``best_path``, which every rank reads at the end (a shared directory,
            as for resuming).
    """

    def __init__(self, config: TrainConfig, model: nn.Module, dataset: CTRDataset, state: dict[str, Any],
                 log: MetricsLog, best_path: Path | None, ctx: DistContext = DistContext()) -> None:
        self.config, self.model, self.dataset, self.state, self.log = config, model, dataset, state, log
        self.best_path, self.ctx = best_path, ctx
        self.enabled = "val" in config.eval_splits and dataset.info.split_sizes.get("val", 0) > 0
        self.best_params: dict[str, torch.Tensor] | None = None  # without best_path
        if not self.enabled and (config.eval_every or config.early_stopping):
            raise ValueError("train config: eval_every and early_stopping evaluate the 'val' split, which this "
                             "dataset lacks or holds no rows")

    @property
    def stopped(self) -> bool:
        """Early stopping has ended the run."""
        return self.state["stopped_early"]

    def due(self, step: int) -> bool:
        """Whether ``eval_every`` asks for an evaluation after step ``step``."""
        return self.enabled and self.config.eval_every > 0 and step % self.config.eval_every == 0

    def run(self, step: int, epoch: int) -> None:
        """Evaluate ``val`` with the model's current parameters (those after step ``step``, in epoch
        ``epoch``, 0-based), unless that step was evaluated already; update the best and the patience."""
        last = self.state["last"]
        if not self.enabled or (last is not None and last["step"] == step):
            return
        result = evaluate(self.model, self.dataset, "val", self.config.eval_batch_size).to_dict() \
            if self.ctx.is_main else None
        result = broadcast_object(result, self.ctx)  # rank 0's loss decides on every rank
        best = self.state["best"]
        improved = best is None or result["loss"] < best["loss"]
        self.log.write({"kind": "eval", "step": step, "epoch": epoch, **result, "improved": improved})
        self.state["last"] = {"step": step, "result": result}
        if improved:
            self.state["best"] = {"step": step, "epoch": epoch, "loss": result["loss"], "result": result}
            self.state["bad"] = 0
            if self.config.keep_best:
                self._save_best()
        else:
            self.state["bad"] += 1
            if self.config.early_stopping and self.state["bad"] >= self.config.early_stopping:
                self.state["stopped_early"] = True

    def _save_best(self) -> None:
        if self.best_path is None:
            self.best_params = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        elif self.ctx.is_main:
            save_checkpoint(self.best_path, self.model, [], {"best": self.state["best"]})

    def final_parameters(self, step: int) -> tuple[int, EvalResult | None]:
        """Put the parameters of the final evaluation into the model; the model holds those after step
        ``step`` (the last). Returns the step whose parameters it holds then, and their ``val`` result
        when known (so it is not computed twice).

        With ``keep_best`` these are the best parameters, else the last ones.
        """
        best, last = self.state["best"], self.state["last"]
        if self.config.keep_best and best is not None:
            if best["step"] != step:
                self._load_best()
            return best["step"], EvalResult(**best["result"])
        known = last is not None and last["step"] == step
        return step, EvalResult(**last["result"]) if known else None

    def _load_best(self) -> None:
        best = self.state["best"]
        if self.best_path is None:
            if self.best_params is None:
                raise RuntimeError("the best parameters were not kept (a run without a directory cannot resume)")
            self.model.load_state_dict(self.best_params)
            return
        if not self.best_path.exists():
            raise FileNotFoundError(f"{self.best_path} is missing: it should hold the parameters of step "
                                    f"{best['step']}, the best val loss {best['loss']:.6g}")
        stored = load_checkpoint(self.best_path, self.model)
        check_state(stored, {"best": BEST_SCHEMA}, self.best_path, "state")
        stored = stored["best"]
        if stored["step"] != best["step"]:
            raise ValueError(f"{self.best_path} holds the parameters of step {stored['step']}, but the run's best "
                             f"val loss was at step {best['step']}: it belongs to another run")
