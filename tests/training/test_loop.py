"""The training loop: learning, determinism, kill-and-resume equality, NaN stops, checkpoint safety."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from compembed.data import SyntheticConfig, SyntheticCTR
from compembed.data.export import save_synthetic
from compembed.training import DataConfig, NonFiniteLossError, OptimConfig, train
from compembed.training.checkpoint import load_checkpoint
from compembed.training.loop import CHECKPOINT, METRICS, SUMMARY

from models.toy import toy_dataset
from training.runs import Interrupt, config, interrupt_at, params, records


def test_learns_and_reports():
    dataset = toy_dataset()
    result = train(config(epochs=3), dataset, progress=False)
    test = result.evals["test"]
    assert test.loss < 0.66 and test.auc > 0.7, test
    assert test.bayes_loss is not None and test.bayes_loss < test.loss
    assert 0.0 <= test.accuracy <= 1.0 and test.samples == 256
    assert result.steps == 3 * 24 and result.samples == 3 * 1536
    assert result.memory.compression_ratio > 1.0
    assert result.samples_per_s > 0


def test_deterministic_for_a_seed():
    dataset = toy_dataset()
    a = train(config(), dataset, progress=False)
    b = train(config(), dataset, progress=False)
    c = train(config(seed=1), dataset, progress=False)
    pa, pb, pc = params(a.model), params(b.model), params(c.model)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad", "adam", "amsgrad"])
@pytest.mark.parametrize("kill_at", [7, 26])  # mid-epoch 1 (last checkpoint at 5); mid-epoch 2 (checkpoint at 25)
def test_resume_after_kill_equals_uninterrupted(tmp_path, optimizer, kill_at):
    dataset = toy_dataset()
    cfg = config(optim=OptimConfig(name=optimizer, lr=0.01 if optimizer in ("adam", "amsgrad") else 0.05))
    whole = train(cfg, dataset, out_dir=tmp_path / "whole", progress=False)

    with pytest.raises(Interrupt):
        train(cfg, dataset, out_dir=tmp_path / "cut", progress=False, on_step=interrupt_at(kill_at))
    resumed = train(cfg, dataset, out_dir=tmp_path / "cut", resume=True, progress=False)

    pw, pr = params(whole.model), params(resumed.model)
    assert all(torch.equal(pw[k], pr[k]) for k in pw)
    assert {k: v.to_dict() for k, v in whole.evals.items()} == {k: v.to_dict() for k, v in resumed.evals.items()}
    assert records(tmp_path / "whole" / METRICS) == records(tmp_path / "cut" / METRICS)
    assert whole.train_loss == resumed.train_loss
    # the optimizer state in the final checkpoints agrees too
    a, b = load_file(tmp_path / "whole" / CHECKPOINT), load_file(tmp_path / "cut" / CHECKPOINT)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "rng.torch")


def test_dense_embedding_update_and_max_steps(tmp_path):
    dataset = toy_dataset()
    cfg = config(optim=OptimConfig(name="amsgrad", lr=0.01, embedding_update="dense"), max_steps=10)
    result = train(cfg, dataset, out_dir=tmp_path, progress=False)
    assert result.steps == 10
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert summary["steps"] == 10 and set(summary["evals"]) == {"val", "test"}


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    dataset = toy_dataset(nan_row=3)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 1, batch \d+ \(step \d+\)"):
        train(config(), dataset, out_dir=tmp_path, progress=False)
    # the checkpoint on disk (if any) holds finite parameters only
    if (tmp_path / CHECKPOINT).exists():
        assert all(torch.isfinite(t).all() for t in load_file(tmp_path / CHECKPOINT).values() if t.is_floating_point())


def test_exploding_lr_stops(tmp_path):
    with pytest.raises(NonFiniteLossError, match="lower learning rate"):
        train(config(optim=OptimConfig(name="sgd", lr=1e30)), toy_dataset(), progress=False)


def test_refuses_to_overwrite_or_resume_another_config(tmp_path):
    dataset = toy_dataset()
    train(config(max_steps=5), dataset, out_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config(max_steps=5), dataset, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"\[optim\] lr: checkpoint 0.05, now 0.1"):
        train(config(max_steps=5, optim=OptimConfig(name="adagrad", lr=0.1)), dataset, out_dir=tmp_path, resume=True,
              progress=False)


def test_a_run_resumes_with_its_dataset_moved_and_refuses_another_dataset_there(tmp_path):
    small = dict(num_rows=2000, cardinality_scale=0.0005)
    save_synthetic(SyntheticCTR(SyntheticConfig(**small, seed=0)), tmp_path / "data", progress=False)
    cfg = config(data=DataConfig(source=str(tmp_path / "data")))
    whole = train(cfg, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(Interrupt):
        train(cfg, out_dir=tmp_path / "cut", progress=False, on_step=interrupt_at(7))
    (tmp_path / "data").rename(tmp_path / "moved")  # the same dataset, elsewhere
    moved = dataclasses.replace(cfg, data=DataConfig(source=str(tmp_path / "moved")))
    resumed = train(moved, out_dir=tmp_path / "cut", resume=True, progress=False)
    pw, pr = params(whole.model), params(resumed.model)
    assert all(torch.equal(pw[k], pr[k]) for k in pw) and whole.train_loss == resumed.train_loss
    # a run whose dataset is replaced by another at the same path is refused (before, it resumed on it)
    save_synthetic(SyntheticCTR(SyntheticConfig(**small, seed=1)), tmp_path / "data", progress=False)
    with pytest.raises(Interrupt):
        train(cfg, out_dir=tmp_path / "other", progress=False, on_step=interrupt_at(7))
    shutil.rmtree(tmp_path / "data")
    save_synthetic(SyntheticCTR(SyntheticConfig(**small, seed=2)), tmp_path / "data", progress=False)
    with pytest.raises(ValueError, match="holds another dataset than the run's"):
        train(cfg, out_dir=tmp_path / "other", resume=True, progress=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"\x00\x01not a safetensors file")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(path, model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors", model)
