"""Scoring raw rows with an exported model (see ``export``): click probabilities, one per input row.

Input formats are those ``compembed prepare`` reads, parsed and validated by the same code, so a
malformed row raises the same ``InputError`` (file, line, column):

* a model trained on Criteo data reads Criteo-format text (plain or gzip): ``label, I1..I13, C1..C26``,
  40 tab-separated fields. The label column is required, as in ``prepare`` (any 0 or 1: it is not used);
* a model trained on a table reads a table with the same columns (CSV/TSV with a header, or Parquet),
  the label column included (checked to be 0/1, not used); other columns are ignored.

Categorical values map to ids through the stored vocabularies with the data package's ``IdMap``:
a value that training did not keep (rare, or never seen) gets the rare/unseen id, an empty one the
missing id. Dense values go through the stored ``DenseTransform``s.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..data.batch import Batch
from ..data.criteo import read_criteo
from ..data.export import hex8
from ..data.table import TableSpec, read_table_rows
from ..data.transform import DenseTransform, apply_transforms
from ..data.vocab import IdMap, id_maps
from ..io import atomic_replace, check_input_files
from .export import EXTRA_FILE, FORMAT

__all__ = ["ServedModel", "load_served", "predict_file"]


class ServedModel:
    """An exported model and its preprocessing: ``batches(path)`` turns raw rows into model inputs,
    ``probabilities(dense, features)`` scores them."""

    def __init__(self, program: torch.export.ExportedProgram, preprocess: dict[str, Any], path: str = "",
                 device: torch.device | str = "cpu") -> None:
        if preprocess.get("format") != FORMAT:
            raise ValueError(f"{path}: not a compembed export (format {preprocess.get('format')!r}, expected {FORMAT!r})")
        self.device = torch.device(device)
        if self.device.type != "cpu":
            if preprocess.get("model", {}).get("int8"):
                raise ValueError(f"{path}: int8 tables run on the CPU only (torch's int8 embedding kernels have no "
                                 f"{self.device.type} version); predict with --device cpu")
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        self.module = program.module()
        self.preprocess = preprocess
        self.kind = preprocess["kind"]
        self.names = preprocess["categorical_names"]
        self.multi_hot = set(preprocess["multi_hot_names"])
        if self.kind != "synthetic":
            self.id_maps: dict[str, IdMap] = id_maps(
                preprocess["vocab"], {"special_ids": preprocess["special_ids"], "source": {"kind": self.kind}})
            self.transforms = [DenseTransform.from_dict(preprocess["dense_transforms"][n])
                               for n in preprocess["dense_names"]]

    @torch.no_grad()
    def probabilities(self, dense: Tensor, features: Any) -> Tensor:
        """float32 ``(B,)`` click probabilities."""
        if self.device.type != "cpu":
            dense, features = _to(dense, self.device), _to(features, self.device)
        return torch.sigmoid(self.module(dense, features)).cpu()

    def batches(self, path: str | os.PathLike, batch_size: int,
                on_rows: Callable[[int], None] = lambda n: None) -> Iterator[tuple[Tensor, Any]]:
        """``(dense, features)`` of the rows of ``path`` in file order, at most ``batch_size`` rows each."""
        if self.kind == "synthetic":
            raise ValueError("this model was trained on synthetic data, which has no raw row format: nothing to "
                             "map raw rows with (export a run trained on a prepared Criteo or table dataset)")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        blocks = self._criteo_blocks(path) if self.kind == "criteo" else self._table_blocks(path)
        for batch in blocks:
            for start in range(0, len(batch), batch_size):
                part = _slice(batch, start, start + batch_size)
                on_rows(len(part))
                yield part.dense, part.features(self.names)

    def _criteo_blocks(self, path) -> Iterator[Batch]:
        for block in read_criteo([path]):  # raises InputError at the first bad line
            raw = np.where(block.dense_missing, np.nan, block.dense.astype(np.float64))
            ids = np.empty(block.cats.shape, dtype=np.int64)
            for j, name in enumerate(self.names):
                idmap = self.id_maps[name]
                ids[:, j] = idmap.ids(hex8(block.cats[:, j]))
                ids[block.cat_missing[:, j], j] = idmap.missing_id
            yield _batch(apply_transforms(self.transforms, raw), ids, {})

    def _table_blocks(self, path) -> Iterator[Batch]:
        fields = {f.name for f in dataclasses.fields(TableSpec)}
        spec = TableSpec(**{k: v for k, v in self.preprocess["table"].items() if k in fields} | {"skip_bad_lines": False})
        value_sets = {name: self.id_maps[name].values for name in self.names}
        for rows in read_table_rows(path, spec, value_sets):
            single = [self.id_maps[n].from_positions(rows.single[n]) for n in self.names if n not in self.multi_hot]
            m = len(rows.dense)
            sparse = np.stack(single, axis=1) if single else np.empty((m, 0), dtype=np.int64)
            bags = {}
            for name, (positions, lengths) in rows.bags.items():
                offsets = np.zeros(len(lengths), dtype=np.int64)
                np.cumsum(lengths[:-1], out=offsets[1:])
                bags[name] = (torch.from_numpy(self.id_maps[name].from_positions(positions)), torch.from_numpy(offsets))
            yield _batch(apply_transforms(self.transforms, rows.dense), sparse, bags)


def _batch(dense: np.ndarray, sparse: np.ndarray, multi_hot: dict) -> Batch:
    return Batch(dense=torch.from_numpy(dense), sparse=torch.from_numpy(sparse),
                 labels=torch.zeros(len(dense)), multi_hot=multi_hot)


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``[start, stop)`` of a batch (its bags re-based)."""
    if start == 0 and stop >= len(batch):
        return batch
    multi = {}
    for name, (values, offsets) in batch.multi_hot.items():
        ends = torch.cat([offsets[1:], offsets.new_tensor([values.numel()])])
        lo, hi = int(offsets[start]), int(ends[min(stop, len(batch)) - 1])
        multi[name] = (values[lo:hi], offsets[start:stop] - lo)
    return Batch(batch.dense[start:stop], batch.sparse[start:stop], batch.labels[start:stop], multi)


