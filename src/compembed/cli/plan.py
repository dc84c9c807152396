"""`compembed plan`: per-feature embedding schemes that meet a memory budget, written as a run config."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..planning.planner import COLD_PARTS
from .train import add_config_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="choose each feature's embedding scheme for a memory budget, from the data's id counts",
        description="Reads a dataset's per-id training counts (ids in frequency order) and chooses, per "
        "feature, a full table or hot rows for the most frequent ids plus a quotient-remainder / mixed-radix "
        "composition (or, with --cold robe, a ROBE-Z array) for the rest, so that the tables and their "
        "optimizer state fit the budget. Prints the "
        "choice with the bytes per feature and writes a config that `compembed train --config` takes.",
        epilog="example: compembed plan data/criteo --budget 64MiB --out plan.toml && "
        "compembed train --config plan.toml --out runs/plan",
    )
    p.add_argument("data", metavar="DATA",
                   help="a dataset made by `compembed prepare ... --id-order frequency`, or 'synthetic' "
                   "(then --rows, --scale, --data-seed choose it)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--budget", metavar="SIZE", help="bytes for the tables plus optimizer state: 64MiB, 1.5GB, 200000")
    size.add_argument("--compression", metavar="X", type=float,
                      help="instead: X times smaller than full tables (with the same optimizer state)")
    p.add_argument("--hot-share", metavar="S", type=float, default=0.5,
                   help="share of the budget for rows of their own for the most frequent ids (default: 0.5)")
    p.add_argument("--cold", choices=COLD_PARTS, default="composition",
                   help="what the other ids share: complementary compositions (every id keeps a unique vector) "
                        "or one ROBE-Z array per feature")
    p.add_argument("--out", metavar="TOML", default=None, help="write the run config here (default: print only)")
    add_config_options(p, skip=("--data",))
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from ..models import build_collection
    from ..planning import budget_for_compression, parse_bytes, plan_for_dataset
    from ..training.config import save_config
    from ..training.loop import open_data

    # (a PlanError is a ValueError: exit code 2, the budget or the data's id order does not allow a plan)
    config = config_from_args(args, source=args.data if args.data == "synthetic" else str(Path(args.data).resolve()))
    dataset = open_data(config.data)
    info, dim, optimizer = dataset.info, config.model.embedding_dim, config.optim.name
    budget = (parse_bytes(args.budget) if args.budget is not None
              else budget_for_compression(info.cardinalities, args.compression, dim, optimizer))
    plan = plan_for_dataset(info, budget, embedding_dim=dim, optimizer=optimizer, hot_share=args.hot_share,
                            cold=args.cold)
    print(plan.summary())
    model = dataclasses.replace(config.model, features=plan.overrides(), threshold=0)
    config = dataclasses.replace(config, model=model)
    # The collection's own accounting, as a check of the plan's arithmetic (meta device: nothing allocated).
    tables = build_collection(model, info, device="meta")
    print(f"\nbuilt on the meta device: {tables.num_parameters:,} table parameters ({tables.num_bytes:,} bytes "
          f"before optimizer state)")
    if args.out:
        save_config(config, args.out)
        print(f"wrote {args.out}; train it with: compembed train --config {args.out} --out runs/plan")
    return 0
