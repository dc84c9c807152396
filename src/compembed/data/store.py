"""The on-disk dataset format: a directory of NumPy ``.npy`` arrays plus JSON, written atomically.

Layout of a prepared dataset directory::

    meta.json           format tag, DatasetInfo, row count, splits, provenance (written last); where the
                        special ids are (``special_ids``), the dense transforms (``dense_transforms``)
    cardinalities.json  {feature: cardinality}
    vocab.json          {feature: [raw value of each id in increasing id order, the special ids left out]}
                        (value order: id 0 = missing, id 1 = rare/unseen, so the list starts at id 2)
    counts.npy          int64 (sum of cardinalities,) train-split occurrences of every id, the features'
                        arrays one after the other in ``categorical_names`` order (absent in old datasets)
    dense.npy           float32 (N, num_dense), already transformed
    sparse.npy          int32 (N, F) ids of the single-valued categorical features
    labels.npy          uint8 (N,)
    click_prob.npy      float32 (N,), synthetic data only
    split.npy           uint8 (N,) split code per row (0 train, 1 val, 2 test), unless meta.json gives ranges
    mh.<name>.values.npy / mh.<name>.offsets.npy   int32 ids / int64 (N + 1,) CSR bags of a multi-hot feature

The directory is built under a temporary sibling name, every file fsynced, then renamed into place
with ``os.replace``: a killed run leaves only a ``.partial*`` directory (without ``meta.json``), never a
dataset that opens.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..io import fsync_dir, named_os_error, write_json_atomic
from .dataset import SPLITS, ArrayDataset, DatasetInfo

__all__ = ["FORMAT", "StoreBuilder", "open_dataset", "read_meta", "dataset_identity", "DatasetFormatError"]

FORMAT = "compembed-ctr"
VERSION = 1
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


class DatasetFormatError(ValueError):
    """A path that is not a complete prepared dataset."""


class StoreBuilder:
    """Builds a dataset directory under a temporary name; ``commit`` moves it into place.

    Use as a context manager: leaving the block with an exception removes the temporary directory (but see
    ``resumable``); an I/O error that names no file (a write on an open file) is raised naming it.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, resumable: bool = False) -> None:
        """``resumable``: build in the fixed directory ``<path>.partial`` (reusing one left by an
        interrupted run) and keep it when interrupted by ``KeyboardInterrupt`` or an I/O error (``OSError``:
        a full disk, say), so that the run can go on from its last checkpoint."""
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists (pass overwrite=True / --overwrite to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "partial" if resumable else f"partial-{uuid.uuid4().hex[:8]}"
        self.tmp = self.path.with_name(f"{self.path.name}.{suffix}")
        self.resumable = resumable
        self.resumed = self.tmp.is_dir()
        self.tmp.mkdir(exist_ok=resumable)
        self.overwrite = overwrite
        self._arrays: dict[str, np.memmap] = {}

    def __enter__(self) -> "StoreBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        if not (self.resumable and issubclass(exc_type, (KeyboardInterrupt, OSError))):
            self.abort()
        named = named_os_error(exc, self.tmp)
        if named is not None:
            raise named from exc

    def clear(self) -> None:
        """Empty the temporary directory (a stale one that is not resumed)."""
        shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.resumed = False

    def file(self, name: str) -> Path:
        return self.tmp / name

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A new ``.npy`` memory map ``name`` in the dataset, to be filled by the caller."""
        arr = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        self._arrays[name] = arr
        return arr

    def writer(self, name: str, shape: tuple[int, ...], dtype: Any) -> "NpyWriter":
        """A new ``.npy`` array ``name`` filled by sequential appends (its pages do not stay in RSS)."""
        return NpyWriter(self.tmp / f"{name}.npy", shape, dtype)

    def save(self, name: str, value: np.ndarray) -> None:
        self.array(name, value.shape, value.dtype)[...] = value

    def json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.tmp / name, obj)

    def commit(self, info: DatasetInfo, num_rows: int, splits: dict[str, Any], **extra: Any) -> Path:
        """Write ``info.counts`` (if any), flush every array, write ``meta.json`` and move the directory into
        place; returns the path."""
        if info.counts is not None:
            self.save("counts", _concat_counts(info))
        for arr in self._arrays.values():
            arr.flush()
        self._arrays.clear()
        self.json("cardinalities.json", dict(zip(info.categorical_names, map(int, info.cardinalities))))
        meta = {"format": FORMAT, "version": VERSION, "num_rows": int(num_rows), "info": info.to_dict(),
                "splits": splits, **extra}
        self.json("meta.json", meta)
        for p in self.tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if self.path.exists():
            old = self.path.with_name(f"{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _concat_counts(info: DatasetInfo) -> np.ndarray:
    parts = []
    for name, card in zip(info.categorical_names, info.cardinalities):
        c = np.asarray(info.counts[name], dtype=np.int64)
        if c.shape != (card,):
            raise ValueError(f"counts of feature {name!r}: shape {c.shape}, expected ({card},) (its cardinality)")
        parts.append(c)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _split_counts(path: Path, info: DatasetInfo, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature views of ``counts.npy`` (memory-mapped when it is)."""
    ends = np.cumsum(info.cardinalities, dtype=np.int64)
    if counts.shape != (int(ends[-1]) if len(ends) else 0,):
        raise DatasetFormatError(f"{path}/counts.npy: shape {counts.shape}, the cardinalities in meta.json "
                                 f"add up to {int(ends[-1]) if len(ends) else 0}")
    return {name: counts[int(e) - int(c) : int(e)]
            for name, c, e in zip(info.categorical_names, info.cardinalities, ends)}


class NpyWriter:
    """Writes a ``.npy`` file of known shape by appending row chunks in order (a context manager)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self.rows = 0
        self._f = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._f, header)

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.shape[1:] or self.rows + len(chunk) > self.shape[0]:
            raise ValueError(f"{self.path.name}: chunk {chunk.shape} does not fit {self.shape} after {self.rows} rows")
        self._f.write(memoryview(chunk).cast("B"))
        self.rows += len(chunk)

    def close(self) -> None:
        self._f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: wrote {self.rows} of {self.shape[0]} rows")

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta_path = path / "meta.json"
    made_by = "prepare one with `compembed prepare` or `compembed synth`"
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"no such dataset directory ({made_by})", str(path))
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"not a directory, so not a dataset ({made_by})", str(path))
    if not meta_path.exists():
        raise DatasetFormatError(f"{path}: no meta.json, so not a complete prepared dataset")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{meta_path}: invalid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise DatasetFormatError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DatasetFormatError(f"{meta_path}: version {meta.get('version')}, this compembed reads {VERSION}")
    return meta


def dataset_identity(path: str | os.PathLike) -> str | None:
    """What names a prepared dataset wherever its directory lies: ``sha1:`` and the digest of its
    ``meta.json``, or None where ``path`` holds no ``meta.json``.

    ``meta.json`` is written last, by ``prepare`` alone, and holds what the arrays are made of: the row
    count, the splits, the cardinalities and value counts, the source files and their bytes, and the
    preprocessing. So a moved or copied dataset keeps its identity, and one prepared from other data
    (or otherwise) gets another. Runs and sweep cells use it instead of the directory's path
    (``training.rundir``, ``sweep.grid.cell_key``).
    """
    meta = Path(path) / "meta.json"
    try:
        stat = meta.stat()
    except OSError:
        return None
    return _identity(str(meta.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _identity(meta: str, mtime_ns: int, size: int) -> str:
    """The digest of ``meta`` (read once per version of the file: a sweep asks for it per cell)."""
    return "sha1:" + hashlib.sha1(Path(meta).read_bytes()).hexdigest()


def open_dataset(path: str | os.PathLike, mmap: bool = True) -> ArrayDataset:
    """Open a prepared dataset directory (memory-mapped by default) as a ``CTRDataset``.

    Raises ``DatasetFormatError`` naming the problem when ``path`` is not a complete dataset.
    """
    path = Path(path)
    meta = read_meta(path)
    info = DatasetInfo.from_dict(meta["info"])
    n = meta["num_rows"]

    def load(name: str, required: bool = True) -> np.ndarray | None:
        f = path / f"{name}.npy"
        if not f.exists():
            if required:
                raise DatasetFormatError(f"{path}: missing {f.name}")
            return None
        try:
            arr = np.load(f, mmap_mode="r" if mmap else None)
        except ValueError as e:
            raise DatasetFormatError(f"{f}: unreadable array ({e})") from None
        return arr

    dense, sparse, labels = load("dense"), load("sparse"), load("labels")
    expected = {"dense": (n, len(info.dense_names)), "sparse": (n, len(info.single_names)), "labels": (n,)}
    for name, arr in (("dense", dense), ("sparse", sparse), ("labels", labels)):
        if arr.shape != expected[name]:
            raise DatasetFormatError(f"{path}/{name}.npy: shape {arr.shape}, meta.json says {expected[name]}")
    multi = {}
    for name in info.multi_hot_names:
        values, offsets = load(f"mh.{name}.values"), load(f"mh.{name}.offsets")
        if offsets.shape != (n + 1,) or int(offsets[-1]) != len(values):
            raise DatasetFormatError(f"{path}: multi-hot feature {name!r} has inconsistent offsets")
        multi[name] = (values, offsets)
    splits: dict[str, np.ndarray | tuple[int, int]] = {}
    if meta["splits"] == "split.npy":
        codes = np.asarray(load("split"))
        for name, code in SPLIT_CODES.items():
            splits[name] = np.flatnonzero(codes == code)
    else:
        for name, (a, b) in meta["splits"].items():
            splits[name] = (int(a), int(b))
    counts = load("counts", required=False)
    if counts is not None:
        info.counts = _split_counts(path, info, counts)
    return ArrayDataset(info, dense, sparse, labels, splits, multi, load("click_prob", required=False))
