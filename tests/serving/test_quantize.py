"""Int8 row-wise tables: the codes, the bytes, every scheme (fused and per-feature collections), export,
and the accuracy of a small trained model."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from compembed.data.dataset import DatasetInfo
from compembed.embedding import HybridEmbeddingBag, ROBEEmbeddingBag
from compembed.models import ModelConfig, build_model
from compembed.partitions import QuotientRemainder
from compembed.serving.export import export_model
from compembed.serving.quantize import (Int8HybridEmbeddingBag, Int8ROBEEmbeddingBag, Int8Table, embedding_bytes,
                                        quantize_int8)
from compembed.training.config import DataConfig, OptimConfig, TrainConfig
from compembed.training.evaluate import evaluate
from compembed.training.loop import train

INFO = DatasetInfo(dense_names=["a", "b"], categorical_names=["x", "y", "g"], cardinalities=[50, 300, 12],
                   multi_hot_names=["g"])
SCHEMES = [dict(scheme="full"), dict(scheme="hashing"), dict(scheme="qr"), dict(scheme="qr", operation="concat"),
           dict(scheme="gqr", operation="add"), dict(scheme="crt"), dict(scheme="path"),
           dict(scheme="hybrid", hot_rows=5), dict(scheme="hybrid", hot_rows=5, cold_scheme="crt")]


def _model(fused: bool = True, **scheme) -> torch.nn.Module:
    config = ModelConfig(threshold=0, embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,), path_hidden=(8,), **scheme)
    return build_model(config, INFO, fused=fused).eval()


def _inputs(batch: int = 9) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(batch, 2, generator=g)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in INFO.cardinalities], dim=1)
    lengths = torch.randint(0, 4, (batch,), generator=g)  # empty bags too
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    bags = {"x": ids[:, :1], "y": ids[:, 1:2], "g": (torch.randint(0, 12, (int(lengths.sum()),), generator=g), offsets)}
    return dense, ids, bags


def _assert_close_to_float(model: torch.nn.Module, quantized: torch.nn.Module, changed: bool = True) -> None:
    """The int8 model's logits are within 2% of the float model's, on one-hot ids and on bags; ``changed``:
    the tables did change (not the same logits bit for bit)."""
    dense, ids, bags = _inputs()
    with torch.no_grad():
        for features in (ids, bags):
            expected, got = model(dense, features), quantized(dense, features)
            # logits of a random model are ~0.1: an int8 step of a table row is ~1/255 of its range
            assert (got - expected).abs().max() < 0.02 * expected.abs().max() + 1e-4
            assert torch.equal(got, expected) != changed


def _assert_exports(quantized: torch.nn.Module) -> None:
    """Exported on one batch, the program gives the model's logits on a batch of another size."""
    dense, ids, _ = _inputs()
    program = export_model(quantized, dense, ids)
    dense2, ids2, _ = _inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(dense2, ids2), quantized(dense2, ids2))


def test_table_codes_within_half_a_step_of_each_row() -> None:
    w = torch.randn(40, 16) * torch.logspace(-3, 1, 40).unsqueeze(1)  # rows of very different ranges
    table = Int8Table(w)
    step = (w.max(1).values - w.min(1).values) / 255
    error = (table.dequantized() - w).abs()
    assert bool((error <= step.unsqueeze(1) / 2 + 1e-6 * w.abs().max(1).values.unsqueeze(1)).all())
    assert table.num_bytes == 40 * (16 + 8)  # codes + fp32 scale and bias per row
    rows = torch.tensor([[3, 0], [39, 3]])
    assert torch.equal(table(rows), table.dequantized()[rows])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: "-".join(map(str, s.values())))
