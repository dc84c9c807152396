"""The benchmark: variants in their own processes, run interleaved and repeated, then ratios.

All variants of a task are started at once (each builds and warms up, then waits); the parent
asks them in turn, round after round (the order rotated every round), to time a few training
steps, each run after one untimed step (the caches were the previous worker's). Every variant so
sees the same machine load, and each process's peak RSS is its own.
Nothing here asserts a speed: the ratios against the baselines of the same run are the result.
With ``reference_dlrm`` the DLRM task's rounds also time the reference DLRM script, an external
program run once per round (``reference.ReferenceRun``, driven like a worker).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..data.criteo_spec import KAGGLE_CARDINALITIES
from ..embedding.kernels import kernel_unavailable
from .reference import REFERENCE_VARIANTS, ReferenceRun, check_reference_dir
from .variants import VARIANTS, fbgemm_unavailable

__all__ = ["BenchConfig", "PRESETS", "run_benchmark", "summarize"]

GiB = 2**30
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483648"


@dataclass
class BenchConfig:
    """What to run. ``rounds`` x ``steps`` timed steps per variant, after ``warmup`` steps."""

    preset: str = "quick"
    batch: int = 2048
    dim: int = 16
    threshold: int = 200
    collisions: int = 4
    threads: int = 2
    device: str = "cpu"
    rounds: int = 3
    steps: int = 6
    warmup: int = 2
    emb_variants: tuple[str, ...] = ("full-per-feature", "full-batched", "full-batched-fused", "qr-reference", "qr",
                                     "qr-pytorch", "qr-fused")
    # qr-adagrad / qr-torch-adagrad: the training loop's optimizers, fast against torch.optim
    dlrm_variants: tuple[str, ...] = ("full-batched", "full-batched-fused", "qr", "qr-pytorch", "qr-fused", "mlp-only",
                                      "qr-adagrad", "qr-torch-adagrad")
    # Scaling: (cardinality per table, scheme, k) points; "full" points above the memory cap are estimated.
    scaling_cardinalities: tuple[int, ...] = (10**5, 10**8)
    scaling_schemes: tuple[tuple[str, int], ...] = (("full", 1), ("gqr", 2))
    scaling_features: int = 26
    scaling_rounds: int = 2
    scaling_steps: int = 3
    # The offsets check's cost: the embedding part on multi-hot bags (this many ids per bag on
    # average) of ``bag_variant``, with and without the check; 0 skips it.
    bag_length: int = 2
    bag_variant: str = "qr"
    bag_steps: int = 3
    memory_cap_gib: float = 8.0  # never build a model whose tables exceed this (shared machine)
    fit_limit_gib: float = 24.0  # the machine's memory: "fits" means tables + optimizer under it
    cardinalities: tuple[int, ...] = tuple(KAGGLE_CARDINALITIES)
    # The reference DLRM script (a facebookresearch/dlrm checkout) in the dlrm task's rounds, run by
    # this interpreter (default: the current one); None skips it (benchmarks/reference.py).
    reference_dlrm: str | None = None
    reference_python: str | None = None


PRESETS: dict[str, BenchConfig] = {
    "quick": BenchConfig(),  # about 1.5 minutes on 2 cores
    # Every variant of a task is alive at once (interleaved rounds), so the lists must fit the 24 GiB
    # machine: each full-table variant holds 2.3 GiB, md and cce 1.3 GiB. With the field's schemes
    # added, run E's list (full-per-feature-torch-sgd, qr-collection, crt too) thrashed; these fit (15.5
    # GiB peak in run F; fbgemm-full adds 2.3 GiB where fbgemm loads).
    "full": BenchConfig(
        preset="full", rounds=7, steps=12, warmup=3,
        emb_variants=("full-per-feature", "full-batched", "full-batched-fused", "fbgemm-full", "qr-reference", "qr",
                      "qr-pytorch", "qr-fused", "hashing", "gqr", "hybrid", "path", "path-fused", "robe", "hybrid-robe",
                      "dhe", "tt", "tt-cache", "md", "cce"),
        dlrm_variants=("full-batched", "full-batched-fused", "fbgemm-full", "qr-reference", "qr", "qr-pytorch",
                       "qr-fused", "hashing", "gqr", "hybrid", "path", "path-fused", "robe", "hybrid-robe", "dhe", "tt",
                       "tt-cache", "md", "cce", "mlp-only", "qr-adagrad", "qr-torch-adagrad", "qr-rowwise-adagrad"),
        scaling_cardinalities=(10**5, 10**6, 10**7, 10**8),
        scaling_schemes=(("full", 1), ("qr", 2), ("gqr", 2), ("gqr", 3), ("gqr", 4)),
        scaling_rounds=5, scaling_steps=4,
    ),
}


@dataclass
class Measurement:
    """One variant of one task: per-round samples/s, peak RSS and facts from the worker."""

    task: str
    name: str
    samples_per_s: list[float] = field(default_factory=list)
    peak_rss: int | None = None
    facts: dict = field(default_factory=dict)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples_per_s) if self.samples_per_s else None


class _Worker:
    """A running ``compembed.benchmarks.worker`` process."""

    def __init__(self, spec: dict) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONWARNINGS="ignore")
        # Every variant runs with glibc malloc keeping freed blocks up to 32 MiB (no mmap/munmap
        # and page faults for each multi-MB temporary of a step), as DLRM setups use jemalloc.
        env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: it never fills and blocks
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "compembed.benchmarks.worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
        )

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().strip().splitlines()
            raise RuntimeError(err[-1] if err else f"worker exited with code {code}")
        return json.loads(line)

    def send(self, command: dict) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> dict:
        try:
            self.send({"op": "quit"})
            end = self.read()
        finally:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        return end

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _spec(config: BenchConfig, task: str, **extra) -> dict:
    spec = dict(task=task, cardinalities=list(config.cardinalities), dim=config.dim, batch=config.batch,
                threshold=config.threshold, collisions=config.collisions, threads=config.threads,
                device=config.device, warmup=config.warmup)
    spec.update(extra)
    return spec


def run_interleaved(specs: dict[str, dict], rounds: int, steps: int, task: str,
                    progress: Callable[[str], None] = print) -> dict[str, Measurement]:
    """Start every spec's worker, then time ``steps`` steps of each in turn for ``rounds`` rounds."""
    results = {name: Measurement(task, name) for name in specs}
    workers: dict[str, _Worker] = {}
    pending: dict[str, _Worker] = {}
    try:
        # All workers build and warm up at once (building is not what is measured); the timed
        # runs start when every one of them is ready and idle.
        for name, spec in specs.items():  # one by one: a failing start leaves the started ones to the finally
            pending[name] = ReferenceRun(spec) if spec.get("reference_dir") else _Worker(spec)
        for name, worker in pending.items():
            try:
                results[name].facts = worker.read()
                workers[name] = worker
                progress(f"  {task}/{name}: built in {results[name].facts['build_s']:.1f}s")
            except RuntimeError as err:
                worker.kill()
                results[name].skipped = f"worker failed: {err}"
                progress(f"  {task}/{name}: skipped ({err})")
        names = list(workers)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)] if names else []
            for name in order:
                workers[name].send({"op": "run", "steps": steps, "settle": 1})
                times = workers[name].read()["times"]
                batch = specs[name].get("batch", 1)
                results[name].samples_per_s.append(batch * len(times) / sum(times))
            progress(f"  {task}: round {r + 1}/{rounds} done")
        for name in names:
            results[name].peak_rss = workers.pop(name).close()["peak_rss"]
    finally:
        for worker in [*pending.values(), *workers.values()]:
            worker.kill()
    return results


