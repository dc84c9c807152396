import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compembed.cli.main import main
from compembed.sweep import SweepSpec, judge_claims, preset, run_sweep, summarize
from compembed.sweep.report import Summary
from compembed.sweep.runner import cell_train_config, train_cell, tuned_lrs

REPO = Path(__file__).resolve().parents[2]


def test_grid_has_each_config_once_and_stable_keys():
    spec = SweepSpec(archs=("dlrm",), seeds=(0,), optimizers=("adagrad",))
    cells = spec.cells()
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    # qr at 4 collisions and threshold 1 belongs to both the collision and the threshold study: once.
    labels = [(c.label, c.config.model.threshold) for c in cells]
    assert labels.count(("qr-mult/4", 1)) == 1
    assert len(cells) == 1 + 7 * 4 + 2 + 4 + 5 * 3 - 3
    assert [c.key for c in SweepSpec(archs=("dlrm",), seeds=(0,), optimizers=("adagrad",)).cells()] == keys
    assert len(SweepSpec(archs=("dlrm", "dcn"), seeds=(0, 1), optimizers=("adagrad", "amsgrad")).cells()) == 8 * len(cells)


def test_unknown_study_is_rejected():
    with pytest.raises(ValueError, match="unknown studies"):
        SweepSpec(studies=("speed",))


class Killed(Exception):
    pass


def _fake_measure(cell, workdir):
    return {"embedding_parameters": 10, "parameters": 20, "bytes": 40, "full_embedding_parameters": 30,
            "compression_ratio": 3.0, "val_loss": 0.5, "test_loss": 0.5, "test_accuracy": 0.7,
            "test_auc": 0.6, "bayes_loss": 0.4, "train_samples": 100, "samples_per_s": 1000.0}


def test_finished_cells_are_not_rerun(tmp_path):
    spec = dataclasses.replace(preset("tiny"), studies=("collisions",))
    calls, kill_at = [], [3]

    def fake(cell, workdir):
        calls.append(cell.key)
        if len(calls) == kill_at[0]:
            raise Killed  # the sweep is killed in its third cell
        return _fake_measure(cell, workdir)

    with pytest.raises(Killed):
        run_sweep(spec, tmp_path, fake, progress=False)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2
    first = list(calls)
    calls.clear()
    kill_at[0] = None
    rows = run_sweep(spec, tmp_path, fake, progress=False)
    assert len(rows) == len(spec.cells())
    assert not set(calls[1:]) & set(first[:2]), "finished cells ran again"
    assert calls[0] == first[2]  # the interrupted cell is the first one redone


def test_a_sweep_over_a_moved_dataset_keeps_its_cells_and_adopts_cells_keyed_by_path(tmp_path):
    from compembed.data import SyntheticConfig, SyntheticCTR
    from compembed.data.export import save_synthetic
    from compembed.sweep.grid import legacy_cell_key
    from compembed.training import DataConfig

    save_synthetic(SyntheticCTR(SyntheticConfig(num_rows=300, cardinality_scale=0.0005)), tmp_path / "data",
                   progress=False)

    def spec_at(folder):
        tiny = dataclasses.replace(preset("tiny"), studies=("collisions",))
        return dataclasses.replace(tiny, base=dataclasses.replace(tiny.base, data=DataConfig(source=str(folder))))

    def refuse(cell, workdir):
        raise AssertionError(f"cell {cell.key} ran again")

    spec = spec_at(tmp_path / "data")
    rows, keys = run_sweep(spec, tmp_path / "out", _fake_measure, progress=False), [c.key for c in spec.cells()]
    (tmp_path / "data").rename(tmp_path / "moved")
    moved = spec_at(tmp_path / "moved")
    assert [c.key for c in moved.cells()] == keys  # keyed by the data's identity, not its path
    assert run_sweep(moved, tmp_path / "out", refuse, progress=False) == rows
    # cells a sweep stored under their key of before (the data's path) are renamed, not rerun
    cells = tmp_path / "out" / "cells"
    for cell in moved.cells():
        row = json.loads((cells / f"{cell.key}.json").read_text())
        (cells / f"{cell.key}.json").unlink()
        (cells / f"{legacy_cell_key(cell.config)}.json").write_text(json.dumps({**row, "key": "old"}))
        assert legacy_cell_key(cell.config) != cell.key
    assert run_sweep(moved, tmp_path / "out", refuse, progress=False) == rows
    assert sorted(p.stem for p in cells.glob("*.json")) == sorted(c.key for c in moved.cells())


