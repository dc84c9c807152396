"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Files are created with mode ``0o666`` less the process umask (0644 under umask 022), as ``open`` does.
An I/O error of a write that names no file (a write on an open file, or safetensors' own error class,
which carries the OS error number in its message) is raised as an ``OSError`` naming the target path.
"""
from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["atomic_replace", "atomic_write_bytes", "atomic_write_text", "check_input_files", "fsync_dir",
           "named_os_error", "write_json_atomic"]

_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem lets a directory be opened for it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def named_os_error(err: BaseException, path: str | os.PathLike, unnamed: Iterable[str] = ()) -> OSError | None:
    """An ``OSError`` naming ``path`` for the I/O error ``err`` when ``err`` names no file (or only one of the
    internal paths ``unnamed``, e.g. a temporary file); None when ``err`` is no such error.

    Besides ``OSError``s this recognises a library's own error class that reports the OS error number in its
    message as ``(os error N)`` (safetensors does); ``ValueError``s (bad data) never count.
    """
    if isinstance(err, OSError):
        if err.errno is None or (err.filename is not None and str(err.filename) not in set(map(str, unnamed))):
            return None
        number = err.errno
    elif isinstance(err, Exception) and not isinstance(err, ValueError):
        match = _OS_ERROR_NUMBER.search(str(err))
        if match is None:
            return None
        number = int(match.group(1))
    else:
        return None
    return OSError(number, os.strerror(number), str(path))


def check_input_files(paths: Iterable[Path]) -> None:
    """Raise ``FileNotFoundError`` / ``IsADirectoryError`` naming the first of ``paths`` that is not a file."""
    for p in paths:
        if p.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not an input file", str(p))
        if not p.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(p))


def atomic_replace(write: Callable[[Path], None], path: str | os.PathLike) -> None:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, fsync it and rename it to ``path``.

    The temporary file exists (empty) when ``write`` is called, with the mode a new file gets (``0o666``
    less the umask); the result has that mode even when ``write`` recreates the file with another one
    (safetensors makes its files 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = os.fstat(fd).st_mode & 0o777  # what the umask gives, read without changing the umask
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            if os.fstat(f.fileno()).st_mode & 0o777 != mode:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the error that matters is err
        named = named_os_error(err, path, unnamed=[tmp])
        if named is not None:
            raise named from err
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_replace(lambda tmp: tmp.write_bytes(data), path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
