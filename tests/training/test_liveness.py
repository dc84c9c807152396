"""Live ReLU units: the hooks against a direct computation, the metric in the log, the dead-layer warning."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compembed.models import ModelConfig, build_model
from compembed.models.layers import MLP
from compembed.training import DeadUnitsWarning, LiveUnits, relu_layers, train
from compembed.training import loop
from compembed.training.loop import METRICS, SUMMARY

from models.toy import toy_dataset
from training.runs import config, records


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bottom = MLP([4, 8, 6], final_relu=True)
        self.top = MLP([6, 5, 1])

    def forward(self, x):
        return self.top(self.bottom(x))


def direct_shares(model: Toy, x: torch.Tensor) -> dict[str, float]:
    """Each ReLU layer's live share, computed layer by layer without hooks."""
    out, h = {}, x
    for name, mlp in (("bottom", model.bottom), ("top", model.top)):
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        for j, linear in enumerate(linears):
            h = linear(h)
            if j < len(linears) - 1 or name == "bottom":
                h = torch.relu(h)
                out[f"{name}.{j}"] = (h > 0).any(0).double().mean().item()
    return out


def test_live_shares_equal_a_direct_computation():
    model = Toy()
    with torch.no_grad():
        model.bottom[0].bias[:3] = -100.0  # 3 of 8 units dead for these inputs
    x = torch.randn(32, 4)
    live = LiveUnits(model)
    assert [name for name, _ in live.layers] == ["bottom.0", "bottom.1", "top.0"]
    live.arm()
    assert model.bottom[1]._forward_hooks
    model(x)
    shares = live.collect()
    assert not model.bottom[1]._forward_hooks  # hooks only between arm() and collect()
    expected = direct_shares(model, x)
    assert shares.keys() == expected.keys() and all(shares[k] == pytest.approx(expected[k]) for k in shares)
    assert shares["bottom.0"] == 5 / 8
    model(x)  # not armed: nothing recorded
    assert live.collect() == shares


def test_relu_layers_of_the_models():
    info = toy_dataset(rows=64).info
    dlrm = build_model(ModelConfig(arch="dlrm", bottom_mlp=(16, 8), top_mlp=(16,), embedding_dim=4), info)
    assert [n for n, _ in relu_layers(dlrm)] == ["bottom.0", "bottom.1", "bottom.2", "top.0"]
    dcn = build_model(ModelConfig(arch="dcn", deep_mlp=(16, 8), embedding_dim=4), info)
    assert [n for n, _ in relu_layers(dcn)] == ["deep.0", "deep.1"]


def test_train_records_hold_live_shares_on_log_steps(tmp_path):
    train(config(max_steps=12), toy_dataset(), out_dir=tmp_path, progress=False)
    logged = [r for r in records(tmp_path / METRICS) if r["kind"] == "train"]
    assert [r["step"] for r in logged] == [4, 8, 12]
    for r in logged:
        assert set(r["live_units"]) == {"bottom.0", "bottom.1", "top.0"}
        assert all(0.0 < v <= 1.0 for v in r["live_units"].values())


def test_dead_layer_warns_once_and_is_summarised(tmp_path, monkeypatch):
    def dead_bottom(*args, **kwargs):
        model = build_model(*args, **kwargs)
        with torch.no_grad():
            model.bottom[0].bias.fill_(-1e4)  # no input reaches above zero: every unit dead, no gradient
        return model

    monkeypatch.setattr(loop, "build_model", dead_bottom)
    with pytest.warns(DeadUnitsWarning) as caught:
        train(config(max_steps=12), toy_dataset(), out_dir=tmp_path, progress=False)
    message = ("layer bottom.0: all 16 ReLU units are dead at step 4; lower the dense learning rate (--lr) "
               "or use --warmup-steps")
    assert [str(w.message) for w in caught if "bottom.0" in str(w.message)] == [message]  # once, not each log step
    logged = [r for r in records(tmp_path / METRICS) if r["kind"] == "train"]
    assert [r["live_units"]["bottom.0"] for r in logged] == [0.0, 0.0, 0.0]
    assert message in json.loads((tmp_path / SUMMARY).read_text())["dead_layers"]
