"""The benchmark's variants compute the right thing, and a tiny run produces every table and ratio."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from compembed.benchmarks.report import to_markdown
from compembed.benchmarks.runner import PRESETS, BenchConfig, Measurement, offset_check_cost, run_benchmark, summarize
from compembed.benchmarks.variants import (
    VARIANTS, FBGEMMFullTables, NoTables, PooledQREmbeddings, build_variant, fbgemm_unavailable, make_optimizer,
)
from compembed.benchmarks.worker import build_step, mlp_flops_per_sample
from compembed.embedding import EmbeddingCollection, feature_configs

CARDS = [500, 40, 3000, 7]
FBGEMM_MISSING = fbgemm_unavailable()


def _ids(cards, batch=16):
    return torch.stack([torch.randint(0, n, (batch,)) for n in cards], dim=1)


def test_pooled_qr_reference_equals_collection_on_one_hot():
    collection = EmbeddingCollection(feature_configs(CARDS, embedding_dim=8, scheme="qr"), threshold=50)
    reference = PooledQREmbeddings(CARDS, 8, threshold=50, collisions=4)
    with torch.no_grad():
        for bags, module in zip(reference.tables, collection.embeddings.values()):
            for bag, weight in zip(bags, module.weights):
                bag.weight.copy_(weight)
    ids = _ids(CARDS)
    torch.testing.assert_close(reference(ids), collection(ids))


@pytest.mark.parametrize("name", [n for n in VARIANTS if n not in ("fbgemm-full", "mlp-only")])
def test_every_variant_trains_one_step(name):
    module = build_variant(name, CARDS, dim=8, threshold=50, collisions=4)
    opt = make_optimizer(name, module.parameters(), lr=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    out = module(_ids(CARDS))
    assert out.shape == (16, len(CARDS), 8)
    out.pow(2).sum().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_mlp_only_has_no_tables_and_a_fixed_input():
    module = build_variant("mlp-only", CARDS, dim=8)
    assert isinstance(module, NoTables) and not list(module.parameters())
    first, again = module(_ids(CARDS)), module(_ids(CARDS, batch=8))
    assert first.shape == (16, len(CARDS), 8) and torch.equal(again, first[:8]) and not first.requires_grad
    # A DLRM step over it trains the MLPs only.
    step, facts = build_step(dict(task="dlrm", variant="mlp-only", cardinalities=CARDS, dim=8, batch=16,
                                  threshold=50, collisions=4))
    step()
    assert facts["embedding_parameters"] == 0 and facts["flop_per_sample"] > 0


def test_unknown_variant_is_named():
    with pytest.raises(KeyError, match="nope"):
        build_variant("nope", CARDS)


@pytest.mark.skipif(FBGEMM_MISSING is not None, reason=f"FBGEMM unavailable: {FBGEMM_MISSING}")
def test_fbgemm_full_tables_lookup_and_fused_sgd():
    module = FBGEMMFullTables(CARDS, 8, lr=0.5, device=torch.device("cpu"))
    weights = [w.detach().clone() for w in module.tables.split_embedding_weights()]
    ids = _ids(CARDS, 4)
    out = module(ids)
    for j, w in enumerate(weights):
        torch.testing.assert_close(out[:, j], w[ids[:, j]])
    out.sum().backward()  # the update happens inside the backward
    after = module.tables.split_embedding_weights()
    row = int(ids[0, 0])
    expected = weights[0][row] - 0.5 * (ids[:, 0] == row).sum()
    torch.testing.assert_close(after[0][row], expected)


@pytest.mark.parametrize("task", ["emb", "bags", "dlrm", "sgemm", "idle"])
def test_worker_steps_run(task):
    spec = dict(task=task, variant="qr", cardinalities=CARDS, dim=8, batch=32, threshold=50, collisions=4)
    step, facts = build_step(spec)
    step()
    if task == "dlrm":
        # bottom 13-512-256-64-8 and top (8 + C(5,2)) -512-256-1, 6 FLOPs per multiply-add
        macs = 13 * 512 + 512 * 256 + 256 * 64 + 64 * 8 + (8 + 10) * 512 + 512 * 256 + 256
        assert facts["flop_per_sample"] == 6 * macs
    if task == "emb":
        assert facts["full_table_parameters"] == sum(CARDS) * 8
    if task == "bags":
        assert facts["offset_check_s"] > 0


def test_offset_check_cost_from_measurements():
    def m(name, speeds, **facts):
        return Measurement("bags", name, samples_per_s=speeds, peak_rss=1, facts=facts)

    results = {"checked": m("checked", [990.0, 1000.0, 1010.0], offset_check_s=0.001),
               "unchecked": m("unchecked", [1000.0, 1000.0, 1000.0], offset_check_s=0.001)}
    check = offset_check_cost(BenchConfig(batch=1000), results)
    assert check["step_s"] == pytest.approx(1.0) and check["cost"] == pytest.approx(0.001)
    assert check["ab_cost"] == pytest.approx(0.0) and check["ab_cost_rounds"][0] == pytest.approx(1000 / 990 - 1)
    out = summarize(BenchConfig(), {}, [], {}, 1.0, check)
    target = next(t for t in out["targets"] if t["target"].startswith("offsets check"))
    assert target["value"] == pytest.approx(0.001) and target["met"] is True
    assert "<= 0.02" in to_markdown(out) and "0.100% of the step" in to_markdown(out)
    results["checked"] = Measurement("bags", "checked", skipped="worker failed: boom")
    assert offset_check_cost(BenchConfig(), results)["skipped"] == "worker failed: boom"


def test_mlp_flops_counts_linear_layers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert mlp_flops_per_sample(model) == 6 * (15 + 10)


def test_tiny_run_end_to_end():
    # Few processes (each starts an interpreter and torch): 2 variants + sgemm + idle, 2 scaling points.
    config = BenchConfig(
        batch=32, dim=8, threshold=50, threads=1, rounds=2, steps=1, warmup=1, cardinalities=tuple(CARDS),
        emb_variants=("full-batched", "qr"), dlrm_variants=(),
        scaling_cardinalities=(1000, 10**9), scaling_schemes=(("full", 1), ("gqr", 2)), scaling_features=2,
        scaling_rounds=1, scaling_steps=1, memory_cap_gib=1.0,
    )
    messages = []
    result = run_benchmark(config, progress=messages.append)
    json.dumps(result)  # plain data
    emb = result["tasks"]["emb"]["variants"]
    assert set(emb) == {"full-batched", "qr"} and "dlrm" not in result["tasks"]
    for row in emb.values():
        assert row["rounds"] == 2 and row["median"] > 0 and row["peak_rss"] > 0
    assert emb["full-batched"]["speed_vs_full-batched"] == pytest.approx(1.0)
    assert emb["qr"]["speed_vs_best_full"] == pytest.approx(emb["qr"]["median"] / emb["full-batched"]["median"])
    assert result["tasks"]["emb"]["sgemm_gflops"] > 0 and result["tasks"]["emb"]["idle_rss"] > 0
    assert all("met" in t for t in result["targets"])
    scaling = {(r["cardinality"], r["scheme"]): r for r in result["scaling"]}
    assert scaling[1000, "full"]["measured"] and scaling[1000, "full"]["peak_rss"] > 0
    # 2 x 1e9 x 8 floats = 59.6 GiB: its allocation fails under a 24 GiB limit; the k=2 mixed radix trains under it.
    assert not scaling[10**9, "full"]["measured"] and not scaling[10**9, "full"]["fits"]
    assert "could not be built under a 24 GiB address-space limit" in scaling[10**9, "full"]["note"]
    assert "can't allocate memory" in scaling[10**9, "full"]["note"]
    assert scaling[10**9, "gqr-k2"]["measured"] and scaling[10**9, "gqr-k2"]["fits"]
    assert "trained under a 24 GiB address-space limit" in scaling[10**9, "gqr-k2"]["note"]
    check = result["offset_check"]  # the multi-hot step with and without the offsets check, same run
    assert check["checked"] > 0 and check["unchecked"] > 0 and 0 < check["check_s"] < check["step_s"]
    assert check["cost"] == pytest.approx(check["check_s"] / check["step_s"]) and len(check["ab_cost_rounds"]) == 2
    markdown = to_markdown(result, "compembed bench --test")
    assert "### Targets" in markdown and "| qr |" in markdown and "Scaling" in markdown
    assert "### Offsets check" in markdown and "| offsets check on multi-hot bags" in markdown
    assert any("round 2/2" in m for m in messages)


def test_summary_ratios_and_roofline_from_measurements():
    def m(task, name, speeds, rss, **facts):
        return Measurement(task, name, samples_per_s=speeds, peak_rss=rss, facts=facts)

    tasks = {"dlrm": {
        "full-per-feature": m("dlrm", "full-per-feature", [100, 120, 110], 3000),
        "full-batched": m("dlrm", "full-batched", [200, 180, 220], 2500, flop_per_sample=10**6),
        "qr": m("dlrm", "qr", [300, 310, 290], 1000, flop_per_sample=10**6),
        "mlp-only": m("dlrm", "mlp-only", [400, 380, 420], 600, flop_per_sample=10**6),
        "sgemm": m("dlrm", "sgemm", [10.0], 1, flop_per_step=10**8),
        "idle": m("dlrm", "idle", [1.0], 500),
    }}
    out = summarize(BenchConfig(), tasks, [], {}, 1.0)
    qr = out["tasks"]["dlrm"]["variants"]["qr"]
    assert out["tasks"]["dlrm"]["best_full"] == "full-batched"
    assert qr["speed_vs_best_full"] == pytest.approx(1.5) and qr["speed_vs_full-per-feature"] == pytest.approx(300 / 110)
    assert out["tasks"]["dlrm"]["sgemm_gflops"] == pytest.approx(1.0)  # 10 calls/s x 0.1 GFLOP
    assert qr["gflops"] == pytest.approx(0.3) and qr["roofline_fraction"] == pytest.approx(0.3)
    assert qr["rss_vs_best_full"] == pytest.approx(0.4) and qr["rss_above_idle_vs_best_full"] == pytest.approx(0.25)
    met = {t["target"]: t["met"] for t in out["targets"]}
    assert met["DLRM step, QR vs best full-table baseline (samples/s ratio)"] is True
    assert met["DLRM step, QR fraction of the FLOP roofline"] is False
    assert met["embedding part, QR vs straightforward per-feature QR (qr-reference)"] is None  # not run
    values = {t["target"]: t["value"] for t in out["targets"]}
    assert values["(ceiling: DLRM step without tables, mlp-only, fraction of the FLOP roofline)"] == pytest.approx(0.4)
    assert values["(DLRM step, QR vs the same step without tables, mlp-only)"] == pytest.approx(0.75)
    assert met["(DLRM step, QR vs the same step without tables, mlp-only)"] is None  # a reference, no goal
    # (1000 - 600) / (2500 - 600)
    assert values["(same, RSS above the mlp-only worker's: what the tables add to a DLRM step)"] == pytest.approx(400 / 1900)


def test_presets_are_consistent():
    for preset in PRESETS.values():
        for name in (*preset.emb_variants, *preset.dlrm_variants):
            assert name in VARIANTS
    assert dataclasses.replace(PRESETS["quick"], rounds=1).rounds == 1


def test_cli_rejects_bad_counts(capsys):
    from compembed.cli.main import main

    assert main(["bench", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err


def test_cli_variant_lists_replace_the_presets_and_name_unknown_ones(capsys, monkeypatch, tmp_path):
    from compembed.cli import bench as bench_cli
    from compembed.cli.main import main

    assert main(["bench", "--dlrm-variants", "qr,nope"]) == 2
    assert "--dlrm-variants: unknown variant(s) ['nope']" in capsys.readouterr().err
    seen = {}

    def fake_run(config, progress):
        seen["config"] = config
        return {"tasks": {}}

    monkeypatch.setattr(bench_cli, "run_benchmark", fake_run)
    monkeypatch.setattr(bench_cli, "to_markdown", lambda result, command: "md")
    assert main(["bench", "--preset", "full", "--emb-variants", "", "--dlrm-variants", "qr, mlp-only",
                 "--no-scaling", "--out", str(tmp_path)]) == 0
    config = seen["config"]
    assert config.emb_variants == () and config.bag_length == 0  # no embedding task: no offsets check
    assert config.dlrm_variants == ("qr", "mlp-only") and config.scaling_cardinalities == ()
    assert PRESETS["full"].dlrm_variants != ("qr", "mlp-only")  # the preset itself is untouched


def test_hybrid_variant_gives_one_percent_of_each_feature_its_own_rows():
    cards = [500, 40, 3000, 100_000]
    module = build_variant("hybrid", cards, dim=8, threshold=50, collisions=4)
    reports = module.report()
    assert [r.scheme for r in reports] == ["hybrid[5]+qr-mult", "full", "hybrid[30]+qr-mult", "hybrid[1000]+qr-mult"]
    assert reports[3].table_sizes == (1000, 24_750, 4)
    assert "hybrid" in PRESETS["full"].emb_variants and "hybrid" not in PRESETS["quick"].emb_variants


def test_adagrad_variants_train_like_compembed_train_and_agree():
    from compembed.benchmarks.variants import make_model_optimizers
    from compembed.models.dlrm import DLRM
    from compembed.optim import RowWiseAdagrad, SparseAdagrad

    kinds = {}
    models = {}
    for name in ("qr-adagrad", "qr-torch-adagrad", "qr-rowwise-adagrad"):
        torch.manual_seed(0)
        model = DLRM(build_variant(name, CARDS, dim=8, threshold=50, collisions=4), num_dense=3)
        optimizers = make_model_optimizers(name, model, lr=0.1)
        kinds[name] = [type(o) for o in optimizers]
        torch.manual_seed(1)
        for _ in range(3):
            loss = model(torch.rand(16, 3), _ids(CARDS)).sigmoid().sum()
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
        models[name] = model
    assert kinds == {"qr-adagrad": [SparseAdagrad, torch.optim.Adagrad],
                     "qr-torch-adagrad": [torch.optim.Adagrad, torch.optim.Adagrad],
                     "qr-rowwise-adagrad": [RowWiseAdagrad, torch.optim.Adagrad]}
    fast, ref, rowwise = (models[n].state_dict() for n in ("qr-adagrad", "qr-torch-adagrad", "qr-rowwise-adagrad"))
    assert all(torch.equal(fast[key], ref[key]) for key in fast)  # the same computation, bit for bit
    assert any(not torch.equal(fast[k], rowwise[k]) for k in fast if k.startswith("embeddings."))
    assert VARIANTS["qr-adagrad"].torch_reference == "qr-torch-adagrad"


def test_fast_optimizers_ratio_against_torch_optim():
    def m(name, speeds):
        return Measurement("dlrm", name, samples_per_s=speeds, peak_rss=1000)

    tasks = {"dlrm": {"full-batched": m("full-batched", [100.0]), "qr-adagrad": m("qr-adagrad", [150.0, 130.0]),
                      "qr-torch-adagrad": m("qr-torch-adagrad", [100.0, 100.0])}}
    out = summarize(BenchConfig(), tasks, [], {}, 1.0)
    row = out["tasks"]["dlrm"]["variants"]["qr-adagrad"]
    assert row["speed_vs_torch_optim"] == pytest.approx(1.4) and row["torch_reference"] == "qr-torch-adagrad"
    assert "speed_vs_torch_optim" not in out["tasks"]["dlrm"]["variants"]["qr-torch-adagrad"]
    target = next(t for t in out["targets"] if "fast sparse optimizers vs torch.optim" in t["target"])
    assert target["value"] == pytest.approx(1.4) and target["met"] is True
    assert "- `qr-adagrad` vs `qr-torch-adagrad` (the same model, its tables on torch.optim): 1.40x" in to_markdown(out)
