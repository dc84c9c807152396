"""The paper's experiment grid as plain data: which runs a sweep is made of."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from ..training.config import TrainConfig, config_to_dict
from ..training.rundir import data_identity

__all__ = ["STUDIES", "SweepSpec", "Cell", "PRESETS", "cell_key", "legacy_cell_key"]

PAPER_STUDIES = ("collisions", "generalized", "path", "threshold")
STUDIES = (*PAPER_STUDIES, "budget")
# The budget study's planner methods and what their cold ids share (``planning.plan_tables``' ``cold``).
PLANNERS = {"planner": "composition", "planner-robe": "robe"}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the study it belongs to and its full training config.

    Budget-study cells also name their ``method`` and the ``target`` compression they were sized to;
    ``role`` is ``"tune"`` for a cell of the tuning phase (one learning-rate candidate of a method).
    """

    study: str
    config: TrainConfig
    method: str = ""
    target: float = 0.0
    role: str = ""

    @property
    def key(self) -> str:
        return cell_key(self.config)

    @property
    def label(self) -> str:
        return self.config.model.label()


def cell_key(config: TrainConfig) -> str:
    """A stable id of a run's config: finished cells are found again by it when a sweep resumes.

    A prepared dataset is named by its identity (``training.rundir.data_identity``), not its path, so
    a sweep resumes with its data moved, copied or mounted elsewhere. ``[data]`` keeps its synthetic
    settings even for a prepared dataset (which ``config_to_dict`` leaves out), so that sweeps begun
    before that change find their cells again.
    """
    identity = data_identity(config.data)
    return _key(config, config.data.source if identity is None else identity)


def legacy_cell_key(config: TrainConfig) -> str:
    """The key of ``config``'s cell before keys named a prepared dataset by its identity: by its path
    (``runner.adopt_legacy_cells`` renames such cells)."""
    return _key(config, config.data.source)


