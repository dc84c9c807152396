"""DLRM and DCN under bf16 autocast: forward and backward with every scheme, gradients near fp32's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compembed.models import DotInteraction, ModelConfig, build_model
from compembed.optim import RowWiseAdagrad, SparseAdagrad, SparseSGD

from .test_models import SCHEMES, SMALL
from .toy import toy_dataset


def _loss_and_grads(model, batch, names, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch.dense, batch.features(names))
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _dense(g: torch.Tensor) -> torch.Tensor:
    return (g.to_dense() if g.is_sparse else g).flatten()


def test_dot_interaction_under_autocast_matches_the_plain_formula():
    torch.manual_seed(0)
    x = torch.randn(5, 4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DotInteraction()(x)
    assert out.dtype == torch.bfloat16
    (out.float() * torch.arange(6.0)).sum().backward()
    assert x.grad.dtype == torch.float32

    ref = x.detach().clone().requires_grad_(True)
    rows, cols = torch.tril_indices(4, 4, offset=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.bmm(ref, ref.transpose(1, 2))[:, rows, cols]
    (plain.float() * torch.arange(6.0)).sum().backward()
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(x.grad, ref.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
@pytest.mark.parametrize("sparse", [False, True])
def test_bf16_forward_and_backward_of_every_scheme(arch, sparse):
    dataset = toy_dataset(multi_hot=True)
    names = dataset.info.categorical_names
    batch = next(iter(dataset.loader("train", 128)))
    for scheme, operation in SCHEMES:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch, scheme=scheme, operation=operation, **SMALL), dataset.info,
                            sparse=sparse)
        loss32, grads32 = _loss_and_grads(model, batch, names, bf16=False)
        loss16, grads16 = _loss_and_grads(model, batch, names, bf16=True)
        where = f"{arch}/{scheme}-{operation} sparse={sparse}"
        assert torch.isfinite(loss16) and abs(loss16 - loss32) < 0.02, (where, loss16, loss32)
        assert grads16.keys() == grads32.keys() == {n for n, p in model.named_parameters() if p.requires_grad}, where
        # the parameters (tables included) stay float32, so every gradient does, sparse ones too
        assert all(p.dtype == torch.float32 for p in model.parameters()), where
        assert all(g.dtype == torch.float32 for g in grads16.values()), where
        if sparse and scheme != "dhe":  # DHE has no table: its gradients are dense
            assert any(g.is_sparse for g in grads16.values()), where
        a = torch.cat([_dense(grads16[n]) for n in grads32])
        b = torch.cat([_dense(grads32[n]) for n in grads32])
        assert F.cosine_similarity(a, b, dim=0) > 0.99, where


@pytest.mark.parametrize("optimizer", [SparseSGD, SparseAdagrad, RowWiseAdagrad])
def test_sparse_optimizers_step_on_bf16_autocast_gradients(optimizer):
    dataset = toy_dataset()
    names = dataset.info.categorical_names
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="dlrm", scheme="qr", **SMALL), dataset.info, sparse=True)
    opt = optimizer(model.parameters(), lr=0.05)
    batches = list(dataset.loader("train", 128, shuffle=True, seed=1))
    before = _loss_and_grads(model, batches[0], names, bf16=False)[0]
    tables = {n: p.detach().clone() for n, p in model.embeddings.named_parameters()}
    for _ in range(3):
        for batch in batches:
            _loss_and_grads(model, batch, names, bf16=True)
            opt.step()
    after = _loss_and_grads(model, batches[0], names, bf16=False)[0]
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(tables[n], p) for n, p in model.embeddings.named_parameters())
    assert after < before - 0.05, (before, after)
