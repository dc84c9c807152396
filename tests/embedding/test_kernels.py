"""The compiled kernel of FusedEmbeddingCollection equals its pure-PyTorch path bit for bit.

Outputs, sparse gradients, and tables after fused SGD steps against SparseSGD on the PyTorch path.
Where the kernel cannot be built, the collections must report it and run the PyTorch path.
"""
from __future__ import annotations

import pytest
import torch

from compembed.embedding import feature_configs
from compembed.embedding import kernels
from compembed.embedding.fused import FusedEmbeddingCollection
from compembed.optim import SparseSGD

CARDS = [1460, 583, 10_131, 305, 24, 3, 97, 200_000]


def _ids(configs, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c.num_embeddings, (batch,), generator=generator) for c in configs], dim=1)


def _pair(configs, threshold=20, output="stack"):
    torch.manual_seed(3)
    fast = FusedEmbeddingCollection(configs, threshold=threshold, sparse=True, output=output)
    torch.manual_seed(3)
    slow = FusedEmbeddingCollection(configs, threshold=threshold, sparse=True, output=output)
    slow.use_kernel = False
    return fast, slow


def _dense_grads(module):
    return {k: p.grad.to_dense() for k, p in module.named_parameters()}


def _kernel_or_fallback(module) -> bool:
    """True when ``module`` runs the kernel; otherwise it must say why the build failed."""
    reason = kernels.kernel_unavailable()
    if reason is None:
        assert module.kernel_status() is None
        return True
    assert module.kernel_status() == reason  # reported, and the PyTorch path runs
    return False


CASES = [
    dict(scheme="qr", operation="mult"),
    dict(scheme="qr", operation="add"),
    dict(scheme="gqr", operation="mult", num_partitions=3),
    dict(scheme="crt", operation="mult", num_partitions=3),
    dict(scheme="full"),
    dict(scheme="hashing"),
    dict(scheme="path", hidden_dims=(8,)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("output", ["stack", "cat"])
def test_kernel_equals_pytorch_path(case, output):
    configs = feature_configs(CARDS, embedding_dim=8, num_collisions=4, **case)
    fast, slow = _pair(configs, output=output)
    uses_kernel = _kernel_or_fallback(fast)
    assert slow.kernel_status() == "use_kernel is False"
    ids = _ids(configs, 64, seed=0)
    out_fast, out_slow = fast(ids), slow(ids)
    assert torch.equal(out_fast, out_slow)
    upstream = torch.randn(out_slow.shape, generator=torch.Generator().manual_seed(1))
    out_fast.backward(upstream)
    out_slow.backward(upstream)
    g_fast, g_slow = _dense_grads(fast), _dense_grads(slow)
    assert g_fast.keys() == g_slow.keys()
    for key in g_slow:
        assert torch.equal(g_fast[key], g_slow[key]), key
    if uses_kernel and case["scheme"] != "path":
        assert fast.weights[next(iter(fast.weights))].grad.is_sparse


@pytest.mark.parametrize("case", CASES[:3] + CASES[-1:], ids=lambda c: c["scheme"] + "-" + c.get("operation", ""))
def test_fused_sgd_equals_sparse_sgd(case):
    """Three steps of fused SGD (kernel, and the PyTorch path's hook) give SparseSGD's tables exactly;
    repeated rows (tiny remainder tables, batch 256) add up in batch order."""
    configs = feature_configs(CARDS, embedding_dim=8, num_collisions=4, **case)
    fast, slow = _pair(configs)
    torch.manual_seed(3)
    hooked = FusedEmbeddingCollection(configs, threshold=20, sparse=True)
    hooked.use_kernel = False
    fast.fuse_sgd(0.05)
    hooked.fuse_sgd(0.05)
    opt = SparseSGD(slow.parameters(), lr=0.05)
    others = [SparseSGD(m.embeddings.parameters(), lr=0.05) for m in (fast, hooked) if len(m.embeddings)]
    for step in range(3):
        ids = _ids(configs, 256, seed=step)
        upstream = torch.randn(256, len(configs), 8, generator=torch.Generator().manual_seed(10 + step))
        for module in (fast, slow, hooked):
            module(ids).backward(upstream)
        for w in list(fast.weights.values()) + list(hooked.weights.values()):
            assert w.grad is None  # updated inside the backward
        opt.step()
        opt.zero_grad(set_to_none=True)
        for other in others:
            other.step()
            other.zero_grad(set_to_none=True)
    for module in (fast, hooked):
        for key, value in slow.state_dict().items():
            assert torch.equal(module.state_dict()[key], value), key
    fast.fuse_sgd(None)  # off again: a plain sparse gradient
    fast(_ids(configs, 8, seed=9)).sum().backward()
    assert all(w.grad is not None for w in fast.weights.values())


def test_forced_fallback_is_reported(monkeypatch):
    monkeypatch.setenv(kernels.NO_KERNEL_ENV, "1")
    configs = feature_configs(CARDS, embedding_dim=8, scheme="qr", operation="mult")
    fast, slow = _pair(configs)
    assert fast.kernel_status() == f"disabled by {kernels.NO_KERNEL_ENV}=1"
    assert kernels.kernel_ops() is None
    ids = _ids(configs, 32, seed=0)
    assert torch.equal(fast(ids), slow(ids))


def test_unsupported_layouts_say_why():
    hybrid = feature_configs(CARDS, embedding_dim=8, scheme="hybrid", cold_scheme="qr", hot_rows=10)
    assert "layout" in FusedEmbeddingCollection(hybrid, sparse=True).kernel_status()
    qr = feature_configs(CARDS, embedding_dim=8, scheme="qr")
    assert "dense gradients" in FusedEmbeddingCollection(qr, sparse=False).kernel_status()
    with pytest.raises(ValueError, match="fuse_sgd"):
        FusedEmbeddingCollection(qr, sparse=True).fuse_sgd(-1.0)


def test_build_failure_falls_back(monkeypatch, tmp_path):
    """A failed build (here: no compiler) is reported by kernel_unavailable(), not raised."""
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv(kernels.KERNEL_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(kernels, "_SOURCE", kernels._SOURCE + "\n// a new hash: a fresh build\n")
    reason = kernels.kernel_unavailable()
    assert reason is not None and reason.startswith("C++ kernel build failed")