def _summary(label, loss, arch="dlrm", threshold=1, scheme="qr", operation="mult", c=4, params=1000):
    return Summary(arch=arch, label=label, scheme=scheme, operation=operation, num_collisions=c, path_hidden=0,
                   threshold=threshold, optimizer="adagrad", seeds=3, parameters=params, embedding_parameters=params,
                   loss=loss, loss_std=0.001, accuracy=0.78, accuracy_std=0.001, auc=0.8, bayes_loss=None)


def test_a_cell_cut_short_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    from compembed.training.loop import open_data, train

    spec = dataclasses.replace(preset("tiny"), studies=("collisions",), collisions=(4,))
    cell = next(c for c in spec.cells() if c.label == "qr-mult/4")
    assert cell.config.checkpoint_every == 0  # the preset checkpoints only at the end of its single epoch
    config = cell_train_config(cell, checkpoint_every=2)
    assert config.checkpoint_every == 2 and cell_train_config(cell, 0) == cell.config
    assert dataclasses.replace(config, checkpoint_every=0) == cell.config  # nothing else changes

    def stop_at_step_5(state):
        if state["step"] == 5:
            raise Killed

    for every, kept in ((0, False), (2, True)):
        with pytest.raises(Killed):
            train(cell_train_config(cell, every), dataset=open_data(cell.config.data), out_dir=tmp_path / f"cut{every}",
                  progress=False, on_step=stop_at_step_5)
        assert (tmp_path / f"cut{every}" / "checkpoint.safetensors").exists() == kept

    resumed = train_cell(cell, tmp_path / "cut2", checkpoint_every=2)
    whole = train_cell(cell, tmp_path / "whole", checkpoint_every=0)
    assert resumed["train_samples"] == whole["train_samples"] > 5 * cell.config.batch_size
    for k in ("val_loss", "test_loss", "test_auc"):
        assert resumed[k] == whole[k], k


def test_sweep_checkpoint_cadence_must_be_a_whole_number_of_steps(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--preset", "tiny", "--checkpoint-every", "-1"])
    assert "--checkpoint-every: must be >= 0, got -1" in capsys.readouterr().err


def test_claims_are_judged_from_the_numbers():
    summaries = [
        _summary("full", 0.4500, scheme="full", operation="", c=0, params=10_000),
        _summary("hashing/4", 0.4560, scheme="hashing", operation=""),
        _summary("qr-mult/4", 0.4520),
        _summary("qr-add/4", 0.4540, operation="add"),
        _summary("qr-concat/4", 0.4510, operation="concat"),
    ]
    claims = {c.claim.split(": ", 1)[1]: c for c in judge_claims(summaries, threshold=1)}
    assert claims["at the same collisions (about the same parameters) QR-mult has a lower test loss than hashing"].held
    assert claims["element-wise multiplication is the best operation"].held is False  # concat won
    near_full = claims["QR-mult at 4 collisions is within 0.7% of the full-table test loss"]
    assert near_full.held and "+0.44%" in near_full.evidence


def test_tiny_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    # One thread per run, in this process and in the workers below: float sums may differ across thread counts.
    args = ["sweep", "--preset", "tiny", "--out", str(out), "--collisions", "4", "--studies", "collisions,path",
            "--threads", "1"]
    assert main(args) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["full", "hashing/4", "path[8]/4", "qr-add/4", "qr-mult/4"]
    for r in rows:
        assert 0 < float(r["test_loss"]) < 1.5 and 0 <= float(r["test_accuracy"]) <= 1
        assert float(r["bayes_loss"]) > 0 and int(r["embedding_parameters"]) > 0
    full = next(r for r in rows if r["label"] == "full")
    qr = next(r for r in rows if r["label"] == "qr-mult/4")
    assert int(qr["embedding_parameters"]) < int(full["embedding_parameters"])
    report = (out / "report.md").read_text()
    assert "## The paper's claims" in report and "qr-mult/4" in report and "--preset tiny" in report
    assert (out / "dlrm_loss_accuracy_vs_params.png").stat().st_size > 10_000
    assert (out / "results.parquet").exists()
    cells = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert main(args) == 0  # rerun: everything is finished, nothing is trained again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == cells
    assert json.loads(next((out / "cells").glob("*.json")).read_text())["arch"] == "dlrm"

    # Two worker processes give the same numbers as one process (each run is seeded).
    parallel = tmp_path / "parallel"
    assert main([*args[:4], str(parallel), *args[5:], "--jobs", "2"]) == 0
    with open(parallel / "results.csv") as f:
        again = {r["key"]: r for r in csv.DictReader(f)}
    for r in rows:
        assert again[r["key"]]["test_loss"] == r["test_loss"]


def test_budget_study_needs_the_data_info():
    spec = dataclasses.replace(preset("tiny"), studies=("budget",))
    with pytest.raises(ValueError, match="budget study needs the dataset's info"):
        spec.cells()


def test_budget_cells_match_bytes_and_report_unreachable_budgets():
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR
    from compembed.models import build_collection
    from compembed.planning import budget_for_compression

    spec = dataclasses.replace(preset("tiny"), studies=("budget",), budgets=(4, 64, 5000),
                               budget_collisions=(2,))
    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0, id_order="frequency"))
    cells = spec.cells(data.info)
    methods = {(c.method, c.target) for c in cells}
    assert ("full", 1.0) in methods and ("planner", 4.0) in methods and ("hashing", 2.0) in methods
    models, missing = spec.budget_models(data.info, "adagrad")
    assert ("qr", 5000.0) in [(m, r) for m, r, _ in missing]  # QR's smallest tables exceed that budget
    for cell in cells:
        if cell.method == "full":
            continue
        budget = budget_for_compression(data.info.cardinalities, cell.target)
        tables = build_collection(cell.config.model, data.info, device="meta")
        assert 2 * tables.num_bytes <= budget  # tables plus Adagrad state within the budget
        assert 2 * tables.num_bytes >= 0.5 * budget or cell.method == "gqr"  # and close to it
        assert cell.label == f"{cell.method}@{cell.target:g}x"


