"""The loss-vs-bytes study's report: every method at every budget, against compembed's best configuration.

Rows are those of each method's tuned recipe (``sweep.tuning``). "Compembed's configurations" are the
paper's family and the planners (``presets.COMPEMBED_METHODS``); at each budget its best configuration is
the one with the lowest mean test loss. The target: at every budget, that best configuration is at
least as good as every single method within the seed std, i.e. its mean test loss exceeds no other
method's by more than the larger of the two seed stds.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_replace  # noqa: E402
from .budget_report import Point, _describe, _find, budget_points, paired  # noqa: E402
from .presets import COMPEMBED_METHODS, FIELD_METHODS  # noqa: E402
from .tuning import choose_lrs  # noqa: E402

__all__ = ["Verdict", "recipe_rows", "best_compembed", "verdicts", "parity", "plot_methods", "write_methods_report",
           "NAMES"]

ORDER = ("full", *COMPEMBED_METHODS, *FIELD_METHODS)
NAMES = {"full": "full tables", "planner": "planner (hybrid)", "planner-robe": "planner (hot rows + ROBE)", "hashing": "hashing trick", "qr": "QR-mult",
         "gqr": "mixed radix k=3", "robe": "ROBE-Z", "dhe": "DHE", "tt": "TT-Rec", "md": "mixed dimensions",
         "cce": "CCE"}


@dataclass(frozen=True)
class Verdict:
    """The target at one budget: ``held`` and the methods that beat compembed's best beyond the seed std."""

    arch: str
    target: float
    best: Point | None  # compembed's best configuration at this budget (None: none reaches it)
    failures: tuple[tuple[Point, float], ...]  # (method, best.loss - method.loss) beyond the seed std

    @property
    def held(self) -> bool:
        return self.best is not None and not self.failures


