"""Optimizer choice per parameter group, the lazy SparseAMSGrad against torch's AMSGrad, the warm-up."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compembed.models import ModelConfig, build_model
from compembed.optim import RowWiseAdagrad, SparseAdagrad, SparseSGD
from compembed.training import LinearWarmup, OptimConfig, SparseAMSGrad, TrainConfig, build_optimizers, train
from compembed.training.loop import METRICS

from models.toy import toy_dataset
from training.runs import records


def run(optimizer_cls, weight, grads, **kwargs):
    p = torch.nn.Parameter(weight.clone())
    opt = optimizer_cls([p], lr=0.01, **kwargs)
    for g in grads:
        p.grad = g
        opt.step()
    return p.detach()


def test_dense_gradient_equals_torch_amsgrad():
    torch.manual_seed(0)
    w, grads = torch.randn(10, 4), [torch.randn(10, 4) for _ in range(25)]
    ours = run(SparseAMSGrad, w, grads)
    ref = run(torch.optim.Adam, w, grads, amsgrad=True)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_sparse_gradient_touching_every_row_equals_torch_amsgrad():
    torch.manual_seed(0)
    w = torch.randn(6, 3)
    sparse, dense = [], []
    for _ in range(15):
        rows = torch.cat([torch.arange(6), torch.randint(0, 6, (4,))])  # every row, some twice
        values = torch.randn(10, 3)
        g = torch.sparse_coo_tensor(rows[None], values, (6, 3))
        sparse.append(g)
        dense.append(g.to_dense())
    assert torch.allclose(run(SparseAMSGrad, w, sparse), run(torch.optim.Adam, w, dense, amsgrad=True), atol=1e-6)


def test_lazy_update_leaves_untouched_rows_alone():
    w = torch.randn(5, 2)
    g = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 2), (5, 2))
    out = run(SparseAMSGrad, w, [g, g])
    assert torch.equal(out[[0, 2, 4]], w[[0, 2, 4]])
    assert not torch.equal(out[[1, 3]], w[[1, 3]])


@pytest.mark.parametrize("name,update,table_kind,dense_kind", [
    ("sgd", "sparse", SparseSGD, torch.optim.SGD),
    ("adagrad", "sparse", SparseAdagrad, torch.optim.Adagrad),
    ("rowwise_adagrad", "sparse", RowWiseAdagrad, torch.optim.Adagrad),
    ("rowwise_adagrad", "dense", RowWiseAdagrad, torch.optim.Adagrad),
    ("adagrad", "dense", torch.optim.Adagrad, torch.optim.Adagrad),
    ("adam", "sparse", torch.optim.SparseAdam, torch.optim.Adam),
    ("amsgrad", "sparse", SparseAMSGrad, torch.optim.Adam),
    ("amsgrad", "dense", torch.optim.Adam, torch.optim.Adam),
])
def test_every_optimizer_steps_on_its_gradients(name, update, table_kind, dense_kind):
    dataset = toy_dataset(rows=256)
    config = OptimConfig(name=name, lr=0.01, embedding_update=update)
    model = build_model(ModelConfig(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)), dataset.info,
                        sparse=update == "sparse")
    tables, dense = build_optimizers(model, config)
    assert type(tables) is table_kind and type(dense) is dense_kind
    if name == "amsgrad" and update == "dense":
        assert tables.param_groups[0]["amsgrad"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = next(iter(dataset.loader("train", 64)))
    loss = F.binary_cross_entropy_with_logits(model(batch.dense, batch.features(dataset.info.categorical_names)),
                                              batch.labels)
    loss.backward()
    tables.step()
    dense.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("embeddings.") for k in changed) and any(k.startswith("top.") for k in changed)


def test_config_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        OptimConfig(name="lion")
    with pytest.raises(ValueError, match="embedding_update must be one of"):
        OptimConfig(embedding_update="lazy")
    with pytest.raises(ValueError, match="lr must be > 0"):
        OptimConfig(lr=0)


def test_linear_warmup_rates_per_step():
    dataset = toy_dataset(rows=256)
    model = build_model(ModelConfig(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)), dataset.info)
    optimizers = build_optimizers(model, OptimConfig(name="adagrad", lr=0.05, embedding_lr=0.2))
    warmup = LinearWarmup(optimizers, 4)
    rates = []
    for step in (1, 2, 3, 4, 5, 50):
        warmup.apply(step)
        rates.append([opt.param_groups[0]["lr"] for opt in optimizers])
    assert rates == [[0.2 * s / 4, 0.05 * s / 4] for s in (1, 2, 3)] + [[0.2, 0.05]] * 3
    still = LinearWarmup(optimizers, 0)
    still.apply(1)
    assert [opt.param_groups[0]["lr"] for opt in optimizers] == [0.2, 0.05] and still.factor(1) == 1.0


def test_training_uses_the_warmup_rates_of_each_step(tmp_path):
    config = TrainConfig(model=ModelConfig(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)),
                         optim=OptimConfig(name="adam", lr=0.01, embedding_lr=0.03, warmup_steps=5),
                         batch_size=64, max_steps=8, log_every=1, threads=1)
    train(config, toy_dataset(rows=1024), out_dir=tmp_path, progress=False)
    logged = [r["lr"] for r in records(tmp_path / METRICS) if r["kind"] == "train"]
    assert logged == [[0.03 * min(1, s / 5), 0.01 * min(1, s / 5)] for s in range(1, 9)]


def test_warmup_config_error():
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        OptimConfig(warmup_steps=-1)


def _train_steps(name: str, fast: bool, steps: int = 6, scheme: str = "qr"):
    """A toy model (QR: its partition rows repeat within a batch) after ``steps`` steps; its optimizers."""
    dataset = toy_dataset(rows=512)
    torch.manual_seed(5)
    model = build_model(ModelConfig(scheme=scheme, threshold=0, embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)),
                        dataset.info, sparse=True)
    optimizers = build_optimizers(model, OptimConfig(name=name, lr=0.02, embedding_lr=0.1), fast=fast)
    names = dataset.info.categorical_names
    for _, batch in zip(range(steps), dataset.loader("train", 64)):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(batch.dense, batch.features(names)), batch.labels).backward()
        for opt in optimizers:
            opt.step()
    return model, optimizers


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_fast_table_optimizers_train_like_torch_optim(name):
    fast_model, fast_opts = _train_steps(name, fast=True)
    ref_model, ref_opts = _train_steps(name, fast=False)
    assert type(fast_opts[0]) is not type(ref_opts[0])  # the two runs really use different optimizers
    for (key, a), b in zip(fast_model.state_dict().items(), ref_model.state_dict().values()):
        if name == "adagrad":  # bit-identical; SparseSGD rounds its scatter-add differently (within an ulp or so)
            assert torch.equal(a, b), key
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=key)
    if name == "adagrad":
        for p_fast, p_ref in zip(fast_opts[0].param_groups[0]["params"], ref_opts[0].param_groups[0]["params"]):
            assert torch.equal(fast_opts[0].state[p_fast]["sum"], ref_opts[0].state[p_ref]["sum"])
            assert fast_opts[0].state[p_fast]["step"] == int(ref_opts[0].state[p_ref]["step"]) == 6


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad", "adam", "amsgrad"])
def test_memory_report_counts_the_optimizer_state_exactly(name):
    from compembed.planning.budget import state_factor
    from compembed.training.report import memory_report

    model, optimizers = _train_steps(name, fast=True, steps=2)
    tables = list(model.embeddings.parameters())
    report = memory_report(model, optimizers)
    dim = tables[0].shape[1]
    assert all(p.dim() == 2 and p.shape[1] == dim for p in tables)
    # per-value state as the planner counts it, plus AMSGrad's float32 step counter per table
    counters = 4 * len(tables) if name == "amsgrad" else 0
    assert report.embedding_state_bytes == report.embedding_bytes * state_factor(name, dim) + counters
    if name == "rowwise_adagrad":
        assert report.embedding_state_bytes == 4 * sum(p.shape[0] for p in tables)  # one float per row
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]
    per_value = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 1, "adam": 2, "amsgrad": 3}[name]
    dense_counters = 4 * len(dense) if name != "sgd" else 0  # torch's float32 step tensors
    assert report.dense_state_bytes == 4 * per_value * sum(p.numel() for p in dense) + dense_counters
    assert memory_report(model).embedding_state_bytes is None


@pytest.mark.parametrize("scheme", ["tt", "md"])
@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad", "adam", "amsgrad"])
def test_tt_and_md_tables_train_on_the_table_optimizers(scheme, name):
    # every tt/md parameter has a sparse gradient (cores over their used slices, md projections as rows),
    # so each table optimizer (SparseSGD, SparseAdagrad, RowWiseAdagrad, SparseAdam, SparseAMSGrad) takes it
    torch.manual_seed(5)
    start = {k: v.clone() for k, v in build_model(
        ModelConfig(scheme=scheme, threshold=0, embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)),
        toy_dataset(rows=512).info, sparse=True).embeddings.state_dict().items()}
    model, optimizers = _train_steps(name, fast=True, steps=3, scheme=scheme)
    kinds = {"sgd": SparseSGD, "adagrad": SparseAdagrad, "rowwise_adagrad": RowWiseAdagrad,
             "adam": torch.optim.SparseAdam, "amsgrad": SparseAMSGrad}
    assert type(optimizers[0]) is kinds[name]
    tables = dict(model.embeddings.named_parameters())
    assert all(p.grad is None or p.grad.is_sparse for p in tables.values())
    moved = [k for k, v in model.embeddings.state_dict().items() if not torch.equal(v, start[k])]
    assert moved and all(torch.isfinite(p).all() for p in tables.values())
    assert any(k.endswith(("core1", "core2", "core3")) for k in moved) if scheme == "tt" else any("proj" in k for k in moved)
