"""Writing synthetic data out: as a prepared dataset directory, or as Criteo-format text."""
from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..io import atomic_replace
from .store import StoreBuilder
from .synthetic import CHUNK_ROWS, SyntheticCTR, add_id_counts
from .transform import DenseTransform

__all__ = ["save_synthetic", "write_criteo_text", "id_hashes", "hex8"]

_HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def save_synthetic(ds: SyntheticCTR, out: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> Path:
    """Write every row of ``ds`` (with ``click_prob``) as a prepared dataset directory, chunk by chunk,
    with the train-split id counts (counted from the rows written, so no extra pass)."""
    info = ds.info
    n, nf, nd = ds.config.num_rows, len(info.categorical_names), len(info.dense_names)
    n_train = ds.split_ranges["train"][1]
    counts = [np.zeros(c, dtype=np.int64) for c in info.cardinalities]
    with StoreBuilder(out, overwrite=overwrite) as store:
        names = {"sparse": ((n, nf), np.int32), "dense": ((n, nd), np.float32), "labels": ((n,), np.uint8),
                 "click_prob": ((n,), np.float32)}
        writers = {k: store.writer(k, shape, dtype) for k, (shape, dtype) in names.items()}
        for a in tqdm(range(0, n, CHUNK_ROWS), desc="synth", unit="chunk", disable=not progress):
            rows = ds.rows(a, min(n, a + CHUNK_ROWS))
            for k, w in writers.items():
                w.write(rows[k])
            add_id_counts(counts, rows["sparse"][: max(0, n_train - a)])
        for w in writers.values():
            w.close()
        splits = {k: list(v) for k, v in ds.split_ranges.items()}
        return store.commit(
            replace(info, counts=dict(zip(info.categorical_names, counts))), n, splits,
            source={"kind": "synthetic", "config": ds.to_dict()},
            special_ids={name: {"missing": m} for name, m in zip(info.categorical_names, ds.missing_ids)},
            dense_transforms={name: DenseTransform("log1p").to_dict() for name in info.dense_names},
        )


def id_hashes(feature: int, ids: np.ndarray) -> np.ndarray:
    """uint32 stand-in hash values of ids (a bijection per feature, so distinct ids stay distinct)."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64((feature * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF)
    return (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def hex8(values: np.ndarray) -> pa.Array:
    """uint32 ``values`` as 8 lowercase hex digits (a string array), as Criteo writes its hashes."""
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    chars = _HEX_CHARS[(values.astype(np.uint32)[:, None] >> shifts) & 15]
    offsets = np.arange(0, 8 * len(values) + 1, 8, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])


def write_criteo_text(
    ds: SyntheticCTR, path: str | os.PathLike, num_lines: int | None = None, compress: bool | None = None,
    progress: bool = True,
) -> Path:
    """Write the first ``num_lines`` rows of ``ds`` as Criteo-format text (gzip if ``compress`` or the
    name ends in ``.gz``): raw dense counts (missing empty), ids as 8-hex-digit hashes (the missing id empty).

    Written to a temporary name and renamed into place.
    """
    path = Path(path)
    n = ds.config.num_rows if num_lines is None else num_lines
    compress = path.suffix == ".gz" if compress is None else compress
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if compress else (lambda p: open(p, "wb"))

    def write(tmp: Path) -> None:
        with opener(tmp) as out:
            for a in tqdm(range(0, n, CHUNK_ROWS), desc="write", unit="chunk", disable=not progress):
                rows = ds.rows(a, min(n, a + CHUNK_ROWS))
                cols = [pc.cast(pa.array(rows["labels"]), pa.string())]
                for j in range(rows["dense_raw"].shape[1]):
                    s = pc.cast(pa.array(rows["dense_raw"][:, j]), pa.string())
                    cols.append(pc.if_else(pa.array(rows["dense_missing"][:, j]), "", s))
                for j in range(rows["sparse"].shape[1]):
                    ids = rows["sparse"][:, j]
                    cols.append(pc.if_else(pa.array(ids == ds.missing_ids[j]), "", hex8(id_hashes(j, ids))))
                cols[-1] = pc.binary_join_element_wise(cols[-1], "", "\n")  # "C26\n"
                lines = pc.binary_join_element_wise(*cols, "\t")
                offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
                out.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])

    atomic_replace(write, path)
    return path
