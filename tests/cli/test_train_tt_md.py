"""`compembed train --scheme tt|md` end to end: options reach the config, runs train and evaluate
(kill -9 and resume: test_train_cli.py, for every field scheme)."""
from __future__ import annotations

import json

import pytest

from compembed.cli.main import main
from compembed.training import TrainConfig, load_config
from compembed.training.config import config_to_dict

TINY = ["--rows", "4000", "--scale", "0.0005", "--dim", "8", "--bottom-mlp", "16", "--top-mlp", "16",
        "--batch-size", "64", "--threads", "1", "--no-progress", "--threshold", "20"]


def test_tt_and_md_options_reach_the_config(tmp_path):
    cfg = tmp_path / "tt.toml"
    assert main(["train", "--write-config", str(cfg), "--scheme", "tt", "--tt-rank", "5", "--tt-cache-rows", "30", *TINY]) == 0
    model = load_config(cfg).model
    assert (model.scheme, model.tt_rank, model.tt_cache_rows, model.label()) == ("tt", 5, 30, "tt/r5+cache30")
    assert main(["train", "--write-config", str(cfg), "--scheme", "md", "--md-alpha", "0.5", "--md-blocks", "3",
                 "--md-base-dim", "6", *TINY]) == 0
    model = load_config(cfg).model
    assert (model.md_alpha, model.md_blocks, model.md_base_dim, model.label()) == (0.5, 3, 6, "md/a0.5/b3/d6")
    assert main(["train", "--write-config", str(cfg), "--scheme", "md", "--md-alpha", "-1", *TINY]) == 2


def test_unset_tt_md_options_stay_out_of_stored_configs_and_sweep_keys():
    model = config_to_dict(TrainConfig())["model"]
    assert model["scheme"] == "qr" and not [k for k in model if k.startswith(("tt_", "md_"))]


def test_md_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "md"
    assert main(["train", "--out", str(out), "--scheme", "md", "--md-base-dim", "4", "--max-steps", "15",
                 "--optimizer", "amsgrad", *TINY]) == 0  # a sparse-only optimizer (lazy AMSGrad) for the tables
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory"]["compression_ratio"] > 1.5 and summary["evals"]["test"]["loss"] < 0.75
    assert "md/a0.3/b4/d4" in capsys.readouterr().out
    assert main(["evaluate", str(out)]) == 0


@pytest.mark.parametrize("method", ["tt", "md"])
def test_sweep_budget_study_sizes_tt_and_md(tmp_path, method, capsys):
    assert main(["sweep", "--preset", "tiny", "--studies", "budget", "--budget-methods", method, "--budgets", "4",
                 "--archs", "dlrm", "--optimizers", "adagrad", "--seeds", "0", "--out", str(tmp_path / "s"),
                 "--list"]) == 0
    listed = capsys.readouterr().out
    assert f"{method}@4x" in listed