def full_table_bytes(cardinalities: Sequence[int], dim: int, itemsize: int = 4) -> int:
    return sum(cardinalities) * dim * itemsize


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] = print) -> dict:
    """Run every part of ``config`` and return the results as plain JSON-able data."""
    started = time.time()
    skipped = {}
    fbgemm_reason = fbgemm_unavailable()
    # Build (or load) the compiled kernel once here, not in every worker at once; where it cannot
    # be built the fused collections run their PyTorch path, and the report says so.
    kernel_reason = kernel_unavailable()
    if kernel_reason:
        progress(f"compiled kernel unavailable, FusedEmbeddingCollection runs its PyTorch path: {kernel_reason}")
    tasks = {}
    for task, names in (("emb", config.emb_variants), ("dlrm", config.dlrm_variants)):
        if not names:
            continue
        specs = {}
        for name in names:
            if name not in VARIANTS:
                raise KeyError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
            if name == "fbgemm-full" and fbgemm_reason:
                skipped[name] = fbgemm_reason
                continue
            specs[name] = _spec(config, task, variant=name)
        if task == "dlrm":
            specs.update(reference_specs(config, skipped))
        specs["sgemm"] = _spec(config, "sgemm", batch=1)  # "samples" = sgemm calls
        specs["idle"] = _spec(config, "idle", batch=1)  # the RSS of the interpreter, torch and the models
        progress(f"{task}: {len(specs) - 2} variants (the reference script's included) + sgemm + idle, "
                 f"{config.rounds} rounds x {config.steps} steps")
        tasks[task] = run_interleaved(specs, config.rounds, config.steps, task, progress)
    offset_check = run_offset_check(config, progress) if config.bag_length else None
    scaling = run_scaling(config, progress)
    return summarize(config, tasks, scaling, skipped, time.time() - started, offset_check)


