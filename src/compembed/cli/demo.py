"""`compembed demo`: the built-in default job."""
from __future__ import annotations

import argparse
import time

import torch

from ..data.criteo_spec import CATEGORICAL_NAMES, KAGGLE_CARDINALITIES
from ..embedding import EmbeddingCollection, feature_configs
from ..partitions import QuotientRemainder, is_complementary


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="show the memory of compressed Criteo-sized tables and check uniqueness (no data needed)",
        description="Builds the 26 Criteo Kaggle embedding tables (D=16) as full tables, with the hashing "
        "trick and with quotient-remainder (mult), prints their parameters, and checks that every id of "
        "the largest feature gets a distinct class tuple and a distinct vector.",
    )
    p.add_argument("--collisions", type=int, default=4, help="ids per shared row (default: 4)")
    p.add_argument("--threshold", type=int, default=200, help="compress only features with more categories (default: 200)")
    p.add_argument("--dim", type=int, default=16, help="embedding dimension (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
