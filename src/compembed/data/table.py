"""Generic CTR tables (CSV/TSV with a header, or Parquet) -> a prepared dataset directory.

The user names the label column (values 0/1), the categorical columns, the dense (numeric) columns
and the multi-valued columns (``a|b|c``, or Parquet lists); every other column is ignored, so a
column that leaks the label (e.g. MovieLens' ``rating``) is simply not named. Two streaming passes
(pyarrow): validate, count rows and collect the distinct values; then write the labels, the raw dense
values (a scratch file) and provisional ids (a value's rank among all distinct values), counting the
provisional ids and the dense statistics of the train split. The vocabularies come from those train
counts (0 = missing, 1 = rare/unseen, 2.. = values seen at least ``min_freq`` times in train, in sorted
order, or all renumbered by train frequency), so a value seen only in validation or test data gets
the unseen id; the provisional ids are then relabelled in place and the dense columns transformed
(``transform``). Bad rows (wrong field count, label not 0/1, non-numeric dense value) raise
``InputError`` with file, line and column, or are skipped and counted with ``skip_bad_lines``.
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..io import check_input_files
from .dataset import ID_ORDERS, DatasetInfo
from .errors import BadLine, BadLineReport, InputError
from .prepare import PrepareResult, random_split_codes
from .store import SPLIT_CODES, StoreBuilder
from .transform import DENSE_TRANSFORMS, DenseStats, apply_transforms, choose_transforms
from .vocab import MISSING_ID, RARE_ID, Vocabulary, ids_doc, kept_ids, special_ids

__all__ = ["TableSpec", "TableRows", "prepare_table", "read_table_rows"]

_REMAP_ROWS = 1 << 20  # rows per step of the in-place relabelling and the dense transform
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclass
class TableSpec:
    """What the columns of a table mean, and how to prepare it.

    Attributes:
        label: the 0/1 label column.
        categorical: single-valued categorical columns.
        dense: numeric columns (missing -> 0 after the transform).
        multi_hot: multi-valued columns, tokens joined by ``multi_hot_sep`` (or Parquet lists).
        delimiter: field separator of text files; None: tab for ``.tsv``/``.tsv.gz``, else comma.
        dense_transform: ``log1p`` (negatives clipped to 0, then log(1 + x)), ``standardize`` (train mean
            and std), ``auto`` (per column: log1p if count-like, else standardize; see ``transform``) or
            ``none``.
        min_freq: values seen fewer times in the train split share the rare id.
        id_order: ``value`` (sorted values) or ``frequency`` (by descending train count).
        split: ``random`` (per row from ``seed``), ``sequential`` (first rows train, then val, test, in
            file order: use for time-ordered data) or ``none`` (all train).
    """

    label: str
    categorical: list[str] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)
    multi_hot: list[str] = field(default_factory=list)
    multi_hot_sep: str = "|"
    delimiter: str | None = None
    dense_transform: str = "auto"
    min_freq: int = 1
    id_order: str = "value"
    split: str = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    skip_bad_lines: bool = False
    block_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        named = [self.label, *self.categorical, *self.dense, *self.multi_hot]
        dup = [c for c, k in Counter(named).items() if k > 1]
        if dup:
            raise ValueError(f"column(s) named twice (a column has one role; the label is never a feature): {dup}")
        if not (self.categorical or self.dense or self.multi_hot):
            raise ValueError("name at least one categorical, dense or multi-hot column")
        if self.dense_transform not in DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {DENSE_TRANSFORMS}, got {self.dense_transform!r}")
        if self.id_order not in ID_ORDERS:
            raise ValueError(f"id_order must be one of {ID_ORDERS}, got {self.id_order!r}")
        if self.split not in ("random", "sequential", "none"):
            raise ValueError(f"split must be random, sequential or none, got {self.split!r}")
        if self.min_freq < 1:
            raise ValueError("min_freq must be >= 1")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError("need val_fraction, test_fraction >= 0 with a sum below 1")

    @property
    def columns(self) -> list[str]:
        return [self.label, *self.categorical, *self.dense, *self.multi_hot]


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


class _Source:
    """Record batches of the named columns of one file, with the file line of every row.

    pyarrow numbers the rows of a text table by its non-empty lines (the header is 1) and skips
    empty lines; ``line`` turns those numbers into the file's lines, reading the file once more
    only when a problem is reported. Text that is not UTF-8, and a quoted value that runs past the
    end of its line (an unmatched quote would read the lines after it as that one value), stop the
    run at their line and column, with ``skip_bad_lines`` too: no row after them could be trusted.
    """

    def __init__(self, path: Path, spec: TableSpec, report: BadLineReport | None) -> None:
        self.path, self.spec, self.report = path, spec, report
        self.delimiter = spec.delimiter or ("\t" if ".tsv" in path.suffixes else ",")
        self.skipped: list[int] = []  # pyarrow row numbers of the rows the CSV reader dropped (sorted)
        self.error: InputError | None = None
        self._scan: tuple[np.ndarray, tuple[int, int, int] | None] | None = None
        self._names: list[str] | None = None

    def schema_names(self) -> list[str]:
        if self._names is None:
            if _is_parquet(self.path):
                self._names = pq.ParquetFile(self.path).schema_arrow.names
            else:
                try:
                    self._names = self._open(include=None, record=False).schema.names
                except UnicodeDecodeError as e:  # a header that is not UTF-8
                    raise self._unreadable(e) from None
        return self._names

    def column(self, name: str) -> int:
        """The 1-based column of ``name`` in the file."""
        return self.schema_names().index(name) + 1

    def line(self, number: int) -> int:
        """The 1-based line of the file that holds pyarrow's row ``number`` (a Parquet row is its number)."""
        if _is_parquet(self.path):
            return int(number)
        empty = self._text_scan()[0]
        return int(number + np.searchsorted(empty - np.arange(1, len(empty) + 1), number, side="left"))

    def _text_scan(self) -> tuple[np.ndarray, tuple[int, int, int] | None]:
        if self._scan is None:
            self._scan = _scan_text(self.path, self.delimiter)
        return self._scan

    def _open(self, include: list[str] | None, record: bool = True) -> pacsv.CSVStreamingReader:
        def on_invalid(row) -> str:
            if not record:  # only the header is wanted: the rows are reported when they are read
                return "skip"
            text, column = row.text, min(row.actual_columns, row.expected_columns) + 1
            if "\n" in text or "\r" in text:
                self.error = self._unmatched_quote(row.number, 1 + text[: text.find('"')].count(self.delimiter))
                return "error"
            msg = f"expected {row.expected_columns} fields, found {row.actual_columns}"
            if self.report is None:  # pyarrow turns an exception here into its own error: keep ours
                self.error = InputError(str(self.path), self.line(row.number), column, "field_count", msg)
                return "error"
            self.report.add(BadLine(str(self.path), self.line(row.number), column, "field_count", msg))
            self.skipped.append(row.number)
            return "skip"

        try:
            with _quiet_invalid_row_decoding():
                return pacsv.open_csv(
                self.path,
                    read_options=pacsv.ReadOptions(use_threads=False, block_size=self.spec.block_bytes),
                    parse_options=pacsv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=on_invalid),
                    convert_options=pacsv.ConvertOptions(
                        column_types={c: pa.string() for c in (include or [])}, include_columns=include,
                        strings_can_be_null=False, quoted_strings_can_be_null=False),
                )
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise self._unreadable(e) from None

    def _unreadable(self, err: Exception) -> InputError:
        """The error for a file pyarrow could not read: bad UTF-8 or our own first, else pyarrow's, located."""
        bad = None if _is_parquet(self.path) else self._text_scan()[1]
        if bad is not None:
            line, column, byte = bad
            return InputError(str(self.path), line, column, "bad_encoding",
                              f"byte 0x{byte:02x} is not UTF-8 text; convert the file to UTF-8 "
                              "(e.g. iconv -f latin1 -t utf-8)")
        if self.error is not None:
            return self.error
        row = re.search(r"Row #(\d+)", str(err))
        return InputError(str(self.path), self.line(int(row[1])) if row else 0, 0, "unreadable",
                          f"cannot read as a table ({err})")

    def _unmatched_quote(self, number: int, column: int) -> InputError:
        return InputError(str(self.path), self.line(number), column, "unmatched_quote",
                          "a quoted value runs past the end of its line (an unmatched quote?): the lines after "
                          "it would be read as part of it; fix or remove the quote")

    def batches(self) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """``(batch, rows)``: the named columns as strings (lists for Parquet lists) and the 1-based row
        numbers (pyarrow's for text: ``line`` gives the file line)."""
        names = self.schema_names()
        missing = [c for c in self.spec.columns if c not in names]
        if missing:
            raise InputError(str(self.path), 1, 0, "missing_column",
                             f"no column(s) {missing}; the table has {names}")
        row = 0
        if _is_parquet(self.path):
            for batch in pq.ParquetFile(self.path).iter_batches(columns=self.spec.columns, batch_size=65536):
                yield batch, np.arange(row + 1, row + 1 + batch.num_rows)
                row += batch.num_rows
            return
        self.skipped = []
        reader = self._open(self.spec.columns)
        while True:
            try:
                with _quiet_invalid_row_decoding():
                    batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, UnicodeDecodeError) as e:
                raise self._unreadable(e) from None
            # valid row k is row k + 2 (the header is 1), shifted past the skipped rows before it
            k = np.arange(row, row + batch.num_rows)
            skipped = np.asarray(self.skipped, dtype=np.int64)
            numbers = k + 2 + np.searchsorted(skipped - np.arange(len(skipped)) - 2, k, side="right")
            for name in self.spec.columns:  # a line break in a value: an unmatched quote swallowed lines
                col = batch.column(name)
                broken = pc.or_(pc.match_substring(col, "\n"), pc.match_substring(col, "\r"))
                if pc.any(broken).as_py():
                    raise self._unmatched_quote(int(numbers[pc.index(broken, True).as_py()]), self.column(name))
            yield batch, numbers
            row += batch.num_rows


