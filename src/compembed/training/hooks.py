"""Training-step hooks of modules that change their own parameters during training (CCE's re-clustering).

A module takes part by having a method ``on_train_step(step: int, epoch_end: bool) -> list[nn.Parameter]``.
The loop calls it after every optimizer step with the global step (``epoch_end=False``) and once at
the end of every epoch (``epoch_end=True``, after that epoch's last step), before validation and the
checkpoint. The module returns the parameters it re-initialised (an empty list when it did nothing);
their optimizer state (Adagrad's sums, Adam's moments and step, ...) is then reset to that of a
fresh optimizer, so the new values start as new parameters would.

For kill-and-resume equality a module must decide from ``step``/``epoch_end`` and its own state-dict
buffers only: the global step is in the checkpoint, and so are the module's buffers.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["TrainStepHooks", "reset_optimizer_state"]


def reset_optimizer_state(optimizers: Sequence[Optimizer], params: Sequence[Tensor]) -> int:
    """Reset every optimizer's state of ``params`` in place to a fresh optimizer's; returns how many
    parameter states were reset.

    Tensors are zeroed (Adam's moments and step, AMSGrad's maximum, row-wise Adagrad's accumulators),
    except Adagrad's ``sum``, which goes back to the group's ``initial_accumulator_value``; Python
    numbers (the project's ``SparseAdagrad`` keeps ``step`` as an int) become 0. In place, so the
    state keeps its tensors (and a checkpoint its keys). Parameters without state are left alone.
    """
    wanted = {id(p) for p in params}
    count = 0
    for optimizer in optimizers:
        initial = {id(p): group.get("initial_accumulator_value", 0.0)
                   for group in optimizer.param_groups for p in group["params"]}
        for p, state in optimizer.state.items():
            if id(p) not in wanted:
                continue
            count += 1
            for key, value in state.items():
                if isinstance(value, Tensor):
                    value.fill_(initial[id(p)] if key == "sum" else 0)
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    state[key] = type(value)(0)
    return count


class TrainStepHooks:
    """The ``on_train_step`` methods of ``model``'s submodules, called with the optimizers to reset.

    ``hooks(step, epoch_end)`` calls each (in module order) and resets the optimizer state of the
    parameters they re-initialised; it returns those parameters. Modules that also have
    ``due(step, epoch_end) -> bool`` (CCE: a re-clustering takes seconds to minutes) are announced to
    ``notify``, one line before the step's calls and one after with the time they took, so that a
    progress bar standing still is explained. ``sync`` is called with every module that changed, before
    the optimizer reset: under torchrun it makes every rank hold rank 0's result
    (``distributed.broadcast_module``), so that ranks whose arithmetic differs (other CPUs, other GPUs)
    cannot end up with other clusterings and silently train different models.
    """

    def __init__(self, model: nn.Module, optimizers: Sequence[Optimizer],
                 notify: Callable[[str], None] | None = None, sync: Callable[[nn.Module], None] | None = None) -> None:
        self.modules = [(name, m) for name, m in model.named_modules() if callable(getattr(m, "on_train_step", None))]
        self.optimizers = list(optimizers)
        self.notify = notify
        self.sync = sync

    def __bool__(self) -> bool:
        return bool(self.modules)

    def __call__(self, step: int, epoch_end: bool = False) -> list[Tensor]:
        due = [m for _, m in self.modules if callable(getattr(m, "due", None)) and m.due(step, epoch_end)]
        if due and self.notify is not None:
            kinds = ", ".join(sorted({type(m).__name__ for m in due}))
            self.notify(f"step {step:,}: {len(due)} module(s) ({kinds}) update their parameters...")
        start = time.perf_counter()
        changed: list[Tensor] = []
        for _, module in self.modules:
            params = module.on_train_step(step, epoch_end)
            if params and self.sync is not None:
                self.sync(module)
            changed.extend(params)
        if due and self.notify is not None:
            self.notify(f"step {step:,}: done in {time.perf_counter() - start:.1f} s")
        if changed:
            reset_optimizer_state(self.optimizers, changed)
        return changed
