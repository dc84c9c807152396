"""`compembed bench`: speed and memory of every embedding design, interleaved in one run."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
from pathlib import Path

from ..benchmarks.reference import check_reference_dir
from ..benchmarks.report import to_markdown
from ..benchmarks.runner import PRESETS, run_benchmark
from ..benchmarks.variants import VARIANTS
from ..io import atomic_write_text
from .errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark full, hashed and compositional tables (embedding part and DLRM step)",
        description="Runs every variant in its own process, interleaved and repeated, for the embedding part "
        "alone and a whole DLRM training step (batch 2048, Criteo Kaggle cardinalities, D=16, sparse SGD), "
        "then a scaling study; writes bench.json and bench.md under --out. The quick preset takes about "
        "1-2 minutes, the full one 10-20.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="quick (default) or full")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default: runs/bench)")
    p.add_argument("--threads", type=int, help="torch threads per variant (default: 2)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--rounds", type=int, help="interleaved rounds (override the preset)")
    p.add_argument("--steps", type=int, help="timed steps per round (override the preset)")
    p.add_argument("--batch", type=int, help="batch size (default: 2048)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling study")
    p.add_argument("--emb-variants", metavar="A,B,...",
                   help="the embedding-part variants to run instead of the preset's (comma-separated; empty: skip "
                   "that task and the offsets check)")
    p.add_argument("--dlrm-variants", metavar="A,B,...",
                   help="the DLRM-step variants to run instead of the preset's (comma-separated; empty: skip)")
    p.add_argument("--reference-dlrm", metavar="DIR",
                   help="a checkout of facebookresearch/dlrm: time its dlrm_s_pytorch.py (full tables and its "
                   "QR-mult) in the DLRM step's rounds, with the same sizes, MLPs, batch, SGD and threads "
                   "(default: not run, and the report says so)")
    p.add_argument("--reference-python", metavar="PATH",
                   help="the Python that runs the reference script; it needs torch, numpy, scikit-learn and "
                   "tensorboard (default: this interpreter)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("threads", "device", "rounds", "steps", "batch")
                 if getattr(args, k) is not None}
    config = dataclasses.replace(PRESETS[args.preset], **overrides)
    if args.no_scaling:
        config.scaling_cardinalities = ()
    for name in ("rounds", "steps", "batch", "threads"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(config, name)}")
    for task in ("emb", "dlrm"):
        given = getattr(args, f"{task}_variants")
        if given is None:
            continue
        names = tuple(n.strip() for n in given.split(",") if n.strip())
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise UsageError(f"--{task}-variants: unknown variant(s) {unknown}; known: {', '.join(sorted(VARIANTS))}")
        setattr(config, f"{task}_variants", names)
        if task == "emb" and not names:
            config.bag_length = 0  # the offsets check is part of the embedding task
    if args.reference_python and not args.reference_dlrm:
        raise UsageError("--reference-python needs --reference-dlrm DIR")
    if args.reference_dlrm:
        check_reference_dir(args.reference_dlrm)  # before minutes of building, not after
        if args.reference_python and not shutil.which(args.reference_python):
            raise UsageError(f"--reference-python {args.reference_python}: no such executable")
        config.reference_dlrm, config.reference_python = args.reference_dlrm, args.reference_python
    command = "compembed " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "compembed bench"
    result = run_benchmark(config, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench.json", json.dumps(result, indent=2))
    markdown = to_markdown(result, command)
    atomic_write_text(args.out / "bench.md", markdown)
    print(markdown)
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.md'}", file=sys.stderr)
    return 0
