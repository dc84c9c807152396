"""What a run cost and gave: memory per scheme, metrics, throughput, as records and as a text table."""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from ..embedding.collection import index_bytes

__all__ = ["MemoryReport", "memory_report", "optimizer_state_bytes", "format_table", "format_seed_table"]


@dataclass(frozen=True)
class MemoryReport:
    """Parameters and bytes of a model's embedding tables against full tables, and of the rest.

    ``embedding_state_bytes`` / ``dense_state_bytes``: the bytes of the tensors the optimizers hold
    for the tables / the other parameters (Adagrad: one value per parameter; row-wise Adagrad: one
    per table row; Adam: two; AMSGrad: three; plus step counters), None when no optimizer was given.
    ``embedding_index_bytes``: per-id index buffers of the tables (CCE's assignment), included in
    ``embedding_bytes``.
    """

    embedding_parameters: int
    embedding_bytes: int
    full_parameters: int
    full_bytes: int
    dense_parameters: int
    embedding_state_bytes: int | None = None
    dense_state_bytes: int | None = None
    embedding_index_bytes: int = 0

    @property
    def compression_ratio(self) -> float:
        return self.full_parameters / self.embedding_parameters

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedding_parameters": self.embedding_parameters, "embedding_bytes": self.embedding_bytes,
            "full_parameters": self.full_parameters, "full_bytes": self.full_bytes,
            "dense_parameters": self.dense_parameters, "compression_ratio": self.compression_ratio,
            "embedding_state_bytes": self.embedding_state_bytes, "dense_state_bytes": self.dense_state_bytes,
            "embedding_index_bytes": self.embedding_index_bytes,
        }


def optimizer_state_bytes(optimizers: Sequence[Optimizer], params: Sequence[Tensor]) -> int:
    """Bytes of every tensor the ``optimizers`` hold in their state for ``params`` (exact: what is allocated)."""
    wanted = {id(p) for p in params}
    return sum(v.numel() * v.element_size() for opt in optimizers for p, state in opt.state.items()
               if id(p) in wanted for v in state.values() if isinstance(v, Tensor))


def memory_report(model: nn.Module, optimizers: Sequence[Optimizer] | None = None) -> MemoryReport:
    """The model's sizes, and with ``optimizers`` the bytes of their state (see ``MemoryReport``)."""
    tables = model.embeddings
    params = list(tables.parameters())
    itemsize = params[0].element_size()
    table_ids = {id(p) for p in params}
    emb = sum(p.numel() for p in params)
    states = {}
    if optimizers is not None:
        others = [p for p in model.parameters() if id(p) not in table_ids]
        states = dict(embedding_state_bytes=optimizer_state_bytes(optimizers, params),
                      dense_state_bytes=optimizer_state_bytes(optimizers, others))
    index = index_bytes(tables)
    return MemoryReport(
        embedding_parameters=emb,
        embedding_bytes=sum(p.numel() * p.element_size() for p in params) + index,
        embedding_index_bytes=index,
        full_parameters=tables.full_table_parameters,
        full_bytes=tables.full_table_parameters * itemsize,
        dense_parameters=sum(p.numel() for p in model.parameters() if id(p) not in table_ids),
        **states,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]], split: str = "test") -> str:
    """A plain-text comparison table of run summaries (``RunResult.to_dict()``), metrics of ``split``.

    When a run with full tables is among the rows, a ``loss gap`` column gives every run's loss
    relative to it (the paper's measure: +0.7% means 0.7% higher loss than full tables).
    """
    full = next((r["evals"].get(split, {}).get("loss") for r in rows if r["label"] == "full"), None)
    header = ["model", "embedding", "emb params", "emb MiB", "emb state MiB", "vs full", f"{split} loss", "loss gap",
              "acc", "AUC", "bayes loss", "samples/s"]
    lines = [header]
    for r in rows:
        mem, ev = r["memory"], r["evals"].get(split, {})
        loss = ev.get("loss")
        gap = None if full is None or loss is None else 100 * (loss / full - 1)
        state = mem.get("embedding_state_bytes")
        lines.append([
            r["arch"], r["label"], f"{mem['embedding_parameters']:,}", f"{mem['embedding_bytes'] / 2**20:.2f}",
            _fmt(None if state is None else state / 2**20, ".2f"), f"{mem['compression_ratio']:.2f}x", _fmt(loss, ".5f"), _fmt(gap, "+.2f") + ("%" if gap is not None else ""),
            _fmt(ev.get("accuracy"), ".4f"), _fmt(ev.get("auc"), ".4f"), _fmt(ev.get("bayes_loss"), ".5f"),
            _fmt(r.get("samples_per_s"), ",.0f"),
        ])
    return _render(lines, drop=header.index("loss gap") if full is None else None)


def _render(lines: list[list[str]], drop: int | None = None) -> str:
    """Aligned columns (the first two left, the rest right) under a rule; ``drop`` leaves one column out."""
    if drop is not None:
        lines = [line[:drop] + line[drop + 1:] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _mean_std(values: Sequence[float], digits: int = 5) -> str:
    """``mean ± std`` over seeds; one seed has no std."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _t_text(diffs: Sequence[float]) -> str:
    """The paired t statistic of per-seed differences, or why there is none (one seed, or no spread)."""
    if len(diffs) < 2:
        return "no t: one seed"
    sd = statistics.stdev(diffs)
    return f"t={statistics.fmean(diffs) / (sd / math.sqrt(len(diffs))):+.1f}" if sd > 0 else "no t: no spread"


def format_seed_table(runs: Mapping[str, Sequence[dict[str, Any]]], baseline: str | None = None,
                      split: str = "test") -> str:
    """A comparison over seeds: per label (its run summaries, one per seed, in the same seed order)
    the mean ± std of the loss and AUC, the gap to full tables, and the paired difference to
    ``baseline`` per seed (mean, t statistic and how many seeds had the lower loss)."""
    def losses(label: str) -> list[float]:
        return [r["evals"][split]["loss"] for r in runs[label]]

    full = statistics.fmean(losses("full")) if "full" in runs else None
    header = ["model", "embedding", "emb params", "emb MiB", "vs full", f"{split} loss (mean ± std)", "loss gap",
              "AUC (mean ± std)", f"- {baseline} (paired)" if baseline else "", "samples/s"]
    lines = [header]
    for label, rs in runs.items():
        mem, loss = rs[0]["memory"], losses(label)
        gap = "-" if full is None else f"{100 * (statistics.fmean(loss) / full - 1):+.2f}%"
        aucs = [r["evals"][split]["auc"] for r in rs]
        vs = ""
        if baseline and label != baseline and baseline in runs:
            diffs = [a - b for a, b in zip(loss, losses(baseline))]
            vs = f"{statistics.fmean(diffs):+.5f} ({_t_text(diffs)}, {sum(d < 0 for d in diffs)}/{len(diffs)} lower)"
        rates = [r["samples_per_s"] for r in rs if r.get("samples_per_s")]
        lines.append([rs[0]["arch"], label, f"{mem['embedding_parameters']:,}", f"{mem['embedding_bytes'] / 2**20:.2f}",
                      f"{mem['compression_ratio']:.2f}x", _mean_std(loss), gap,
                      _mean_std(aucs, 4), vs,
                      f"{statistics.fmean(rates):,.0f}" if rates else "-"])
    return _render(lines, drop=None if baseline else 8)