def test_budget_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "budget"
    args = ["sweep", "--preset", "tiny", "--studies", "budget", "--budgets", "4,100000", "--budget-methods",
            "planner,hashing", "--seeds", "0,1", "--id-order", "frequency", "--out", str(out)]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "planner not worse than hashing beyond the seed std at 4x" in report
    assert (out / "loss_vs_bytes_dlrm.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["method"] for r in rows} == {"full", "planner", "hashing", "qr"}
    # seeds x (full, planner and hashing at 4x, qr and hashing at 2x): at 100,000x neither fits, not even
    # with one hashed row per feature, and the report says so.
    assert len(rows) == 2 * 5
    assert "- planner (hybrid) at 100000x: a budget of 21 B is below the smallest plan" in report
    assert "- hashing trick at 100000x: its smallest configuration exceeds" in report


def _session_processes(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid``, read from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
        except OSError:
            continue  # ended while being read
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_killed_sweep_leaves_no_worker_behind_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "tiny", "--out", str(out), "--collisions", "4", "--studies", "collisions",
            "--threads", "1", "--jobs", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    # Its own session: every process it starts (workers, resource tracker) carries its pid as session id.
    proc = subprocess.Popen([sys.executable, "-m", "compembed", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and not (
                (out / "scratch").is_dir() and any((out / "scratch").iterdir())):
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before a cell ran"
        children = _session_processes(proc.pid) - {proc.pid}
        assert len(children) >= 2, children  # two workers (and the resource tracker)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _session_processes(proc.pid), "processes outlived the killed sweep"
    finally:
        for pid in _session_processes(proc.pid):  # never leave them running, even when the test fails
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    kept = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert main([*args[:-1], "1"]) == 0  # rerun: finishes the sweep and keeps the cells that were done
    assert len(list((out / "cells").glob("*.json"))) == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json") if p.name in kept} == kept


def _killed_from_outside(cell, workdir):
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does


def test_a_worker_killed_from_outside_is_named_and_the_cli_says_what_to_do(tmp_path, capsys, monkeypatch):
    from compembed.cli import sweep as sweep_cli
    from compembed.sweep.runner import WorkerDiedError

    spec = dataclasses.replace(preset("tiny"), studies=("collisions",))
    with pytest.raises(WorkerDiedError, match="a worker process died .* rerun the same command .* fewer --jobs"):
        run_sweep(spec, tmp_path / "out", _killed_from_outside, progress=False, jobs=2)

    def died(*args, **kwargs):
        raise WorkerDiedError("a worker process died")

    monkeypatch.setattr(sweep_cli, "run_sweep", died)
    assert main(["sweep", "--preset", "tiny", "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert "error: a worker process died" in err and "unexpected" not in err and "a bug" not in err


def test_budget_study_sizes_robe_and_dhe_cells():
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR
    from compembed.models import build_collection
    from compembed.planning import budget_for_compression

    spec = dataclasses.replace(preset("tiny"), studies=("budget",), budgets=(4, 16), budget_methods=("robe", "dhe"),
                               budget_collisions=())
    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0))
    cells = [c for c in spec.cells(data.info) if c.method in ("robe", "dhe")]
    assert {(c.method, c.target) for c in cells} == {("robe", 4.0), ("robe", 16.0), ("dhe", 4.0), ("dhe", 16.0)}
    for cell in cells:
        budget = budget_for_compression(data.info.cardinalities, cell.target)
        tables = build_collection(cell.config.model, data.info, device="meta")
        schemes = {r.scheme.split("-")[0].split("[")[0] for r in tables.report()}
        assert 2 * tables.num_bytes <= budget and cell.method in schemes
        if cell.method == "robe":  # the array takes the budget to the value (8 bytes with Adagrad)
            assert budget - 2 * tables.num_bytes < 8


def test_methods_preset_lists_tuning_cells_then_every_method_budget_and_seed():
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR
    from compembed.embedding import FeatureConfig
    from compembed.planning import UNIFORM_METHODS, budget_for_compression, feature_bytes

    spec = preset("methods")
    assert spec.budgets == (2, 4, 16, 64, 256, 1000, 10000) and spec.dcn_budgets == (16, 256, 10000)
    assert len(spec.seeds) >= 3 and len(spec.tune_lrs) >= 2 and spec.archs == ("dlrm", "dcn")
    assert spec.budget_methods[:5] == ("planner", "planner-robe", "hashing", "qr", "gqr")
    assert set(spec.budget_methods[5:]) == set(UNIFORM_METHODS) - {"hashing", "qr", "gqr"}
    spec = dataclasses.replace(spec, base=preset("tiny").base, budgets=(4, 16, 64), dcn_budgets=(16,), tune_lrs=(0.01, 0.1))
    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0, id_order="frequency"))
    models, _ = spec.budget_models(data.info, "adagrad")
    fitting = {m for m, _, _ in models}
    assert {"full", "hashing", "planner", "planner-robe", "robe"} <= fitting
    # the planners' cells carry their plans: hot rows plus compositions, or plus ROBE arrays
    for method, cold in (("planner", {"qr", "gqr", "hashing"}), ("planner-robe", {"robe"})):
        for _, ratio, overrides in (m for m in models if m[0] == method and m[1] > 1):
            colds = {f.get("cold_scheme", f["scheme"]) for f in overrides["features"].values()} - {"full"}
            assert colds and colds <= cold, (method, ratio, colds)
            planned = sum(feature_bytes(FeatureConfig(name, n, **f), "adagrad") for (name, f), n
                          in zip(overrides["features"].items(), data.info.cardinalities))
            assert planned <= budget_for_compression(data.info.cardinalities, ratio)
    # Before any tuning finished: the tuning cells only, each method x candidate once, seed 0, DLRM,
    # at the method's fitting budget nearest 16x (full tables at 1x).
    tune = spec.cells(data.info)
    assert all(c.role == "tune" and c.config.seed == 0 and c.config.model.arch == "dlrm" for c in tune)
    assert sorted((c.method, c.config.optim.embedding_lr) for c in tune) == sorted(
        (m, lr) for m in fitting for lr in (0.01, 0.1))
    targets = {c.method: c.target for c in tune}
    assert targets["full"] == 1.0 and targets["hashing"] == 16.0
    # Once a method's recipe is known, its cells at every fitting budget and seed, DLRM and DCN at 16x.
    tuned = {m: 0.1 for m in fitting}
    cells = spec.cells(data.info, tuned=tuned)
    main = [c for c in cells if c.role != "tune"]
    dcn = [(m, r) for m, r, _ in models if r == 16.0 or m == "full"]
    # Each method's tuning cell at lr 0.1 is also its seed-0 DLRM cell: it runs once, under its tuning role.
    assert len(main) == 3 * len(models) + 3 * len(dcn) - len(fitting)
    assert {c.config.optim.embedding_lr for c in main} == {0.1}
    assert {(c.method, c.target) for c in main if c.config.model.arch == "dcn"} == set(dcn)
    assert len({c.key for c in cells}) == len(cells)
    partial = spec.cells(data.info, tuned={"hashing": 0.01})
    assert {c.method for c in partial if c.role != "tune"} == {"hashing"}


def test_dhe_wider_than_its_cap_does_not_reach_the_budget():
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR

    spec = dataclasses.replace(preset("tiny"), studies=("budget",), budgets=(4,), budget_methods=("dhe",),
                               budget_collisions=(), dhe_max_width=8)
    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0, id_order="frequency"))
    models, missing = spec.budget_models(data.info, "adagrad")
    assert [m for m, _, _ in models] == ["full"]
    [(method, ratio, why)] = missing
    assert (method, ratio) == ("dhe", 4.0) and "does not reach" in why and "cap of 8" in why


