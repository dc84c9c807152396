"""How a ``compembed`` command fails: one line on stderr, ``error: <where>: <cause>``, and an exit code.

Commands raise; ``main`` passes whatever escapes them to ``report``, the one place that maps failures
to codes (the README lists them):

==== =====================================================================================
0    success
1    a check the command makes failed (``demo --memory``), a sweep worker killed from outside,
     or an unexpected error (a bug: ``compembed --debug ...`` shows its traceback)
2    usage or config: a bad option, config key or value, an output that exists (without
     ``--overwrite`` or ``--resume``), a run that cannot be resumed with this config
3    data: malformed input data (file, line, column), a directory that is not a complete
     dataset, a training loss that became NaN or infinite
4    I/O: a missing path, a directory where a file is expected or the reverse, permission
     denied, a read-only or full file system
130  interrupted (Ctrl-C)
==== =====================================================================================

On an I/O error or an interruption, progress that a command keeps is named on the same line (a
command sets ``resume_hint``, a function of its arguments, with ``set_defaults``), so that it can go
on after space is freed. Tracebacks are printed only with the global ``--debug`` flag.
"""
from __future__ import annotations

import argparse
import errno
import sys
import traceback
from pathlib import Path

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "EXIT_DATA", "EXIT_IO", "EXIT_INTERRUPTED", "CommandError", "UsageError",
           "DataError", "exit_code", "describe", "report"]

EXIT_FAILED, EXIT_USAGE, EXIT_DATA, EXIT_IO, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


class CommandError(Exception):
    """A failure a command reports with its message and ``code``."""

    code = EXIT_FAILED


class UsageError(CommandError):
    """Options that do not go together, or a run that cannot start as asked."""

    code = EXIT_USAGE


class DataError(CommandError):
    """Input data that cannot be used."""

    code = EXIT_DATA


def _data_errors() -> tuple[type[BaseException], ...]:
    from ..data.errors import InputError
    from ..data.store import DatasetFormatError
    from ..training.checkpoint import CheckpointCorruptError

    # NonFiniteLossError is a FloatingPointError (training/loop.py): named by its base
    return InputError, DatasetFormatError, CheckpointCorruptError, FloatingPointError


def exit_code(err: BaseException) -> int:
    """The exit code of the failure ``err`` (see the module doc)."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, CommandError):
        return err.code
    if isinstance(err, FileExistsError) and err.errno is None:
        return EXIT_USAGE  # compembed's own refusal to replace an output ("pass --overwrite")
    if isinstance(err, OSError):
        return EXIT_IO
    if isinstance(err, _data_errors()):
        return EXIT_DATA
    if isinstance(err, (ValueError, KeyError)):
        return EXIT_USAGE
    return EXIT_FAILED


def _os_message(err: OSError, fallback: str | None) -> str:
    if err.errno is None or not err.strerror:
        return str(err)  # compembed's own message, which names the path
    path = err.filename if err.filename is not None else fallback
    cause = err.strerror[:1].lower() + err.strerror[1:]
    if err.errno == errno.EEXIST and path is not None and Path(path).exists() and not Path(path).is_dir():
        cause = "exists and is not a directory"  # mkdir over a file
    if err.errno == errno.ENOTDIR and path is not None:  # a path under a file: name the file
        blocking = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            cause = f"{blocking} is a file, not a directory"
    if path is None:
        return cause
    return f"{path} -> {err.filename2}: {cause}" if err.filename2 is not None else f"{path}: {cause}"


def describe(err: BaseException, fallback_path: str | None = None) -> str:
    """The message of ``err`` (``fallback_path``: the path to name for an I/O error that names none)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, OSError):
        return _os_message(err, fallback_path)
    text = str(err)
    if isinstance(err, KeyError):
        text = text.strip("'\"")
    if exit_code(err) == EXIT_FAILED and not isinstance(err, CommandError):
        return f"unexpected {type(err).__name__}: {text} (a bug: rerun with `compembed --debug ...` for the traceback)"
    return text


def _close_progress_bars() -> None:
    """Close the progress bars the failure left open, so that the message starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def report(err: BaseException, args: argparse.Namespace) -> int:
    """Print ``err`` as ``error: ...`` (with its traceback under ``--debug``) and return its exit code."""
    _close_progress_bars()
    if getattr(args, "debug", False):
        traceback.print_exception(err)
    out = getattr(args, "out", None)
    message = describe(err, None if out is None else str(out))
    code = exit_code(err)
    hint = getattr(args, "resume_hint", None)
    if code in (EXIT_IO, EXIT_INTERRUPTED) and hint is not None:
        kept = hint(args)
        if kept:
            message += f"; {kept}"
    print(message if code == EXIT_INTERRUPTED else f"error: {message}", file=sys.stderr, flush=True)
    return code
