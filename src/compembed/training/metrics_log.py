"""A run's ``metrics.jsonl``: append-only training and evaluation records that survive a resume."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes

__all__ = ["MetricsLog"]


class MetricsLog:
    """Append-only JSONL of training and evaluation records.

    The loop state counts the records written (``state["records"]``); on resume the file is cut back to
    the count the checkpoint saw, so records from after the checkpoint (rewritten by the resumed run)
    are not doubled. With ``path`` None (no run directory, or a rank other than 0) only the count is kept.
    """

    def __init__(self, path: Path | None, state: dict[str, Any]) -> None:
        self.path, self.state = path, state
        if path is None:
            return
        lines = path.read_text().splitlines()[: state["records"]] if path.exists() else []
        atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())

    def write(self, record: dict[str, Any]) -> None:
        self.state["records"] += 1
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
