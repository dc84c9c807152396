"""What a run cost and gave: memory per scheme, metrics, throughput, as records and as a text table."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["MemoryReport", "memory_report", "format_table"]


@dataclass(frozen=True)
class MemoryReport:
    """Parameters and bytes of a model's embedding tables against full tables, and of the rest."""

    embedding_parameters: int
    embedding_bytes: int
    full_parameters: int
    full_bytes: int
    dense_parameters: int

    @property
    def compression_ratio(self) -> float:
        return self.full_parameters / self.embedding_parameters

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedding_parameters": self.embedding_parameters, "embedding_bytes": self.embedding_bytes,
            "full_parameters": self.full_parameters, "full_bytes": self.full_bytes,
            "dense_parameters": self.dense_parameters, "compression_ratio": self.compression_ratio,
        }


def memory_report(model: nn.Module) -> MemoryReport:
    tables = model.embeddings
    params = list(tables.parameters())
    itemsize = params[0].element_size()
    table_ids = {id(p) for p in params}
    emb = sum(p.numel() for p in params)
    return MemoryReport(
        embedding_parameters=emb,
        embedding_bytes=sum(p.numel() * p.element_size() for p in params),
        full_parameters=tables.full_table_parameters,
        full_bytes=tables.full_table_parameters * itemsize,
        dense_parameters=sum(p.numel() for p in model.parameters() if id(p) not in table_ids),
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]], split: str = "test") -> str:
    """A plain-text comparison table of run summaries (``RunResult.to_dict()``), metrics of ``split``.

    When a run with full tables is among the rows, a ``loss gap`` column gives every run's loss
    relative to it (the paper's measure: +0.7% means 0.7% higher loss than full tables).
    """
    full = next((r["evals"].get(split, {}).get("loss") for r in rows if r["label"] == "full"), None)
    header = ["model", "embedding", "emb params", "emb MiB", "vs full", f"{split} loss", "loss gap", "acc", "AUC",
              "bayes loss", "samples/s"]
    lines = [header]
    for r in rows:
        mem, ev = r["memory"], r["evals"].get(split, {})
        loss = ev.get("loss")
        gap = None if full is None or loss is None else 100 * (loss / full - 1)
        lines.append([
            r["arch"], r["label"], f"{mem['embedding_parameters']:,}", f"{mem['embedding_bytes'] / 2**20:.2f}",
            f"{mem['compression_ratio']:.2f}x", _fmt(loss, ".5f"), _fmt(gap, "+.2f") + ("%" if gap is not None else ""),
            _fmt(ev.get("accuracy"), ".4f"), _fmt(ev.get("auc"), ".4f"), _fmt(ev.get("bayes_loss"), ".5f"),
            _fmt(r.get("samples_per_s"), ",.0f"),
        ])
    if full is None:
        for line in lines:
            del line[6]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
