"""Train-step hooks: modules that re-initialise parameters (CCE re-clustering) during a run, optimizer resets,
and kill-and-resume equality across re-clusterings."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from compembed.models import ModelConfig
from compembed.optim import RowWiseAdagrad, SparseAdagrad
from compembed.training import OptimConfig, TrainStepHooks, reset_optimizer_state, train
from compembed.training.loop import CHECKPOINT, METRICS

from models.toy import toy_dataset
from training.runs import SMALL, Interrupt, config, interrupt_at, params, records


def cce_config(optimizer: str = "adagrad", **overrides):
    model = ModelConfig(scheme="cce", cce_columns=2, cce_every=4, cce_epoch_end=True, cce_rounds=0,
                        num_collisions=2, **SMALL)
    lr = 0.01 if optimizer in ("adam", "amsgrad") else 0.05
    return config(model=model, optim=OptimConfig(name=optimizer, lr=lr), **overrides)


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adagrad([p], lr=0.1, initial_accumulator_value=0.5),
    lambda p: torch.optim.Adam([p], lr=0.1),
    lambda p: SparseAdagrad([p], lr=0.1),
    lambda p: RowWiseAdagrad([p], lr=0.1),
])
def test_reset_optimizer_state_gives_a_fresh_optimizers_next_step(make):
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(3)]

    def run(steps, reset_after=None):
        p = torch.nn.Parameter(start.clone())
        opt = make(p)
        for i, g in enumerate(steps):
            p.grad = g.clone()
            opt.step()
            if i == reset_after:
                with torch.no_grad():
                    p.copy_(start)
                assert reset_optimizer_state([opt], [p]) == 1
        return p.detach()

    # after a reset (and the parameter set back), the next step equals a fresh optimizer's first step
    torch.testing.assert_close(run(grads[:2], reset_after=0), run(grads[1:2]), rtol=0, atol=0)


def test_hooks_find_modules_and_reset_only_what_changed():
    class Toggle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))
            self.v = torch.nn.Parameter(torch.ones(2))

        def on_train_step(self, step, epoch_end=False):
            return [self.w] if step % 2 == 0 else []

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Toggle())
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    hooks = TrainStepHooks(model, [opt])
    assert bool(hooks) and hooks(1) == []
    assert hooks(2) == [model[1].w]
    assert torch.count_nonzero(opt.state[model[1].w]["sum"]) == 0
    assert torch.all(opt.state[model[1].v]["sum"] > 0) and torch.all(opt.state[model[0].weight]["sum"] > 0)
    assert not TrainStepHooks(torch.nn.Linear(2, 2), [opt])


def test_sync_gets_every_module_that_changed_before_its_optimizer_state_is_reset():
    class Every(torch.nn.Module):
        def __init__(self, period):
            super().__init__()
            self.period = period
            self.w = torch.nn.Parameter(torch.ones(2))

        def on_train_step(self, step, epoch_end=False):
            return [self.w] if step % self.period == 0 else []

    model = torch.nn.Sequential(Every(2), Every(3))
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    synced = []

    def sync(module):  # under torchrun: rank 0's result to every rank; the state is not reset yet
        synced.append((module, float(opt.state[module.w]["sum"].sum())))

    hooks = TrainStepHooks(model, [opt], sync=sync)
    hooks(1)
    assert synced == []
    hooks(2)
    assert synced == [(model[0], 2.0)]
    hooks(6)
    assert [m for m, _ in synced] == [model[0], model[0], model[1]]


def test_a_module_that_says_it_is_due_is_announced_before_and_after_its_call():
    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def due(self, step, epoch_end=False):
            return step == 3

        def on_train_step(self, step, epoch_end=False):
            return [self.w] if self.due(step, epoch_end) else []

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Slow())
    notes = []
    hooks = TrainStepHooks(model, [torch.optim.SGD(model.parameters(), lr=0.1)], notify=notes.append)
    assert hooks(2) == [] and notes == []
    assert hooks(3) == [model[1].w]
    assert len(notes) == 2 and notes[0] == "step 3: 1 module(s) (Slow) update their parameters..."
    assert notes[1].startswith("step 3: done in ") and notes[1].endswith(" s")


def test_a_cce_run_announces_its_reclusterings_on_the_progress_bar(capsys):
    train(cce_config(epochs=1), toy_dataset(), progress=True)
    err = capsys.readouterr().err
    # every 4 steps of the epoch's 24, and at its end: one line before each round, one after
    announced = [line for line in err.replace("\r", "\n").splitlines() if "(CCEEmbeddingBag) update their" in line]
    assert [line.split(":")[0] for line in announced] == [f"step {s}" for s in range(4, 25, 4)] + ["step 24"]
    assert err.count("done in ") == len(announced)


def test_a_cce_run_reclusters_at_its_steps_and_epoch_ends():
    result = train(cce_config(), toy_dataset(), progress=False)  # 2 epochs of 24 steps: every 4 steps, 2 epoch ends
    rounds = {k: int(v) for k, v in result.model.state_dict().items() if k.endswith(".round")}
    assert rounds and set(rounds.values()) == {48 // 4 + 2}
    assert result.evals["test"].loss < 0.7


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad", "adam"])
@pytest.mark.parametrize("kill_at", [9, 26])  # after the round at 8 (checkpoint at 5); after the epoch end at 24
def test_resume_after_kill_with_reclustering_equals_uninterrupted(tmp_path, optimizer, kill_at):
    dataset = toy_dataset()
    cfg = cce_config(optimizer)
    whole = train(cfg, dataset, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(Interrupt):
        train(cfg, dataset, out_dir=tmp_path / "cut", progress=False, on_step=interrupt_at(kill_at))
    resumed = train(cfg, dataset, out_dir=tmp_path / "cut", resume=True, progress=False)

    pw, pr = params(whole.model), params(resumed.model)  # parameters and buffers (assignment, hashes, round)
    assert pw.keys() == pr.keys() and all(torch.equal(pw[k], pr[k]) for k in pw)
    assert any(k.endswith(".assignment") for k in pw)
    assert records(tmp_path / "whole" / METRICS) == records(tmp_path / "cut" / METRICS)
    assert whole.train_loss == resumed.train_loss
    a, b = load_file(tmp_path / "whole" / CHECKPOINT), load_file(tmp_path / "cut" / CHECKPOINT)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "rng.torch")
