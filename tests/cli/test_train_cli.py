"""`compembed train`, `evaluate` and `demo` end to end: configs, summaries, kill -9 and resume, real Criteo."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compembed.cli.main import build_parser, main
from compembed.training import load_config
from compembed.training.checkpoint import read_checkpoint_state

REPO = Path(__file__).resolve().parents[2]
CRITEO = REPO / ".." / "shared" / "data" / "criteo" / "criteo_kaggle_head8000.tsv.gz"
TINY = ["--rows", "4000", "--scale", "0.0005", "--dim", "8", "--bottom-mlp", "16", "--top-mlp", "16",
        "--deep-mlp", "16", "--cross-layers", "2", "--batch-size", "64", "--threads", "1", "--no-progress"]


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", ["train", "evaluate", "demo"])
def test_every_option_has_help(name):
    actions = [a for a in subcommand(name)._actions if not isinstance(a, argparse._HelpAction)]
    assert actions
    for action in actions:
        assert action.help and len(action.help) > 8, action.dest


def test_hybrid_options_reach_the_config(tmp_path):
    cfg = tmp_path / "hybrid.toml"
    assert main(["train", "--write-config", str(cfg), "--scheme", "hybrid", "--hot-rows", "100", "--cold-scheme",
                 "crt", "--partitions", "2", *TINY]) == 0
    model = load_config(cfg).model
    assert (model.scheme, model.hot_rows, model.cold_scheme, model.label()) == ("hybrid", 100, "crt", "hybrid100+crt-mult/k2")
    with pytest.raises(SystemExit):
        main(["train", "--write-config", str(cfg), "--cold-scheme", "path"])


def test_write_config_then_train_and_evaluate(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    assert main(["train", "--write-config", str(cfg), "--scheme", "hashing", "--collisions", "3", *TINY]) == 0
    config = load_config(cfg)
    assert (config.model.scheme, config.model.num_collisions, config.data.rows, config.model.top_mlp) == \
        ("hashing", 3, 4000, (16,))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--max-steps", "20", "--log-every", "5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "hashing/3" in printed and "test loss" in printed and "samples/s" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["memory"]["compression_ratio"] > 1
    assert load_config(out / "config.toml").max_steps == 20
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in lines} == {"train", "eval"}

    assert main(["evaluate", str(out), "--split", "test", "val"]) == 0
    printed = capsys.readouterr().out
    assert f"{summary['evals']['test']['loss']:.5f}" in printed and f"{summary['evals']['val']['loss']:.5f}" in printed


def test_training_recipe_options(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    assert main(["train", "--write-config", str(cfg), "--warmup-steps", "7", "--eval-every", "3",
                 "--early-stopping", "2", "--no-keep-best", "--lr", "0.01", "--embedding-lr", "0.1"]) == 0
    config = load_config(cfg)
    assert (config.optim.warmup_steps, config.eval_every, config.early_stopping, config.keep_best) == (7, 3, 2, False)
    assert (config.optim.lr, config.optim.embedding_lr) == (0.01, 0.1)
    capsys.readouterr()

    # lr 0.1 on the tiny set: val loss lowest at step 30, then 3 evaluations without improvement
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--lr", "0.1", "--epochs", "2", "--eval-every", "5",
                 "--early-stopping", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (f"best val loss {summary['best']['val_loss']:.5f} at step 30 (epoch 1): the final evaluation uses its "
            "parameters; stopped early") in capsys.readouterr().out
    assert summary["steps"] == 45 and summary["stopped_early"] and summary["best"]["step"] == 30
    assert (out / "best.safetensors").exists()
    # `evaluate` scores the parameters the summary reports (the best); --last the checkpoint's
    assert main(["evaluate", str(out)]) == 0
    best_loss = f"{summary['evals']['test']['loss']:.5f}"
    assert best_loss in capsys.readouterr().out
    assert main(["evaluate", str(out), "--last"]) == 0
    assert best_loss not in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nschema = 'qr'\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key(s) ['schema'] in [model]" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "nan"), "--optimizer", "sgd", "--lr", "1e30", *TINY]) == 3
    assert "training loss is" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d"), "--no-progress"]) == 4
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--bottom-mlp", "12,x"])
    assert "comma-separated integers" in capsys.readouterr().err


def kill_9_after_a_checkpoint(out: Path, options: list[str]) -> None:
    """Start ``compembed train --out OUT OPTIONS`` in a process of its own and SIGKILL it once its first
    checkpoint is on disk; the run must have been cut mid-epoch (8,000 rows: 6,400 train rows / 64 = 100 batches)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "compembed", "train", "--out", str(out), *options], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = read_checkpoint_state(ckpt)["loop"]
    assert not killed_at["done"] and 0 < killed_at["batch"] < 100


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path, optimizer):
    options = [*TINY, "--rows", "8000", "--checkpoint-every", "10", "--log-every", "10", "--eval-every", "15",
               "--optimizer", optimizer]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "--out", str(whole), *options]) == 0
    kill_9_after_a_checkpoint(cut, options)
    assert main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    for name in ("checkpoint.safetensors", "best.safetensors"):
        a, b = load_file(whole / name), load_file(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optim."))), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert sa["evals"] == sb["evals"] and sa["train_loss"] == sb["train_loss"] and sa["best"] == sb["best"]
    assert load_config(cut / "config.toml").optim.name == optimizer
    state = sa["memory"]["embedding_state_bytes"]
    assert state == sb["memory"]["embedding_state_bytes"]
    rows = sum(v.shape[0] for k, v in load_file(whole / "checkpoint.safetensors").items() if k.startswith("model.embeddings."))
    values = sa["memory"]["embedding_parameters"]
    assert state == 4 * (rows if optimizer == "rowwise_adagrad" else values)  # float32 accumulators: per row / per value


@pytest.mark.parametrize("options,own", [
    (["--scheme", "robe", "--block-size", "4", "--collisions", "3"], ".hash_a"),
    (["--scheme", "tt", "--tt-rank", "3", "--tt-cache-rows", "10"], ".core1"),
    (["--scheme", "md", "--md-base-dim", "4"], ".projections.0"),
    (["--scheme", "dhe", "--dhe-hashes", "8", "--dhe-hidden", "12"], ".hash_a"),
    (["--scheme", "cce", "--cce-columns", "2", "--cce-every", "7", "--collisions", "3"], ".assignment"),
    (["--scheme", "hybrid", "--hot-rows", "5", "--cold-scheme", "robe", "--robe-size", "300", "--block-size", "4"],
     ".cold.hash_a"),
], ids=["robe", "tt", "md", "dhe", "cce", "hybrid-robe"])
def test_field_schemes_kill_9_then_resume_equal_uninterrupted(tmp_path, options, own):
    """Each of the field's schemes (and a hybrid with a ROBE cold part), killed with SIGKILL mid-epoch
    after a checkpoint, resumes to the uninterrupted run bit for bit: parameters, optimizer state, the
    scheme's own tensors (CCE's re-clusterings at steps 7, 14 and 21 straddle the checkpoint at 10) and
    the evaluations."""
    options = [*options, *TINY, "--rows", "8000", "--checkpoint-every", "10", "--log-every", "10",
               "--eval-every", "40"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "--out", str(whole), *options]) == 0
    kill_9_after_a_checkpoint(cut, options)
    assert main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    a, b = load_file(whole / "checkpoint.safetensors"), load_file(cut / "checkpoint.safetensors")
    assert a.keys() == b.keys() and any(k.endswith(own) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optim.")))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert sa["evals"] == sb["evals"] and sa["train_loss"] == sb["train_loss"]


@pytest.mark.skipif(not CRITEO.exists(), reason=f"real Criteo sample not present at {CRITEO} (../shared data missing)")
@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_real_criteo_sample_end_to_end(tmp_path, capsys, arch):
    data = tmp_path / "criteo"
    assert main(["prepare", "criteo", str(CRITEO), "--out", str(data), "--quiet"]) == 0
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--arch", arch, "--scheme", "qr",
                 "--threshold", "20", "--epochs", "2", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    test = summary["evals"]["test"]
    assert test["samples"] > 500 and test["bayes_loss"] is None
    assert 0.5 < test["auc"] <= 1 and test["loss"] < 0.69  # better than chance on real clicks
    assert summary["memory"]["compression_ratio"] > 1.5
    assert "qr-mult/4" in capsys.readouterr().out


def test_demo_tiny(capsys):
    assert main(["demo", "--rows", "3000", "--scale", "0.0005", "--threshold", "20", "--batch-size", "128",
                 "--threads", "1", "--no-progress", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("model "):]
    for label in ("full", "hashing/4", "qr-mult/4"):
        assert f"dlrm   {label}" in table
    assert "loss gap" in table and "- hashing/4 (paired)" in table
    rows = [line for line in table.splitlines() if line.startswith("dlrm")]
    assert len(rows) == 3 and all(line.count(" ± ") == 2 for line in rows)  # loss and AUC over seeds
    assert ["lower)" in line for line in rows] == [True, False, True]  # paired to hashing, not hashing itself
    per_seed = out[out.index("per seed, test loss:"):].split("\n")[0]
    assert "seed 0: full" in per_seed and "seed 1: full" in per_seed
    assert "dead ReLU layers: none in 6 runs" in out


def test_demo_keeps_the_data_fixed_across_model_seeds(capsys):
    common = ["demo", "--rows", "3000", "--scale", "0.0005", "--threshold", "20", "--batch-size", "128",
              "--threads", "1", "--no-progress"]
    bayes = []
    for seeds in ("0", "1"):
        assert main([*common, "--seeds", seeds]) == 0
        bayes.append(capsys.readouterr().out.split("Bayes-optimal test loss (true click probabilities): ")[1][:7])
    assert bayes[0] == bayes[1]
    assert main([*common, "--seeds", "0", "--data-seed", "1"]) == 0
    assert capsys.readouterr().out.split("Bayes-optimal test loss (true click probabilities): ")[1][:7] != bayes[0]


def test_resume_with_the_dataset_moved_takes_its_new_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--out", "ds", "--rows", "3000", "--scale", "0.0005", "--quiet"]) == 0
    run = ["--out", "run", "--no-progress"]
    assert main(["train", "--data", "ds", *run, *TINY[4:], "--max-steps", "4", "--checkpoint-every", "2"]) == 0
    (tmp_path / "ds").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", *run]) == 4  # the stored path is gone
    assert "no such dataset directory" in capsys.readouterr().err
    assert main(["train", "--resume", *run, "--data", "moved"]) == 0  # the same dataset (its identity)
    assert load_config(tmp_path / "run" / "config.toml").data.source == str(tmp_path / "moved")
    assert main(["train", "--resume", *run, "--lr", "0.3"]) == 2
    assert "takes no --config or run options but --data (got --lr)" in capsys.readouterr().err


def test_run_files_get_the_umask_mode_and_the_data_path_is_stored_absolute(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(["synth", "--out", "ds", "--rows", "3000", "--scale", "0.0005", "--quiet"]) == 0
        assert main(["train", "--data", "ds", "--out", "run", *TINY[4:], "--max-steps", "4",
                     "--checkpoint-every", "2"]) == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    files = sorted(run.iterdir())
    assert {p.name for p in files} >= {"config.toml", "checkpoint.safetensors", "best.safetensors", "summary.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}
    config = load_config(run / "config.toml")
    assert config.data.source == str(tmp_path / "ds")
    assert tomllib.loads((run / "config.toml").read_text())["data"] == {"source": str(tmp_path / "ds")}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the run finds its data from any folder
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0


def test_bf16_precision_and_device_options(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bf16"
    assert main(["train", "--out", str(out), *TINY, "--precision", "bf16", "--max-steps", "15", "--device", "cpu"]) == 0
    assert tomllib.loads((out / "config.toml").read_text())["train"]["precision"] == "bf16"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["train"]["precision"] == "bf16" and summary["steps"] == 15
    assert main(["evaluate", str(out), "--device", "auto"]) == 0
    assert f"{summary['evals']['test']['loss']:.5f}" in capsys.readouterr().out
    # fp32, the default, is left out of the stored config (older runs and sweep keys keep theirs)
    assert main(["train", "--write-config", str(tmp_path / "fp32.toml")]) == 0
    assert "precision" not in tomllib.loads((tmp_path / "fp32.toml").read_text())["train"]
    capsys.readouterr()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["train", "--out", str(tmp_path / "gpu"), *TINY, "--device", "cuda"],
                 ["evaluate", str(out), "--device", "cuda"],
                 ["demo", "--rows", "3000", "--no-progress", "--device", "cuda"]):
        assert main(argv) == 2, argv
        assert "device 'cuda': CUDA is not available" in capsys.readouterr().err, argv
    for argv in (["train", "--out", str(tmp_path / "half"), *TINY, "--precision", "fp16"],
                 ["demo", "--rows", "3000", "--no-progress", "--precision", "fp16"]):
        assert main(argv) == 2, argv
        assert "precision fp16 runs on CUDA only" in capsys.readouterr().err, argv
    assert not (tmp_path / "gpu").exists() and not (tmp_path / "half").exists()
    with pytest.raises(SystemExit):
        main(["train", "--precision", "fp8"])


@pytest.mark.parametrize("scheme,options,optimizer,stored,label", [
    ("robe", ["--block-size", "4", "--robe-signs", "--collisions", "3"], "adagrad",
     dict(block_size=4, robe_signs=True, robe_size=None), "robe-z4/3"),
    ("robe", ["--robe-size", "500"], "adam", dict(block_size=None, robe_signs=None, robe_size=500), "robe-z8-500"),
    ("dhe", ["--dhe-hashes", "8", "--dhe-hidden", "12", "--dhe-batchnorm"], "adagrad",
     dict(dhe_hashes=8, dhe_hidden=(12,), dhe_batchnorm=True), "dhe8-12"),
    ("dhe", ["--dhe-hashes", "7", "--no-dhe-gaussian", "--dhe-activation", "relu"], "adam",
     dict(dhe_hashes=7, dhe_gaussian=False, dhe_activation="relu", dhe_batchnorm=None), "dhe7-64"),
    ("cce", ["--cce-columns", "4", "--cce-every", "4", "--collisions", "3"], "adagrad",
     dict(cce_columns=4, cce_every=4, cce_rows=None, cce_epoch_end=None, cce_rounds=None), "cce-c4/3"),
    ("cce", ["--cce-rows", "20", "--cce-every", "3", "--cce-epoch-end", "--cce-rounds", "4"], "adam",
     dict(cce_columns=None, cce_every=3, cce_rows=20, cce_epoch_end=True, cce_rounds=4), "cce-c2-k20"),
    ("tt", ["--tt-rank", "3", "--tt-cache-rows", "10"], "adagrad", dict(tt_rank=3, tt_cache_rows=10), "tt/r3+cache10"),
    ("md", ["--md-alpha", "0.5", "--md-blocks", "3", "--md-base-dim", "4"], "rowwise_adagrad",
     dict(md_alpha=0.5, md_blocks=3, md_base_dim=4), "md/a0.5/b3/d4"),
    ("hybrid", ["--hot-rows", "5", "--cold-scheme", "robe", "--robe-size", "300", "--block-size", "4"], "rowwise_adagrad",
     dict(hot_rows=5, cold_scheme="robe", robe_size=300, block_size=4), "hybrid5+robe-z4-300"),
])
def test_compressed_schemes_train_resume_exactly_and_evaluate(tmp_path, scheme, options, optimizer, stored, label):
    """robe, dhe, cce, tt, md and a hybrid with a robe cold part from the CLI: the options reach the stored config, the run trains, a run
    stopped after a checkpoint and resumed ends bit for bit where the uninterrupted one does, and it evaluates."""
    from compembed.training import train

    from training.runs import Interrupt, interrupt_at

    cfg = tmp_path / "run.toml"
    assert main(["train", "--write-config", str(cfg), "--scheme", scheme, *options, "--optimizer", optimizer,
                 "--threshold", "0", *TINY, "--rows", "2000", "--max-steps", "16", "--checkpoint-every", "5", "--log-every", "5"]) == 0
    config = load_config(cfg)
    assert config.model.scheme == scheme and config.optim.name == optimizer
    assert {name: getattr(config.model, name) for name in stored} == stored  # unset options stay None
    assert config.model.label() == label
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "--config", str(cfg), "--out", str(whole)]) == 0
    with pytest.raises(Interrupt):
        train(config, out_dir=cut, progress=False, on_step=interrupt_at(12))  # as if killed after the checkpoint at 10
    assert main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    a, b = load_file(whole / "checkpoint.safetensors"), load_file(cut / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "optim.")))
    own = {"robe": ".hash_a", "dhe": ".hash_a", "cce": ".assignment", "tt": ".core1", "md": ".projections.0",
           "hybrid": ".cold.hash_a"}[scheme]
    assert any(k.endswith(own) for k in a)  # the scheme's own tensors (hash functions, clustering, cores) are saved
    if scheme == "cce":  # re-clustered (16 steps: every 4, at most 3 rounds by default; every 3, at most 4) and saved
        assert {int(a[k]) for k in a if k.endswith(".round")} == {4 if "--cce-rounds" in options else 3}
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert sa["evals"] == sb["evals"] and sa["train_loss"] == sb["train_loss"] and sa["steps"] == 16
    assert 0 < sa["evals"]["test"]["loss"] < 1.0
    assert main(["evaluate", str(whole), "--split", "test"]) == 0
