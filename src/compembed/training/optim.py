"""Optimizers: a sparse (row-wise) one for the embedding tables, a dense one for the layers.

| name            | embedding tables (``embedding_update="sparse"``)  | dense layers            |
|-----------------|---------------------------------------------------|-------------------------|
| sgd             | ``optim.SparseSGD`` (equals ``torch.optim.SGD``)   | ``torch.optim.SGD``     |
| adagrad         | ``optim.SparseAdagrad`` (equals ``torch.optim.Adagrad``) | ``torch.optim.Adagrad`` |
| rowwise_adagrad | ``optim.RowWiseAdagrad`` (one accumulator per row) | ``torch.optim.Adagrad`` |
| adam            | ``torch.optim.SparseAdam`` (lazy Adam)             | ``torch.optim.Adam``    |
| amsgrad         | ``SparseAMSGrad`` below (lazy AMSGrad)             | ``Adam(amsgrad=True)``  |

``SparseSGD``/``SparseAdagrad`` compute torch's update but touch only the rows of the batch
(``torch.optim.SGD`` adds a sparse gradient to the whole table, ``torch.optim.Adagrad`` builds
several sparse tensors per step); ``build_optimizers(..., fast=False)`` gives the torch ones, the
reference the benchmark times them against. Row-wise Adagrad (FBGEMM's, production DLRM's) keeps
``s[i] += mean(G_i**2)`` per row and steps ``W[i] -= lr * G_i / (sqrt(s[i]) + eps)``: its state is
one float per row instead of one per value. Its dense layers use plain (element-wise) Adagrad, as
FBGEMM's fused row-wise optimizer leaves the MLPs to a dense optimizer.

torch has no sparse AMSGrad (``SparseAdam`` has no ``amsgrad``), so ``SparseAMSGrad`` provides the
lazy variant: rows a batch does not touch keep their moments unchanged instead of decaying them.
With ``embedding_update="dense"`` the tables get dense gradients and the dense optimizer's exact
update instead (every row's moments decay each step; costs time proportional to the table size).

``LinearWarmup`` scales both optimizers' learning rates during the first steps; it derives them from
the step number alone, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..optim import RowWiseAdagrad, SparseAdagrad, SparseSGD
from .config import OptimConfig

__all__ = ["LinearWarmup", "SparseAMSGrad", "build_optimizers", "table_optimizer", "uses_sparse_gradients",
           "split_parameters"]


class SparseAMSGrad(Optimizer):
    """AMSGrad that updates only the rows present in a sparse gradient (lazy, like ``SparseAdam``).

    For a dense gradient it is exactly ``torch.optim.Adam(amsgrad=True)``. State per parameter:
    ``step`` (shared by all rows, for bias correction, as in ``SparseAdam``), ``exp_avg``,
    ``exp_avg_sq`` and ``max_exp_avg_sq``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not lr > 0 or not eps > 0:
            raise ValueError(f"lr and eps must be > 0, got lr={lr}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:
                    rows, values = None, grad
                pick = (lambda t: t[rows]) if rows is not None else (lambda t: t)
                exp_avg = pick(state["exp_avg"]).lerp_(values, 1 - beta1)
                exp_avg_sq = pick(state["exp_avg_sq"]).mul_(beta2).addcmul_(values, values, value=1 - beta2)
                max_sq = torch.maximum(pick(state["max_exp_avg_sq"]), exp_avg_sq)
                denom = (max_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
                update = exp_avg / denom * (-group["lr"] / (1 - beta1**step))
                if rows is None:
                    state["exp_avg"].copy_(exp_avg)
                    state["exp_avg_sq"].copy_(exp_avg_sq)
                    state["max_exp_avg_sq"].copy_(max_sq)
                    p.add_(update)
                else:
                    state["exp_avg"][rows] = exp_avg
                    state["exp_avg_sq"][rows] = exp_avg_sq
                    state["max_exp_avg_sq"][rows] = max_sq
                    p.index_add_(0, rows, update)
        return loss


def uses_sparse_gradients(config: OptimConfig) -> bool:
    """Whether the embedding tables should produce sparse gradients."""
    return config.embedding_update == "sparse"


def split_parameters(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """``(embedding table parameters, all other parameters)``; the model keeps its tables in ``.embeddings``."""
    table_ids = {id(p) for p in model.embeddings.parameters()}
    tables = [p for p in model.embeddings.parameters() if p.requires_grad]
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
    return tables, dense


def _dense_optimizer(config: OptimConfig, params: list[Tensor], lr: float) -> Optimizer:
    betas = (config.beta1, config.beta2)
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if config.name in ("adagrad", "rowwise_adagrad"):
        return torch.optim.Adagrad(params, lr=lr, eps=config.eps)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=config.eps, amsgrad=config.name == "amsgrad")


def table_optimizer(config: OptimConfig, params: list[Tensor], lr: float, fast: bool = True) -> Optimizer:
    """The optimizer of the embedding tables ``params`` (see the module's table; ``fast``: see ``build_optimizers``)."""
    betas = (config.beta1, config.beta2)
    if config.name == "rowwise_adagrad":  # dense gradients too: the same formula over every row
        return RowWiseAdagrad(params, lr=lr, eps=config.eps)
    if not uses_sparse_gradients(config):
        return _dense_optimizer(config, params, lr)
    if config.name == "sgd":
        return SparseSGD(params, lr=lr) if fast else torch.optim.SGD(params, lr=lr)
    if config.name == "adagrad":
        return SparseAdagrad(params, lr=lr, eps=config.eps) if fast else torch.optim.Adagrad(params, lr=lr, eps=config.eps)
    if config.name == "adam":
        return torch.optim.SparseAdam(params, lr=lr, betas=betas, eps=config.eps)
    return SparseAMSGrad(params, lr=lr, betas=betas, eps=config.eps)


def build_optimizers(model: nn.Module, config: OptimConfig, fast: bool = True) -> list[Optimizer]:
    """``[embedding optimizer, dense optimizer]`` (either left out when it has no parameters).

    ``fast=False`` trains the tables of ``sgd``/``adagrad`` with ``torch.optim.SGD``/``Adagrad``
    on the sparse gradients instead (the same update, slower): the benchmark's reference.
    """
    tables, dense = split_parameters(model)
    table_lr = config.embedding_lr or config.lr
    optimizers: list[Optimizer] = []
    if tables:
        if config.name == "adam" and uses_sparse_gradients(config):
            # SparseAdam refuses dense gradients: tables without rows (DHE's MLP) get Adam at the tables' rate.
            always_dense = {id(p) for m in model.embeddings.modules() if getattr(m, "dense_gradients", False)
                            for p in m.parameters()}
            sparse_tables = [p for p in tables if id(p) not in always_dense]
            if sparse_tables:
                optimizers.append(table_optimizer(config, sparse_tables, table_lr, fast))
            if len(sparse_tables) < len(tables):
                optimizers.append(_dense_optimizer(config, [p for p in tables if id(p) in always_dense], table_lr))
        else:
            optimizers.append(table_optimizer(config, tables, table_lr, fast))
    if dense:
        optimizers.append(_dense_optimizer(config, dense, config.lr))
    return optimizers


class LinearWarmup:
    """Linear learning-rate warm-up: step ``s`` (1, 2, ...) uses ``base_lr * min(1, s / warmup_steps)``.

    The base rates are the param groups' rates when it is built. ``apply(step)`` sets them before
    that step; being a function of the step alone, it continues a resumed run exactly.
    """

    def __init__(self, optimizers: list[Optimizer], warmup_steps: int) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.optimizers, self.warmup_steps = optimizers, warmup_steps
        self.base_lrs = [[group["lr"] for group in opt.param_groups] for opt in optimizers]

    def factor(self, step: int) -> float:
        """The share of the base rates that step ``step`` (1-based) uses."""
        return min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0

    def apply(self, step: int) -> None:
        """Set every param group's rate for step ``step`` (1-based)."""
        if not self.warmup_steps:
            return
        factor = self.factor(step)
        for opt, bases in zip(self.optimizers, self.base_lrs):
            for group, base in zip(opt.param_groups, bases):
                group["lr"] = base * factor
