"""Entry point of the ``compembed`` command: each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .errors import report

# Modules under compembed.cli that each define `register(subparsers)`; a subcommand's parser
# sets `func` (called with the parsed args, returning an exit code). What a command raises is
# reported by `errors.report`: one line and an exit code that means the same for every command.
COMMAND_MODULES = ["demo", "sweep", "data", "bench", "train", "plan", "serve"]

EPILOG = """exit codes (the same for every command):
  0    success
  1    a check the command makes failed, or an unexpected error (see --debug)
  2    usage or config: bad option, config key or value; output exists; run not resumable as asked
  3    data: malformed input data, incomplete dataset, NaN or infinite training loss
  4    I/O: missing path, a directory where a file is expected or the reverse, permission denied,
       read-only or full file system (progress is kept: the message says how to go on)
  130  interrupted (Ctrl-C)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compembed",
        description="Compositional embeddings from complementary partitions: small embedding tables "
        "for recommendation models (DLRM, DCN).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"compembed {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the Python traceback as well as the one-line message")
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
    except (Exception, KeyboardInterrupt) as err:
        return report(err, args)


if __name__ == "__main__":
    sys.exit(main())
