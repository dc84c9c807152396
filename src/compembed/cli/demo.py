"""`compembed demo`: the README's main job on built-in data, and the memory/uniqueness check.

The main job trains DLRM on one fixed data set with full tables, with the hashing trick and with
quotient-remainder (element-wise product) at the same number of collisions (``--collisions`` ids
per shared row, 4 by default), once per model seed (5 by default), and prints one comparison
table: embedding parameters and bytes, compression vs full tables, test loss and ROC-AUC as mean
± std over the seeds, the loss gap to full tables, the paired difference to hashing per seed (same
seed = same data order and dense initialisation), and training samples/s. ``--data-seed`` fixes the
data; ``--seeds`` only changes the models' initialisation and the shuffling.

Default scale (about two minutes on 2 idle cores, at about 30,000 training samples/s for this DLRM
at batch 256): 300,000 synthetic Criteo-like rows (240,000 train, 30,000 validation, 30,000 test)
with the Criteo Kaggle cardinalities times 0.002 (67,600 categories; the 8 features above the
threshold of 200 are compressed), batch 256, one epoch, Adagrad with the default recipe of
``OptimConfig`` (separate learning rates for the dense layers and the tables; see its docstring for
how they were chosen). The data is large enough that the big features' rare ids are seen only a
few times, so sharing rows costs quality as on the real data.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ..data.criteo_spec import CATEGORICAL_NAMES, KAGGLE_CARDINALITIES
from ..embedding import EmbeddingCollection, feature_configs
from ..partitions import QuotientRemainder, is_complementary
from ..training.config import PRECISIONS, OptimConfig
from .train import add_device_option

_RECIPE = OptimConfig()  # the default recipe's learning rates

DEMO_ROWS, DEMO_SCALE, DEMO_BATCH, DEMO_SEEDS = 300_000, 0.002, 256, (0, 1, 2, 3, 4)
DEMO_SCHEMES = (("full", "mult"), ("hashing", "mult"), ("qr", "mult"))


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: DLRM with full tables vs hashing vs QR-mult at the same budget (no download)",
        description="Trains DLRM on built-in synthetic Criteo-like data (or a prepared dataset with --data) "
        "with full embedding tables, the hashing trick, and quotient-remainder with element-wise product at "
        "the same number of collisions, once per model seed on the same data, then prints one comparison "
        "table (mean ± std over seeds, and the paired difference to hashing). About two minutes on 2 idle "
        "CPU cores with the defaults (longer on a busy machine). --memory instead shows the memory of the 26 "
        "full-size Criteo tables and checks that QR gives every id of the largest feature its own vector.",
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
    p.add_argument("--lr", type=float, default=_RECIPE.lr, help=f"learning rate of the dense layers (default: {_RECIPE.lr})")
    p.add_argument("--embedding-lr", type=float, default=_RECIPE.embedding_lr,
                   help=f"learning rate of the embedding tables (default: {_RECIPE.embedding_lr})")
    p.add_argument("--seeds", type=_seeds, default=DEMO_SEEDS,
                   help="comma-separated model seeds (initialisation and shuffling; default: 0,1,2,3,4)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data, the same for every run (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's choice)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="training steps under autocast: bf16, or fp16 (CUDA only); default: fp32")
    add_device_option(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="keep each run (config, checkpoint, metrics) under DIR/<scheme>; a rerun resumes them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--memory", action="store_true",
                   help="instead: memory of the full-size Criteo tables per scheme, and a QR uniqueness check")
    p.set_defaults(func=run, resume_hint=lambda a: a.out and f"finished runs are kept under {a.out}: the same "
                   "command goes on from them")


def demo_configs(args: argparse.Namespace, seed: int):
    """The three run configs of the comparison for one model seed (identical but for the embedding scheme)."""
    from ..models import ModelConfig
    from ..training.config import DataConfig, OptimConfig, TrainConfig

    base = TrainConfig(
        model=ModelConfig(arch=args.arch, embedding_dim=args.dim, num_collisions=args.collisions,
                          threshold=args.threshold),
        optim=OptimConfig(name=args.optimizer, lr=args.lr, embedding_lr=args.embedding_lr),
        data=DataConfig(source=args.data, rows=args.rows, cardinality_scale=args.scale, seed=args.data_seed),
        batch_size=args.batch_size, epochs=args.epochs, seed=seed, threads=args.threads,
        checkpoint_every=0, log_every=100, precision=args.precision,
    )
    return [dataclasses.replace(base, model=dataclasses.replace(base.model, scheme=s, operation=op))
            for s, op in DEMO_SCHEMES]


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return run_memory(args)
    from ..training.device import check_precision, resolve_device
    from ..training.loop import open_data, train
    from ..training.report import format_seed_table

    device = resolve_device(args.device)
    check_precision(args.precision, device)  # before the data is made
    configs = demo_configs(args, args.seeds[0])
    started = time.perf_counter()
    dataset = open_data(configs[0].data)
    info = dataset.info
    source = "synthetic Criteo-like data" if args.data == "synthetic" else f"dataset {args.data}"
    print(f"{args.arch.upper()} on {source}: {info.split_sizes.get('train', 0):,} train / "
          f"{info.split_sizes.get('val', 0):,} val / {info.split_sizes.get('test', 0):,} test rows, "
          f"{len(info.categorical_names)} categorical features with {sum(info.cardinalities):,} categories; "
          f"D={args.dim}, batch {args.batch_size}, {args.epochs} epoch(s), {args.optimizer} with lr {args.lr} "
          f"(dense) and {args.embedding_lr} (tables); features with more than {args.threshold} categories "
          f"compressed at {args.collisions} collisions; {args.precision} on {device}; model seeds {','.join(map(str, args.seeds))} on the same data")
    if hasattr(dataset, "bayes_loss"):
        print(f"the data's Bayes-optimal test loss (true click probabilities): {dataset.bayes_loss('test'):.5f}")
    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for config in demo_configs(args, seed):
            label = config.model.label()
            out = Path(args.out) / f"{label.replace('/', '-')}-seed{seed}" if args.out else None
            print(f"training {label} (seed {seed}) ...", flush=True)
            result = train(config, dataset, out_dir=out, resume=out is not None, progress=not args.no_progress,
                           device=device)
            runs.setdefault(label, []).append(result.to_dict())
    hashing = next((label for label in runs if label.startswith("hashing")), None)
    print()
    print(format_seed_table(runs, baseline=hashing, split="test"))
    print("\nper seed, test loss: " + "; ".join(
        f"seed {seed}: " + ", ".join(f"{label} {rs[i]['evals']['test']['loss']:.5f}" for label, rs in runs.items())
        for i, seed in enumerate(args.seeds)))
    dead = [f"{label} seed {seed}: {message}" for label, rs in runs.items()
            for seed, r in zip(args.seeds, rs) for message in r["dead_layers"]]
    total = sum(len(rs) for rs in runs.values())
    print(f"dead ReLU layers: none in {total} runs" if not dead else
          f"dead ReLU layers in {len(dead)} of {total} runs: " + "; ".join(dead))
    print(f"\n({time.perf_counter() - started:.0f}s in all; 'vs full' is the tables' compression, 'loss gap' the "
          f"mean test loss relative to full tables, '- {hashing} (paired)' the per-seed difference to hashing: "
          f"its mean, t statistic and the seeds where the scheme's loss was lower)")
    return 0


def run_memory(args: argparse.Namespace) -> int:
    """The memory of the 26 full-size Criteo tables per scheme, and QR's uniqueness on the largest feature."""
    torch.manual_seed(args.seeds[0])
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
