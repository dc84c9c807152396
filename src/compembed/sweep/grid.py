"""The paper's experiment grid as plain data: which runs a sweep is made of."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..training.config import TrainConfig, config_to_dict

__all__ = ["STUDIES", "SweepSpec", "Cell", "PRESETS", "cell_key"]

STUDIES = ("collisions", "generalized", "path", "threshold")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the study it belongs to and its full training config."""

    study: str
    config: TrainConfig

    @property
    def key(self) -> str:
        return cell_key(self.config)

    @property
    def label(self) -> str:
        return self.config.model.label()


def cell_key(config: TrainConfig) -> str:
    """A stable id of a run's config: finished cells are found again by it when a sweep resumes."""
    text = json.dumps(config_to_dict(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class SweepSpec:
    """A grid over models, schemes, collisions, thresholds, optimizers and seeds.

    Studies (each a figure of the paper):
        collisions: full, hashing and QR with every operation, at every collision count
            (features compressed above ``threshold``).
        generalized: generalized QR and Chinese remainder with ``k`` tables, every operation in ``gqr_operations``.
        path: path-based QR at ``path_collisions`` with each hidden size.
        threshold: QR at ``path_collisions`` collisions with every operation and every threshold.
    Every cell runs once per optimizer and seed; the report keeps, per configuration, the
    optimizer with the better validation loss (as the paper did).
    """

    base: TrainConfig = field(default_factory=TrainConfig)
    archs: tuple[str, ...] = ("dlrm", "dcn")
    studies: tuple[str, ...] = STUDIES
    operations: tuple[str, ...] = ("concat", "add", "mult")
    collisions: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 60)
    threshold: int = 1
    k: int = 3
    gqr_operations: tuple[str, ...] = ("mult",)
    path_hidden: tuple[int, ...] = (16, 32, 64, 128)
    path_collisions: int = 4
    thresholds: tuple[int, ...] = (1, 20, 200, 2000, 20000)
    optimizers: tuple[str, ...] = ("adagrad", "amsgrad")
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.studies) - set(STUDIES))
        if unknown:
            raise ValueError(f"sweep: unknown studies {unknown}; choose from {STUDIES}")
        if not (self.archs and self.optimizers and self.seeds):
            raise ValueError("sweep: archs, optimizers and seeds must each name at least one value")

    def models(self) -> list[tuple[str, dict]]:
        """(study, model overrides) for one arch, before optimizers and seeds."""
        out: list[tuple[str, dict]] = []
        if "collisions" in self.studies:
            out.append(("collisions", dict(scheme="full", threshold=self.threshold)))
            for c in self.collisions:
                out.append(("collisions", dict(scheme="hashing", num_collisions=c, threshold=self.threshold)))
                for op in self.operations:
                    out.append(("collisions", dict(scheme="qr", operation=op, num_collisions=c, threshold=self.threshold)))
        if "generalized" in self.studies:
            for scheme in ("gqr", "crt"):
                for op in self.gqr_operations:
                    out.append(("generalized", dict(scheme=scheme, operation=op, num_partitions=self.k, threshold=self.threshold)))
        if "path" in self.studies:
            for h in self.path_hidden:
                out.append(("path", dict(scheme="path", path_hidden=(h,), num_collisions=self.path_collisions, threshold=self.threshold)))
        if "threshold" in self.studies:
            for t in self.thresholds:
                for op in self.operations:
                    out.append(("threshold", dict(scheme="qr", operation=op, num_collisions=self.path_collisions, threshold=t)))
        return out

    def cells(self) -> list[Cell]:
        """Every run of the grid, each config once (a cell shared by two studies runs once)."""
        cells: dict[str, Cell] = {}
        for seed in self.seeds:
            for arch in self.archs:
                for optimizer in self.optimizers:
                    for study, overrides in self.models():
                        model = dataclasses.replace(self.base.model, arch=arch, **overrides)
                        optim = dataclasses.replace(self.base.optim, name=optimizer)
                        config = dataclasses.replace(self.base, model=model, optim=optim, seed=seed)
                        cells.setdefault(cell_key(config), Cell(study, config))
        return list(cells.values())