def reference_specs(config: BenchConfig, skipped: dict[str, str]) -> dict[str, dict]:
    """The reference DLRM script's variants for the dlrm task, or none (with the reason in ``skipped``)."""
    if not config.reference_dlrm:
        skipped["ref-dlrm"] = ("the reference DLRM script was not run: no --reference-dlrm DIR given (a checkout "
                               "of facebookresearch/dlrm; its Python needs scikit-learn and tensorboard, "
                               "see --reference-python)")
        return {}
    check_reference_dir(config.reference_dlrm)
    return {name: _spec(config, "dlrm", variant=name, qr=qr, reference_dir=str(config.reference_dlrm),
                        reference_python=config.reference_python, malloc_tunables=MALLOC_TUNABLES)
            for name, (_, qr) in REFERENCE_VARIANTS.items()}


def _description(name: str) -> str:
    return REFERENCE_VARIANTS[name][0] if name in REFERENCE_VARIANTS else VARIANTS[name].description


def run_offset_check(config: BenchConfig, progress: Callable[[str], None] = print) -> dict:
    """What validating bag offsets costs, against the same multi-hot embedding step without it."""
    specs = {name: _spec(config, "bags", variant=config.bag_variant, bag_length=config.bag_length, check_offsets=check)
             for name, check in (("checked", True), ("unchecked", False))}
    progress(f"bags: {config.bag_variant} with and without the offsets check, {config.rounds} rounds x "
             f"{config.bag_steps} steps")
    return offset_check_cost(config, run_interleaved(specs, config.rounds, config.bag_steps, "bags", progress))


def offset_check_cost(config: BenchConfig, results: dict[str, Measurement]) -> dict:
    """``cost``: the check's own time over one batch / the step without it (both from this run).
    ``ab_cost``: the median over rounds of step time with / without the check, minus 1 (noisier)."""
    checked, unchecked = results["checked"], results["unchecked"]
    out = dict(variant=config.bag_variant, bag_length=config.bag_length)
    if not checked.median or not unchecked.median:
        return dict(out, skipped=checked.skipped or unchecked.skipped)
    step_s = config.batch / unchecked.median
    rounds = [u / c - 1 for c, u in zip(checked.samples_per_s, unchecked.samples_per_s)]
    return dict(out, checked=checked.median, unchecked=unchecked.median, step_s=step_s,
                check_s=checked.facts["offset_check_s"], cost=checked.facts["offset_check_s"] / step_s,
                ab_cost=statistics.median(rounds), ab_cost_rounds=rounds)


