"""`compembed demo`: the README's main job on built-in data, and the memory/uniqueness check.

The main job trains DLRM three times on the same data, with full tables, with the hashing trick and
with quotient-remainder (element-wise product) at the same budget (``--collisions`` ids per shared
row, 4 by default), and prints one comparison table: embedding parameters and bytes, compression vs
full tables, test loss (and its gap to full tables), accuracy, ROC-AUC, the Bayes-optimal loss the
synthetic data allows, and training samples/s.

Default scale (chosen to finish in a few minutes on 2 busy CPU cores; about 30 s when they are idle,
at about 30,000 training samples/s for this DLRM at batch 256): 300,000 synthetic Criteo-like rows (240,000 train,
30,000 validation, 30,000 test) with the Criteo Kaggle cardinalities times 0.002 (67,600
categories; the 8 features above the threshold of 200 are compressed), batch 256, one epoch,
Adagrad with lr 0.02. The learning rate was picked by the full-table model's validation loss among
Adagrad 0.01 / 0.02 / 0.05 and AMSGrad 1e-3 on 200,000 rows, and is the same for all three schemes.
The data is large enough that the big features' rare ids are seen only a few times, so sharing
rows costs quality as on the real data.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from ..data.criteo_spec import CATEGORICAL_NAMES, KAGGLE_CARDINALITIES
from ..embedding import EmbeddingCollection, feature_configs
from ..partitions import QuotientRemainder, is_complementary

DEMO_ROWS, DEMO_SCALE, DEMO_BATCH, DEMO_LR = 300_000, 0.002, 256, 0.02
DEMO_SCHEMES = (("full", "mult"), ("hashing", "mult"), ("qr", "mult"))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: DLRM with full tables vs hashing vs QR-mult at the same budget (no download)",
        description="Trains DLRM on built-in synthetic Criteo-like data (or a prepared dataset with --data) "
        "three times: full embedding tables, the hashing trick, and quotient-remainder with element-wise "
        "product at the same number of collisions, then prints one comparison table. About 30 seconds on 2 "
        "idle CPU cores with the defaults (longer on a busy machine). --memory instead shows the memory of the 26 full-size Criteo tables "
        "and checks that QR gives every id of the largest feature its own vector.",
    )
    p.add_argument("--data", metavar="DIR", default="synthetic",
                   help="'synthetic' (default) or a dataset directory made by `compembed prepare criteo`")
    p.add_argument("--rows", type=int, default=DEMO_ROWS, help=f"synthetic rows in all splits (default: {DEMO_ROWS})")
    p.add_argument("--scale", type=float, default=DEMO_SCALE,
                   help=f"synthetic cardinalities = Criteo Kaggle's x this (default: {DEMO_SCALE})")
    p.add_argument("--arch", choices=("dlrm", "dcn"), default="dlrm", help="model (default: dlrm)")
    p.add_argument("--collisions", type=int, default=4, help="ids per shared row for hashing and QR (default: 4)")
    p.add_argument("--threshold", type=int, default=200,
                   help="compress only features with more categories (default: 200)")
    p.add_argument("--dim", type=int, default=16, help="embedding dimension (default: 16)")
    p.add_argument("--batch-size", type=int, default=DEMO_BATCH, help=f"training batch size (default: {DEMO_BATCH})")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training split (default: 1)")
    p.add_argument("--optimizer", choices=("sgd", "adagrad", "adam", "amsgrad"), default="adagrad",
                   help="optimizer (default: adagrad)")
    p.add_argument("--lr", type=float, default=DEMO_LR, help=f"learning rate (default: {DEMO_LR})")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and the shuffling (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="keep each run (config, checkpoint, metrics) under DIR/<scheme>; a rerun resumes them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--memory", action="store_true",
                   help="instead: memory of the full-size Criteo tables per scheme, and a QR uniqueness check")
    p.set_defaults(func=run)


def demo_configs(args: argparse.Namespace):
    """The three run configs of the comparison (identical but for the embedding scheme)."""
    from ..models import ModelConfig
    from ..training.config import DataConfig, OptimConfig, TrainConfig

    base = TrainConfig(
        model=ModelConfig(arch=args.arch, embedding_dim=args.dim, num_collisions=args.collisions,
                          threshold=args.threshold),
        optim=OptimConfig(name=args.optimizer, lr=args.lr),
        data=DataConfig(source=args.data, rows=args.rows, cardinality_scale=args.scale, seed=args.seed),
        batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, threads=args.threads,
        checkpoint_every=0, log_every=100,
    )
    return [dataclasses.replace(base, model=dataclasses.replace(base.model, scheme=s, operation=op))
            for s, op in DEMO_SCHEMES]


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return run_memory(args)
    from ..training.loop import NonFiniteLossError, open_data, train
    from ..training.report import format_table

    configs = demo_configs(args)
    started = time.perf_counter()
    try:
        dataset = open_data(configs[0].data)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = dataset.info
    source = "synthetic Criteo-like data" if args.data == "synthetic" else f"dataset {args.data}"
    print(f"{args.arch.upper()} on {source}: {info.split_sizes.get('train', 0):,} train / "
          f"{info.split_sizes.get('val', 0):,} val / {info.split_sizes.get('test', 0):,} test rows, "
          f"{len(info.categorical_names)} categorical features with {sum(info.cardinalities):,} categories; "
          f"D={args.dim}, batch {args.batch_size}, {args.epochs} epoch(s), {args.optimizer} lr {args.lr}; "
          f"features with more than {args.threshold} categories compressed at {args.collisions} collisions")
    rows = []
    for config in configs:
        label = config.model.label()
        out = Path(args.out) / label.replace("/", "-") if args.out else None
        print(f"training {label} ...", flush=True)
        try:
            result = train(config, dataset, out_dir=out, resume=out is not None, progress=not args.no_progress)
        except (NonFiniteLossError, ValueError) as err:
            print(f"error: {label}: {err}", file=sys.stderr)
            return 3
        rows.append(result.to_dict())
    print()
    print(format_table(rows, split="test"))
    print(f"\n({time.perf_counter() - started:.0f}s in all; 'vs full' is the tables' compression, 'loss gap' the "
          f"test loss relative to full tables)")
    return 0


def run_memory(args: argparse.Namespace) -> int:
    """The memory of the 26 full-size Criteo tables per scheme, and QR's uniqueness on the largest feature."""
    torch.manual_seed(args.seed)
    print(f"Criteo Kaggle: 26 categorical features, {sum(KAGGLE_CARDINALITIES):,} categories, D={args.dim}\n")
    for scheme in ("hashing", "qr"):
        configs = feature_configs(
            KAGGLE_CARDINALITIES, CATEGORICAL_NAMES, embedding_dim=args.dim, scheme=scheme,
            num_collisions=args.collisions,
        )
        # Parameters are counted on the meta device: nothing is allocated.
        collection = EmbeddingCollection(configs, threshold=args.threshold, device="meta")
        print(f"== {scheme} ({args.collisions} collisions, threshold {args.threshold}) ==")
        print(collection.summary(), "\n")

    n = max(KAGGLE_CARDINALITIES)
    partition = QuotientRemainder(n, args.collisions)
    start = time.perf_counter()
    unique = is_complementary(partition, exhaustive=True, exhaustive_limit=n)
    print(f"uniqueness: all {n:,} ids of C3 mapped through {partition}: "
          f"class tuples {'all distinct' if unique else 'COLLIDE'} ({time.perf_counter() - start:.1f}s)")
    module_configs = feature_configs([n], ["C3"], embedding_dim=args.dim, scheme="qr", num_collisions=args.collisions)
    table = EmbeddingCollection(module_configs).embeddings["C3"]
    sample = torch.randperm(n)[:1_000_000]
    with torch.no_grad():
        vectors = table(sample.unsqueeze(1))
    distinct = torch.unique(vectors, dim=0).shape[0]
    print(f"uniqueness: {sample.numel():,} random ids of C3 -> {distinct:,} distinct QR-mult vectors")
    return 0 if unique and distinct == sample.numel() else 1
