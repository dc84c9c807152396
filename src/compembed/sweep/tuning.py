"""The budget study's tuning phase: one recipe per method, chosen by validation loss.

Every method gets the same tuning budget: each table learning rate of ``SweepSpec.tune_lrs`` once,
on one seed at one budget (``SweepSpec.tune_cells``). The recipe is the candidate with the lowest
validation loss; a tie goes to the earlier candidate, so the choice depends on the rows only.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["choose_lrs"]


def choose_lrs(rows: Iterable[dict[str, Any]], candidates: Sequence[float]) -> dict[str, float]:
    """Method -> chosen table learning rate, for every method whose tuning cells have all finished.

    ``rows`` are results rows (``role``, ``method``, ``table_lr``, ``val_loss``); a method with a
    candidate not yet measured is left out (its recipe is not known yet).
    """
    order = {float(lr): i for i, lr in enumerate(candidates)}
    measured: dict[str, dict[float, float]] = {}
    for r in rows:
        if r.get("role") == "tune" and float(r["table_lr"]) in order:
            measured.setdefault(r["method"], {})[float(r["table_lr"])] = float(r["val_loss"])
    return {method: min(losses, key=lambda lr: (losses[lr], order[lr]))
            for method, losses in sorted(measured.items()) if len(losses) == len(order)}
