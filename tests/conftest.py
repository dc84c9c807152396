"""Shared test fixtures: the path to ../shared data and a deterministic seed for every test."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"real data samples not present at {SHARED_DATA} (a fresh clone without ../shared)"
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