def test_every_scheme_quantises_close_to_float_with_exact_bytes(scheme: dict, fused: bool) -> None:
    model = _model(fused, **scheme)
    quantized = quantize_int8(model)
    _assert_close_to_float(model, quantized)
    # bytes: every table rows * (d + 8); path MLPs stay float (4 bytes a value)
    expected_bytes = 0
    for name in model.embeddings.feature_names:
        module = model.embeddings.feature_module(name)
        tables = model.embeddings.table_weights(name) or [module.weight]
        expected_bytes += sum(t.shape[0] * (t.shape[1] + 8) for t in tables)
        if scheme["scheme"] == "path":
            expected_bytes += sum(p.numel() * 4 for p in module.paths.parameters())
    assert embedding_bytes(quantized.embeddings) == expected_bytes
    assert model.embeddings.num_bytes == embedding_bytes(model.embeddings)  # the float count is the same rule


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [3, 40])  # a hot id, a cold one
def test_int8_hybrid_keeps_padding_idx(mode: str, padding_idx: int) -> None:
    float_bag = HybridEmbeddingBag(50, 8, 10, QuotientRemainder(40, 4), mode=mode, padding_idx=padding_idx)
    int8_bag = Int8HybridEmbeddingBag(float_bag, float_bag.weights)
    assert int8_bag.padding_idx == padding_idx
    ids = torch.tensor([1, padding_idx, 45, padding_idx, 7, 20, 33, padding_idx])
    offsets = torch.tensor([0, 3, 4, 7])  # the second and the last bag hold only the padding id
    without = torch.tensor([1, 45, 7, 20, 33])  # the same bags with the padding ids left out
    with torch.no_grad():
        expected, got = float_bag(ids, offsets), int8_bag(ids, offsets)
        torch.testing.assert_close(got, int8_bag(without, torch.tensor([0, 2, 2, 5])), rtol=0, atol=0)
        torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * float(expected.abs().max()))
    assert not got[1].any() and not got[3].any()  # bags of padding only are zeros


@pytest.mark.parametrize("scheme", [dict(scheme="qr"), dict(scheme="hybrid", hot_rows=5), dict(scheme="path")],
                         ids=lambda s: s["scheme"])
def test_int8_model_exports_with_the_same_outputs(scheme: dict) -> None:
    quantized = quantize_int8(_model(**scheme))
    dense, ids, bags = _inputs()
    for features in (ids, bags):
        program = export_model(quantized, dense, features)
        dense2, ids2, bags2 = _inputs(5)  # another batch size
        other = ids2 if isinstance(features, torch.Tensor) else bags2
        with torch.no_grad():
            torch.testing.assert_close(program.module()(dense2, other), quantized(dense2, other))


def test_int8_accuracy_of_a_small_trained_model() -> None:
    config = TrainConfig(
        model=ModelConfig(scheme="qr", embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), threshold=0),
        optim=OptimConfig(lr=0.01), data=DataConfig(rows=12_000, cardinality_scale=0.0005),
        batch_size=256, epochs=1, eval_every=0, log_every=100)
    result = train(config, progress=False)
    model = result.model.eval()
    from compembed.training.datasets import open_data
    dataset = open_data(config.data)
    quantized = quantize_int8(model)
    fp32, int8 = evaluate(model, dataset, "test"), evaluate(quantized, dataset, "test")
    assert abs(int8.loss - fp32.loss) < 0.005  # the stated tolerance
    assert abs(int8.auc - fp32.auc) < 0.005
    ratio = embedding_bytes(quantized.embeddings) / embedding_bytes(model.embeddings)
    assert math.isclose(ratio, (8 + 8) / (8 * 4))  # d = 8: 8 codes + 8 bytes of scale and bias vs 32 bytes