def run_scaling(config: BenchConfig, progress: Callable[[str], None] = print) -> list[dict]:
    """Embedding-part step time and memory for ``scaling_features`` tables of one cardinality.

    The schemes of one cardinality run interleaved (like the variants of a task). Where the full
    tables exceed ``fit_limit_gib``, every scheme of that cardinality runs in a worker whose address
    space is capped at that limit: what does not fit fails to allocate (shown, not only computed)
    and what fits trains. Otherwise a model whose tables exceed ``memory_cap_gib`` (this shared
    machine's budget) is not built; its size is computed from the partitions.
    """
    from ..embedding import EmbeddingCollection, feature_configs

    rows = []
    limit = int(config.fit_limit_gib * GiB)
    for n in config.scaling_cardinalities:
        cards = [n] * config.scaling_features
        full_bytes = full_table_bytes(cards, config.dim)
        specs, by_label = {}, {}
        for scheme, k in config.scaling_schemes:
            configs = feature_configs(cards, embedding_dim=config.dim, scheme=scheme, num_partitions=k,
                                      num_collisions=config.collisions)
            table_bytes = EmbeddingCollection(configs, device="meta").num_bytes  # sizes without allocating
            label = scheme if scheme in ("full", "qr") else f"{scheme}-k{k}"
            row = dict(cardinality=n, scheme=label, k=k, table_bytes=table_bytes, full_bytes=full_bytes,
                       fits=table_bytes < config.fit_limit_gib * GiB, measured=False)
            spec = _spec(config, "emb", cardinalities=cards, scheme=scheme, num_partitions=k, threshold=0, warmup=1)
            if full_bytes > limit and table_bytes > limit:  # its allocation fails at once, touching nothing
                specs[label] = dict(spec, memory_limit_bytes=limit)
            elif table_bytes > config.memory_cap_gib * GiB:
                row["note"] = (f"not built: {table_bytes / GiB:.1f} GiB of tables exceeds this run's "
                               f"{config.memory_cap_gib:g} GiB cap (size computed from the partitions)")
            else:
                specs[label] = dict(spec, memory_limit_bytes=limit) if full_bytes > limit else spec
            by_label[label] = row
            rows.append(row)
        if specs:
            results = run_interleaved(specs, config.scaling_rounds, config.scaling_steps, f"scale n={n:.0e}", progress)
            for label, result in results.items():
                note = result.skipped
                if note and "memory_limit_bytes" in specs[label]:
                    reason = note.split("DefaultCPUAllocator: ")[-1]
                    note = f"could not be built under a {config.fit_limit_gib:g} GiB address-space limit: {reason}"
                elif "memory_limit_bytes" in specs[label]:
                    note = f"built and trained under a {config.fit_limit_gib:g} GiB address-space limit"
                by_label[label].update(
                    measured=result.skipped is None, samples_per_s=result.median,
                    step_ms=(config.batch / result.median * 1e3) if result.median else None,
                    peak_rss=result.peak_rss, note=note)
    return rows


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return dict(median=statistics.median(values), min=min(values), max=max(values), rounds=len(values))


def summarize(config: BenchConfig, tasks: dict[str, dict[str, Measurement]], scaling: list[dict],
              skipped: dict[str, str], elapsed: float, offset_check: dict | None = None) -> dict:
    """Medians, spreads and every ratio against the baselines of the same run."""
    out = dict(config=asdict(config), machine=machine_description(config), elapsed_s=elapsed, skipped=skipped,
               tasks={}, scaling=scaling, offset_check=offset_check)
    for task, results in tasks.items():
        sgemm = results.pop("sgemm", None)
        idle = results.pop("idle", None)
        base_rss = idle.peak_rss if idle is not None else None
        sgemm_gflops = None
        if sgemm is not None and sgemm.median:
            sgemm_gflops = sgemm.median * sgemm.facts["flop_per_step"] / 1e9
        medians = {n: m.median for n, m in results.items() if m.median}
        rss = {n: m.peak_rss for n, m in results.items() if m.peak_rss}
        # compembed's own full-table baselines (the reference script's are compared on their own)
        full = [n for n in medians if n in VARIANTS and VARIANTS[n].full_tables]
        best_full = max(full, key=medians.get) if full else None
        rows = {}
        for name, m in results.items():
            row = dict(description=_description(name), **_spread(m.samples_per_s), peak_rss=m.peak_rss,
                       embedding_bytes=m.facts.get("embedding_bytes"), skipped=m.skipped)
            if m.median:
                for base in ("full-per-feature", "full-batched", "qr-reference", "qr-collection", "mlp-only",
                             "ref-dlrm-full"):
                    if medians.get(base):
                        row[f"speed_vs_{base}"] = m.median / medians[base]
                if best_full:
                    row["speed_vs_best_full"] = m.median / medians[best_full]
                reference = VARIANTS[name].torch_reference if name in VARIANTS else None
                if medians.get(reference):  # the same model with its tables on torch.optim
                    row["torch_reference"] = reference
                    row["speed_vs_torch_optim"] = m.median / medians[reference]
                if best_full and rss.get(best_full) and m.peak_rss:
                    row["rss_vs_best_full"] = m.peak_rss / rss[best_full]
                # Memory above a floor every worker of the task pays: the idle worker's (interpreter,
                # torch), and the table-free DLRM step's (that plus the step's own working set).
                for floor_name, floor in (("idle", base_rss), ("mlp-only", rss.get("mlp-only"))):
                    if best_full and rss.get(best_full) and m.peak_rss and floor and rss[best_full] > floor:
                        row[f"rss_above_{floor_name}_vs_best_full"] = (m.peak_rss - floor) / (rss[best_full] - floor)
                if rss.get("full-batched") and m.peak_rss:
                    row["rss_vs_full-batched"] = m.peak_rss / rss["full-batched"]
                flop = m.facts.get("flop_per_sample")
                if flop and sgemm_gflops:
                    row["gflops"] = m.median * flop / 1e9
                    row["roofline_fraction"] = row["gflops"] / sgemm_gflops
            rows[name] = row
        out["tasks"][task] = dict(variants=rows, best_full=best_full, sgemm_gflops=sgemm_gflops, idle_rss=base_rss,
                                  flop_per_sample=next((m.facts.get("flop_per_sample") for m in results.values()
                                                        if m.facts.get("flop_per_sample")), None))
    out["targets"] = targets(out)
    return out