def _key(config: TrainConfig, source: str) -> str:
    raw = config_to_dict(config)
    raw["data"] = {k: v for k, v in dataclasses.asdict(config.data).items() if v is not None and v != ""}
    raw["data"]["source"] = source
    text = json.dumps(raw, sort_keys=True)
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
        budget: at each compression in ``budgets``, every method of ``budget_methods`` sized to the
            same bytes (tables plus optimizer state): ``planner`` and ``planner-robe`` (``compembed plan
            [--cold robe]``) and the
            uniform ``qr``, ``gqr``, ``hashing``, ``tt`` and ``md`` of ``planning.match_budget``; also ``qr`` and
            ``hashing`` at each compression of ``budget_collisions``, the (method, compression)
            pairs of ``budget_extra``, and full tables. It needs the
            dataset's ``info`` (cardinalities; counts for the planner). With ``tune_lrs``, a tuning
            phase comes first: every method (full tables too) is trained with each table learning
            rate of ``tune_lrs`` on the first arch, optimizer and seed, at its fitting budget nearest
            to ``tune_target`` (full tables at 1x); the lowest validation loss picks the method's
            recipe (``sweep.tuning.choose_lrs``), and only then are its cells at every budget and
            seed listed, with that table learning rate. ``dcn_budgets`` limits the DCN cells to those
            compressions; DHE wider than ``dhe_max_width`` counts as not reaching its budget.
    Every cell runs once per optimizer and seed; the report keeps, per configuration, the
    optimizer with the better validation loss (as the paper did).
    """

    base: TrainConfig = field(default_factory=TrainConfig)
    archs: tuple[str, ...] = ("dlrm", "dcn")
    studies: tuple[str, ...] = PAPER_STUDIES
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
    budgets: tuple[float, ...] = (4, 16, 64, 256, 1000)
    budget_methods: tuple[str, ...] = ("planner", "qr", "gqr", "hashing")
    budget_collisions: tuple[float, ...] = (2, 4, 8, 16, 60)
    budget_extra: tuple[tuple[str, float], ...] = ()
    tune_lrs: tuple[float, ...] = ()
    tune_target: float = 16.0
    # The budgets a method's tuning budget is chosen among (None: ``budgets``). Running a share of a
    # tuned study's budgets (``--budgets``) keeps the preset's here, so its tuning cells stay the same.
    tune_budgets: tuple[float, ...] | None = None
    # The (arch, optimizer, seed) the tuning phase runs on (None: the first of ``archs``, ``optimizers``
    # and ``seeds``). Running a share of a tuned study's archs, optimizers or seeds (``--archs dcn``)
    # keeps the preset's here, so its tuning cells (and the recipes they choose) stay the same.
    tune_run: tuple[str, str, int] | None = None
    dcn_budgets: tuple[float, ...] | None = None
    dhe_max_width: int = 1024

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

    def budget_models(self, info, optimizer: str) -> tuple[list[tuple[str, float, dict]], list[tuple[str, float, str]]]:
        """The budget study's (method, target, model overrides), and the (method, target, reason) that cannot fit."""
        from ..planning import PlanError, budget_for_compression, match_budget, plan_for_dataset

        dim = self.base.model.embedding_dim
        out = [("full", 1.0, dict(scheme="full", threshold=0, name="full"))]
        missing = []
        wanted = [(m, r) for r in self.budgets for m in self.budget_methods]
        wanted += [(m, r) for r in self.budget_collisions for m in ("qr", "hashing")]
        wanted += [(m, float(r)) for m, r in self.budget_extra]
        wanted = list(dict.fromkeys(wanted))
        for method, ratio in wanted:
            budget = budget_for_compression(info.cardinalities, ratio, dim, optimizer)
            name = f"{method}@{ratio:g}x"
            if method in PLANNERS:
                try:
                    plan = plan_for_dataset(info, budget, embedding_dim=dim, optimizer=optimizer, cold=PLANNERS[method])
                except PlanError as err:
                    missing.append((method, ratio, str(err)))
                    continue
                features = plan.overrides()
            else:
                matched = match_budget(method, info.cardinalities, budget, info.categorical_names, dim, optimizer)
                if matched is None:
                    missing.append((method, ratio, f"its smallest configuration exceeds {budget:,} bytes"))
                    continue
                features, _, knob = matched
                if method == "dhe" and knob > self.dhe_max_width:
                    missing.append((method, ratio, f"does not reach: its bytes need an MLP of width {knob}, above the "
                                                   f"cap of {self.dhe_max_width}"))
                    continue
            out.append((method, ratio, dict(features=features, threshold=0, name=name)))
        return out, missing

    def tune_targets(self, models: list[tuple[str, float, dict]]) -> dict[str, float]:
        """Each method's tuning budget: its fitting compression nearest to ``tune_target`` (log scale, the
        smaller on a tie); full tables at 1x."""
        fits: dict[str, list[float]] = {}
        for method, ratio, _ in models:
            fits.setdefault(method, []).append(ratio)
        return {m: min(rs, key=lambda r: (abs(math.log(r / self.tune_target)), r)) for m, rs in fits.items()}

    def tune_cells(self, info) -> list[Cell]:
        """The tuning phase: every method x ``tune_lrs`` at its tuning budget, on ``tune_run`` (default: the first
        arch, optimizer and seed)."""
        if not self.tune_lrs:
            return []
        arch, optimizer, seed = self.tune_run or (self.archs[0], self.optimizers[0], self.seeds[0])
        tuning = self if self.tune_budgets is None else dataclasses.replace(self, budgets=self.tune_budgets)
        models = tuning.budget_models(info, optimizer)[0]
        targets = self.tune_targets(models)
        out = []
        for method, ratio, overrides in models:
            if ratio != targets[method]:
                continue
            for lr in self.tune_lrs:
                config = self._config(arch, optimizer, seed, overrides, embedding_lr=lr)
                out.append(Cell("budget", config, method, ratio, role="tune"))
        return out

    def _config(self, arch: str, optimizer: str, seed: int, overrides: dict, embedding_lr: float | None = None) -> TrainConfig:
        model = dataclasses.replace(self.base.model, arch=arch, **overrides)
        optim = dataclasses.replace(self.base.optim, name=optimizer)
        if embedding_lr is not None:
            optim = dataclasses.replace(optim, embedding_lr=embedding_lr)
        return dataclasses.replace(self.base, model=model, optim=optim, seed=seed)

    def cells(self, info=None, tuned: dict[str, float] | None = None) -> list[Cell]:
        """Every run of the grid, each config once (a cell shared by two studies runs once).

        ``info`` (the dataset's ``DatasetInfo``) is needed by the budget study only. With ``tune_lrs``
        the tuning cells come first, and a method's other cells are listed only once ``tuned`` (method ->
        chosen table learning rate, from ``sweep.tuning.choose_lrs``) names it; a tuning cell that is
        also a cell of the chosen recipe runs once and is kept under its tuning role.
        """
        cells: dict[str, Cell] = {}
        if "budget" in self.studies and info is None:
            raise ValueError("sweep: the budget study needs the dataset's info (cardinalities, counts)")
        if "budget" in self.studies:
            for cell in self.tune_cells(info):
                cells.setdefault(cell.key, cell)
        tuned = tuned or {}
        for seed in self.seeds:
            for arch in self.archs:
                for optimizer in self.optimizers:
                    entries = [(study, overrides, "", 0.0) for study, overrides in self.models()]
                    if "budget" in self.studies:
                        entries += [("budget", o, m, r) for m, r, o in self.budget_models(info, optimizer)[0]
                                    if arch != "dcn" or self.dcn_budgets is None or r in self.dcn_budgets or m == "full"]
                    for study, overrides, method, target in entries:
                        lr = None
                        if study == "budget" and self.tune_lrs:
                            if method not in tuned:
                                continue  # listed once its tuning has finished
                            lr = tuned[method]
                        config = self._config(arch, optimizer, seed, overrides, embedding_lr=lr)
                        cells.setdefault(cell_key(config), Cell(study, config, method, target))
        return list(cells.values())
