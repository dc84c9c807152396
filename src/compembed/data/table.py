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
import time
from collections import Counter
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

__all__ = ["TableSpec", "prepare_table"]

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
    """Record batches of the named columns of one file, with the file line of every row."""

    def __init__(self, path: Path, spec: TableSpec, report: BadLineReport | None) -> None:
        self.path, self.spec, self.report = path, spec, report
        self.skipped_lines: list[int] = []  # physical lines dropped by the CSV reader (sorted)
        self.error: InputError | None = None

    def schema_names(self) -> list[str]:
        if _is_parquet(self.path):
            return pq.ParquetFile(self.path).schema_arrow.names
        first = self._open(include=None)
        return first.schema.names

    def _open(self, include: list[str] | None) -> pacsv.CSVStreamingReader:
        delim = self.spec.delimiter or ("\t" if ".tsv" in self.path.suffixes else ",")

        def on_invalid(row) -> str:
            msg = f"expected {row.expected_columns} fields, found {row.actual_columns}"
            if self.report is None:  # pyarrow turns an exception here into its own error: keep ours
                self.error = InputError(str(self.path), row.number or 0,
                                        min(row.actual_columns, row.expected_columns) + 1, "field_count", msg)
                return "error"
            self.report.add(BadLine(str(self.path), row.number or 0, 0, "field_count", msg))
            self.skipped_lines.append(row.number or 0)
            return "skip"

        try:
            return pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=self.spec.block_bytes),
                parse_options=pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in (include or [])}, include_columns=include,
                    strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
        except pa.ArrowInvalid as e:
            raise self.error or InputError(str(self.path), 0, 0, "unreadable", f"cannot read as a table ({e})") from None

    def batches(self) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """``(batch, lines)``: the named columns as strings (lists for Parquet lists), 1-based lines/rows."""
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
        self.skipped_lines = []
        reader = self._open(self.spec.columns)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as e:
                raise self.error or InputError(str(self.path), 0, 0, "unreadable", str(e)) from None
            # valid row k sits on line k + 2 (header is line 1), shifted past every skipped line
            lines = np.arange(row + 2, row + 2 + batch.num_rows)
            for s in self.skipped_lines:
                lines[lines >= s] += 1
            yield batch, lines
            row += batch.num_rows


def _as_strings(col: pa.Array) -> pa.Array:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return pc.cast(col, pa.string())


def _tokens(col: pa.Array, sep: str) -> pa.ListArray:
    """A multi-hot column as a list<string> array (empty tokens and nulls dropped)."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pa.ListArray.from_arrays(col.offsets, _as_strings(col.values))
    return pc.split_pattern(_as_strings(col), sep)


def _check_rows(batch: pa.RecordBatch, lines: np.ndarray, spec: TableSpec, path: Path,
                report: BadLineReport | None) -> np.ndarray:
    """bool mask of valid rows; bad ones raise or are recorded in ``report``."""
    keep = np.ones(batch.num_rows, dtype=bool)
    problems: list[tuple[int, int, str, str]] = []
    label = _as_strings(batch.column(spec.label))
    lab_ok = np.asarray(pc.fill_null(pc.is_in(pc.utf8_trim_whitespace(label), pa.array(["0", "1"])), False))
    for i in np.flatnonzero(~lab_ok):
        problems.append((i, spec.columns.index(spec.label) + 1, "bad_label",
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
            problems.append((i, 0, "bad_dense", f"{name}: {col[int(i)].as_py()!r} is not a finite number"))
    for i, col_no, kind, msg in sorted(problems):
        if report is None:
            raise InputError(str(path), int(lines[i]), col_no, kind, msg)
        if keep[i]:
            report.add(BadLine(str(path), int(lines[i]), col_no, kind, msg))
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
            keep = _check_rows(batch, lines, spec, src.path, rep)
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
                keep = _check_rows(batch, lines, spec, src.path, src.report)
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
