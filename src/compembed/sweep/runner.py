"""Run a sweep's cells one after another; finished cells are kept and never rerun."""
from __future__ import annotations

import ctypes
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..io import write_json_atomic
from .grid import Cell, SweepSpec, legacy_cell_key
from .results import load_rows, write_table

__all__ = ["WorkerDiedError", "run_sweep", "adopt_legacy_cells", "cell_row", "cell_train_config", "rows_of", "select_cells", "train_cell", "tuned_lrs"]

class WorkerDiedError(RuntimeError):
    """A worker process of a parallel sweep died (killed from outside: the kernel's OOM killer, a signal)."""


# Runs one cell in a scratch folder and returns what it measured (the keys of results.COLUMNS).
RunCell = Callable[[Cell, Path], dict[str, Any]]


def cell_row(cell: Cell, measured: dict[str, Any]) -> dict[str, Any]:
    """The results row of a finished cell: its config columns plus the measurements."""
    model = cell.config.model
    return {
        "key": cell.key, "study": cell.study, "arch": model.arch, "label": model.label(), "scheme": model.scheme,
        "operation": model.operation if model.scheme in ("qr", "gqr", "crt") else "",
        "num_collisions": model.num_collisions if model.scheme in ("hashing", "qr", "path") else 0,
        "num_partitions": model.num_partitions if model.scheme in ("gqr", "crt") else 0,
        "path_hidden": model.path_hidden[0] if model.scheme == "path" else 0,
        "threshold": model.threshold, "optimizer": cell.config.optim.name, "seed": cell.config.seed,
        "method": cell.method, "target_compression": cell.target, "role": cell.role,
        "table_lr": cell.config.optim.embedding_lr if cell.config.optim.embedding_lr is not None else cell.config.optim.lr,
        **measured,
    }


def select_cells(cells: list[Cell], only: str | None = None, part: tuple[int, int] | None = None) -> list[Cell]:
    """The cells one process of a split sweep runs.

    ``only="tune"`` keeps the tuning cells, ``only="main"`` the others. ``part=(i, n)`` (1 <= i <= n)
    keeps the cells whose key falls in part ``i`` of ``n`` (by the key's hash, so the split does not
    move when cells are added) and every tuning cell (the tuning phase is small and must finish before
    the main cells exist; run it first with ``only="tune"`` when parts run at once).
    """
    if only not in (None, "tune", "main"):
        raise ValueError(f"sweep: only must be 'tune' or 'main', got {only!r}")
    if part is not None and not (part[1] >= 1 and 1 <= part[0] <= part[1]):
        raise ValueError(f"sweep: part must be I/N with 1 <= I <= N, got {part[0]}/{part[1]}")
    out = [c for c in cells if only is None or (c.role == "tune") == (only == "tune")]
    if part is not None:
        out = [c for c in out if c.role == "tune" or int(c.key, 16) % part[1] == part[0] - 1]
    return out


