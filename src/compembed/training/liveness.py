"""Dead ReLU units: the share of each layer's units that are > 0 for at least one sample of a batch.

A unit whose pre-activation is negative for every input gets no gradient and never recovers; a
learning rate too high for the dense layers can kill a whole layer within a few steps (all of
DLRM's bottom MLP, say), after which the model ignores the dense features. ``LiveUnits`` watches a
model's ``nn.ReLU`` modules through forward hooks, which cost nothing until ``arm()`` is called,
so the loop measures only on the steps it logs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import DistContext

__all__ = ["DeadUnitsWarning", "LiveUnits", "relu_layers", "dead_layer_message"]


class DeadUnitsWarning(RuntimeWarning):
    """All ReLU units of a layer were zero for every sample of a logged batch."""


def relu_layers(model: nn.Module) -> list[tuple[str, nn.ReLU]]:
    """``(name, module)`` of every ``nn.ReLU`` in ``model``, in module order.

    A ReLU inside an ``nn.Sequential`` (the models' MLPs) is named after the Sequential and its
    position among that Sequential's ReLUs, i.e. the hidden layer it follows: ``bottom.0``,
    ``bottom.1``, ``top.0``, ``deep.2``. Any other ReLU keeps its module name.
    """
    out: list[tuple[str, nn.ReLU]] = []
    for prefix, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            relus = [m for m in parent if isinstance(m, nn.ReLU)]
            out.extend((f"{prefix}.{j}" if prefix else str(j), m) for j, m in enumerate(relus))
    seen = {id(m) for _, m in out}
    out.extend((name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU) and id(m) not in seen)
    return out


def dead_layer_message(layer: str, units: int, step: int) -> str:
    """The warning for a layer whose units are all dead."""
    return (f"layer {layer}: all {units} ReLU units are dead at step {step}; lower the dense learning rate (--lr) "
            f"or use --warmup-steps")


class LiveUnits:
    """Forward hooks on ``model``'s ReLUs (``relu_layers``) that record which units fire.

    Use: ``arm()`` before a forward pass adds the hooks; ``collect(ctx)`` after it removes them and
    gives ``{layer: live share}`` (1.0: every unit was > 0 for some sample; 0.0: the layer is dead).
    Other steps run without hooks. Works with in-place ReLUs: the hook reads the output, the
    activation itself. ``close()`` removes hooks left by an ``arm()`` without ``collect()``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = relu_layers(model)
        self.live: dict[str, Tensor] = {}
        self.handles: list = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            with torch.no_grad():
                live = output.detach().reshape(-1, output.shape[-1]).gt(0).any(0)  # (width,)
            self.live[name] = live | self.live[name] if name in self.live else live
        return hook

    def arm(self) -> None:
        self.close()
        self.live = {}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in self.layers]

    def collect(self, ctx: DistContext | None = None) -> dict[str, float]:
        """``{layer: share of live units}`` over the armed forward passes (over every rank's shard of
        the batch with a multi-process ``ctx``: a unit is live if it fired on any rank); removes the hooks.

        Every rank must call it on the same steps (one all-reduce when distributed). Layers that did
        not run while armed are left out.
        """
        self.close()
        names = [name for name, _ in self.layers if name in self.live]
        if ctx is not None and ctx.distributed and names:
            flags = torch.cat([self.live[n] for n in names]).to(torch.uint8)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            self.live = dict(zip(names, flags.bool().split([len(self.live[n]) for n in names])))
        return {name: self.live[name].float().mean().item() for name in names}

    def newly_dead(self, shares: dict[str, float], step: int, known: dict[str, str]) -> list[str]:
        """Warnings for the layers of ``shares`` (from ``collect``) that are all dead and not yet in
        ``known`` (layer -> warning; updated), so that each layer is reported once."""
        out = []
        for name, share in shares.items():
            if share == 0.0 and name not in known:
                known[name] = dead_layer_message(name, len(self.live[name]), step)
                out.append(known[name])
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
