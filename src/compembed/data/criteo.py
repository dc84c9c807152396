"""A vectorised, validating reader of Criteo-format text (plain or gzip), in bounded memory.

A line is ``label \\t I1..I13 \\t C1..C26`` (40 tab-separated fields): the label 0 or 1, the dense
features integers (possibly negative, at most 18 digits), the categorical features hashes of 1 to 8
hexadecimal characters; an empty field is a missing value. A line may end in ``\\r\\n`` (the ``\\r`` is
dropped); a carriage return anywhere else is an error (a mixed CR/LF file that glued records together).
A UTF-8 byte-order mark at the start of a file is skipped.

The input is read in blocks of whole lines, and each block is parsed with NumPy (no per-line
Python), yet every bad line is located by file, line and column. With ``skip_bad_lines`` bad lines
are skipped and counted in a ``BadLineReport``; otherwise the first one raises ``InputError``.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .native import parse_fast
from .criteo_spec import CATEGORICAL_NAMES, DENSE_NAMES
from .errors import BadLine, BadLineReport, InputError
from .vocab import sorted_counts

__all__ = ["NUM_FIELDS", "CriteoBlock", "LineBlock", "read_criteo", "iter_line_blocks", "parse_block", "parse_lines"]

NUM_FIELDS = 1 + len(DENSE_NAMES) + len(CATEGORICAL_NAMES)  # 40
FIELD_NAMES = ["label"] + DENSE_NAMES + CATEGORICAL_NAMES
MAX_DENSE_DIGITS = 18  # fits int64 with room to spare
MAX_LINE_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark, as some editors and exports start a text file



@dataclass
class CriteoBlock:
    """Parsed valid lines of one block.

    Attributes:
        labels: uint8 ``(m,)``.
        dense: int64 ``(m, 13)`` raw integers (0 where missing).
        dense_missing: bool ``(m, 13)``.
        cats: uint32 ``(m, 26)`` hash values (0 where missing).
        cat_missing: bool ``(m, 26)``.
        resume_at: where reading goes on after this block: ``(file index, text offset, line number)``.
        synced: True when every block and stream event before ``resume_at`` has been delivered (so the
            consumer's state is consistent with ``resume_at``, e.g. for a checkpoint).
        value_counts: with ``read_criteo(count_values=True)``, each categorical feature's present values
            counted (``vocab.sorted_counts``: sorted distinct values, counts), else None.
    """

    labels: np.ndarray
    dense: np.ndarray
    dense_missing: np.ndarray
    cats: np.ndarray
    cat_missing: np.ndarray
    resume_at: tuple[int, int, int] = (0, 0, 1)
    synced: bool = True
    value_counts: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.labels)


class _Problems:
    """Bad lines of a block: line index -> (column, kind, message-maker), keeping the first column."""

    def __init__(self) -> None:
        self.found: dict[int, tuple[int, str, Callable[[], str]]] = {}

    def add(self, lines: np.ndarray, cols: np.ndarray, kind: str, message: Callable[[int, int], str]) -> None:
        for i, c in zip(lines.tolist(), cols.tolist()):
            if i not in self.found or c < self.found[i][0]:
                self.found[i] = (c, kind, (lambda i=i, c=c: message(i, c)))


def parse_block(
    data: bytes, path: str, first_line: int, report: BadLineReport | None = None
) -> CriteoBlock:
    """Parse ``data`` (whole lines, each ending in ``\\n``) whose first line is line ``first_line`` of ``path``.

    Raises ``InputError`` at the first bad line, or with ``report`` skips and records bad lines.
    """
    pad = 24  # leading bytes so that fixed-width windows ending at any field end stay in range
    b = np.frombuffer(b"0" * pad + data, dtype=np.uint8)
    nl = np.flatnonzero(b == 10)
    n = len(nl)
    starts = np.empty(n, dtype=np.int64)
    starts[:1] = pad
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    ends -= (ends > starts) & (b[ends - 1] == 13)  # drop a CR before the LF
    tabs = np.flatnonzero(b == 9)
    problems = _Problems()

    def text(i: int, lo: int | None = None, hi: int | None = None) -> str:
        s = bytes(b[starts[i] if lo is None else lo : ends[i] if hi is None else hi])
        s = s.decode("utf-8", errors="replace")
        return repr(s if len(s) <= 40 else s[:37] + "...")

    per_line = NUM_FIELDS - 1
    fast = len(tabs) == per_line * n
    if fast:  # every line has exactly 39 tabs iff each line's 39-tab group lies inside it
        grouped = tabs.reshape(n, per_line)
        fast = bool((grouped[:, 0] >= starts).all() and (grouped[:, -1] < ends).all())
    if fast:
        good = np.ones(n, dtype=bool)
        tabs_good = grouped
    else:
        tab_line = np.searchsorted(nl, tabs)
        ntabs = np.bincount(tab_line, minlength=n)
        bad_count = np.flatnonzero(ntabs != per_line)
        problems.add(
            bad_count, np.where(ntabs[bad_count] < per_line, ntabs[bad_count] + 2, NUM_FIELDS + 1),
            "field_count",
            lambda i, c: f"expected {NUM_FIELDS} tab-separated fields, found {ntabs[i] + 1}"
            + (" (empty line)" if ends[i] == starts[i] else ""),
        )
        good = ntabs == per_line
        tabs_good = tabs[good[tab_line]].reshape(-1, per_line)
    crs = np.flatnonzero(b == 13)
    if len(crs):
        stray = crs[~np.isin(crs, ends)]
        if len(stray):
            cr_line = np.searchsorted(nl, stray)
            col = np.searchsorted(tabs, stray) - np.searchsorted(tabs, starts[cr_line]) + 1
            problems.add(cr_line, col, "carriage_return",
                         lambda i, c: "stray carriage return (CR) inside the line: mixed CR/LF line endings?")
    gi = np.flatnonzero(good)  # block line index of each row
    fs = np.concatenate([starts[gi, None], tabs_good + 1], axis=1)
    fe = np.concatenate([tabs_good, ends[gi, None]], axis=1)
    flen = fe - fs

    # label
    lab = b[fs[:, 0]]
    bad = (flen[:, 0] != 1) | ((lab != 48) & (lab != 49))
    problems.add(gi[bad], np.ones(bad.sum(), dtype=np.int64), "bad_label",
                 lambda i, c: f"label must be 0 or 1, got {text(i, starts[i], _field_end(b, starts[i], ends[i]))}")
    labels = (lab == 49).astype(np.uint8)

    words = _words(b)  # words[p] = the 8 bytes b[p:p+8] as one little-endian uint64

    # dense: optional '-' then 1..18 digits; up to 8 digits decoded 8 bytes at a time (SWAR)
    ds, de, dl = fs[:, 1:14], fe[:, 1:14], flen[:, 1:14]
    dense_missing = dl == 0
    neg = (dl > 0) & (b[ds] == 45)
    ndig = dl - neg
    x = words[de - 8] & _KEEP_LAST[np.minimum(ndig, 8)]  # right-aligned: the digits, '-' and earlier bytes zeroed
    bad_dense = ((dl > 0) & (ndig == 0)) | (_byte_ok(x, _is_digit(x), ndig) == 0)
    dense = _decimal8(x).astype(np.int64)
    long = np.nonzero(ndig > 8)
    for r, c in zip(*long):  # rare (counts above 99,999,999): checked and parsed one by one
        digits = bytes(b[ds[r, c] + neg[r, c] : de[r, c]])
        if not digits.isdigit():
            bad_dense[r, c] = True
        elif len(digits) > MAX_DENSE_DIGITS:
            bad_dense[r, c] = False
            problems.add(gi[r : r + 1], np.array([c + 2]), "dense_overflow",
                         lambda i, col: f"dense value {text(i, *_field(b, starts[i], ends[i], col))} "
                         f"overflows (more than {MAX_DENSE_DIGITS} digits)")
        else:
            bad_dense[r, c] = False
            dense[r, c] = int(digits)
    dense[neg] *= -1
    rows, cols = np.nonzero(bad_dense)
    problems.add(gi[rows], cols + 2, "bad_dense",
                 lambda i, col: f"dense value {text(i, *_field(b, starts[i], ends[i], col))} is not an integer")

    # categorical: 1..8 hex characters, right-aligned in one 8-byte word
    ce, cl = fe[:, 14:], flen[:, 14:]
    cat_missing = cl == 0
    x = words[ce - 8] & _KEEP_LAST[np.minimum(cl, 8)]
    bad_cat = (cl > 8) | (_byte_ok(x, _is_hex(x), cl) == 0)
    cats = _hex8(x).astype(np.uint32)
    rows, cols = np.nonzero(bad_cat)
    problems.add(gi[rows], cols + 15, "bad_category",
                 lambda i, col: f"category {text(i, *_field(b, starts[i], ends[i], col))} is not "
                 "1 to 8 hexadecimal characters")

    keep = slice(None)
    if problems.found:
        for i in sorted(problems.found):
            col, kind, message = problems.found[i]
            feature = FIELD_NAMES[col - 1] if 1 <= col <= NUM_FIELDS else None
            if report is None:
                raise InputError(path, first_line + i, col, kind, message(), feature)
            report.add(BadLine(path, first_line + i, col, kind,
                               (f"{feature}: " if feature else "") + message()
                               if len(report.examples) < report.keep else ""))
        keep = ~np.isin(gi, np.fromiter(problems.found, dtype=np.int64))
    return CriteoBlock(labels[keep], dense[keep], dense_missing[keep], cats[keep], cat_missing[keep])


def parse_lines(
    data: bytes, path: str, first_line: int, report: BadLineReport | None = None, num_lines: int | None = None
) -> CriteoBlock:
    """``parse_block``'s result, by the compiled parser (``native``) when it is built and accepts every
    line; otherwise (a bad line, no compiler) by ``parse_block`` itself, which names the bad lines.
    ``num_lines``: the lines in ``data`` when known (else counted)."""
    fast = parse_fast(data, num_lines)
    if fast is None:
        return parse_block(data, path, first_line, report)
    return CriteoBlock(*fast)


# ---- SWAR ("SIMD within a register") decoding of 8 ASCII bytes packed in a little-endian uint64.
# The field's last byte is the word's most significant byte; unused leading bytes are zeroed.
_U = np.uint64
_LO7 = _U(0x7F7F7F7F7F7F7F7F)
_HI = _U(0x8080808080808080)
_KEEP_LAST = np.array([0] + [((1 << (8 * k)) - 1) << (8 * (8 - k)) for k in range(1, 9)], dtype=np.uint64)


def _words(b: np.ndarray) -> np.ndarray:
    """Unaligned uint64 view: ``words[p]`` holds bytes ``b[p : p + 8]``."""
    return np.ndarray((len(b) - 7,), dtype="<u8", buffer=b, strides=(1,))


def _ge(x: np.ndarray, lo: int) -> np.ndarray:
    """High bit of each byte set where the (7-bit) byte is >= lo."""
    return ((x & _LO7) + _U(0x0101010101010101 * (0x80 - lo))) & _HI


def _is_digit(x: np.ndarray) -> np.ndarray:
    return _ge(x, 0x30) & ~_ge(x, 0x3A) & ~x & _HI


def _is_hex(x: np.ndarray) -> np.ndarray:
    ok = (_ge(x, 0x30) & ~_ge(x, 0x3A)) | (_ge(x, 0x41) & ~_ge(x, 0x47)) | (_ge(x, 0x61) & ~_ge(x, 0x67))
    return ok & ~x & _HI


def _byte_ok(x: np.ndarray, ok: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Nonzero where every used byte (the last ``length``, at most 8) passed ``ok``; fields over 8 pass."""
    return ((ok | ~_KEEP_LAST[np.minimum(length, 8)]) & _HI) == _HI


def _decimal8(x: np.ndarray) -> np.ndarray:
    """The value of up to 8 decimal digits (first byte most significant)."""
    d = x & _U(0x0F0F0F0F0F0F0F0F)
    d = (d & _U(0x000F000F000F000F)) * _U(10) + ((d >> _U(8)) & _U(0x000F000F000F000F))
    d = (d & _U(0x0000007F0000007F)) * _U(100) + ((d >> _U(16)) & _U(0x0000007F0000007F))
    return (d & _U(0x3FFF)) * _U(10000) + ((d >> _U(32)) & _U(0x3FFF))


def _hex8(x: np.ndarray) -> np.ndarray:
    """The value of up to 8 hex digits (first byte most significant)."""
    d = (x & _U(0x0F0F0F0F0F0F0F0F)) + ((x >> _U(6)) & _U(0x0101010101010101)) * _U(9)
    d = ((d & _U(0x000F000F000F000F)) << _U(4)) | ((d >> _U(8)) & _U(0x000F000F000F000F))
    d = ((d & _U(0x000000FF000000FF)) << _U(8)) | ((d >> _U(16)) & _U(0x000000FF000000FF))
    return ((d & _U(0xFFFF)) << _U(16)) | ((d >> _U(32)) & _U(0xFFFF))


def _field_end(b: np.ndarray, lo: int, hi: int) -> int:
    row = b[lo:hi]
    t = np.flatnonzero(row == 9)
    return lo + int(t[0]) if len(t) else hi


def _field(b: np.ndarray, lo: int, hi: int, col: int) -> tuple[int, int]:
    """Byte range of 1-based column ``col`` of the line ``b[lo:hi]``."""
    t = lo + np.flatnonzero(b[lo:hi] == 9)
    bounds = np.concatenate([[lo - 1], t, [hi]])
    return int(bounds[col - 1] + 1), int(bounds[col])


def _open_bytes(path: Path, raw_chunk: int, on_progress, skip: int = 0) -> Iterator[bytes]:
    """Decompressed bytes of ``path`` from text offset ``skip`` (gzip detected by its magic bytes,
    multi-member allowed; a gzip stream is decompressed from its start and the first bytes dropped).

    A truncated or corrupt gzip stream raises ``_StreamError`` after yielding everything before it.
    """
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":
            f.seek(skip)
            on_progress(skip)
            while chunk := f.read(raw_chunk):
                on_progress(len(chunk))
                yield chunk
            return
        for out in _gunzip(f, raw_chunk, on_progress):
            if skip >= len(out):
                skip -= len(out)
                continue
            yield out[skip:] if skip else out
            skip = 0


def _gunzip(f, raw_chunk: int, on_progress) -> Iterator[bytes]:
    """Decompressed chunks of the gzip file ``f`` (several members allowed)."""
    d = zlib.decompressobj(wbits=31)
    while True:
        chunk = f.read(raw_chunk)
        on_progress(len(chunk))
        if not chunk:
            if not d.eof:
                raise _StreamError("truncated_gzip", "gzip stream ends early (truncated file)")
            return
        while chunk:
            try:
                out = d.decompress(chunk, raw_chunk * 8)
            except zlib.error as e:
                raise _StreamError("corrupt_gzip", f"corrupt gzip data ({e})") from None
            if out:
                yield out
            if d.eof:  # a member ended: the rest may be another member (or trailing junk)
                rest = d.unused_data
                if rest and rest.strip(b"\x00"):
                    d = zlib.decompressobj(wbits=31)
                    chunk = rest
                    continue
                chunk = b""
            else:
                chunk = d.unconsumed_tail


class _StreamError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass
class LineBlock:
    """Whole lines ``data`` (each ending in ``\\n``) of a file: ``first_line`` (1-based) starts at byte
    ``offset`` of the (decompressed) text; the next block starts at ``offset + len(data)``, line ``next_line``."""

    data: bytes
    first_line: int
    offset: int
    next_line: int


def iter_line_blocks(
    path: str | os.PathLike, block_bytes: int = 8 << 20, report: BadLineReport | None = None,
    on_progress: Callable[[int], None] = lambda n: None, start: tuple[int, int] = (0, 1),
) -> Iterator[LineBlock]:
    """Blocks of whole lines of ``path``, from ``start = (byte offset, line number)`` (a line start).

    A missing final newline is supplied. A truncated/corrupt gzip stream or a line over 1 MiB raises
    ``InputError``, or with ``report`` is recorded (the partial last line is the bad one) and reading
    of this file stops (truncation) or skips the line (too long).
    """
    path = str(path)
    pos, line = start  # pos: text offset where the pending text starts
    # The pending text is kept as a list of chunks, joined once per block: appending to one bytes object
    # copied it again for every chunk (0.25 s of a 2.8 s prepare of 300,000 lines).
    parts: list[bytes] = []
    size, cut = 0, -1  # pending bytes; index of their last newline (-1: none)
    skipping = False  # inside an over-long line

    def block(data: bytes) -> LineBlock:
        nonlocal pos, line
        out = LineBlock(data, line, pos, line + data.count(b"\n"))
        pos, line = pos + len(data), out.next_line
        return out

    def take() -> bytes:
        """The pending text up to its last newline (removed from it)."""
        nonlocal parts, size, cut
        joined = b"".join(parts)
        data, rest = joined[: cut + 1], joined[cut + 1 :]
        parts, size, cut = [rest] if rest else [], len(rest), -1
        return data

    stream = _open_bytes(Path(path), max(1 << 16, block_bytes // 4), on_progress, skip=start[0])
    try:
        if pos == 0:  # the mark is no part of line 1; offsets still count it, so a resume skips it too
            stream, pos = _without_bom(stream)
        for chunk in stream:
            if skipping:
                k = chunk.find(b"\n")
                if k < 0:
                    pos += len(chunk)
                    continue
                pos, line, skipping = pos + k + 1, line + 1, False
                chunk = chunk[k + 1 :]
            k = chunk.rfind(b"\n")
            if k >= 0:
                cut = size + k
            parts.append(chunk)
            size += len(chunk)
            if size - (cut + 1) > MAX_LINE_BYTES:  # the unfinished last line is too long
                if cut >= 0:
                    yield block(take())
                _bad(report, path, line, "line_too_long", f"line longer than {MAX_LINE_BYTES} bytes")
                pos += size
                parts, size, cut, skipping = [], 0, -1, True
                continue
            if cut >= 0 and size >= block_bytes:
                yield block(take())
    except _StreamError as e:
        if cut >= 0:
            yield block(take())
        # The partial last line (if any) is lost with the stream: it is the bad line.
        partial = size > 0
        _bad(report, path, line, e.kind, e.message + ("; incomplete line dropped" if partial else ""))
        return
    pending = b"".join(parts)
    if skipping:
        return
    if pending:
        yield block(pending if pending.endswith(b"\n") else pending + b"\n")
    if line == 1:
        _bad(report, path, 0, "empty_file", "file is empty")


def _without_bom(stream: Iterator[bytes]) -> tuple[Iterator[bytes], int]:
    """``stream`` without a leading UTF-8 byte-order mark, and the mark's length (0 if none)."""
    head = b""
    for chunk in stream:
        head += chunk
        if len(head) >= len(BOM):
            break
    skip = len(BOM) if head.startswith(BOM) else 0
    return itertools.chain([head[skip:]] if len(head) > skip else [], stream), skip


def _bad(report: BadLineReport | None, path: str, line: int, kind: str, message: str) -> None:
    if report is None:
        raise InputError(path, line, 0, kind, message)
    report.add(BadLine(path, line, 0, kind, message))


def read_criteo(
    paths: list[str | os.PathLike], block_bytes: int = 8 << 20, report: BadLineReport | None = None,
    on_progress: Callable[[int], None] = lambda n: None, workers: int = 1,
    start: tuple[int, int, int] = (0, 0, 1), sync_every: float = 60.0, count_values: bool = False,
) -> Iterator[CriteoBlock]:
    """Parsed blocks (valid lines only, possibly none) of the Criteo-format files ``paths``, in order,
    from ``start = (file index, text offset, line)`` (a block's ``resume_at``).

    ``workers > 1`` parses blocks in that many processes (reading stays in this one), else one thread
    does; at most ``2 * workers`` (2) blocks are in flight, so memory stays bounded. Every ``sync_every``
    seconds the pipeline is drained so that one block is ``synced``. ``count_values``: the parsing thread or
    process also counts each block's categorical values (``CriteoBlock.value_counts``).
    """

    def blocks() -> Iterator[tuple[int, LineBlock]]:
        for i in range(start[0], len(paths)):
            at = start[1:] if i == start[0] else (0, 1)
            for lb in iter_line_blocks(paths[i], block_bytes, report, on_progress, start=at):
                yield i, lb

    def located(block: CriteoBlock, i: int, lb: LineBlock, synced: bool) -> CriteoBlock:
        block.resume_at, block.synced = (i, lb.offset + len(lb.data), lb.next_line), synced
        return block

    if workers <= 1:
        # One parsing thread: the compiled parser (or NumPy) runs without the GIL while the caller handles
        # the block before, as pyarrow.csv's reader uses threads; the yielded blocks are the same.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="criteo-parse")
        depth = 2
    else:
        # An executor, not multiprocessing.Pool: Pool.terminate() on an error with blocks still queued
        # could hang for good (its task thread stuck writing a block that no worker reads; seen under
        # load in tests/data/test_criteo.py), and a dead worker makes the executor raise, not hang.
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
        depth = 2 * workers
    submit = pool.submit
    try:
        pending: deque = deque()
        last_sync = time.monotonic()

        def finish(synced: bool = False) -> CriteoBlock:
            job, i, lb = pending.popleft()
            block, part = job.result()
            if report is not None:
                report.merge(part)
            return located(block, i, lb, synced)

        for i, lb in blocks():
            pending.append((submit(_parse_task, lb.data, str(paths[i]), lb.first_line, report is not None,
                                   lb.next_line - lb.first_line, count_values), i, lb))
            if time.monotonic() - last_sync >= sync_every:  # drain: the reader is paused right after lb
                while pending:
                    yield finish(synced=len(pending) == 1)
                last_sync = time.monotonic()
            elif len(pending) >= depth:
                yield finish()
        while pending:
            yield finish(synced=len(pending) == 1)
    finally:  # an error, or a consumer that stopped early: drop the queued blocks, wait for the running ones
        pool.shutdown(wait=True, cancel_futures=True)


def _parse_task(data: bytes, path: str, first_line: int, skip: bool, num_lines: int,
                count_values: bool) -> tuple[CriteoBlock, BadLineReport | None]:
    report = BadLineReport() if skip else None
    block = parse_lines(data, path, first_line, report, num_lines)
    if count_values:  # here, beside the parsing, rather than in the caller's thread
        cats, present = block.cats.T.copy(), ~block.cat_missing.T  # each feature contiguous: gathered faster
        block.value_counts = [sorted_counts(cats[j][present[j]]) for j in range(len(cats))]
    return block, report
