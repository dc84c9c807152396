"""A trained run as one file: a ``torch.export`` program plus the preprocessing that feeds it.

``export_run(run_dir, out)`` writes ``out`` with ``torch.export.save``. The program is the run's model
with the parameters ``compembed evaluate`` uses (best validation loss when kept, else the last), in
eval mode, its batch size dynamic: ``program(dense (B, num_dense), features)`` gives ``(B,)`` logits,
``features`` as ``Batch.features`` lays them out (``(B, F)`` ids, or a dict when there are multi-hot
features).

The preprocessing is stored inside the same archive, as the JSON extra file ``compembed.json``
(``torch.export.save(..., extra_files=...)``): one file that is written atomically (temporary name,
fsync, rename) and cannot get separated from its model. It holds:

* ``format``: ``compembed-serving-1``; ``kind``: ``criteo``, ``table`` or ``synthetic`` (the data the
  run trained on; a synthetic run has no raw format, so ``predict`` refuses it);
* ``dense_names``, ``categorical_names``, ``multi_hot_names``, ``cardinalities``: the column layout;
* ``vocab``: per categorical feature, its kept raw values in increasing id order (the dataset's
  ``vocab.json``), and ``special_ids``: where its missing and rare/unseen ids are. A value not in the
  vocabulary gets the rare/unseen id, an empty one the missing id, as in ``prepare``;
* ``dense_transforms``: per dense column, the transform and train statistics (``DenseTransform``);
* ``table``: for a table, the ``TableSpec`` it was prepared with (columns, delimiter, separator);
* ``model``: the run's model label, arch, the checkpoint used, ``int8`` and the table bytes.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.transform import load_dense_transforms
from ..io import atomic_write_bytes
from ..training.rundir import load_run
from .quantize import embedding_bytes, quantize_int8

__all__ = ["FORMAT", "EXTRA_FILE", "ExportResult", "export_run", "export_model", "preprocessing_of",
           "example_inputs"]

FORMAT = "compembed-serving-1"
EXTRA_FILE = "compembed.json"
EXAMPLE_ROWS = 8  # rows of the example batch the program is traced with (not 0 or 1: those specialise)


@dataclass
class ExportResult:
    path: Path
    checkpoint: Path
    int8: bool
    table_bytes: int
    file_bytes: int
    max_difference: float  # |program - model| on the example batch


def preprocessing_of(source: str, info) -> dict[str, Any]:
    """The preprocessing of the dataset ``source`` (a prepared directory, or ``synthetic``) as stored in the
    export (see the module doc)."""
    out: dict[str, Any] = {
        "format": FORMAT, "dense_names": list(info.dense_names), "categorical_names": list(info.categorical_names),
        "multi_hot_names": list(info.multi_hot_names), "cardinalities": [int(c) for c in info.cardinalities],
    }
    if source == "synthetic":
        return {**out, "kind": "synthetic"}
    path = Path(source)
    meta = json.loads((path / "meta.json").read_text())
    kind = meta.get("source", {}).get("kind", "criteo")
    vocab_path = path / "vocab.json"
    if not vocab_path.exists():
        raise FileNotFoundError(f"{vocab_path}: the dataset has no vocabulary (prepared with --no-vocab?), so raw "
                                "rows cannot be mapped to ids; prepare it again without --no-vocab")
    out.update(kind=kind, vocab=json.loads(vocab_path.read_text()), special_ids=meta.get("special_ids", {}),
               dense_transforms={k: t.to_dict() for k, t in load_dense_transforms(path).items()})
    if kind == "table":
        out["table"] = {k: v for k, v in meta["preprocessing"].items() if k != "ids"}
    return out


def example_inputs(dataset, rows: int = EXAMPLE_ROWS) -> tuple[Tensor, Any]:
    """``(dense, features)`` of the first ``rows`` training rows, laid out as the model takes them."""
    batch = next(iter(dataset.loader("train", rows)))
    if len(batch) < 2:
        raise ValueError(f"the dataset's train split has {len(batch)} row(s); the export traces with at least 2")
    features = batch.features(list(dataset.info.categorical_names))
    if isinstance(features, Tensor):
        return batch.dense, features
    # copies, not views of one (B, F) tensor: export would give a view's batch size a symbol of its own
    return batch.dense, {k: v.clone() if isinstance(v, Tensor) else tuple(t.clone() for t in v)
                         for k, v in features.items()}


def _dynamic_shapes(features: Any) -> tuple:
    """Dynamic batch size (and multi-hot value counts) for ``(dense, features)``."""
    batch = torch.export.Dim("batch", min=1)
    if isinstance(features, Tensor):
        return ({0: batch}, {0: batch})
    shapes = {}
    for name, value in features.items():
        if isinstance(value, Tensor):
            shapes[name] = {0: batch}
        else:  # (values, offsets): a bag per row
            shapes[name] = ({0: torch.export.Dim(f"{name}_values", min=1)}, {0: batch})
    return ({0: batch}, shapes)


def export_model(model: nn.Module, dense: Tensor, features: Any) -> torch.export.ExportedProgram:
    """``model`` (in eval mode) as an exported program with a dynamic batch size, traced on an example."""
    with torch.no_grad():
        return torch.export.export(model.eval(), (dense, features), dynamic_shapes=_dynamic_shapes(features),
                                   strict=False)


def export_run(run_dir: str | Path, out: str | Path, int8: bool = False, last: bool = False) -> ExportResult:
    """Export the model of the run ``run_dir`` (with ``int8`` tables if asked) and its preprocessing to ``out``.

    The program is checked against the model on an example batch: a difference over 1e-5 raises.
    """
    run = load_run(run_dir, last=last)
    model = quantize_int8(run.model) if int8 else run.model.eval()
    preprocess = preprocessing_of(run.config.data.source, run.dataset.info)
    dense, features = example_inputs(run.dataset)
    program = export_model(model, dense, features)
    with torch.no_grad():
        expected, got = model(dense, features), program.module()(dense, features)
    difference = float((expected - got).abs().max())
    if not difference <= 1e-5:
        raise RuntimeError(f"the exported program's logits differ from the model's by {difference:g} on an example "
                           "batch: not written")
    table_bytes = embedding_bytes(model.embeddings)
    preprocess["model"] = {"label": run.config.model.label(), "arch": run.config.model.arch, "int8": int8,
                           "checkpoint": run.checkpoint.name, "table_bytes": table_bytes,
                           "run_dir": str(run_dir)}
    extra = {EXTRA_FILE: json.dumps(preprocess)}
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer: not the temporary name
    torch.export.save(program, buffer, extra_files=extra)
    atomic_write_bytes(out, buffer.getvalue())
    return ExportResult(Path(out), run.checkpoint, int8, table_bytes, Path(out).stat().st_size, difference)