def test_parts_split_the_main_cells_and_keep_the_tuning_cells():
    from compembed.sweep.runner import select_cells

    spec = dataclasses.replace(preset("tiny"), studies=("collisions",), seeds=(0, 1, 2))
    cells = spec.cells()
    cells[0] = dataclasses.replace(cells[0], role="tune")
    parts = [select_cells(cells, part=(i, 3)) for i in (1, 2, 3)]
    main_keys = [c.key for p in parts for c in p if c.role != "tune"]
    assert sorted(main_keys) == sorted(c.key for c in cells[1:])  # each main cell in exactly one part
    assert all(cells[0] in p for p in parts)
    assert select_cells(cells, only="tune") == [cells[0]] and select_cells(cells, only="main") == cells[1:]
    with pytest.raises(ValueError, match="part must be I/N"):
        select_cells(cells, part=(4, 3))


def test_sweep_runs_the_tuning_phase_first_then_the_chosen_recipe(tmp_path):
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR

    spec = dataclasses.replace(preset("methods"), base=preset("tiny").base, archs=("dlrm",), budgets=(4,),
                               budget_methods=("hashing", "robe"), seeds=(0, 1), tune_lrs=(0.01, 0.1, 0.3))
    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0, id_order="frequency"))
    order = []

    def fake(cell, workdir):  # validation loss lowest at lr 0.1 for every method
        lr = cell.config.optim.embedding_lr
        order.append((cell.role, cell.method, lr))
        return {"embedding_parameters": 10, "parameters": 20, "bytes": 40, "full_embedding_parameters": 30,
                "compression_ratio": 3.0, "val_loss": abs(lr - 0.1), "test_loss": 0.5, "test_accuracy": 0.7,
                "test_auc": 0.6, "bayes_loss": 0.4, "train_samples": 100, "samples_per_s": 1000.0}

    rows = run_sweep(spec, tmp_path, fake, progress=False, info=data.info)
    tuning = [o for o in order if o[0] == "tune"]
    assert order[:len(tuning)] == tuning and len(tuning) == 3 * 3  # (full, hashing, robe) x 3 candidates first
    assert {lr for role, _, lr in order if role != "tune"} == {0.1}
    assert len(rows) == 9 + 3 * 2 - 3  # seed 0's cells at lr 0.1 are the tuning cells
    assert {r["role"] for r in rows} == {"tune", ""}
    order.clear()
    assert len(run_sweep(spec, tmp_path, fake, progress=False, info=data.info)) == len(rows) and order == []