@contextmanager
def _quiet_invalid_row_decoding() -> Iterator[None]:
    """pyarrow cannot hand a malformed row of non-UTF-8 bytes to our row handler: it prints the
    UnicodeDecodeError as "Exception ignored" and fails the read, which ``_Source._unreadable`` then
    locates. Keep that print (a traceback) away from the user; anything else is printed as before."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (issubclass(unraisable.exc_type, UnicodeDecodeError)
                and getattr(unraisable.object, "__name__", "") == "on_invalid"):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _scan_text(path: Path, delimiter: str, block: int = 1 << 24) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """The lines of a text table that are empty, and ``(line, column, byte)`` of its first byte that is not
    UTF-8 (None when all is). Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``, as pyarrow reads them."""
    empty: list[np.ndarray] = []
    line, carry = 1, b""  # `carry`, the unfinished last line, starts line `line`
    with pa.input_stream(str(path), compression="detect") as f:
        while True:
            chunk = f.read(block)
            data = carry + chunk
            b = np.frombuffer(data, dtype=np.uint8)
            lf, cr = b == 10, b == 13
            ends = np.flatnonzero(lf | (cr & ~np.append(lf[1:], False)))  # a CR before an LF is no end itself
            if chunk and len(ends) and cr[ends[-1]] and ends[-1] == len(b) - 1:
                ends = ends[:-1]  # a last CR may be half of a CRLF: decided with the next chunk
            starts = np.concatenate([[0], ends + 1]).astype(np.int64)  # of every line, the unfinished one too
            stops = ends - (lf[ends] & (ends > starts[:-1]) & np.append(False, cr[:-1])[ends])
            empty.append(line + np.flatnonzero(stops == starts[:-1]))
            cut = len(b) if not chunk else int(starts[-1])  # at the end of the file its last line is whole
            try:
                data[:cut].decode("utf-8")
            except UnicodeDecodeError as err:
                at = int(err.start)
                before = int(np.searchsorted(ends, at))  # lines ended before the bad byte
                column = data[starts[before]:at].count(delimiter.encode()) + 1
                return np.concatenate(empty), (line + before, column, data[at])
            if not chunk:
                return np.concatenate(empty), None
            line, carry = line + len(ends), data[cut:]


def _as_strings(col: pa.Array) -> pa.Array:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return pc.cast(col, pa.string())


def _tokens(col: pa.Array, sep: str) -> pa.ListArray:
    """A multi-hot column as a list<string> array (empty tokens and nulls dropped)."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pa.ListArray.from_arrays(col.offsets, _as_strings(col.values))
    return pc.split_pattern(_as_strings(col), sep)


