"""Validation during training: the schedule, early stopping, the best parameters, and resuming all of it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from compembed.data import ArrayDataset
from compembed.models import build_model
from compembed.training import EvalResult, OptimConfig, TrainConfig, evaluate, train
from compembed.training import validation as validation_module
from compembed.training.checkpoint import load_checkpoint
from compembed.training.loop import BEST, CHECKPOINT, METRICS, SUMMARY

from models.toy import toy_dataset
from training.runs import Interrupt, config, interrupt_at, params, records

# Adagrad at lr 0.3 (dense and tables) on the toy task: the val loss, evaluated every 3 steps over 3 epochs
# of 24 steps, is lowest at step 45 over the whole run; with patience 3 the run stops at step 36, 3
# evaluations after the best one so far (step 27).
NOISY = dict(optim=OptimConfig(name="adagrad", lr=0.3, embedding_lr=0.3), epochs=3, eval_every=3)


def val_records(path, final: bool = False):
    return [r for r in records(path) if r["kind"] == "eval" and bool(r.get("final")) == final]


def test_eval_every_records_and_epoch_ends(tmp_path):
    result = train(config(eval_every=5), toy_dataset(), out_dir=tmp_path, progress=False)  # 2 epochs of 24 steps
    evals = val_records(tmp_path / METRICS)
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 24, 25, 30, 35, 40, 45, 48]
    assert [r["epoch"] for r in evals] == [0] * 5 + [1] * 6
    assert all(r["split"] == "val" for r in evals)
    best = min(evals, key=lambda r: r["loss"])
    assert result.best == {"step": best["step"], "epoch": best["epoch"], "val_loss": best["loss"], "used": True}
    assert [r["improved"] for r in evals] == [r["loss"] < min([e["loss"] for e in evals[:i]], default=9)
                                              for i, r in enumerate(evals)]
    finals = val_records(tmp_path / METRICS, final=True)
    assert [r["split"] for r in finals] == ["val", "test"] and all(r["params_step"] == best["step"] for r in finals)


def test_without_eval_every_val_is_evaluated_at_epoch_ends(tmp_path):
    train(config(epochs=2), toy_dataset(), out_dir=tmp_path, progress=False)
    assert [r["step"] for r in val_records(tmp_path / METRICS)] == [24, 48]


def fake_val_losses(monkeypatch, losses):
    """Validation sees ``losses`` one after the other (the final test evaluation stays real)."""
    seen = []

    def fake(model, dataset, split, batch_size=8192):
        assert split == "val"
        seen.append(losses[len(seen)])
        return EvalResult(split="val", samples=1, loss=seen[-1], accuracy=0.5, auc=None, bayes_loss=None)

    monkeypatch.setattr(validation_module, "evaluate", fake)
    return seen


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, monkeypatch):
    seen = fake_val_losses(monkeypatch, [0.60, 0.50, 0.55, 0.49, 0.52, 0.50, 0.51, 0.30])
    result = train(config(eval_every=3, early_stopping=3), toy_dataset(), out_dir=tmp_path, progress=False)
    # best 0.49 at the 4th evaluation (step 12); 3 without improvement: the 7th (step 21) stops the run
    assert seen == [0.60, 0.50, 0.55, 0.49, 0.52, 0.50, 0.51]
    assert result.steps == 21 and result.stopped_early
    assert result.best == {"step": 12, "epoch": 0, "val_loss": 0.49, "used": True}
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert summary["stopped_early"] and summary["best"]["step"] == 12 and summary["steps"] == 21
    assert summary["evals"]["val"]["loss"] == 0.49  # the best evaluation's result, not evaluated again
    state = load_checkpoint(tmp_path / CHECKPOINT, build_model(result.config.model, toy_dataset().info))["loop"]
    assert state["step"] == 21 and state["done"] and state["val"]["bad"] == 3


def test_no_early_stop_while_the_loss_improves(monkeypatch):
    fake_val_losses(monkeypatch, [0.9 - 0.01 * i for i in range(20)])
    result = train(config(eval_every=3, early_stopping=1), toy_dataset(), progress=False)
    assert not result.stopped_early and result.steps == 48 and result.best["step"] == 48


def test_real_overfitting_run_stops_early_and_keeps_the_best(tmp_path):
    result = train(config(**NOISY, early_stopping=3), toy_dataset(), out_dir=tmp_path, progress=False)
    assert result.stopped_early and result.steps == 36
    assert result.best["step"] == 27 and result.best["epoch"] == 1
    evals = val_records(tmp_path / METRICS)
    assert [r["step"] for r in evals][-4:] == [27, 30, 33, 36] and not any(r["improved"] for r in evals[-3:])


@pytest.mark.parametrize("out", [True, False])
def test_keep_best_final_metrics_are_those_of_the_best_checkpoint(tmp_path, out):
    dataset = toy_dataset()
    result = train(config(**NOISY), dataset, out_dir=tmp_path if out else None, progress=False)
    assert result.steps == 72 and result.best["step"] == 45 and result.best["used"]
    best = build_model(result.config.model, dataset.info)
    if out:
        assert load_checkpoint(tmp_path / BEST, best)["best"]["step"] == 45
    else:  # kept in memory; the returned model holds the best parameters
        best.load_state_dict(params(result.model))
    for split in ("val", "test"):
        assert result.evals[split] == evaluate(best, dataset, split)
    assert result.evals["val"].loss == result.best["val_loss"]


def test_checkpoint_keeps_the_last_parameters(tmp_path):
    dataset = toy_dataset()
    result = train(config(**NOISY), dataset, out_dir=tmp_path, progress=False)
    last = build_model(result.config.model, dataset.info)
    assert load_checkpoint(tmp_path / CHECKPOINT, last)["loop"]["step"] == 72
    assert evaluate(last, dataset, "val").loss > result.best["val_loss"]


def test_without_keep_best_the_last_parameters_are_evaluated(tmp_path):
    dataset = toy_dataset()
    result = train(config(**NOISY, keep_best=False), dataset, out_dir=tmp_path, progress=False)
    assert not (tmp_path / BEST).exists()
    assert result.best["step"] == 45 and not result.best["used"]
    for split in ("val", "test"):
        assert result.evals[split] == evaluate(result.model, dataset, split)
    assert result.evals["val"].loss > result.best["val_loss"]


# With a 12-step warm-up the val loss is lowest at step 21 and patience 3 stops the run at 30. Evaluations
# every 3 steps, checkpoints every 5: kill during warm-up between evaluations (8: last checkpoint 5), right
# after the best evaluation (21), after an evaluation not yet checkpointed (23: checkpoint 20, evaluation
# 21), after a checkpointed one (26: evaluation 24, checkpoint 25).
@pytest.mark.parametrize("kill_at", [8, 21, 23, 26])
def test_resume_with_validation_early_stopping_and_warmup_equals_uninterrupted(tmp_path, kill_at):
    dataset = toy_dataset()
    cfg = config(**{**NOISY, "optim": OptimConfig(name="adagrad", lr=0.3, embedding_lr=0.3, warmup_steps=12)},
                 early_stopping=3)
    whole = train(cfg, dataset, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(Interrupt):
        train(cfg, dataset, out_dir=tmp_path / "cut", progress=False, on_step=interrupt_at(kill_at))
    resumed = train(cfg, dataset, out_dir=tmp_path / "cut", resume=True, progress=False)

    assert whole.steps == resumed.steps == 30 and whole.best["step"] == 21
    assert whole.stopped_early and resumed.stopped_early and whole.best == resumed.best
    pw, pr = params(whole.model), params(resumed.model)
    assert all(torch.equal(pw[k], pr[k]) for k in pw)
    assert whole.evals == resumed.evals
    assert records(tmp_path / "whole" / METRICS) == records(tmp_path / "cut" / METRICS)
    for name in (CHECKPOINT, BEST):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "rng.torch"), name
    sa, sb = (json.loads((tmp_path / d / SUMMARY).read_text()) for d in ("whole", "cut"))
    for s in (sa, sb):
        del s["train_seconds"], s["samples_per_s"]
    assert sa == sb


def test_resuming_a_finished_run_gives_the_same_summary_and_log(tmp_path):
    dataset = toy_dataset()
    first = train(config(**NOISY), dataset, out_dir=tmp_path, progress=False)
    log = records(tmp_path / METRICS)
    again = train(config(**NOISY), dataset, out_dir=tmp_path, resume=True, progress=False)
    assert again.evals == first.evals and again.best == first.best
    assert records(tmp_path / METRICS) == log


def test_validation_needs_a_val_split():
    with pytest.raises(ValueError, match="eval_every and early_stopping evaluate the 'val' split"):
        TrainConfig(eval_every=10, eval_splits=("test",))
    with pytest.raises(ValueError, match="early_stopping must be >= 0"):
        TrainConfig(early_stopping=-1)
    toy = toy_dataset()
    no_val = ArrayDataset(toy.info, toy.dense, toy.sparse, toy.labels, {k: toy.splits[k] for k in ("train", "test")})
    with pytest.raises(ValueError, match="which this dataset lacks or holds no rows"):
        train(config(early_stopping=2), no_val, progress=False)