def run_sweep(
    spec: SweepSpec, out_dir: Path, run_cell: RunCell, progress: bool = True, jobs: int = 1, info=None,
    only: str | None = None, part: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of ``spec`` not yet finished under ``out_dir``; return all rows.

    Each finished cell is written atomically to ``out_dir/cells/<key>.json`` and the tables are
    rewritten, so an interrupted sweep loses at most the cells in flight, and rerunning the same
    command continues where it stopped. ``jobs > 1`` runs that many cells at once in worker
    processes (``run_cell`` must then be a picklable module-level function). ``info`` is the
    dataset's ``DatasetInfo``, which the budget study needs. With a tuning phase (``spec.tune_lrs``),
    the cells run in rounds: the tuning cells first, then the cells of each method whose recipe they
    chose. ``only`` and ``part`` run a share of the cells (``select_cells``).
    """
    cells_dir, scratch = out_dir / "cells", out_dir / "scratch"
    bar = tqdm(unit="run", desc="sweep", disable=not progress)
    tried: set[str] = set()
    while True:
        cells = spec.cells(info, tuned=tuned_lrs(spec, cells_dir, info))
        adopt_legacy_cells(cells, cells_dir, scratch)
        done = {p.stem for p in cells_dir.glob("*.json")}
        mine = select_cells(cells, only, part)
        todo = [c for c in mine if c.key not in done and c.key not in tried]
        bar.total, bar.n = len(mine), len(mine) - len(todo)
        bar.refresh()
        if not todo:
            break
        tried.update(c.key for c in todo)
        _run_cells(todo, cells, cells_dir, scratch, run_cell, jobs, bar)
    bar.close()
    if scratch.exists() and not any(scratch.iterdir()):
        scratch.rmdir()
    rows = rows_of(cells, cells_dir)
    write_table(rows, out_dir)
    return rows


def adopt_legacy_cells(cells: list[Cell], cells_dir: Path, scratch: Path) -> int:
    """Rename the finished cells (and the scratch folders of cells cut short) that a sweep stored under
    their key of before keys named a prepared dataset by its identity (``grid.legacy_cell_key``: by its
    path; the data must still be there for this), so that they count under their key now. Returns how
    many cells were renamed."""
    adopted = 0
    for cell in cells:
        if cell.config.data.source == "synthetic":
            continue  # synthetic data: the key is the one it always was
        old = legacy_cell_key(cell.config)
        if old == cell.key:
            continue
        stored, current = cells_dir / f"{old}.json", cells_dir / f"{cell.key}.json"
        if stored.exists() and not current.exists():
            write_json_atomic(current, {**json.loads(stored.read_text()), "key": cell.key})
            stored.unlink()
            adopted += 1
        if (scratch / old).is_dir() and not (scratch / cell.key).exists():
            (scratch / old).rename(scratch / cell.key)
    return adopted


def tuned_lrs(spec: SweepSpec, cells_dir: Path, info=None) -> dict[str, float]:
    """The recipes chosen so far by this spec's finished tuning cells under ``cells_dir`` (method -> table lr).

    Only the tuning cells of this grid count: when a method's tuning budget moves (a budget that did
    not fit before does now), the old budget's tuning rows stay on disk and must not vote.
    """
    if not spec.tune_lrs:
        return {}
    from .tuning import choose_lrs

    return choose_lrs(rows_of(spec.tune_cells(info), cells_dir), spec.tune_lrs)


def _run_cells(todo: list[Cell], cells: list[Cell], cells_dir: Path, scratch: Path, run_cell: RunCell, jobs: int,
               bar) -> None:
    def finish(cell: Cell, measured: dict[str, Any]) -> None:
        write_json_atomic(cells_dir / f"{cell.key}.json", cell_row(cell, measured))
        shutil.rmtree(scratch / cell.key, ignore_errors=True)
        write_table(rows_of(cells, cells_dir), cells_dir.parent)
        bar.set_postfix_str(f"last: {cell.config.model.arch} {cell.label} t={cell.config.model.threshold} "
                            f"{cell.config.optim.name} seed={cell.config.seed}")
        bar.update()

    if jobs <= 1:
        for cell in todo:
            finish(cell, _timed(run_cell, cell, scratch / cell.key))
        return
    # Spawned workers: a fork of a process that already ran torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_follow_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_timed, run_cell, cell, scratch / cell.key): cell for cell in todo}
        try:
            for future in as_completed(futures):
                try:
                    measured = future.result()
                except BrokenProcessPool:
                    cell = futures[future]
                    raise WorkerDiedError(
                        f"a worker process died (killed from outside: by the kernel's OOM killer, say, when "
                        f"{jobs} runs at once need more memory than there is) while the sweep ran cells such as "
                        f"{cell.config.model.arch} {cell.label} seed={cell.config.seed}. The finished cells are "
                        f"kept and the others their last checkpoint: rerun the same command to go on, with "
                        f"fewer --jobs if memory ran out") from None
                finish(futures[future], measured)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _follow_parent(parent: int, poll_s: float = 0.5) -> None:
    """Worker initializer: end this worker when the sweep process ``parent`` ends, however it ends.

    A killed parent (SIGKILL, SIGTERM) cannot stop its workers, which would train on for hours.
    On Linux the kernel sends the worker SIGKILL when its parent dies (PR_SET_PDEATHSIG); everywhere,
    a daemon thread polls the parent pid and exits the worker once it was reparented. A cell cut
    short this way keeps its checkpoint in its scratch folder, so rerunning the sweep resumes it.
    The resource tracker ends by itself once the parent and every worker are gone (its pipe closes).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the polling thread still covers it
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)
    threading.Thread(target=_poll_parent, args=(parent, poll_s), daemon=True, name="follow-parent").start()