def _check_rows(batch: pa.RecordBatch, rows: np.ndarray, src: _Source, report: BadLineReport | None) -> np.ndarray:
    """bool mask of valid rows; bad ones raise or are recorded in ``report`` (with the file's line and column)."""
    spec = src.spec
    keep = np.ones(batch.num_rows, dtype=bool)
    problems: list[tuple[int, int, str, str]] = []
    label = _as_strings(batch.column(spec.label))
    lab_ok = np.asarray(pc.fill_null(pc.is_in(pc.utf8_trim_whitespace(label), pa.array(["0", "1"])), False))
    for i in np.flatnonzero(~lab_ok):
        problems.append((i, src.column(spec.label), "bad_label",
                         f"{spec.label}: label must be 0 or 1, got {label[int(i)].as_py()!r}"))
    for name in spec.dense:
        col = batch.column(name)
        if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
            ok = np.asarray(pc.fill_null(pc.is_finite(pc.cast(col, pa.float64())), True))
        else:
            s = _as_strings(col)
            ok = np.asarray(pc.fill_null(pc.or_(pc.equal(pc.utf8_trim_whitespace(s), ""),
                                                pc.match_substring_regex(s, _NUMBER)), True))
        for i in np.flatnonzero(~ok):
            problems.append((i, src.column(name), "bad_dense", f"{name}: {col[int(i)].as_py()!r} is not a finite number"))
    for i, col_no, kind, msg in sorted(problems):
        if report is None:
            raise InputError(str(src.path), src.line(rows[i]), col_no, kind, msg)
        if keep[i]:
            report.add(BadLine(str(src.path), src.line(rows[i]), col_no, kind, msg))
        keep[i] = False
    return keep


