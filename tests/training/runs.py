"""Helpers of the training tests: a small run config, parameter snapshots, metric records, interrupts."""
from __future__ import annotations

import json

import torch

from compembed.models import ModelConfig
from compembed.training import OptimConfig, TrainConfig

SMALL = dict(threshold=0, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), deep_mlp=(16,), cross_layers=2)


def config(**overrides) -> TrainConfig:
    base = dict(model=ModelConfig(scheme="qr", **SMALL), optim=OptimConfig(name="adagrad", lr=0.05), batch_size=64,
                epochs=2, log_every=4, checkpoint_every=5, threads=1)
    base.update(overrides)
    return TrainConfig(**base)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def records(path):
    """Metric records without the wall-clock fields, which legitimately differ between runs."""
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        r.pop("samples_per_s", None)
        out.append(r)
    return out


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    def hook(state):
        if state["step"] == step:
            raise Interrupt  # as if the process were killed: nothing after the last checkpoint survives
    return hook