def _to(inputs: Any, device: torch.device) -> Any:
    """``inputs`` (a tensor, or dicts/tuples of them) copied to ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    return type(inputs)(_to(v, device) for v in inputs)


def load_served(path: str | os.PathLike, device: torch.device | str = "cpu") -> ServedModel:
    """The exported model at ``path`` (written by ``export_run``)."""
    check_input_files([Path(path)])
    extra = {EXTRA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable exported model ({err})") from None
    if not extra[EXTRA_FILE]:
        raise ValueError(f"{path}: an exported program without compembed's preprocessing ({EXTRA_FILE}); "
                         "export it with `compembed export`")
    return ServedModel(program, json.loads(extra[EXTRA_FILE]), str(path), device)


def predict_file(model: ServedModel, input: str | os.PathLike, out: str | os.PathLike | None, batch_size: int = 8192,
                 on_rows: Callable[[int], None] = lambda n: None, write=None) -> int:
    """Write the probability of every row of ``input``, one per line (``%.9g``), to ``out`` atomically (a
    reader sees no file or the whole one; nothing is left on an error), or to ``write`` (e.g.
    ``sys.stdout.write``) when ``out`` is None. Returns the number of rows."""
    def score(sink) -> int:
        n = 0
        for dense, features in model.batches(input, batch_size, on_rows):
            p = model.probabilities(dense, features).double().numpy()
            sink("".join(f"{v:.9g}\n" for v in p))
            n += len(p)
        return n

    if out is None:
        return score(write)
    count = [0]

    def write_file(tmp: Path) -> None:
        with open(tmp, "w") as f:
            count[0] = score(f.write)

    atomic_replace(write_file, out)
    return count[0]