def recipe_rows(rows: Iterable[dict[str, Any]], candidates: Sequence[float]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The budget-study rows of each method's chosen recipe, and the choice (method -> table lr)."""
    rows = list(rows)
    tuned = choose_lrs(rows, candidates)
    kept = [r for r in rows if r.get("study") == "budget" and r["method"] in tuned
            and float(r["table_lr"]) == tuned[r["method"]]]
    return kept, tuned


def best_compembed(points: Sequence[Point], arch: str, target: float) -> Point | None:
    mine = [p for p in points if p.arch == arch and p.target == target and p.method in COMPEMBED_METHODS]
    return min(mine, key=lambda p: (p.loss, ORDER.index(p.method))) if mine else None


def verdicts(points: Sequence[Point], arch: str) -> list[Verdict]:
    """The target at every budget of ``arch`` (full tables at 1x are the reference, not a budget)."""
    out = []
    for target in sorted({p.target for p in points if p.arch == arch and p.method != "full"}):
        best = best_compembed(points, arch, target)
        others = [p for p in points if p.arch == arch and p.target == target and p.method not in COMPEMBED_METHODS
                  and p.method != "full"]
        failures = []
        if best is not None:
            for p in others:
                gap = best.loss - p.loss
                if gap > max(best.loss_std, p.loss_std):
                    failures.append((p, gap))
        out.append(Verdict(arch, target, best, tuple(failures)))
    return out


def parity(points: Sequence[Point], arch: str) -> dict[str, tuple[float | None, Point | None]]:
    """Each method's largest compression at full tables' quality, and its best point overall.

    "At full tables' quality": its mean test loss exceeds full tables' by no more than the larger of
    the two seed stds (the verdict's rule). Returns method -> (that compression or None, the point of
    lowest mean loss); the measured counterpart of a paper's "Nx at no loss".
    """
    full = _find(points, arch, "full", 1.0)
    out: dict[str, tuple[float | None, Point | None]] = {}
    for method in ORDER[1:]:
        mine = [p for p in points if p.arch == arch and p.method == method]
        if not mine:
            continue
        ok = [p.target for p in mine if full is not None and p.loss - full.loss <= max(p.loss_std, full.loss_std)]
        out[method] = (max(ok) if ok else None, min(mine, key=lambda p: p.loss))
    return out


def _parity_lines(points: Sequence[Point], arch: str) -> list[str]:
    full = _find(points, arch, "full", 1.0)
    if full is None:
        return []
    lines = [f"Full tables: {full.loss:.5f} ± {full.loss_std:.5f}. A method is at full tables' quality at a budget when "
             "its mean test loss exceeds theirs by at most the larger seed std.", "",
             "| method | largest compression at full tables' quality | its test loss | minus full tables | budgets measured |",
             "|---|---|---|---|---|"]
    for method, (ratio, _) in parity(points, arch).items():
        mine = sorted(p.target for p in points if p.arch == arch and p.method == method)
        at = _find(points, arch, method, ratio) if ratio is not None else None
        lines.append(f"| {NAMES.get(method, method)} | {f'{ratio:g}x' if ratio is not None else 'none measured'} | "
                     f"{f'{at.loss:.5f} ± {at.loss_std:.5f} | {at.loss - full.loss:+.5f}' if at is not None else ' | '} | "
                     f"{', '.join(f'{t:g}x' for t in mine)} |")
    return lines


def _save_png(fig, path: Path) -> Path:
    atomic_replace(lambda tmp: fig.savefig(tmp, dpi=110, format="png"), path)
    plt.close(fig)
    return path


def plot_methods(points: Sequence[Point], arch: str, path: Path, title: str) -> Path:
    """Test loss (mean ± std over seeds) against embedding bytes (log x), one line per method; written atomically."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in ORDER[1:]:
        mine = sorted((p for p in points if p.arch == arch and p.method == method), key=lambda p: p.bytes)
        if mine:
            ax.errorbar([p.bytes for p in mine], [p.loss for p in mine], yerr=[p.loss_std for p in mine], capsize=3,
                        marker="o" if method in COMPEMBED_METHODS else "s",
                        linestyle="-" if method in COMPEMBED_METHODS else "--", label=NAMES.get(method, method))
    full = _find(points, arch, "full", 1.0)
    if full is not None:
        ax.errorbar([full.bytes], [full.loss], yerr=[full.loss_std], color="black", marker="*", markersize=10,
                    capsize=3, linestyle="none", label=f"full tables ({full.bytes / 2**20:.2f} MiB)")
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (fp32 parameters; tables plus optimizer state matched at each budget)")
    ax.set_ylabel("test loss (BCE), mean ± std over seeds")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _save_png(fig, path)


def _verdict_lines(points: Sequence[Point], arch: str) -> list[str]:
    lines = ["| budget | compembed's best | test loss | verdict | methods better beyond the seed std |", "|---|---|---|---|---|"]
    failed = []
    for v in verdicts(points, arch):
        if v.best is None:
            lines.append(f"| {v.target:g}x | none reaches it | | **fails** (no compembed configuration fits) | |")
            failed.append(f"{v.target:g}x (no compembed configuration fits; "
                          + ", ".join(f"{NAMES.get(p.method, p.method)} {p.loss:.5f} ± {p.loss_std:.5f}"
                                      for p in points if p.arch == arch and p.target == v.target) + ")")
            continue
        beaten = "; ".join(f"{NAMES.get(p.method, p.method)} {p.loss:.5f} ± {p.loss_std:.5f} (gap {gap:+.5f}; paired "
                           f"{_describe(paired(points, arch, v.best.method, p.method, v.target))})" for p, gap in v.failures)
        lines.append(f"| {v.target:g}x | {NAMES.get(v.best.method, v.best.method)} | {v.best.loss:.5f} ± "
                     f"{v.best.loss_std:.5f} | {'held' if v.held else '**fails**'} | {beaten} |")
        if not v.held:
            failed.append(f"{v.target:g}x ({NAMES.get(v.best.method, v.best.method)} {v.best.loss:.5f} ± "
                          f"{v.best.loss_std:.5f} vs {beaten})")
    closing = ("Budgets where the target fails: " + "; ".join(failed) + ".") if failed else \
        "The target held at every budget measured."
    return lines + ["", closing]


def write_methods_report(rows: Sequence[dict[str, Any]], candidates: Sequence[float], missing: Sequence[tuple[str, float, str]],
                         out: Path, title: str, preamble: str, dataset: str) -> Path:
    """``report.md`` with the tuning choice, the verdict, tables, unreachable budgets and one chart per arch."""
    kept, tuned = recipe_rows(rows, candidates)
    points = budget_points(kept)
    lines = [f"# {title}", "", preamble.strip(), "", "## Tuning (the same budget for every method)", "",
             f"Each method was trained once with each table learning rate of {list(candidates)} (dense lr fixed), on "
             "the first seed, DLRM, at its fitting budget nearest 16x (full tables at 1x); the lowest validation loss "
             "chose its recipe, used for every budget, seed and model. Tuning cost per method: "
             f"{len(candidates)} runs.", "", "| method | tuned at | validation loss per table lr | chosen table lr |",
             "|---|---|---|---|"]
    tune = [r for r in rows if r.get("role") == "tune"]
    for method in sorted({r["method"] for r in tune}, key=lambda m: ORDER.index(m) if m in ORDER else 99):
        mine = sorted((r for r in tune if r["method"] == method), key=lambda r: float(r["table_lr"]))
        losses = ", ".join(f"{float(r['table_lr']):g}: {float(r['val_loss']):.5f}" for r in mine)
        lines.append(f"| {NAMES.get(method, method)} | {float(mine[0]['target_compression']):g}x | {losses} | "
                     f"{tuned[method]:g} |" if method in tuned else f"| {NAMES.get(method, method)} | | {losses} | "
                     "(tuning unfinished) |")
    plots = []
    for arch in sorted({p.arch for p in points}):
        plots.append(plot_methods(points, arch, out / f"loss_vs_bytes_{arch}.png",
                                  f"{dataset}, {arch.upper()}: test loss vs embedding bytes"))
        lines += ["", f"## {arch.upper()}: the target", "",
                  "At every budget, compembed's best configuration (the best of hashing, QR-mult, mixed radix and the "
                  "two planners: hot rows plus compositions, or plus ROBE arrays) is at least as good as every single method within the seed std (its mean exceeds "
                  "no method's by more than the larger seed std).", ""]
        lines += _verdict_lines(points, arch)
        lines += ["", f"## {arch.upper()}: test loss per budget", "",
                  "| budget | method | seeds | bytes | test loss | AUC | minus compembed's best, per seed (paired) |",
                  "|---|---|---|---|---|---|---|"]
        for p in (q for q in points if q.arch == arch):
            best = best_compembed(points, arch, p.target)
            vs = "" if best is None or best.method == p.method or p.method == "full" else \
                _describe(paired(points, arch, p.method, best.method, p.target))
            lines.append(f"| {p.target:g}x | {NAMES.get(p.method, p.method)} | {p.seeds} | {p.bytes:,.0f} | "
                         f"{p.loss:.5f} ± {p.loss_std:.5f} | {p.auc:.4f} ± {p.auc_std:.4f} | {vs} |")
        by_target: dict[float, list[Point]] = {}
        for p in points:
            if p.arch == arch and p.method != "full":
                by_target.setdefault(p.target, []).append(p)
        lines += ["", "Best method per budget (lowest mean test loss): " + "; ".join(
            f"{t:g}x {NAMES.get(min(ps, key=lambda q: q.loss).method)}" for t, ps in sorted(by_target.items()))]
        lines += ["", f"## {arch.upper()}: compression at full tables' quality", ""] + _parity_lines(points, arch)
    if missing:
        lines += ["", "## Budgets a method does not reach", ""]
        lines += [f"- {NAMES.get(m, m)} at {r:g}x: {why}" for m, r, why in missing]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    atomic_replace(lambda tmp: tmp.write_text("\n".join(lines) + "\n"), path)
    return path
