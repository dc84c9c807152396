"""DLRM and DCN, as models/factory.py builds them, export (dynamic batch), compile with fullgraph=True and run on meta."""
from types import SimpleNamespace

import pytest
import torch
from torch.export import Dim

from compembed.models import ModelConfig, build_model

CARDINALITIES = [50, 300, 7, 1000]
INFO = SimpleNamespace(dense_names=["d0", "d1", "d2"], categorical_names=["C1", "C2", "C3", "C4"],
                       cardinalities=CARDINALITIES)


# Small options of the robe, dhe, tt and md schemes (ModelConfig's SCHEME_FIELDS), for every feature.
SMALL = dict(dhe_hashes=8, dhe_hidden=(8,), tt_rank=2, tt_cache_rows=5)


def model(arch: str, scheme: str, fused: bool = True, sparse: bool = False):
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, embedding_dim=8, scheme=scheme, hot_rows=5, threshold=10, bottom_mlp=(16,),
                         top_mlp=(16,), deep_mlp=(16,), cross_layers=2, path_hidden=(8,), **SMALL)
    return build_model(config, INFO, sparse=sparse, fused=fused)


def batch(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, n, (size,), generator=g) for n in CARDINALITIES], 1)
    return torch.randn(size, 3, generator=g), ids


@pytest.mark.parametrize("arch, scheme, fused", [
    ("dlrm", "qr", True), ("dlrm", "hybrid", True), ("dlrm", "path", False), ("dcn", "crt", True), ("dcn", "hybrid", False),
    ("dlrm", "robe", True), ("dcn", "dhe", False), ("dlrm", "tt", True), ("dcn", "md", False),
])
def test_models_export_with_a_dynamic_batch_and_match_eager(arch, scheme, fused):
    net = model(arch, scheme, fused).eval()
    rows = Dim("batch")
    program = torch.export.export(net, batch(8), dynamic_shapes=({0: rows}, {0: rows}))
    for size in (1, 5, 33):
        inputs = batch(size, seed=size)
        torch.testing.assert_close(program.module()(*inputs), net(*inputs))
    dense, ids = batch(4)
    ids[3, 1] = 300
    with pytest.raises(RuntimeError, match="out of"):
        program.module()(dense, ids)


@pytest.mark.parametrize("arch, scheme, fused, sparse", [
    ("dlrm", "hybrid", True, True), ("dcn", "qr", False, False), ("dlrm", "robe", False, True), ("dcn", "dhe", True, False),
    ("dlrm", "tt", False, True), ("dcn", "md", True, True),
])
def test_models_compile_fullgraph_forward_and_backward(arch, scheme, fused, sparse):
    net = model(arch, scheme, fused, sparse)
    inputs = batch(8)
    net(*inputs).sum().backward()
    # Eager, a part the batch does not use (tt's cache, an md block) gets no gradient; compiled,
    # where the split is not known, a zero one.
    expected = {name: torch.zeros_like(p) if p.grad is None else p.grad.to_dense() for name, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager", dynamic=False)
    out = compiled(*inputs)
    torch.testing.assert_close(out, net(*inputs))
    out.sum().backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad.to_dense(), expected[name], msg=name)
    torch._dynamo.reset()


@pytest.mark.slow
def test_dlrm_compiles_fullgraph_with_inductor():
    # The real compiler (C++ kernels), inference only: ~10 s on an idle core, 40 s on a loaded one.
    net = model("dlrm", "qr").eval()
    compiled = torch.compile(net, fullgraph=True, dynamic=False)
    inputs = batch(8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), net(*inputs))
    torch._dynamo.reset()


@pytest.mark.parametrize("arch, scheme", [("dlrm", "hybrid"), ("dcn", "path")])
def test_models_run_on_the_meta_device(arch, scheme):
    net = model(arch, scheme).to("meta")
    dense, ids = batch(6)
    out = net(dense.to("meta"), ids.to("meta"))
    assert out.shape == (6,) and out.device.type == "meta"


def test_a_bad_dense_input_still_fails_clearly_when_exported():
    net = model("dlrm", "qr").eval()
    with pytest.raises(ValueError, match=r"dense must have shape \(B, 3\), one column per dense feature, got \(8, 2\)"):
        torch.export.export(net, (torch.randn(8, 2), batch(8)[1]))
