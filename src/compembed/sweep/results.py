"""The sweep's tidy results table: one row per finished run, stored one JSON file per cell."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_replace, write_json_atomic

__all__ = ["COLUMNS", "load_rows", "write_table"]

# Config columns first, then what the run measured.
COLUMNS = [
    "key", "study", "arch", "label", "scheme", "operation", "num_collisions", "num_partitions", "path_hidden",
    "threshold", "optimizer", "seed", "method", "target_compression", "role", "table_lr", "embedding_parameters", "parameters", "bytes", "full_embedding_parameters",
    "compression_ratio", "val_loss", "test_loss", "test_accuracy", "test_auc", "bayes_loss", "train_samples",
    "samples_per_s", "wall_s",
]


def load_rows(cells_dir: Path) -> list[dict[str, Any]]:
    """All finished rows, in a stable order."""
    rows = [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]
    return sorted(rows, key=lambda r: (r["arch"], r["study"], r["label"], r["threshold"], r["optimizer"], r["seed"]))


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` and ``results.parquet`` (each written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / "results.csv", out_dir / "results.parquet"

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_replace(write_csv, csv_path)
    table = pa.table({c: [r.get(c) for r in rows] for c in COLUMNS})
    atomic_replace(lambda tmp: pq.write_table(table, tmp), parquet_path)
    return csv_path, parquet_path