def test_when_the_tuning_budget_moves_only_the_new_tuning_cells_vote(tmp_path):
    # A study tuned at 4x (then its nearest budget to 16x), rerun with 16x added: the 4x tuning rows
    # stay on disk; they must neither choose the recipe nor count as tuning rows.
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR

    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0, id_order="frequency"))
    spec = dataclasses.replace(preset("methods"), base=preset("tiny").base, archs=("dlrm",), budgets=(4,),
                               budget_methods=("hashing",), seeds=(0,), tune_lrs=(0.01, 0.1, 0.3))

    def fake(cell, workdir):  # best lr: 0.3 at 4x (and for full tables), 0.1 at 16x
        lr = cell.config.optim.embedding_lr
        loss = abs(lr - 0.1) + 0.05 if cell.target == 16 else abs(lr - 0.3)
        return {"embedding_parameters": 10, "parameters": 20, "bytes": 40, "full_embedding_parameters": 30,
                "compression_ratio": 3.0, "val_loss": loss, "test_loss": 0.5, "test_accuracy": 0.7,
                "test_auc": 0.6, "bayes_loss": 0.4, "train_samples": 100, "samples_per_s": 1000.0}

    run_sweep(spec, tmp_path, fake, progress=False, info=data.info)
    assert tuned_lrs(spec, tmp_path / "cells", data.info)["hashing"] == 0.3
    moved = dataclasses.replace(spec, budgets=(4, 16))
    rows = run_sweep(moved, tmp_path, fake, progress=False, info=data.info)
    assert tuned_lrs(moved, tmp_path / "cells", data.info)["hashing"] == 0.1
    hashing = [r for r in rows if r["method"] == "hashing"]
    assert {(r["target_compression"], r["table_lr"]) for r in hashing if r["role"] == "tune"} == \
        {(16.0, 0.01), (16.0, 0.1), (16.0, 0.3)}
    assert {(r["target_compression"], r["table_lr"]) for r in hashing if r["role"] != "tune"} == {(4.0, 0.1)}
    # the old 4x run at lr 0.1 is that main cell now: no new run, and its row says so
    assert len(list((tmp_path / "cells").glob("*.json"))) == 3 + 3 + 3  # full, hashing at 4x, hashing at 16x