def targets(out: dict) -> list[dict]:
    """The issue's targets, each with the measured value (None where its variants did not run)."""
    emb, dlrm = out["tasks"].get("emb", {}).get("variants", {}), out["tasks"].get("dlrm", {}).get("variants", {})
    qr_emb, qr_dlrm = emb.get("qr", {}), dlrm.get("qr", {})
    fused_emb, fused_dlrm = emb.get("qr-fused", {}), dlrm.get("qr-fused", {})
    path = dlrm.get("path-fused") or dlrm.get("path", {})

    def check(name, value, goal, higher=True):
        ok = None if value is None or goal is None else (value >= goal if higher else value <= goal)
        return dict(target=name, value=value, goal=goal, met=ok, higher=higher)

    offsets = out.get("offset_check") or {}

    return [
        check("DLRM step, QR vs best full-table baseline (samples/s ratio)", qr_dlrm.get("speed_vs_best_full"), 1.0),
        check("DLRM step, QR with fused SGD (qr-fused) vs batched full tables (full-batched)",
              fused_dlrm.get("speed_vs_full-batched"), 1.15),
        check("(same, vs the best full-table baseline, full-batched-fused included)",
              fused_dlrm.get("speed_vs_best_full"), 1.15),
        check("embedding part, QR with fused SGD (qr-fused) vs straightforward QR (qr-reference)",
              fused_emb.get("speed_vs_qr-reference"), 2.0),
        check("DLRM step, path-based (path-fused, else path) vs batched full tables (full-batched)",
              path.get("speed_vs_full-batched"), 0.7),
        check("DLRM step, QR vs the reference DLRM script's full tables (qr / ref-dlrm-full)",
              qr_dlrm.get("speed_vs_ref-dlrm-full"), 1.4),
        check("(reference DLRM script: its QR-mult vs its full tables, ref-dlrm-qr / ref-dlrm-full)",
              dlrm.get("ref-dlrm-qr", {}).get("speed_vs_ref-dlrm-full"), None),
        check("DLRM step, QR fraction of the FLOP roofline", qr_dlrm.get("roofline_fraction"), 0.8),
        check("(ceiling: DLRM step without tables, mlp-only, fraction of the FLOP roofline)",
              dlrm.get("mlp-only", {}).get("roofline_fraction"), 0.8),
        check("(DLRM step, QR vs the same step without tables, mlp-only)", qr_dlrm.get("speed_vs_mlp-only"), None),
        check("embedding part, QR vs straightforward per-feature QR (qr-reference)", qr_emb.get("speed_vs_qr-reference"), 1.5),
        check("embedding part, QR vs per-feature EmbeddingCollection QR", qr_emb.get("speed_vs_qr-collection"), 1.5),
        check("DLRM step with Adagrad as `compembed train` runs it, QR: fast sparse optimizers vs torch.optim "
              "(qr-adagrad / qr-torch-adagrad)", dlrm.get("qr-adagrad", {}).get("speed_vs_torch_optim"), 1.25),
        check("DLRM training peak RSS, QR vs best full-table baseline", qr_dlrm.get("rss_vs_best_full"), 0.35, higher=False),
        check("(same, RSS above an idle worker's: tables + training state only)",
              qr_dlrm.get("rss_above_idle_vs_best_full"), 0.35, higher=False),
        check("(same, RSS above the mlp-only worker's: what the tables add to a DLRM step)",
              qr_dlrm.get("rss_above_mlp-only_vs_best_full"), 0.35, higher=False),
        check("offsets check on multi-hot bags: its time / the embedding step without it", offsets.get("cost"), 0.02,
              higher=False),
        check("(same, interleaved: step time with / without the check - 1, median over rounds)",
              offsets.get("ab_cost"), None),
    ]


def machine_description(config: BenchConfig) -> dict:
    import torch

    info = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                cpus=os.cpu_count(), threads=config.threads, device=config.device)
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if config.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["kernel"] = kernel_unavailable() or "compiled C++ kernel (embedding.kernels)"
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return info

