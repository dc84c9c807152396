"""`compembed sweep`: the paper's experiment as one resumable command."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

from ..sweep import PRESETS, STUDIES, judge_claims, make_plots, preset, run_sweep, summarize, train_cell, write_report
from ..sweep.results import write_table
from ..sweep.runner import CHECKPOINT_EVERY, WorkerDiedError
from .errors import CommandError


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 4,16,64, got {text!r}") from None


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N like 1/4, got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise argparse.ArgumentTypeError(f"part {text!r}: need 1 <= I <= N")
    return i, n


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run the paper's grid (hashing vs compositional embeddings): results table, plots, report",
        description="Trains every cell of a grid (models x schemes x collisions x thresholds x optimizers x "
        "seeds), one after another. Finished cells are stored in OUT/cells and never rerun: run the same "
        "command again to continue an interrupted sweep. Writes OUT/results.csv and .parquet, plots (PNG) "
        "and OUT/report.md, which states which of the paper's claims held.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="small",
                   help="grid and data: tiny (seconds), small (minutes), paper (the full grid)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/sweep-PRESET)")
    p.add_argument("--data", default=None,
                   help="'synthetic' or a folder prepared by `compembed prepare` (default: the preset's synthetic data)")
    p.add_argument("--rows", type=int, default=None, help="synthetic rows over all splits (default: the preset's)")
    p.add_argument("--scale", type=float, default=None, help="synthetic cardinality scale vs Criteo Kaggle")
    p.add_argument("--id-order", choices=("value", "frequency"), default=None,
                   help="synthetic ids in value or frequency order (the planner needs frequency)")
    p.add_argument("--archs", type=_words, default=None, help="comma-separated models: dlrm,dcn")
    p.add_argument("--studies", type=_words, default=None, help=f"comma-separated studies from {','.join(STUDIES)}")
    p.add_argument("--collisions", type=_ints, default=None, help="comma-separated collision counts, e.g. 2,4,60")
    p.add_argument("--budgets", type=_floats, default=None,
                   help="budget study: comma-separated compressions vs full tables, e.g. 4,16,64,256,1000")
    p.add_argument("--budget-methods", type=_words, default=None,
                   help="budget study: comma-separated methods: planner and those of planning.UNIFORM_METHODS")
    p.add_argument("--tune-lrs", type=_floats, default=None,
                   help="budget study: table learning rates each method is tuned over (seed 0, one budget) before "
                        "its cells run with the best by validation loss; empty: no tuning")
    p.add_argument("--only", choices=("tune", "main"), default=None,
                   help="run only the tuning cells, or only the others (the tuning must have finished)")
    p.add_argument("--part", type=_part, default=None,
                   help="I/N: run part I of N of the cells (by cell key; tuning cells in every part), so that "
                        "parts can run as separate resumable commands")
    p.add_argument("--thresholds", type=_ints, default=None, help="comma-separated compression thresholds")
    p.add_argument("--optimizers", type=_words, default=None, help="comma-separated: adagrad,amsgrad,sgd,adam")
    p.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process (use --threads 1 with it; 2 suits 2 cores)")
    p.add_argument("--checkpoint-every", type=_steps, default=CHECKPOINT_EVERY, metavar="N",
                   help="steps between the checkpoints of each run (0: as the preset says); an interrupted sweep "
                        "resumes the runs in flight from them")
    p.add_argument("--list", action="store_true", help="print the cells and exit without training")
    p.add_argument("--report-only", action="store_true", help="rebuild the table, plots and report from finished cells")
    p.set_defaults(func=run, resume_hint=_resume_hint)


def _resume_hint(args: argparse.Namespace) -> str:
    out = args.out or Path("runs") / f"sweep-{args.preset}"
    return f"finished cells are kept in {out / 'cells'}: the same command goes on from them"


def build_spec(args: argparse.Namespace):
    spec = preset(args.preset)
    base = spec.base
    data = base.data
    if args.data is not None:
        data = dataclasses.replace(data, source=args.data)
    if args.rows is not None:
        data = dataclasses.replace(data, rows=args.rows)
    if args.scale is not None:
        data = dataclasses.replace(data, cardinality_scale=args.scale)
    if args.id_order is not None:
        data = dataclasses.replace(data, id_order=args.id_order)
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("threads", args.threads))
               if v is not None}
    base = dataclasses.replace(base, data=data, **changes)
    grid = {k: getattr(args, k) for k in ("archs", "studies", "collisions", "thresholds", "optimizers", "seeds",
                                          "budgets", "budget_methods", "tune_lrs") if getattr(args, k) is not None}
    if "budgets" in grid and spec.tune_lrs and spec.tune_budgets is None:
        grid["tune_budgets"] = spec.budgets  # a share of the budgets: the same tuning cells as the whole study
    if {"archs", "optimizers", "seeds"} & set(grid) and spec.tune_lrs and spec.tune_run is None:
        # a share of the archs, optimizers or seeds: tuned where the whole study tunes (e.g. DLRM for --archs dcn)
        grid["tune_run"] = (spec.archs[0], spec.optimizers[0], spec.seeds[0])
    return dataclasses.replace(spec, base=base, **grid)


def run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    out = args.out or Path("runs") / f"sweep-{args.preset}"
    info = None
    if "budget" in spec.studies:  # the budget study sizes its cells from the data's cardinalities and counts
        from ..training.loop import open_data

        info = open_data(spec.base.data).info
    from ..sweep.runner import rows_of, tuned_lrs

    cells = spec.cells(info, tuned=tuned_lrs(spec, out / "cells", info))
    if args.list:
        for c in cells:
            m = c.config.model
            print(f"{c.key}  {c.study:12s} {m.arch:5s} {c.label:18s} threshold={m.threshold:<6d} "
                  f"{c.config.optim.name:8s} seed={c.config.seed}"
                  + (f" {c.role or 'main'} table_lr={c.config.optim.embedding_lr}" if spec.tune_lrs else ""))
        if spec.tune_lrs:
            print("(with a tuning phase, a method's main cells are listed once its tuning cells have finished)")
        print(f"{len(cells)} cells")
        return 0
    print(f"sweep '{args.preset}': {len(cells)} runs -> {out}", file=sys.stderr)
    if args.report_only:
        rows = rows_of(cells, out / "cells")
        if rows:
            write_table(rows, out)  # the table matches the rebuilt report
    else:
        run_cell = functools.partial(train_cell, checkpoint_every=args.checkpoint_every)
        try:
            rows = run_sweep(spec, out, run_cell, jobs=args.jobs, info=info, only=args.only, part=args.part)
        except WorkerDiedError as err:  # not a bug of compembed: say so, with what to do
            raise CommandError(str(err)) from None
        cells = spec.cells(info, tuned=tuned_lrs(spec, out / "cells", info))
    if not rows:
        print(f"no finished runs in {out}/cells", file=sys.stderr)
        return 1
    if "budget" in spec.studies and spec.tune_lrs:
        return _methods_report(args, spec, info, rows, out, len(cells))
    if "budget" in spec.studies:
        return _budget_report(args, spec, info, rows, out, len(cells))
    summaries = summarize(rows)
    plots = make_plots(summaries, out, spec.threshold, spec.path_collisions)
    claims = judge_claims(summaries, spec.threshold, spec.path_collisions)
    data = spec.base.data
    source = (f"synthetic Criteo-like data, {data.rows:,} rows, cardinality scale {data.cardinality_scale}"
              if data.source == "synthetic" else f"data from {data.source}")
    preamble = (f"Preset `{args.preset}`: {len(rows)} of {len(cells)} runs finished; {source}; "
                f"batch {spec.base.batch_size}, {spec.base.epochs} epoch(s), seeds {list(spec.seeds)}, "
                f"optimizers {list(spec.optimizers)}. Command: `compembed {_command(args)}`")
    report = write_report(summaries, claims, plots, out / "report.md", "Compositional embeddings vs the hashing trick",
                          preamble)
    verdict = {True: "held", False: "did not hold", None: "not tested"}
    for c in claims:
        print(f"[{verdict[c.held]}] {c.claim}")
    print(f"report: {report}")
    return 0


def _command(args) -> str:
    """How the sweep was run, without ``--report-only`` (a rebuilt report names the command that ran the cells)."""
    return " ".join(a for a in args.argv if a != "--report-only")


def _budget_context(spec, info) -> tuple[list, bool, str]:
    """The budgets no method reaches, whether the data is real, and the data in words."""
    missing = []
    for optimizer in spec.optimizers:
        missing += spec.budget_models(info, optimizer)[1]
    data = spec.base.data
    real = data.source != "synthetic"
    source = (f"synthetic Criteo-like data, {data.rows:,} rows, cardinality scale {data.cardinality_scale}, "
              f"ids in {data.id_order} order" if not real else f"data from {data.source}")
    return missing, real, source


def _budget_report(args, spec, info, rows, out: Path, cells: int) -> int:
    from ..sweep.budget_report import budget_points, plot_budget, write_budget_report

    points = budget_points(rows)
    missing, real, source = _budget_context(spec, info)
    b = spec.base
    preamble = (
        f"Preset `{args.preset}`: {len(rows)} of {cells} runs finished; {source}; "
        f"{sum(info.cardinalities):,} categories in {len(info.cardinalities)} features. "
        f"Recipe, the same for every method and not tuned per method: batch {b.batch_size}, {b.epochs} epoch(s), "
        f"{list(spec.optimizers)} with dense lr {b.optim.lr} and table lr {b.optim.embedding_lr or b.optim.lr}, "
        f"validation {f'every {b.eval_every} steps' if b.eval_every else 'at the end of each epoch'}, the best "
        f"validation checkpoint kept; seeds "
        f"{list(spec.seeds)}. Bytes are the fp32 tables; each method is sized to the largest configuration that fits "
        f"the budget of tables plus optimizer state (`planning.match_budget`, `compembed plan`). "
        f"Command: `compembed {_command(args)}`")
    plots = [plot_budget(points, arch, out / f"loss_vs_bytes_{arch}.png",
                         f"{arch.upper()}: test loss vs embedding bytes ({'real sample' if real else 'synthetic'})")
             for arch in sorted({p.arch for p in points})]
    report = write_budget_report(points, missing, out / "report.md", "Accuracy per byte: every method at matched bytes",
                                 preamble, spec.budget_collisions, real, plots)
    print(f"report: {report}")
    return 0


def _methods_report(args, spec, info, rows, out: Path, cells: int) -> int:
    from ..sweep.methods_report import write_methods_report

    missing, real, source = _budget_context(spec, info)
    data, b = spec.base.data, spec.base
    preamble = (
        f"Preset `{args.preset}`: {len(rows)} of {cells} runs listed so far finished (a method's main runs are listed "
        f"once its tuning has finished); {source}; {sum(info.cardinalities):,} categories in "
        f"{len(info.cardinalities)} features. Models: D={b.model.embedding_dim}; DLRM bottom MLP "
        f"{list(b.model.bottom_mlp)}, top MLP {list(b.model.top_mlp)}; DCN {b.model.cross_layers} cross layers, deep "
        f"{list(b.model.deep_mlp)}. Recipe: batch {b.batch_size}, {b.epochs} epoch(s), "
        f"{list(spec.optimizers)} with dense lr {b.optim.lr} and the tuned table lr, validation "
        f"{f'every {b.eval_every} steps' if b.eval_every else 'at the end of each epoch'}, the best validation "
        f"checkpoint kept; seeds {list(spec.seeds)}; budgets {[f'{r:g}x' for r in spec.budgets]} of the full tables' "
        f"bytes (tables plus optimizer state, `planning.match_budget`, `compembed plan`), DCN at "
        f"{[f'{r:g}x' for r in spec.dcn_budgets] if spec.dcn_budgets is not None else 'every budget'} when run. "
        f"Command: `compembed {_command(args)}`")
    dataset = "real sample " + Path(data.source).name if real else f"synthetic {data.rows:,} rows"
    report = write_methods_report(rows, spec.tune_lrs, missing, out, "Loss vs bytes: every method at every budget",
                                  preamble, dataset)
    print(f"report: {report}")
    return 0
