"""compembed's trainer under torchrun: 2 processes on 127.0.0.1 (gloo), interrupted and resumed with
``torchrun -m compembed train --resume``, end with the model, optimizer state and metrics of
``compembed train`` in one process on the same global batches; validation every 2 steps stops both
early at the same step (a rank that decided otherwise would hang in the next collective)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from compembed.training import train
from compembed.training.loop import BEST, CHECKPOINT, CONFIG, METRICS, SUMMARY

from _train_worker import make_config
from test_ddp import run  # the launcher: torchrun on 127.0.0.1, or one plain process

WORKER = "_train_worker.py"


def train_records(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        r.pop("samples_per_s", None)
    return records


def test_torchrun_training_resumes_and_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # The CLI spelling of _train_worker.make_config(batch_size=64).
    cli = ["train", "--scheme", "qr", "--dim", "8", "--bottom-mlp", "16", "--top-mlp", "16", "--threshold", "0",
           "--optimizer", "adagrad", "--lr", "0.05", "--rows", "421", "--scale", "0.0005", "--data-seed", "3",
           "--epochs", "3", "--log-every", "2", "--checkpoint-every", "2", "--threads", "1", "--no-progress",
           "--eval-every", "2", "--early-stopping", "2"]
    run([*cli, "--batch-size", "64", "--out", str(one)], nproc=1, worker="-m compembed")
    # 337 train rows, 6 global batches an epoch; checkpoints every 2 steps: stop at 7, resume from 6.
    # Validation every 2 steps: val loss lowest at step 8, higher at 10 and 12, so patience 2 ends the run
    # at 12, mid-way through its 18 steps.
    run([str(two), "--batch-size", "32", "--stop-after", "7"], nproc=2, worker=WORKER)
    assert not (two / SUMMARY).exists()
    interrupted = load_file(two / CHECKPOINT)
    # A checkpoint written by 2 ranks cannot be continued by 1 (the data shards would differ).
    copy = tmp_path / "copy"
    shutil.copytree(two, copy)
    with pytest.raises(ValueError, match="written by 2 process"):
        train(make_config(batch_size=32), out_dir=copy, resume=True, progress=False)
    report = run(["train", "--resume", "--out", str(two), "--no-progress"], nproc=2, worker="-m compembed")
    assert report.count("train loss") == 1, "only rank 0 prints the report"

    a, b = load_file(one / CHECKPOINT), load_file(two / CHECKPOINT)
    assert a.keys() == b.keys()
    assert any(not torch.equal(interrupted[k], b[k]) for k in b), "the resumed run trained further"
    for key in a:
        # Adagrad normalises each step (about lr * sign(g) at first), so float noise in tiny gradients
        # reaches ~1e-5; a lost shard or a wrong scale moves parameters by ~lr = 0.05.
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4, msg=f"{key} differs")
    # Rank 0 alone wrote the logs: no doubled records, global sample counts, the same losses.
    ra, rb = train_records(one / METRICS), train_records(two / METRICS)
    assert [(r["kind"], r["step"], r.get("samples")) for r in rb] == [(r["kind"], r["step"], r.get("samples")) for r in ra]
    for x, y in zip(ra, rb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y.get("live_units") == x.get("live_units")  # a unit is live if it fired on either rank's shard
    sa, sb = json.loads((one / SUMMARY).read_text()), json.loads((two / SUMMARY).read_text())
    assert sb["samples"] == sa["samples"] == 2 * 337 and sb["steps"] == sa["steps"] == 12
    assert sb["stopped_early"] and sa["stopped_early"] and sb["best"]["step"] == sa["best"]["step"] == 8
    assert sb["evals"]["test"]["loss"] == pytest.approx(sa["evals"]["test"]["loss"], rel=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted([BEST, CHECKPOINT, CONFIG, METRICS, SUMMARY])



# One feature per scheme of the field's methods (and planner-robe's hybrid), in one model: ROBE-Z, TT-Rec
# with its cache, mixed dimensions, DHE, CCE re-clustered twice (k = 441: an int16 assignment, which
# neither gloo nor NCCL carries) and hot rows plus a ROBE array.
EVERY_SCHEME = """
[model.features.C3]
scheme = "robe"
block_size = 4
[model.features.C4]
scheme = "tt"
tt_rank = 4
tt_cache_rows = 8
[model.features.C12]
scheme = "md"
[model.features.C16]
scheme = "dhe"
[model.features.C21]
scheme = "cce"
cce_every = 2
cce_rounds = 2
[model.features.C24]
scheme = "hybrid"
hot_rows = 16
cold_scheme = "robe"
"""


@pytest.mark.parametrize("update", ["sparse", "dense"])
def test_torchrun_trains_every_scheme_as_one_process(tmp_path, update):
    # Sparse: DHE's MLP inside the sparse fused collection is reduced by DDP, not by the sparse sync (it was
    # taken for a sparse table: "has a dense gradient"), and CCE's int16 assignment is sent as bytes (DDP
    # failed with "Invalid scalar type"). Dense: a rank's 32 rows leave some of mixed dimensions' blocks
    # unused, which DDP must be told to expect (the ranks' collectives stopped matching).
    config = tmp_path / "every.toml"
    cli = ["train", "--scheme", "qr", "--dim", "8", "--bottom-mlp", "16", "--top-mlp", "16", "--threshold", "0",
           "--optimizer", "sgd", "--lr", "0.1", "--rows", "421", "--scale", "0.0005", "--data-seed", "3",
           "--epochs", "1", "--threads", "1", "--embedding-update", update]
    run([*cli, "--batch-size", "64", "--write-config", str(config)], nproc=1, worker="-m compembed")
    config.write_text(config.read_text() + EVERY_SCHEME)
    one, two = tmp_path / "one", tmp_path / "two"
    run(["train", "--config", str(config), "--out", str(one), "--no-progress"], nproc=1, worker="-m compembed")
    run(["train", "--config", str(config), "--batch-size", "32", "--out", str(two), "--no-progress"], nproc=2,
        worker="-m compembed")
    a, b = load_file(one / CHECKPOINT), load_file(two / CHECKPOINT)
    assert a.keys() == b.keys()
    cce = "model.embeddings.embeddings.C21."
    assert a[cce + "assignment"].dtype == torch.int16 and int(a[cce + "round"]) == int(b[cce + "round"]) == 2
    for key in a:
        if a[key].is_floating_point():  # SGD: float noise only (a lost rank or a wrong scale moves them by ~lr)
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs")
        elif key != cce + "assignment":  # hash coefficients, rounds, step counters
            assert torch.equal(b[key], a[key]), key
    # Float noise may send an id to another of two (nearly) equal centroids: the assignments may differ in
    # a few ids, but every id's clustered vector is the same (a wrong or unsynced clustering moves ~all).
    columns = torch.arange(2) * (a[cce + "clustered"].shape[0] // 2)
    vectors = [x[cce + "clustered"][x[cce + "assignment"].long() + columns] for x in (a, b)]  # (n, 2, D/2)
    torch.testing.assert_close(vectors[1], vectors[0], rtol=1e-4, atol=1e-5)
    assert (a[cce + "assignment"] == b[cce + "assignment"]).float().mean() > 0.99
