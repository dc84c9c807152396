"""Optimizer choice per parameter group, and the lazy SparseAMSGrad against torch's AMSGrad."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compembed.models import ModelConfig, build_model
from compembed.training import OptimConfig, SparseAMSGrad, build_optimizers

from models.toy import toy_dataset


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
    ("sgd", "sparse", torch.optim.SGD, torch.optim.SGD),
    ("adagrad", "sparse", torch.optim.Adagrad, torch.optim.Adagrad),
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
