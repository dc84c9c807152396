"""The budget study's report: test loss against embedding bytes, every method at matched bytes.

Every number is over seeds: mean ± sample std, and for comparisons the paired difference per seed
(same seed = same data order and initial dense layers) with its t statistic ``mean / (std / sqrt(n))``.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["Point", "Paired", "budget_points", "paired", "budget_targets", "plot_budget", "write_budget_report"]

METHOD_ORDER = ("full", "planner", "qr", "gqr", "hashing")
METHOD_NAMES = {"full": "full tables", "planner": "planner (hybrid)", "qr": "QR-mult (uniform c)",
                "gqr": "mixed radix k=3", "hashing": "hashing trick"}


@dataclass(frozen=True)
class Point:
    """One method at one target compression, over seeds."""

    arch: str
    method: str
    target: float
    seeds: int
    bytes: float  # embedding parameter bytes (optimizer state not included)
    compression: float
    loss: float
    loss_std: float
    auc: float
    auc_std: float
    by_seed: dict[int, float]


@dataclass(frozen=True)
class Paired:
    """``a - b`` in test loss, per seed, at one target."""

    a: str
    b: str
    target: float
    diffs: dict[int, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs.values())

    @property
    def t(self) -> float:
        values = list(self.diffs.values())
        if len(values) < 2:
            return float("nan")
        sd = statistics.stdev(values)
        return self.mean / (sd / math.sqrt(len(values))) if sd > 0 else math.copysign(math.inf, self.mean)

    @property
    def wins(self) -> int:
        """Seeds where ``a`` had the lower loss."""
        return sum(d < 0 for d in self.diffs.values())


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def budget_points(rows: Iterable[dict[str, Any]]) -> list[Point]:
    """Mean and spread over seeds of every (arch, method, target) of the budget study."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("study") == "budget":
            groups[(r["arch"], r["method"], float(r["target_compression"]))].append(r)
    out = []
    for (arch, method, target), runs in groups.items():
        losses = [r["test_loss"] for r in runs]
        aucs = [r["test_auc"] for r in runs]
        out.append(Point(arch, method, target, len(runs), statistics.fmean(r["bytes"] for r in runs),
                         statistics.fmean(r["compression_ratio"] for r in runs), statistics.fmean(losses), _std(losses),
                         statistics.fmean(aucs), _std(aucs), {int(r["seed"]): r["test_loss"] for r in runs}))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(out, key=lambda p: (p.arch, p.target, order.get(p.method, 99)))


def _find(points: Sequence[Point], arch: str, method: str, target: float) -> Point | None:
    return next((p for p in points if p.arch == arch and p.method == method and p.target == target), None)


def paired(points: Sequence[Point], arch: str, a: str, b: str, target: float, b_target: float | None = None) -> Paired | None:
    """Per-seed ``a - b`` at ``target`` (``b`` at ``b_target`` if given, e.g. full tables at 1x)."""
    pa, pb = _find(points, arch, a, target), _find(points, arch, b, target if b_target is None else b_target)
    if pa is None or pb is None:
        return None
    seeds = sorted(set(pa.by_seed) & set(pb.by_seed))
    return Paired(a, b, target, {s: pa.by_seed[s] - pb.by_seed[s] for s in seeds}) if seeds else None


def _describe(p: Paired | None) -> str:
    if p is None:
        return "not measured"
    per_seed = ", ".join(f"{d:+.5f}" for _, d in sorted(p.diffs.items()))
    return f"{p.mean:+.5f} (t = {p.t:+.2f}; {p.wins}/{len(p.diffs)} seeds lower; per seed {per_seed})"


