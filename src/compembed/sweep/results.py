"""The sweep's tidy results table: one row per finished run, stored one JSON file per cell."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["COLUMNS", "write_json_atomic", "load_rows", "write_table"]

# Config columns first, then what the run measured.
COLUMNS = [
    "key", "study", "arch", "label", "scheme", "operation", "num_collisions", "num_partitions", "path_hidden",
    "threshold", "optimizer", "seed", "embedding_parameters", "parameters", "bytes", "full_embedding_parameters",
    "compression_ratio", "val_loss", "test_loss", "test_accuracy", "test_auc", "bayes_loss", "train_samples",
    "samples_per_s", "wall_s",
]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that a reader sees the old file or the complete new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_rows(cells_dir: Path) -> list[dict[str, Any]]:
    """All finished rows, in a stable order."""
    rows = [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]
    return sorted(rows, key=lambda r: (r["arch"], r["study"], r["label"], r["threshold"], r["optimizer"], r["seed"]))


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.parquet`` (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / "results.csv", out_dir / "results.parquet"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    columns = {c: [r.get(c) for r in rows] for c in COLUMNS}
    tmp = parquet_path.with_suffix(".parquet.tmp")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, parquet_path)
    return csv_path, parquet_path