def _dense_raw(col: pa.Array) -> np.ndarray:
    """float64 values of a (validated) dense column, NaN where missing."""
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        s = pc.utf8_trim_whitespace(col)
        col = pc.cast(pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s), pa.float64())
    return np.asarray(pc.fill_null(pc.cast(col, pa.float64()), np.nan), dtype=np.float64)


def prepare_table(
    inputs: list[str | os.PathLike], out: str | os.PathLike, spec: TableSpec, overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Prepare CSV/TSV (plain or gzip) or Parquet files ``inputs`` (same columns) into the dataset ``out``."""
    t0 = time.perf_counter()
    paths = [Path(p) for p in inputs]
    check_input_files(paths)
    for p in paths:
        if p.stat().st_size == 0:
            raise InputError(str(p), 0, 0, "empty_file", "file is empty")
    report = BadLineReport()
    rep = report if spec.skip_bad_lines else None
    sources = [_Source(p, spec, rep) for p in paths]

    # ---- pass 1: validate, count rows, values and tokens
    counts: dict[str, Counter] = {c: Counter() for c in spec.categorical + spec.multi_hot}
    n, n_tokens = 0, {c: 0 for c in spec.multi_hot}
    bar = tqdm(desc="count", unit="rows", disable=not progress)
    for src in sources:
        for batch, lines in src.batches():
            keep = _check_rows(batch, lines, src, rep)
            batch = batch.filter(pa.array(keep))
            for c in spec.categorical:
                s = _as_strings(batch.column(c))
                vc = pc.value_counts(pc.filter(s, pc.not_equal(s, "")))
                counts[c].update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
            for c in spec.multi_hot:
                lists = _tokens(batch.column(c), spec.multi_hot_sep)
                flat = pc.list_flatten(lists)
                flat = pc.filter(flat, pc.not_equal(flat, ""))
                vc = pc.value_counts(flat)
                counts[c].update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
                n_tokens[c] += int(np.maximum(_bag_lengths(lists), 1).sum())
            n += batch.num_rows
            bar.update(batch.num_rows)
    bar.close()
    if n == 0:
        raise InputError(", ".join(map(str, paths)), 0, 0, "empty_dataset",
                         "no valid rows" + (f"\n{report.summary()}" if report.total else ""))
    candidates = {c: sorted(counts[c]) for c in counts}  # every distinct value; provisional id = 2 + rank
    value_sets = {c: pa.array(candidates[c], pa.string()) for c in candidates}
    splits, sizes, codes = _split(n, spec)

    # ---- pass 2: labels, raw dense values, provisional ids; train counts and dense statistics
    single, multi = spec.categorical, spec.multi_hot
    names = single + multi
    nd = len(spec.dense)
    with StoreBuilder(out, overwrite=overwrite) as store:
        raw_path = store.file("dense.scratch")
        raw = np.memmap(raw_path, dtype=np.float64, mode="w+", shape=(n, nd)) if nd else np.empty((n, 0))
        sparse = store.array("sparse", (n, len(single)), np.int32)
        labels = store.array("labels", (n,), np.uint8)
        bags = {c: (store.array(f"mh.{c}.values", (n_tokens[c],), np.int32),
                    store.array(f"mh.{c}.offsets", (n + 1,), np.int64)) for c in multi}
        for c in multi:
            bags[c][1][0] = 0
        train_counts = {c: np.zeros(len(candidates[c]) + 2, dtype=np.int64) for c in names}
        stats = DenseStats(nd)
        pos, tok = 0, {c: 0 for c in multi}
        bar = tqdm(total=n, desc="write", unit="rows", disable=not progress)
        for src in sources:
            src.report = None if rep is None else BadLineReport()  # already counted in pass 1
            for batch, lines in src.batches():
                keep = _check_rows(batch, lines, src, src.report)
                batch = batch.filter(pa.array(keep))
                m = batch.num_rows
                sl = slice(pos, pos + m)
                train = codes[sl] == SPLIT_CODES["train"]
                labels[sl] = np.asarray(pc.cast(pc.utf8_trim_whitespace(_as_strings(batch.column(spec.label))),
                                                pa.uint8()))
                for j, c in enumerate(spec.dense):
                    raw[sl, j] = _dense_raw(batch.column(c))
                stats.add(np.asarray(raw[sl])[train])
                for j, c in enumerate(single):
                    ids = _map_ids(_as_strings(batch.column(c)), value_sets[c])
                    sparse[sl, j] = ids
                    train_counts[c] += np.bincount(ids[train], minlength=len(train_counts[c]))
                for c in multi:
                    lists = _tokens(batch.column(c), spec.multi_hot_sep)
                    values, lengths = _map_bags(lists, value_sets[c])
                    bags[c][0][tok[c] : tok[c] + len(values)] = values
                    bags[c][1][pos + 1 : pos + m + 1] = tok[c] + np.cumsum(lengths)
                    tok[c] += len(values)
                    train_counts[c] += np.bincount(values[np.repeat(train, lengths)], minlength=len(train_counts[c]))
                pos += m
                bar.update(m)
        bar.close()
        assert pos == n, f"pass 2 read {pos} rows, pass 1 counted {n}"

        # ---- vocabularies from the train counts; relabel the provisional ids; transform the dense values
        vocabs = []
        for j, c in enumerate(names):
            tc = train_counts[c]
            vocab = Vocabulary.from_counts(np.array(candidates[c], dtype=object), tc[2:], spec.min_freq, int(tc[0]),
                                           spec.id_order)
            remap = vocab.relabel(np.concatenate([[MISSING_ID, RARE_ID], kept_ids(tc[2:], spec.min_freq)]))
            target = bags[c][0] if c in multi else sparse[:, j]
            for a in range(0, len(target), _REMAP_ROWS):
                target[a : a + _REMAP_ROWS] = remap[target[a : a + _REMAP_ROWS]]
            vocabs.append(vocab)
        transforms = choose_transforms(spec.dense_transform, stats, nd)
        dense = store.array("dense", (n, nd), np.float32)
        for a in range(0, n, _REMAP_ROWS):
            dense[a : a + _REMAP_ROWS] = apply_transforms(transforms, np.asarray(raw[a : a + _REMAP_ROWS]))
        del raw
        raw_path.unlink(missing_ok=True)
        if spec.split == "random":
            store.save("split", codes)
        info = DatasetInfo(dense_names=list(spec.dense), categorical_names=names,
                           cardinalities=[v.cardinality for v in vocabs], multi_hot_names=list(multi),
                           split_sizes=sizes, counts={c: v.counts for c, v in zip(names, vocabs)},
                           id_order=spec.id_order)
        store.json("vocab.json", {c: v.values_by_id().tolist() for c, v in zip(names, vocabs)})
        extra = {
            "source": {"kind": "table", "files": [str(p) for p in paths]},
            "preprocessing": {**asdict(spec), "ids": ids_doc(spec.id_order, "string")},
            "dense_transforms": {c: t.to_dict() for c, t in zip(spec.dense, transforms)},
            "special_ids": special_ids(names, vocabs),
            "distinct_values": {c: len(counts[c]) for c in counts},
            "ignored_columns": [c for c in sources[0].schema_names() if c not in spec.columns],
            "bad_lines": report.to_dict(),
        }
        path = store.commit(info, n, splits, **extra)
    return PrepareResult(path, n, info, report, time.perf_counter() - t0,
                         sum(p.stat().st_size for p in paths), extra)


def _split(n: int, spec: TableSpec) -> tuple[dict | str, dict[str, int], np.ndarray]:
    """``(splits for meta.json, split sizes, uint8 (n,) split code of every row)``."""
    if spec.split == "random":
        codes = random_split_codes(0, n, spec.seed, spec.val_fraction, spec.test_fraction)
        cnt = np.bincount(codes, minlength=3)
        return "split.npy", {s: int(cnt[code]) for s, code in SPLIT_CODES.items()}, codes
    if spec.split == "sequential":
        n_val, n_test = int(round(n * spec.val_fraction)), int(round(n * spec.test_fraction))
        n_train = n - n_val - n_test
        splits = {"train": [0, n_train], "val": [n_train, n_train + n_val], "test": [n_train + n_val, n]}
    else:
        splits = {"train": [0, n], "val": [n, n], "test": [n, n]}
    codes = np.empty(n, dtype=np.uint8)
    for name, (a, b) in splits.items():
        codes[a:b] = SPLIT_CODES[name]
    return splits, {k: b - a for k, (a, b) in splits.items()}, codes


def _map_ids(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """int32 ids: missing (empty/null) -> 0, not in the vocabulary -> 1, else index + 2."""
    idx = np.asarray(pc.fill_null(pc.index_in(values, value_set=value_set), -1), dtype=np.int64)
    ids = np.where(idx >= 0, idx + 2, RARE_ID).astype(np.int32)
    empty = np.asarray(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), True))
    ids[empty] = MISSING_ID
    return ids


def _bag_lengths(lists: pa.Array) -> np.ndarray:
    """Tokens per row after dropping empty tokens."""
    flat = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists))
    nonempty = np.asarray(pc.not_equal(flat, ""))
    return np.bincount(parents[nonempty], minlength=len(lists))


def _map_bags(lists: pa.Array, value_set: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and per-row lengths of a multi-hot column; an empty or missing bag becomes ``[0]``."""
    flat = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists))
    nonempty = np.asarray(pc.not_equal(flat, ""))
    ids = _map_ids(pc.filter(flat, pa.array(nonempty)), value_set)
    parents = parents[nonempty]
    lengths = np.bincount(parents, minlength=len(lists))
    empty_rows = np.flatnonzero(lengths == 0)
    if len(empty_rows):  # insert a missing id 0 for each empty bag, keeping row order
        ids = np.insert(ids, np.searchsorted(parents, empty_rows), MISSING_ID)
        lengths[empty_rows] = 1
    return ids.astype(np.int32), lengths