def test_a_rebuilt_report_names_the_command_that_ran_the_cells():
    from types import SimpleNamespace

    from compembed.cli.sweep import _command

    args = SimpleNamespace(argv=["sweep", "--preset", "methods", "--out", "runs/m", "--report-only"])
    assert _command(args) == "sweep --preset methods --out runs/m"


def test_a_share_of_a_tuned_studys_budgets_keeps_its_tuning_cells():
    # --budgets 256 once made every method tune at 256x (its fitting budget nearest 16x among {256}):
    # the share's tuning cells must be the whole study's.
    from compembed.cli.main import build_parser
    from compembed.cli.sweep import build_spec
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR

    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0))
    whole = dataclasses.replace(preset("methods"), base=preset("tiny").base, budget_methods=("hashing", "robe"))
    share = dataclasses.replace(whole, budgets=(64,), tune_budgets=whole.budgets)
    assert {c.key for c in share.tune_cells(data.info)} == {c.key for c in whole.tune_cells(data.info)}
    assert {c.target for c in whole.tune_cells(data.info) if c.method != "full"} == {16.0}
    assert {c.key for c in dataclasses.replace(whole, budgets=(64,)).tune_cells(data.info)} != \
        {c.key for c in whole.tune_cells(data.info)}  # without tune_budgets the share would tune elsewhere
    args = build_parser().parse_args(["sweep", "--preset", "methods", "--budgets", "64"])
    spec = build_spec(args)
    assert spec.budgets == (64.0,) and spec.tune_budgets == preset("methods").budgets


def test_a_share_of_a_tuned_studys_archs_or_seeds_tunes_where_the_whole_study_does():
    # --archs dcn once tuned every method on DCN (the share's first arch): 3 extra runs per method, and
    # DCN cells under DCN-chosen recipes, not the study's.
    from compembed.cli.main import build_parser
    from compembed.cli.sweep import build_spec
    from compembed.data.synthetic import SyntheticConfig, SyntheticCTR

    data = SyntheticCTR(SyntheticConfig(num_rows=3000, cardinality_scale=0.0005, seed=0))
    whole = dataclasses.replace(preset("methods"), base=preset("tiny").base, budget_methods=("hashing", "robe"))
    tune = {c.key for c in whole.tune_cells(data.info)}
    assert {c.config.model.arch for c in whole.tune_cells(data.info)} == {"dlrm"}
    for share in (dict(archs=("dcn",)), dict(seeds=(2,)), dict(archs=("dcn",), seeds=(1, 2))):
        kept = dataclasses.replace(whole, **share, tune_run=("dlrm", "adagrad", 0))
        assert {c.key for c in kept.tune_cells(data.info)} == tune
        assert {c.key for c in dataclasses.replace(whole, **share).tune_cells(data.info)} != tune  # without tune_run
        main_cells = [c for c in kept.cells(data.info, tuned={"hashing": 0.05}) if c.role != "tune"]
        assert main_cells and all(c.config.model.arch in kept.archs and c.config.seed in kept.seeds for c in main_cells)
    for argv, run in ((["--archs", "dcn"], ("dlrm", "adagrad", 0)), (["--seeds", "1,2"], ("dlrm", "adagrad", 0)),
                      ([], None), (["--budgets", "16"], None)):
        spec = build_spec(build_parser().parse_args(["sweep", "--preset", "methods", *argv]))
        assert spec.tune_run == run