def test_robe_arrays_dequantise_value_by_value_at_the_float_positions() -> None:
    torch.manual_seed(0)
    float_bag = ROBEEmbeddingBag(500, 8, size=1003, block_size=4, signs=True, mode="sum")
    with torch.no_grad():  # values of very different ranges along the array
        float_bag.weight.mul_(torch.logspace(-3, 1, 1003).unsqueeze(1))
    int8_bag = Int8ROBEEmbeddingBag(float_bag, float_bag.weight)
    rows = -(-1003 // 8)
    hashes = sum(getattr(int8_bag, n).numel() * 8 for n in ("hash_a", "hash_b", "sign_a", "sign_b"))  # int64
    assert embedding_bytes(int8_bag) - hashes == rows * (8 + 8) == 2016
    # each value within half a step of its row of 8 consecutive values (the last row: 3 values)
    values = float_bag.weight.detach().reshape(-1)
    padded = torch.cat([values, values[-1:].expand(rows * 8 - 1003)]).view(rows, 8)
    step = ((padded.max(1).values - padded.min(1).values) / 255).repeat_interleave(8)[:1003]
    error = (int8_bag.dequantized().reshape(-1) - values).abs()
    assert bool((error <= step / 2 + 1e-6 * values.abs().max()).all()) and error.max() > 0
    # an id reads the float module's positions: the float bag over the dequantised array, bit for bit
    reference = copy.deepcopy(float_bag)
    with torch.no_grad():
        reference.weight.copy_(int8_bag.dequantized())
    ids, offsets = torch.randint(0, 500, (30,)), torch.tensor([0, 4, 4, 11, 29])
    with torch.no_grad():
        assert torch.equal(int8_bag(ids, offsets), reference(ids, offsets))
        assert torch.equal(int8_bag.embed(ids.view(5, 6)), reference.embed(ids.view(5, 6)))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("scheme", [dict(scheme="robe"), dict(scheme="robe", block_size=2, robe_signs=True),
                                    dict(scheme="hybrid", hot_rows=5, cold_scheme="robe")],
                         ids=["robe", "robe-z2-signs", "hybrid-robe"])
def test_robe_and_hybrid_robe_models_quantise_and_export(scheme: dict, fused: bool) -> None:
    model = _model(fused, **scheme)
    quantized = quantize_int8(model)
    _assert_close_to_float(model, quantized)
    # the arrays' bytes: rows of D = 8 values, each 8 codes + fp32 scale and bias (hash buffers aside)
    arrays = [w for name in model.embeddings.feature_names
              for w in (model.embeddings.table_weights(name) or [model.embeddings.feature_module(name).weight])]
    expected_bytes = sum(-(-w.numel() // 8) * 16 if w.shape[1] == 1 else w.shape[0] * (w.shape[1] + 8) for w in arrays)
    hashes = sum(b.numel() * b.element_size() for n, b in quantized.embeddings.named_buffers()
                 if n.rsplit(".", 1)[-1].startswith(("hash_", "sign_")))
    assert embedding_bytes(quantized.embeddings) - hashes == expected_bytes
    _assert_exports(quantized)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("scheme", ["cce", "md", "dhe"])
def test_cce_mixed_dimension_and_dhe_models_quantise_and_export(scheme: str, fused: bool) -> None:
    model = _model(fused, scheme=scheme)
    quantized = quantize_int8(model)
    _assert_close_to_float(model, quantized, changed=scheme != "dhe")  # DHE has no table: the same float model
    expected_bytes = 0
    for name in model.embeddings.feature_names:
        module = model.embeddings.feature_module(name)
        if scheme == "cce":  # both tables int8; the assignment and hash coefficients as they were
            expected_bytes += sum(t.shape[0] * (t.shape[1] + 8) for t in (module.clustered, module.hashed))
            expected_bytes += sum(getattr(module, b).numel() * getattr(module, b).element_size()
                                  for b in ("assignment", "hash_a", "hash_b"))
        elif scheme == "md":  # block tables int8, projections float
            expected_bytes += sum(t.shape[0] * (t.shape[1] + 8) for t in module.tables)
            expected_bytes += sum(p.numel() * 4 for p in module.projections.values())
        else:
            expected_bytes += sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert embedding_bytes(quantized.embeddings) == expected_bytes
    _assert_exports(quantized)


def test_schemes_without_an_int8_form_say_so() -> None:
    with pytest.raises(TypeError, match="feature 'x': no int8 form of TTEmbeddingBag .* without --int8") as err:
        quantize_int8(_model(scheme="tt"))
    assert isinstance(err.value, ValueError)  # the command line's usage error (exit code 2), not a bug