def _poll_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def _timed(run_cell: RunCell, cell: Cell, workdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    measured = run_cell(cell, workdir)
    measured.setdefault("wall_s", round(time.perf_counter() - start, 2))
    return measured


def rows_of(cells: list[Cell], cells_dir: Path) -> list[dict[str, Any]]:
    """The finished rows of ``cells`` under ``cells_dir``, each with the role the grid gives its cell.

    Only these cells' rows: a folder reused with another grid keeps its other rows on disk. A row's
    stored role can be stale: a tuning run of an old tuning budget whose config is a main cell now
    (cells are keyed by config) is that main cell, not a tuning result.
    """
    if not cells_dir.exists():
        return []
    roles = {c.key: c.role for c in cells}
    return [{**r, "role": roles[r["key"]]} for r in load_rows(cells_dir) if r["key"] in roles]


# Steps between a sweep cell's checkpoints (see train_cell).
CHECKPOINT_EVERY = 1000


def cell_train_config(cell: Cell, checkpoint_every: int = CHECKPOINT_EVERY):
    """The config ``train_cell`` trains ``cell`` with: the cell's, checkpointed every ``checkpoint_every``
    steps (0: as the cell's config says).

    A checkpoint does not change a run's result (a resumed run equals an uninterrupted one), so the
    cadence is the runner's choice, not the grid's: the cell keeps its key, and a sweep cut short in
    the middle of a long cell resumes it from its last checkpoint instead of from step 0.
    """
    if not checkpoint_every:
        return cell.config
    return dataclasses.replace(cell.config, checkpoint_every=checkpoint_every)


def train_cell(cell: Cell, workdir: Path, checkpoint_every: int = CHECKPOINT_EVERY) -> dict[str, Any]:
    """Train and evaluate one cell with ``compembed.training``, resuming its own checkpoint if any
    (``cell_train_config`` gives the config). A resumed cell's ``wall_s`` is its last part's."""
    from ..training.loop import train

    config = cell_train_config(cell, checkpoint_every)
    result = train(config, dataset=_dataset(config), out_dir=workdir, resume=True, progress=False)
    val, test, memory = result.evals["val"], result.evals["test"], result.memory
    return {
        "embedding_parameters": memory.embedding_parameters, "bytes": memory.embedding_bytes,
        "parameters": memory.embedding_parameters + memory.dense_parameters,
        "full_embedding_parameters": memory.full_parameters, "compression_ratio": memory.compression_ratio,
        "val_loss": val.loss, "test_loss": test.loss, "test_accuracy": test.accuracy, "test_auc": test.auc,
        "bayes_loss": test.bayes_loss, "train_samples": result.samples, "samples_per_s": result.samples_per_s,
    }


_DATASETS: dict[str, Any] = {}


def _dataset(config) -> Any:
    # Cells share their data: open (and, for synthetic data, generate) it once per data config.
    from ..training.loop import open_data

    key = repr(config.data)
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = open_data(config.data)
    return _DATASETS[key]
