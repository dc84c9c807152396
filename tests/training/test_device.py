"""Device and precision: resolution and its errors, the prefetching thread, bf16 training and resume.

The CUDA paths (pinned prefetching, fp16 with a loss scale) need a GPU: here only their errors are
tested, with CUDA reported absent.
"""
from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from compembed.models import ModelConfig
from compembed.training import train
from compembed.training.device import background, check_precision, prefetch, resolve_device
from compembed.training.loop import CHECKPOINT, METRICS

from models.toy import toy_dataset
from training.runs import SMALL, Interrupt, config, interrupt_at, params, records


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"device '{name}': CUDA is not available.*--device cpu or auto"):
            resolve_device(name)
    for name in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device"):
            resolve_device(name)


def test_auto_picks_cuda_when_torch_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_precision_checks():
    check_precision("bf16", torch.device("cpu"))
    check_precision("fp16", torch.device("cuda"))
    with pytest.raises(ValueError, match="fp16 runs on CUDA only.*use bf16 on the CPU"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision: expected one of"):
        check_precision("fp8", torch.device("cpu"))


def test_background_keeps_order_and_raises_where_the_producer_failed():
    assert list(background(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in background(failing()):
            got.append(item)
    assert got == [1, 2]
    with pytest.raises(ValueError, match="depth"):
        next(background([1], depth=0))


def test_background_stops_its_thread_when_closed_early():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    items = background(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 1  # at most depth ahead (and one in hand)


def test_prefetch_on_the_cpu_passes_batches_through():
    batches = list(toy_dataset(rows=256).loader("train", 64))
    assert all(a is b for a, b in zip(prefetch(iter(batches), torch.device("cpu")), batches, strict=True))


def test_bf16_run_learns_close_to_fp32():
    dataset = toy_dataset()
    fp32 = train(config(epochs=3), dataset, progress=False)
    bf16 = train(config(epochs=3, precision="bf16"), dataset, progress=False)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    a, b = params(fp32.model), params(bf16.model)
    assert not all(torch.equal(a[k], b[k]) for k in a)  # autocast was on
    assert abs(bf16.evals["test"].loss - fp32.evals["test"].loss) < 0.01, (bf16.evals["test"], fp32.evals["test"])
    assert bf16.evals["test"].auc > 0.7


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_bf16_resume_after_kill_equals_uninterrupted(tmp_path, arch):
    dataset = toy_dataset()
    cfg = config(precision="bf16", model=ModelConfig(arch=arch, scheme="qr", **SMALL))
    whole = train(cfg, dataset, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(Interrupt):
        train(cfg, dataset, out_dir=tmp_path / "cut", progress=False, on_step=interrupt_at(26))
    resumed = train(cfg, dataset, out_dir=tmp_path / "cut", resume=True, progress=False)
    pw, pr = params(whole.model), params(resumed.model)
    assert all(torch.equal(pw[k], pr[k]) for k in pw)
    assert records(tmp_path / "whole" / METRICS) == records(tmp_path / "cut" / METRICS)
    a, b = load_file(tmp_path / "whole" / CHECKPOINT), load_file(tmp_path / "cut" / CHECKPOINT)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "rng.torch")
    # resuming in another precision is another run
    with pytest.raises(ValueError, match=r"\[train\] precision: checkpoint 'bf16', now 'fp32'"):
        train(config(model=cfg.model), dataset, out_dir=tmp_path / "cut", resume=True, progress=False)


def test_device_and_precision_errors_come_before_anything_is_written(tmp_path, no_cuda):
    dataset = toy_dataset(rows=256)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(config(), dataset, out_dir=tmp_path / "a", progress=False, device="cuda")
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        train(config(precision="fp16"), dataset, out_dir=tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
