"""One benchmark variant in its own process, so that its peak RSS is its own.

Run as ``python -m compembed.benchmarks.worker '<json spec>'``. The worker builds the model,
warms up, prints one JSON line ``{"ready": ...}``, then for each ``{"op": "run", "steps": S}``
line on stdin runs ``settle`` untimed steps (the other workers have just had the caches), times S
training steps and prints ``{"times": [...]}``; on ``{"op": "quit"}`` (or
end of input) it prints ``{"peak_rss": bytes, ...}`` and exits. The parent interleaves the
workers' runs, so all variants see the same machine load.

Tasks:
- ``emb``: the embedding part alone: lookup ``(B, F)`` ids, backward a fixed upstream gradient,
  optimizer step.
- ``dlrm``: a whole DLRM training step (bottom MLP 13-512-256-64-D, dot interaction, top MLP
  512-256-1, BCE loss) over the variant's embeddings, SGD on every parameter (the ``qr-*adagrad``
  variants: the optimizers ``compembed train`` builds, ``variants.make_model_optimizers``).
- ``bags``: the embedding part on multi-hot bags (1-D ids with offsets, ``bag_length`` ids per bag
  on average, empty bags included), with the offsets check on or off (``check_offsets``); its
  facts time the check alone over one batch (``offset_check_s``).
- ``idle``: imports everything, builds nothing: the RSS every worker pays before its model.
- ``sgemm``: ``C = A @ B`` with ``(2048, 1024) x (1024, 1024)`` float32, the FLOP roofline's rate.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..embedding import feature_configs, pooling
from ..embedding.fused import FusedEmbeddingCollection
from .memory import peak_rss_bytes
from .variants import build_variant, make_model_optimizers, make_optimizer

__all__ = ["build_step", "mlp_flops_per_sample", "main"]

SGEMM_SHAPE = (2048, 1024, 1024)
NUM_DENSE = 13
NUM_BATCHES = 8  # distinct random batches, cycled


def _embeddings(spec: dict, device: torch.device) -> nn.Module:
    cards, dim = spec["cardinalities"], spec["dim"]
    if spec.get("scheme"):  # the scaling study: any scheme through the fused collection
        configs = feature_configs(cards, embedding_dim=dim, scheme=spec["scheme"], operation="mult",
                                  num_collisions=spec["collisions"], num_partitions=spec.get("num_partitions", 3))
        return FusedEmbeddingCollection(configs, threshold=spec["threshold"], sparse=True, device=device)
    return build_variant(spec["variant"], cards, dim, spec["threshold"], spec["collisions"], device)


def mlp_flops_per_sample(model: nn.Module) -> int:
    """Forward + backward FLOPs per sample of the model's linear layers: 2 (fwd) + 4 (bwd) per MAC."""
    return sum(6 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def build_step(spec: dict) -> tuple[Callable[[], None], dict]:
    """A closure running one training step of ``spec``, and facts about the model."""
    device = torch.device(spec.get("device", "cpu"))
    batch, lr = spec["batch"], spec.get("lr", 0.01)
    generator = torch.Generator().manual_seed(0)
    if spec["task"] == "sgemm":
        m, k, n = SGEMM_SHAPE
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        c = torch.empty(m, n, device=device)
        return (lambda: torch.mm(a, b, out=c)), {"flop_per_step": 2 * m * k * n}
    if spec["task"] == "idle":
        from ..models.dlrm import DLRM  # noqa: F401  (the same imports as a DLRM worker)

        return (lambda: None), {}

    emb = _embeddings(spec, device)
    cards = [c.num_embeddings for c in emb.configs]
    ids = [torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in cards], 1).to(device)
           for _ in range(NUM_BATCHES)]
    facts = {
        "embedding_parameters": sum(p.numel() for p in emb.parameters()),
        "embedding_bytes": sum(p.numel() * p.element_size() for p in emb.parameters()),
        "full_table_parameters": sum(cards) * spec["dim"],
    }
    counter = iter(range(1 << 62))
    variant = spec.get("variant", "")

    if spec["task"] == "bags":
        step, facts["offset_check_s"] = _bags_step(spec, emb, generator, device)
        return step, facts

    if spec["task"] == "emb":
        opt = make_optimizer(variant, emb.parameters(), lr)
        upstream = torch.randn(batch, len(cards), spec["dim"], generator=generator).to(device)

        def step() -> None:
            out = emb(ids[next(counter) % NUM_BATCHES])
            out.backward(upstream)
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return step, facts

    from ..models.dlrm import DLRM

    model = DLRM(emb, num_dense=NUM_DENSE).to(device)
    optimizers = make_model_optimizers(variant, model, lr)
    dense = [torch.rand(batch, NUM_DENSE, generator=generator).to(device) for _ in range(NUM_BATCHES)]
    labels = [torch.randint(0, 2, (batch,), generator=generator).float().to(device) for _ in range(NUM_BATCHES)]
    facts["flop_per_sample"] = mlp_flops_per_sample(model)
    facts["model_parameters"] = sum(p.numel() for p in model.parameters())

    def dlrm_step() -> None:
        i = next(counter) % NUM_BATCHES
        loss = F.binary_cross_entropy_with_logits(model(dense[i], ids[i]), labels[i])
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return dlrm_step, facts


def _bags_step(spec: dict, emb: nn.Module, generator: torch.Generator,
               device: torch.device) -> tuple[Callable[[], None], float]:
    """The ``bags`` task's step, and the seconds the offsets check alone takes over one batch."""
    batch, mean = spec["batch"], spec.get("bag_length", 2)
    batches = []
    for _ in range(NUM_BATCHES):
        bags = {}
        for c in emb.configs:
            lengths = torch.randint(0, 2 * mean + 1, (batch,), generator=generator)
            values = torch.randint(0, c.num_embeddings, (int(lengths.sum()),), generator=generator)
            bags[c.name] = (values.to(device), (torch.cumsum(lengths, 0) - lengths).to(device))
        batches.append(bags)
    pooling.CHECK_OFFSETS = True
    repeats = 20
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        for values, offsets in batches[0].values():
            pooling.check_bag_inputs(values, offsets)
    _sync(device)
    check_s = (time.perf_counter() - start) / repeats
    pooling.CHECK_OFFSETS = spec.get("check_offsets", True)
    opt = make_optimizer(spec.get("variant", ""), emb.parameters(), spec.get("lr", 0.01))
    upstream = torch.randn(batch, len(emb.configs), spec["dim"], generator=generator).to(device)
    counter = iter(range(1 << 62))

    def step() -> None:
        emb(batches[next(counter) % NUM_BATCHES]).backward(upstream)
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step, check_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    if spec.get("memory_limit_bytes"):  # the scaling study's "does it fit" test: allocations above it fail
        limit = int(spec["memory_limit_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    torch.manual_seed(0)
    device = torch.device(spec.get("device", "cpu"))
    started = time.perf_counter()
    step, facts = build_step(spec)
    build_s = time.perf_counter() - started
    for _ in range(spec.get("warmup", 3)):
        step()
    _sync(device)
    print(json.dumps({"ready": True, "build_s": build_s, "threads": torch.get_num_threads(), **facts}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] != "run":
            break
        for _ in range(command.get("settle", 0)):  # untimed: caches and TLB were the other workers'
            step()
        _sync(device)
        times = []
        for _ in range(command["steps"]):
            start = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times}), flush=True)
    end = {"peak_rss": peak_rss_bytes()}
    if device.type == "cuda":
        end["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(end), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
