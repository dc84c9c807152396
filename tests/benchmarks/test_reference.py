"""The reference DLRM script in the bench's rounds, against a fake script with the reference's interface."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from compembed.benchmarks.reference import (
    SCRIPT, ReferenceDLRMError, ReferenceRun, check_reference_dir, parse_times, reference_args,
)
from compembed.benchmarks.report import to_markdown
from compembed.benchmarks.runner import (
    BenchConfig, Measurement, reference_specs, run_benchmark, run_interleaved, summarize,
)
from compembed.benchmarks.worker import build_step

CARDS = [500, 40, 3000, 7]

# The reference's command line as far as the bench uses it; iteration j of a run takes 10 * j ms.
# It appends its arguments to calls.jsonl, and fails when FAKE_DLRM_FAIL is "import" (at start-up,
# --help included) or "train" (only when training).
FAKE = textwrap.dedent('''
    import argparse, json, os, sys
    if os.environ.get("FAKE_DLRM_FAIL") == "import":
        sys.exit("ModuleNotFoundError: No module named 'sklearn'")
    p = argparse.ArgumentParser()
    for name in ("arch-sparse-feature-size", "num-batches", "mini-batch-size", "data-size", "nepochs",
                 "num-indices-per-lookup", "qr-collisions", "qr-threshold", "print-freq", "test-freq",
                 "numpy-rand-seed"):
        p.add_argument("--" + name, type=int)
    for name in ("arch-embedding-size", "arch-mlp-bot", "arch-mlp-top", "arch-interaction-op", "loss-function",
                 "data-generation", "rand-data-dist", "optimizer", "qr-operation", "num-indices-per-lookup-fixed"):
        p.add_argument("--" + name)
    p.add_argument("--learning-rate", type=float)
    for name in ("qr-flag", "print-time", "use-gpu"):
        p.add_argument("--" + name, action="store_true")
    args = p.parse_args()
    with open(os.path.join(os.path.dirname(__file__), "calls.jsonl"), "a") as f:
        f.write(json.dumps(dict(argv=sys.argv[1:], threads=os.environ.get("OMP_NUM_THREADS"))) + "\\n")
    if os.environ.get("FAKE_DLRM_FAIL") == "train":
        print("Traceback (most recent call last):", file=sys.stderr)
        sys.exit("RuntimeError: fake reference out of memory")
    print("Using CPU...")
    print("time/loss/accuracy (if enabled):")
    for j in range(1, args.num_batches + 1):
        ms = 10.0 * j if args.print_time else -1
        print(f"Finished training it {j}/{args.num_batches} of epoch 0, {ms:.2f} ms/it, loss 0.693147")
''')


@pytest.fixture
def fake_dir(tmp_path):
    (tmp_path / SCRIPT).write_text(FAKE)
    return tmp_path


def _calls(fake_dir):
    path = fake_dir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _option(argv, name):
    return argv[argv.index(name) + 1]


def test_arguments_match_the_compembed_dlrm_step():
    model_facts = build_step(dict(task="dlrm", variant="full-batched", cardinalities=CARDS, dim=8, batch=4,
                                  threshold=50, collisions=4))[1]
    args = reference_args(CARDS, 8, 64, 5, qr=True, collisions=4, threshold=50)
    bottom = [int(x) for x in _option(args, "--arch-mlp-bot").split("-")]
    top = [int(x) for x in _option(args, "--arch-mlp-top").split("-")]
    # The reference prepends the top MLP's input: the dot interaction's pairs of the F + 1 vectors, plus D.
    top_in = (len(CARDS) + 1) * len(CARDS) // 2 + 8
    layers = list(zip(bottom, bottom[1:])) + list(zip([top_in, *top], top))
    # The same linear layers as compembed's DLRM of the same run: the same FLOPs per sample.
    assert 6 * sum(a * b for a, b in layers) == model_facts["flop_per_sample"]
    assert bottom[0] == 13 and bottom[-1] == 8 and top[-1] == 1
    assert _option(args, "--arch-embedding-size") == "500-40-3000-7"
    assert _option(args, "--arch-sparse-feature-size") == "8" and _option(args, "--mini-batch-size") == "64"
    assert _option(args, "--num-batches") == "5" and _option(args, "--data-size") == "320"
    assert _option(args, "--optimizer") == "sgd" and _option(args, "--num-indices-per-lookup") == "1"
    assert _option(args, "--qr-collisions") == "4" and _option(args, "--qr-threshold") == "50"
    assert "--qr-flag" in args and "--print-time" in args and "--use-gpu" not in args
    assert "--qr-flag" not in reference_args(CARDS, 8, 64, 5, qr=False)
    assert "--use-gpu" in reference_args(CARDS, 8, 64, 5, qr=False, device="cuda")


def test_parse_times_reads_every_iteration_and_rejects_gaps():
    out = "Using CPU...\n" + "".join(f"Finished training it {j}/3 of epoch 0, {j}.50 ms/it, loss 0.69\n"
                                     for j in (1, 2, 3))
    assert parse_times(out, 3) == pytest.approx([0.0015, 0.0025, 0.0035])
    with pytest.raises(ReferenceDLRMError, match=r"iterations \[1, 2\], expected 1..3"):
        parse_times(out.replace("Finished training it 3/3 of epoch 0, 3.50 ms/it, loss 0.69\n", ""), 3)
    with pytest.raises(ReferenceDLRMError, match="no time per iteration"):
        parse_times("Finished training it 1/1 of epoch 0, -1.00 ms/it, loss 0.69", 1)
    with pytest.raises(ReferenceDLRMError, match="expected 4 iterations"):
        parse_times(out, 4)


def test_a_dir_without_the_script_is_named(tmp_path):
    with pytest.raises(ReferenceDLRMError, match=rf"--reference-dlrm {tmp_path}: no {SCRIPT} there"):
        check_reference_dir(tmp_path)
    with pytest.raises(ReferenceDLRMError, match="not a directory"):
        check_reference_dir(tmp_path / "missing")
    (tmp_path / SCRIPT).write_text("")
    assert check_reference_dir(tmp_path) == tmp_path / SCRIPT


def test_cli_names_a_bad_dir_before_running(tmp_path, capsys):
    from compembed.cli.main import main

    assert main(["bench", "--reference-dlrm", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--reference-dlrm {tmp_path}: no {SCRIPT} there" in err and not (tmp_path / "out").exists()
    assert main(["bench", "--reference-python", sys.executable]) == 2
    assert "--reference-python needs --reference-dlrm" in capsys.readouterr().err
    (tmp_path / SCRIPT).write_text("")
    assert main(["bench", "--reference-dlrm", str(tmp_path), "--reference-python", str(tmp_path / "nope")]) == 2
    assert f"--reference-python {tmp_path / 'nope'}: no such executable" in capsys.readouterr().err


def test_without_dir_it_is_skipped_with_a_reason():
    skipped = {}
    assert reference_specs(BenchConfig(), skipped) == {}
    assert "no --reference-dlrm DIR given" in skipped["ref-dlrm"]
    markdown = to_markdown(summarize(BenchConfig(), {}, [], skipped, 1.0))
    assert "`ref-dlrm` skipped: the reference DLRM script was not run" in markdown


def _spec(fake_dir, qr, **extra):
    spec = dict(task="dlrm", variant="ref", qr=qr, cardinalities=CARDS, dim=8, batch=64, threshold=50,
                collisions=4, threads=1, warmup=2, reference_dir=str(fake_dir), reference_python=sys.executable)
    return dict(spec, **extra)


def test_rounds_interleave_the_runs_and_time_the_last_steps(fake_dir):
    specs = {"ref-dlrm-full": _spec(fake_dir, False), "ref-dlrm-qr": _spec(fake_dir, True)}
    results = run_interleaved(specs, rounds=2, steps=3, task="dlrm", progress=lambda _: None)
    calls = _calls(fake_dir)
    runs = [c["argv"] for c in calls if "--num-batches" in c["argv"]]
    # (the --help probes exit in argparse, unlogged) round 1 in order, round 2 rotated
    assert len(calls) == 4 and ["--qr-flag" in argv for argv in runs] == [False, True, True, False]
    for argv in runs:  # 2 warm-up + 1 settle + 3 timed batches of the bench's sizes
        assert _option(argv, "--num-batches") == "6" and _option(argv, "--arch-embedding-size") == "500-40-3000-7"
    assert {c["threads"] for c in calls} == {"1"}
    for result in results.values():
        # iterations 4, 5, 6 of each run: 40 + 50 + 60 ms for 3 x 64 samples
        assert result.samples_per_s == pytest.approx([3 * 64 / 0.150] * 2) and result.peak_rss > 0
        assert result.skipped is None


def test_a_failing_script_stops_the_bench_with_its_stderr(fake_dir, monkeypatch):
    monkeypatch.setenv("FAKE_DLRM_FAIL", "import")
    with pytest.raises(ReferenceDLRMError,
                       match=rf"--reference-dlrm {fake_dir}.*exited with code 1.*No module named 'sklearn'"):
        ReferenceRun(_spec(fake_dir, False)).read()
    monkeypatch.setenv("FAKE_DLRM_FAIL", "train")
    with pytest.raises(ReferenceDLRMError, match=r"exited with code 1; its stderr ends: Traceback .*out of memory"):
        run_interleaved({"ref-dlrm-full": _spec(fake_dir, False)}, 1, 1, "dlrm", lambda _: None)
    with pytest.raises(ReferenceDLRMError, match="--reference-python /nonexistent/python: cannot run it"):
        ReferenceRun(_spec(fake_dir, False, reference_python="/nonexistent/python")).read()


def test_ratios_against_the_reference_in_the_summary():
    def m(name, speeds):
        return Measurement("dlrm", name, samples_per_s=speeds, peak_rss=1000)

    tasks = {"dlrm": {name: m(name, speeds) for name, speeds in [
        ("full-batched", [200.0]), ("qr", [300.0]), ("ref-dlrm-full", [150.0]), ("ref-dlrm-qr", [120.0])]}}
    out = summarize(BenchConfig(), tasks, [], {}, 1.0)
    rows = out["tasks"]["dlrm"]["variants"]
    assert out["tasks"]["dlrm"]["best_full"] == "full-batched"  # the reference is not one of compembed's baselines
    assert rows["qr"]["speed_vs_ref-dlrm-full"] == pytest.approx(2.0)
    assert rows["ref-dlrm-qr"]["speed_vs_ref-dlrm-full"] == pytest.approx(0.8)
    assert rows["ref-dlrm-full"]["description"].startswith("the reference DLRM script")
    targets = {t["target"]: t for t in out["targets"]}
    assert targets["DLRM step, QR vs the reference DLRM script's full tables (qr / ref-dlrm-full)"]["met"] is True
    assert targets["(reference DLRM script: its QR-mult vs its full tables, ref-dlrm-qr / ref-dlrm-full)"]["value"] == \
        pytest.approx(0.8)
    markdown = to_markdown(out)
    assert "vs ref-dlrm-full" in markdown and "| ref-dlrm-qr | 120 |" in markdown


def test_the_reference_runs_in_the_rounds_of_a_compembed_worker(fake_dir):
    # a real worker (the idle task: the cheapest to start) and the reference in the same round loop
    idle = dict(task="idle", cardinalities=CARDS, dim=8, batch=1, threshold=50, collisions=4, threads=1, warmup=1)
    results = run_interleaved({"idle": idle, "ref-dlrm-qr": _spec(fake_dir, True)}, rounds=2, steps=2,
                              task="dlrm", progress=lambda _: None)
    assert len(results["idle"].samples_per_s) == 2 and results["idle"].peak_rss > 0
    # 2 warm-up + 1 settle + 2 timed: iterations 4 and 5, 40 + 50 ms for 2 x 64 samples
    assert results["ref-dlrm-qr"].samples_per_s == pytest.approx([128 / 0.090] * 2)
    assert len(_calls(fake_dir)) == 2


def test_bench_puts_the_reference_in_the_dlrm_task_with_its_sizes(fake_dir, monkeypatch):
    from compembed.benchmarks import runner

    seen = {}

    def fake_interleaved(specs, rounds, steps, task, progress):
        seen[task] = specs
        speeds = {"qr": 300.0, "ref-dlrm-full": 100.0, "ref-dlrm-qr": 80.0}
        return {name: Measurement(task, name, samples_per_s=[speeds.get(name, 1.0)] * rounds, peak_rss=10,
                                  facts={"flop_per_step": 1}) for name in specs}

    monkeypatch.setattr(runner, "run_interleaved", fake_interleaved)
    monkeypatch.setattr(runner, "fbgemm_unavailable", lambda: None)
    config = BenchConfig(batch=32, dim=8, threshold=50, collisions=4, threads=3, rounds=2, steps=2, warmup=1,
                         cardinalities=tuple(CARDS), emb_variants=("qr",), dlrm_variants=("qr",),
                         scaling_cardinalities=(), bag_length=0, reference_dlrm=str(fake_dir),
                         reference_python="/opt/ref/python")
    result = run_benchmark(config, progress=lambda _: None)
    assert not any(name.startswith("ref-") for name in seen["emb"])  # the DLRM step only
    ours, full, qr = seen["dlrm"]["qr"], seen["dlrm"]["ref-dlrm-full"], seen["dlrm"]["ref-dlrm-qr"]
    for ref in (full, qr):  # the compembed variant's sizes, batch, threads and warm-up
        for key in ("cardinalities", "dim", "batch", "threshold", "collisions", "threads", "device", "warmup"):
            assert ref[key] == ours[key], key
        assert ref["reference_dir"] == str(fake_dir) and ref["reference_python"] == "/opt/ref/python"
    assert (full["qr"], qr["qr"]) == (False, True)
    rows = result["tasks"]["dlrm"]["variants"]
    assert rows["qr"]["speed_vs_ref-dlrm-full"] == pytest.approx(3.0) and "ref-dlrm" not in result["skipped"]
    assert rows["ref-dlrm-qr"]["speed_vs_ref-dlrm-full"] == pytest.approx(0.8)
    json.dumps(result)  # plain data
