"""Entry point of the ``compembed`` command: each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules under compembed.cli that each define `register(subparsers)`; a subcommand's parser
# sets `func` (called with the parsed args, returning an exit code).
COMMAND_MODULES = ["demo", "sweep", "data", "bench", "train", "plan"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compembed",
        description="Compositional embeddings from complementary partitions: small embedding tables "
        "for recommendation models (DLRM, DCN).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"compembed.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # lets a command record how it was called
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
