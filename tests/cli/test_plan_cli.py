"""`compembed plan`: a budget in, per-feature schemes and a trainable config out, on the real Criteo sample."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compembed.cli.main import main
from compembed.data import open_dataset
from compembed.models import build_collection
from compembed.training import load_config

CRITEO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "criteo" / "criteo_kaggle_head8000.tsv.gz"
needs_shared = pytest.mark.skipif(not CRITEO.exists(), reason=f"real data sample not present at {CRITEO}")
TRAIN = ["--dim", "8", "--bottom-mlp", "16", "--top-mlp", "16", "--batch-size", "256", "--threads", "1",
         "--no-progress"]


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    if not CRITEO.exists():
        pytest.skip(f"real data sample not present at {CRITEO}")
    out = tmp_path_factory.mktemp("data")
    for order in ("frequency", "value"):
        assert main(["prepare", "criteo", str(CRITEO), "--out", str(out / order), "--id-order", order]) == 0
    return out


@needs_shared
def test_plan_writes_a_config_that_fits_and_trains(criteo, tmp_path, capsys):
    data = criteo / "frequency"
    plan_toml = tmp_path / "plan.toml"
    assert main(["plan", str(data), "--budget", "100KiB", "--optimizer", "adagrad", "--dim", "8",
                 "--out", str(plan_toml)]) == 0
    out = capsys.readouterr().out
    assert "budget 100.0 KiB for tables + adagrad state (D=8, 32-bit)" in out
    assert "hybrid" in out and "coverage" in out
    config = load_config(plan_toml)
    info = open_dataset(data).info
    assert set(config.model.features) == set(info.categorical_names) and config.model.threshold == 0
    assert config.data.source == str(data.resolve())
    tables = build_collection(config.model, info, device="meta")
    assert 2 * tables.num_bytes <= 100 * 1024  # tables plus Adagrad state within the budget
    assert f"{tables.num_bytes:,} bytes before optimizer state" in out
    run = tmp_path / "run"
    assert main(["train", "--config", str(plan_toml), "--out", str(run), "--max-steps", "5", *TRAIN]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["label"].startswith("planned[") and summary["memory"]["embedding_bytes"] == tables.num_bytes


@needs_shared
def test_plan_by_compression(criteo, capsys):
    assert main(["plan", str(criteo / "frequency"), "--compression", "20"]) == 0
    total = capsys.readouterr().out.split("\ntotal")[1]
    assert "x smaller than full tables" in total
    ratio = float(total.split("x smaller")[0].split()[-1])
    assert 19.0 <= ratio < 21.0


@needs_shared
def test_plan_with_robe_cold_parts_fits_and_trains(criteo, tmp_path, capsys):
    data, plan_toml = criteo / "frequency", tmp_path / "plan.toml"
    assert main(["plan", str(data), "--compression", "256", "--cold", "robe", "--dim", "8", "--out", str(plan_toml)]) == 0
    out = capsys.readouterr().out
    ratio = float(out.split("\ntotal")[1].split("x smaller")[0].split()[-1])
    assert "robe[" in out and 255.0 <= ratio <= 257.0  # met to the value, not a knob step below it
    config = load_config(plan_toml)
    colds = {f.get("cold_scheme", f["scheme"]) for f in config.model.features.values()}
    assert "robe" in colds and colds <= {"robe", "full"}
    run = tmp_path / "run"
    assert main(["train", "--config", str(plan_toml), "--out", str(run), "--max-steps", "5", *TRAIN]) == 0
    assert json.loads((run / "summary.json").read_text())["memory"]["compression_ratio"] > 200


@needs_shared
def test_plan_errors_name_the_problem(criteo, capsys):
    assert main(["plan", str(criteo / "value"), "--budget", "1MiB"]) == 2
    assert "ids are in value order" in capsys.readouterr().err
    assert main(["plan", str(criteo / "frequency"), "--budget", "2KiB"]) == 2
    assert "below the smallest plan" in capsys.readouterr().err
    assert main(["plan", str(criteo / "frequency"), "--budget", "lots"]) == 2
    assert "is not a size like 64MiB" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", str(criteo / "frequency")])  # --budget or --compression is required