@dataclass
class TableRows:
    """Validated rows of a table file, encoded as ``prepare_table`` encodes them before the vocabularies.

    Attributes:
        dense: float64 ``(m, len(spec.dense))`` raw values, NaN where missing (``transform`` applies next).
        single: per categorical column, int64 ``(m,)`` positions in its value set: 0 = missing (empty),
            1 = not in the set, ``2 + k`` = the set's ``k``-th value.
        bags: per multi-hot column, ``(positions (M,), lengths (m,))`` likewise; an empty bag is ``[0]``.
    """

    dense: np.ndarray
    single: dict[str, np.ndarray]
    bags: dict[str, tuple[np.ndarray, np.ndarray]]


def read_table_rows(path: str | os.PathLike, spec: TableSpec, value_sets: dict[str, pa.Array]) -> Iterator[TableRows]:
    """The rows of one table file in blocks, validated as ``prepare_table`` validates them (a bad row raises
    ``InputError`` with file, line and column), with the categorical values looked up in ``value_sets``
    (``{column: string array}``) by the rules of ``prepare_table`` (empty = missing)."""
    path = Path(path)
    check_input_files([path])
    if path.stat().st_size == 0:
        raise InputError(str(path), 0, 0, "empty_file", "file is empty")
    src = _Source(path, spec, None)
    for batch, rows in src.batches():
        _check_rows(batch, rows, src, None)  # raises at the first bad row
        dense = np.empty((batch.num_rows, len(spec.dense)))
        for j, c in enumerate(spec.dense):
            dense[:, j] = _dense_raw(batch.column(c))
        single = {c: _map_ids(_as_strings(batch.column(c)), value_sets[c]).astype(np.int64) for c in spec.categorical}
        bags = {}
        for c in spec.multi_hot:
            values, lengths = _map_bags(_tokens(batch.column(c), spec.multi_hot_sep), value_sets[c])
            bags[c] = (values.astype(np.int64), lengths)
        yield TableRows(dense, single, bags)
