"""Plots and a Markdown report of a sweep, judged against the paper's claims."""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["Summary", "summarize", "make_plots", "judge_claims", "write_report"]


@dataclass
class Summary:
    """One configuration (arch, scheme, threshold) over seeds, with its better-validated optimizer."""

    arch: str
    label: str
    scheme: str
    operation: str
    num_collisions: int
    path_hidden: int
    threshold: int
    optimizer: str
    seeds: int
    parameters: float
    embedding_parameters: float
    loss: float
    loss_std: float
    accuracy: float
    accuracy_std: float
    auc: float
    bayes_loss: float | None


def summarize(rows: Iterable[dict[str, Any]]) -> list[Summary]:
    """Mean and spread over seeds; per configuration the optimizer with the lower mean val loss."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["arch"], r["label"], r["threshold"], r["optimizer"])].append(r)
    best: dict[tuple, tuple[float, list[dict]]] = {}
    for (arch, label, threshold, _), runs in groups.items():
        val = statistics.fmean(r["val_loss"] for r in runs)
        key = (arch, label, threshold)
        if key not in best or val < best[key][0]:
            best[key] = (val, runs)
    out = []
    for (arch, label, threshold), (_, runs) in sorted(best.items()):
        r0 = runs[0]
        bayes = [r["bayes_loss"] for r in runs if r.get("bayes_loss") is not None]
        out.append(Summary(
            arch=arch, label=label, scheme=r0["scheme"], operation=r0["operation"], num_collisions=r0["num_collisions"],
            path_hidden=r0["path_hidden"], threshold=threshold, optimizer=r0["optimizer"], seeds=len(runs),
            parameters=statistics.fmean(r["parameters"] for r in runs),
            embedding_parameters=statistics.fmean(r["embedding_parameters"] for r in runs),
            loss=statistics.fmean(r["test_loss"] for r in runs), loss_std=_std(r["test_loss"] for r in runs),
            accuracy=statistics.fmean(r["test_accuracy"] for r in runs),
            accuracy_std=_std(r["test_accuracy"] for r in runs),
            auc=statistics.fmean(r["test_auc"] for r in runs),
            bayes_loss=statistics.fmean(bayes) if bayes else None,
        ))
    return out


def _std(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _family(s: Summary) -> str:
    if s.scheme == "qr":
        return f"qr-{s.operation}"
    return s.scheme


def make_plots(summaries: list[Summary], out_dir: Path, threshold: int, path_collisions: int = 4) -> list[Path]:
    """Per arch: test loss and accuracy vs embedding parameters (one line per scheme, bars = seed std),
    and loss vs parameters across compression thresholds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for arch in sorted({s.arch for s in summaries}):
        mine = [s for s in summaries if s.arch == arch]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        at_t = [s for s in mine if s.threshold == threshold or s.scheme == "full"]
        families = sorted({_family(s) for s in at_t})
        for family in families:
            points = sorted((s for s in at_t if _family(s) == family), key=lambda s: s.embedding_parameters)
            marker = "o-" if family in ("hashing", "qr-mult", "qr-add", "qr-concat") else "s"
            for ax, value, spread in ((axes[0], "loss", "loss_std"), (axes[1], "accuracy", "accuracy_std")):
                ax.errorbar([p.embedding_parameters for p in points], [getattr(p, value) for p in points],
                            yerr=[getattr(p, spread) for p in points], fmt=marker, capsize=3, label=family)
        bayes = [s.bayes_loss for s in mine if s.bayes_loss is not None]
        if bayes:
            axes[0].axhline(statistics.fmean(bayes), color="grey", ls=":", label="Bayes-optimal")
        for ax, name in zip(axes, ("test loss (BCE)", "test accuracy")):
            ax.set_xscale("log")
            ax.set_xlabel("embedding parameters")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{arch.upper()}: test metrics vs parameters (threshold {threshold}; mean ± std over seeds)")
        fig.tight_layout()
        path = out_dir / f"{arch}_loss_accuracy_vs_params.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

        study = [s for s in mine if s.scheme == "qr" and s.num_collisions == path_collisions]
        if len({s.threshold for s in study}) > 1:
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            for op in sorted({s.operation for s in study}):
                points = sorted((s for s in study if s.operation == op), key=lambda s: s.embedding_parameters)
                ax.errorbar([p.embedding_parameters for p in points], [p.loss for p in points],
                            yerr=[p.loss_std for p in points], fmt="o-", capsize=3, label=f"qr-{op}")
                for p in points:
                    ax.annotate(f"T={p.threshold}", (p.embedding_parameters, p.loss), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("embedding parameters")
            ax.set_ylabel("test loss (BCE)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title(f"{arch.upper()}: compression thresholds ({path_collisions} collisions)")
            fig.tight_layout()
            path = out_dir / f"{arch}_thresholds.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


@dataclass
class Claim:
    claim: str
    held: bool | None  # None: the grid did not contain what the claim needs
    evidence: str


def judge_claims(summaries: list[Summary], threshold: int, path_collisions: int = 4) -> list[Claim]:
    """The paper's claims, each judged on this sweep's numbers."""
    def find(arch: str, label: str, t: int = threshold) -> Summary | None:
        return next((s for s in summaries if s.arch == arch and s.label == label and s.threshold == t), None)

    claims: list[Claim] = []
    for arch in sorted({s.arch for s in summaries}):
        at_t = [s for s in summaries if s.arch == arch and s.threshold == threshold]
        collisions = sorted({s.num_collisions for s in at_t if s.scheme in ("hashing", "qr")})

        wins, lines = 0, []
        for c in collisions:
            h, q = find(arch, f"hashing/{c}"), find(arch, f"qr-mult/{c}")
            if h and q:
                wins += q.loss < h.loss
                lines.append(f"c={c}: qr-mult {q.loss:.5f} vs hashing {h.loss:.5f} ({_pct(q.loss, h.loss)})")
        claims.append(Claim(f"{arch.upper()}: at the same collisions (about the same parameters) QR-mult has a lower test loss than hashing",
                            None if not lines else wins == len(lines), f"{wins}/{len(lines)}: " + "; ".join(lines)))

        wins, lines = 0, []
        for c in collisions:
            ops = {op: s for op in ("mult", "add", "concat") if (s := find(arch, f"qr-{op}/{c}"))}
            if "mult" in ops and len(ops) > 1:
                best = min(ops, key=lambda op: ops[op].loss)
                wins += best == "mult"
                lines.append(f"c={c}: " + ", ".join(f"{op} {s.loss:.5f}" for op, s in ops.items()))
        claims.append(Claim(f"{arch.upper()}: element-wise multiplication is the best operation",
                            None if not lines else wins == len(lines), f"mult best at {wins}/{len(lines)}: " + "; ".join(lines)))

        full, q4 = find(arch, "full"), find(arch, "qr-mult/4")
        paper_gap = {"dcn": 0.3, "dlrm": 0.7}.get(arch, 0.7)
        if full and q4:
            gap = 100 * (q4.loss - full.loss) / full.loss
            claims.append(Claim(f"{arch.upper()}: QR-mult at 4 collisions is within {paper_gap}% of the full-table test loss",
                                gap <= paper_gap, f"full {full.loss:.5f} ± {full.loss_std:.5f}, qr-mult/4 {q4.loss:.5f} ± "
                                f"{q4.loss_std:.5f}: gap {gap:+.2f}%"))
        q60, h4 = find(arch, "qr-mult/60"), find(arch, "hashing/4")
        if q60 and h4:
            diff = 100 * (q60.loss - h4.loss) / h4.loss
            claims.append(Claim(f"{arch.upper()}: QR-mult at 60 collisions roughly matches hashing at 4 (within 0.5% or better)",
                                diff <= 0.5, f"qr-mult/60 {q60.loss:.5f} ({q60.embedding_parameters:,.0f} params) vs hashing/4 "
                                f"{h4.loss:.5f} ({h4.embedding_parameters:,.0f} params): {diff:+.2f}%"))
        paths = [s for s in at_t if s.scheme == "path"]
        q = find(arch, f"qr-mult/{path_collisions}")
        if paths and q:
            best = min(paths, key=lambda s: s.loss)
            claims.append(Claim(f"{arch.upper()}: path-based composition is close to (within 1%) but not better than QR-mult",
                                q.loss <= best.loss <= q.loss * 1.01,
                                ", ".join(f"{s.label} {s.loss:.5f}" for s in paths) + f"; qr-mult/{path_collisions} {q.loss:.5f}"))
        thresholds = sorted({s.threshold for s in summaries if s.arch == arch})
        if len(thresholds) > 1:
            expected = "mult" if arch == "dcn" else "concat"
            wins, lines = 0, []
            for t in thresholds:
                ops = {op: s for op in ("mult", "add", "concat") if (s := find(arch, f"qr-{op}/{path_collisions}", t))}
                if expected in ops and len(ops) > 1:
                    best = min(ops, key=lambda op: ops[op].loss)
                    wins += best == expected
                    lines.append(f"T={t}: best {best} (" + ", ".join(f"{op} {s.loss:.5f}" for op, s in ops.items()) + ")")
            if lines:
                claims.append(Claim(f"{arch.upper()}: with thresholding, {expected} is the best operation",
                                    wins == len(lines), f"{wins}/{len(lines)}: " + "; ".join(lines)))
    return claims


def _pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / b:+.2f}%"


def write_report(summaries: list[Summary], claims: list[Claim], plots: list[Path], path: Path,
                 title: str, preamble: str = "") -> Path:
    """A Markdown report: the claims with their verdicts, the plots and the full summary table."""
    verdict = {True: "held", False: "did not hold", None: "not tested"}
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    lines += ["## The paper's claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | **{verdict[c.held]}** | {c.evidence} |" for c in claims]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## All configurations (mean ± std over seeds; optimizer chosen on validation loss)", "",
              "| arch | scheme | threshold | optimizer | seeds | embedding params | test loss | test accuracy | AUC | Bayes loss |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        bayes = f"{s.bayes_loss:.5f}" if s.bayes_loss is not None else "-"
        lines.append(f"| {s.arch} | {s.label} | {s.threshold} | {s.optimizer} | {s.seeds} | {s.embedding_parameters:,.0f} | "
                     f"{s.loss:.5f} ± {s.loss_std:.5f} | {s.accuracy:.4f} ± {s.accuracy_std:.4f} | {s.auc:.4f} | {bayes} |")
    path.write_text("\n".join(lines) + "\n")
    return path
