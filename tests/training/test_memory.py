"""The memory check before a run: the meta-device count equals what training allocates, and a model too
large for the memory available is refused with a clear error before anything is allocated."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from compembed.models import ModelConfig, build_model
from compembed.training import OptimConfig, TrainConfig
from compembed.training.memory import (InsufficientMemoryError, _cgroup_room, _meminfo, available_memory,
                                       check_memory, model_memory)
from compembed.training.optim import build_optimizers, uses_sparse_gradients

from .runs import SMALL

INFO = types.SimpleNamespace(dense_names=["d0", "d1", "d2"], categorical_names=["a", "b", "c", "e"],
                             cardinalities=[7, 300, 5000, 2000])


def _config(scheme: str, optimizer: str, **model) -> TrainConfig:
    return TrainConfig(model=ModelConfig(scheme=scheme, **{**SMALL, **model}), optim=OptimConfig(name=optimizer))


def _allocated(config: TrainConfig) -> tuple[int, int]:
    """(parameters and buffers, optimizer state) allocated by a real model after one training step; the
    optimizers' 0-d step counters are left out (a few bytes, not counted by the check)."""
    torch.manual_seed(0)
    model = build_model(config.model, INFO, sparse=uses_sparse_gradients(config.optim))
    optimizers = build_optimizers(model, config.optim)
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, n, (32,), generator=g) for n in INFO.cardinalities], 1)
    loss = F.binary_cross_entropy_with_logits(model(torch.rand(32, 3, generator=g), ids), torch.ones(32))
    loss.backward()
    for opt in optimizers:
        opt.step()
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    state = sum(v.numel() * v.element_size() for opt in optimizers for s in opt.state.values()
                for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return held, state


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad", "adam", "amsgrad"])
@pytest.mark.parametrize("scheme,model", [
    ("full", {}), ("qr", dict(num_collisions=4)), ("robe", {}), ("hybrid", dict(hot_rows=50, cold_scheme="robe")),
    ("cce", {}), ("dhe", {}), ("tt", {}), ("md", {}),
])
def test_the_meta_count_equals_what_training_allocates(scheme, model, optimizer):
    config = _config(scheme, optimizer, **model)
    counted = model_memory(config, INFO)
    assert (counted.model, counted.state) == _allocated(config)
    assert counted.total == counted.model + counted.state and (counted.state > 0) == (optimizer != "sgd")


def test_a_model_larger_than_the_memory_available_is_refused_with_the_numbers():
    config = _config("robe", "adagrad", robe_size=10**6)
    need = model_memory(config, INFO)
    assert check_memory(config, INFO, "cpu", available=(need.total, "test")).total == need.total  # just fits
    with pytest.raises(InsufficientMemoryError) as err:
        check_memory(config, INFO, "cpu", available=(need.total - 1, "MemAvailable in a test"))
    message = str(err.value)
    assert "the model needs at least" in message and "of adagrad state" in message
    assert "available (MemAvailable in a test)" in message and "compembed plan" in message
    assert isinstance(err.value, ValueError)  # the CLI's usage/config failure: exit code 2
    # evaluating or serving a run needs no optimizer state
    assert check_memory(config, INFO, "cpu", available=(need.model, "test"), training=False).total == need.model
    with pytest.raises(InsufficientMemoryError, match=r"\(its parameters and buffers\), more than"):
        check_memory(config, INFO, "cpu", available=(need.model - 1, "test"), training=False)


def test_meminfo_and_cgroup_limits_are_read(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  100 kB\nMemAvailable:    40 kB\nSwapFree:  2 kB\n")
    assert _meminfo(meminfo) == 42 * 1024
    meminfo.write_text("MemTotal:  100 kB\n")  # an old kernel: no MemAvailable
    assert _meminfo(meminfo) is None and _meminfo(tmp_path / "missing") is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000\n")
    (v2 / "memory.current").write_text("300\n")
    assert _cgroup_room(v2) == 700
    (v2 / "memory.max").write_text("max\n")
    assert _cgroup_room(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("5000\n")
    (v1 / "memory.usage_in_bytes").write_text("6000\n")
    assert _cgroup_room(tmp_path / "v1") == 0 and _cgroup_room(tmp_path / "none") is None


def test_available_memory_on_this_machine():
    found = available_memory("cpu")
    assert found is None or (found[0] >= 0 and found[1])
    assert available_memory("meta") is None