def budget_targets(points: Sequence[Point], arch: str, collisions: Sequence[float], real: bool) -> list[tuple[str, bool | None, str]]:
    """The issue's targets: (target, held, evidence)."""
    out = []
    full = _find(points, arch, "full", 1.0)
    if not real:
        for c in collisions:
            p = paired(points, arch, "qr", "hashing", c)
            held = None if p is None else (p.t < -2 and p.mean < 0)
            out.append((f"QR-mult below hashing at {c:g}x matched bytes, paired t < -2", held, _describe(p)))
        for target, limit in ((16.0, 0.3), (100.0, 1.0)):
            point = _find(points, arch, "planner", target)
            if point is None or full is None:
                out.append((f"planner within {limit}% of full tables at {target:g}x", None, "not measured"))
                continue
            gap = 100 * (point.loss / full.loss - 1)
            out.append((f"planner within {limit}% of full tables at {target:g}x", gap <= limit,
                        f"planner {point.loss:.5f} ± {point.loss_std:.5f} vs full {full.loss:.5f} ± {full.loss_std:.5f}: "
                        f"{gap:+.2f}%; paired " + _describe(paired(points, arch, "planner", "full", target, 1.0))))
        for other in ("qr", "hashing"):
            planner, base = _find(points, arch, "planner", 1000.0), _find(points, arch, other, 1000.0)
            if planner is None or base is None:
                out.append((f"planner at 1000x at least 2% below {other}", None,
                            "not measured" if planner is None else f"{other} cannot reach 1000x"))
                continue
            gap = 100 * (planner.loss / base.loss - 1)
            out.append((f"planner at 1000x at least 2% below {other}", gap <= -2.0,
                        f"{gap:+.2f}%; paired " + _describe(paired(points, arch, "planner", other, 1000.0))))
    targets = sorted({p.target for p in points if p.method == "planner"})
    for target in targets:
        planner, hashing = _find(points, arch, "planner", target), _find(points, arch, "hashing", target)
        if hashing is None:
            continue
        worse = planner.loss - hashing.loss
        std = max(planner.loss_std, hashing.loss_std)
        out.append((f"planner not worse than hashing beyond the seed std at {target:g}x", worse <= std,
                    f"planner {planner.loss:.5f} ± {planner.loss_std:.5f}, hashing {hashing.loss:.5f} ± "
                    f"{hashing.loss_std:.5f}; paired " + _describe(paired(points, arch, "planner", "hashing", target))))
    return out


def plot_budget(points: Sequence[Point], arch: str, path: Path, title: str) -> Path:
    """Test loss (mean ± std over seeds) against embedding bytes, one line per method."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    full = _find(points, arch, "full", 1.0)
    for method in METHOD_ORDER[1:]:
        mine = sorted((p for p in points if p.arch == arch and p.method == method), key=lambda p: p.bytes)
        if mine:
            ax.errorbar([p.bytes for p in mine], [p.loss for p in mine], yerr=[p.loss_std for p in mine],
                        marker="o", capsize=3, label=METHOD_NAMES[method])
    if full is not None:
        ax.axhline(full.loss, color="black", linestyle="--", linewidth=1, label=f"full tables ({full.bytes / 2**20:.1f} MiB)")
        ax.axhspan(full.loss - full.loss_std, full.loss + full.loss_std, color="black", alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (fp32 tables; matched across methods at each budget)")
    ax.set_ylabel("test loss (BCE), mean ± std over seeds")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_budget_report(points: Sequence[Point], missing: Sequence[tuple[str, float, str]], path: Path, title: str,
                        preamble: str, collisions: Sequence[float], real: bool, plots: Sequence[Path]) -> Path:
    """Markdown: targets with verdicts, the plot, the loss-vs-bytes table and the paired differences."""
    verdict = {True: "held", False: "**did not hold**", None: "not measured"}
    lines = [f"# {title}", "", preamble.strip(), ""]
    for arch in sorted({p.arch for p in points}):
        lines += [f"## {arch.upper()}: targets", "", "| target | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {t} | {verdict[h]} | {e} |" for t, h, e in budget_targets(points, arch, collisions, real)]
        lines += ["", f"## {arch.upper()}: test loss at matched bytes", "",
                  "| target | method | seeds | bytes | compression | test loss | AUC | vs hashing (paired) |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in (q for q in points if q.arch == arch):
            vs = "" if p.method in ("hashing", "full") else _describe(paired(points, arch, p.method, "hashing", p.target))
            lines.append(f"| {p.target:g}x | {METHOD_NAMES.get(p.method, p.method)} | {p.seeds} | {p.bytes:,.0f} | "
                         f"{p.compression:.1f}x | {p.loss:.5f} ± {p.loss_std:.5f} | {p.auc:.4f} ± {p.auc_std:.4f} | {vs} |")
        best = defaultdict(list)
        for p in points:
            if p.arch == arch and p.method != "full":
                best[p.target].append(p)
        lines += ["", "Best method per budget (lowest mean test loss): " + "; ".join(
            f"{t:g}x {METHOD_NAMES[min(ps, key=lambda q: q.loss).method]}" for t, ps in sorted(best.items())), ""]
    if missing:
        lines += ["## Budgets a method cannot reach", ""]
        lines += [f"- {METHOD_NAMES.get(m, m)} at {r:g}x: {why}" for m, r, why in missing]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(lines) + "\n")
    return path
