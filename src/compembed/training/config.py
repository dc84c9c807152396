"""A training run described by plain dataclasses, read from and written to TOML."""
from __future__ import annotations

import dataclasses
import errno
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..data.dataset import SPLITS
from ..io import atomic_write_bytes
from ..models import ModelConfig
from ..schema import check_fields

__all__ = ["OPTIMIZERS", "PRECISIONS", "DEFAULT_LR", "DEFAULT_EMBEDDING_LR", "OptimConfig", "DataConfig", "TrainConfig",
           "load_config", "save_config", "config_to_dict", "config_from_dict"]

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam", "amsgrad")
EMBEDDING_UPDATES = ("sparse", "dense")
PRECISIONS = ("fp32", "bf16", "fp16")
# The built-in learning rates (the CLI's defaults and its help text follow them): the dense layers'
# and the tables', for Adagrad at batch 256. Chosen by the full-table DLRM's validation loss, the
# same for every scheme, over dense {0.002, 0.005, 0.01, 0.02} x tables {0.02, 0.05, 0.1}: on the
# demo's synthetic data (2 seeds), the Criteo sample and MovieLens-100K (3 seeds each),
# 0.002 / 0.05 had the lowest validation loss on the first two and was 0.4% above the best on
# MovieLens (the smallest summed excess over the three). One lr of 0.02 for both, the old default,
# killed the bottom MLP's ReLUs in about 1 run in 4 (docs/results/README.md).
DEFAULT_LR: float = 0.002
DEFAULT_EMBEDDING_LR: float | None = 0.05


@dataclass
class OptimConfig:
    """Optimizers: one for the embedding tables, one (same kind) for the dense layers.

    Attributes:
        name: ``sgd``, ``adagrad``, ``rowwise_adagrad`` (tables: one accumulator per row; dense
            layers: Adagrad), ``adam`` or ``amsgrad``.
        lr: learning rate of the dense layers.
        embedding_lr: learning rate of the embedding tables (default: ``lr``).
        embedding_update: ``sparse`` updates only the rows a batch touched (sparse gradients; for
            ``adam``/``amsgrad`` this is the lazy variant, whose moments of an untouched row do not
            decay); ``dense`` uses dense gradients and the exact torch optimizer (slower for big tables).
        eps: epsilon of Adagrad/row-wise Adagrad/Adam/AMSGrad.
        beta1, beta2: Adam/AMSGrad moment decay rates.
        warmup_steps: linear learning-rate warm-up of both optimizers: step ``s`` (1, 2, ...) uses
            ``lr * min(1, s / warmup_steps)`` (0: no warm-up).
    """

    name: str = "adagrad"
    lr: float = DEFAULT_LR
    embedding_lr: float | None = DEFAULT_EMBEDDING_LR
    embedding_update: str = "sparse"
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "optim config")
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim config: name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.embedding_update not in EMBEDDING_UPDATES:
            raise ValueError(f"optim config: embedding_update must be one of {EMBEDDING_UPDATES}, got {self.embedding_update!r}")
        for key in ("lr", "embedding_lr", "eps"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"optim config: {key} must be > 0, got {value}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optim config: betas must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim config: warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class DataConfig:
    """Where the data comes from.

    The four synthetic settings (``rows``, ``cardinality_scale``, ``seed``, ``id_order``) mean
    nothing for a prepared dataset: its config, as written (``config_to_dict``, ``config.toml``),
    leaves them out.

    Attributes:
        source: ``synthetic`` (the built-in Criteo-like generator) or the directory of a dataset
            prepared by ``compembed prepare``, made absolute here (relative to the current
            directory), so that a stored config finds its data from any folder. A relative path in a
            config written by an older version is resolved the same way, relative to the current
            directory, as that version did.
        rows: synthetic rows in all (split into train/val/test by the generator).
        cardinality_scale: synthetic cardinalities are the Criteo Kaggle ones times this factor.
        seed: seed of the synthetic generator (the data itself; ``train.seed`` drives the model).
        id_order: synthetic ids in ``value`` order or ``frequency`` order (id 0 the most frequent in
            the training split; what ``compembed plan`` and hybrid tables need). A prepared dataset
            has the order it was prepared with.
    """

    source: str = "synthetic"
    rows: int = 200_000
    cardinality_scale: float = 0.01
    seed: int = 0
    id_order: str = "value"

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            self.source = os.fspath(self.source)
        check_fields(self, "data config")
        if not self.source:
            raise ValueError("data config: source must be 'synthetic' or a dataset directory, got ''")
        if self.source != "synthetic":
            self.source = os.path.abspath(self.source)
        if self.seed < 0:
            raise ValueError(f"data config: seed must be >= 0, got {self.seed}")
        if self.rows < 1:
            raise ValueError(f"data config: rows must be >= 1, got {self.rows}")
        if not self.cardinality_scale > 0:
            raise ValueError(f"data config: cardinality_scale must be > 0, got {self.cardinality_scale}")
        if self.id_order not in ("value", "frequency"):
            raise ValueError(f"data config: id_order must be 'value' or 'frequency', got {self.id_order!r}")


@dataclass
class TrainConfig:
    """Everything that determines a run's result (output paths are not part of it).

    Attributes:
        model, optim, data: see ``ModelConfig``, ``OptimConfig``, ``DataConfig``.
        batch_size: training mini-batch size.
        eval_batch_size: batch size for evaluation (no effect on results).
        epochs: passes over the training split.
        max_steps: stop after this many steps in all (0: no limit).
        seed: seed of the model's initialisation and of the shuffling.
        log_every: steps between training-metric records (and progress updates of the loss).
        checkpoint_every: steps between checkpoints (0: only at the end of each epoch).
        eval_splits: splits evaluated at the end (``val`` also during training, see below).
        threads: torch CPU threads (0: torch's default).
        eval_every: steps between evaluations on ``val``; whatever it is, ``val`` is also evaluated at
            the end of each epoch and of the run (0: only then).
        early_stopping: patience: stop after this many consecutive ``val`` evaluations without a lower
            loss than the best so far (0: never stop early).
        keep_best: the final evaluation uses the parameters of the lowest ``val`` loss seen (kept in
            ``best.safetensors`` of the run directory), not the last ones.
        precision: ``fp32``, or the training steps' forward pass under autocast in ``bf16`` or ``fp16``
            (CUDA only, with a loss scale); parameters, optimizer state and evaluation stay float32.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 128
    eval_batch_size: int = 8192
    epochs: int = 1
    max_steps: int = 0
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_splits: tuple[str, ...] = ("val", "test")
    threads: int = 0
    eval_every: int = 0
    early_stopping: int = 0
    keep_best: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_fields(self, "train config")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train config: precision must be one of {PRECISIONS}, got {self.precision!r}")
        unknown = [s for s in self.eval_splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"train config: eval_splits: unknown split(s) {unknown}; the splits are {list(SPLITS)}")
        for key in ("batch_size", "eval_batch_size", "epochs", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"train config: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps", "seed", "checkpoint_every", "threads", "eval_every", "early_stopping"):
            if getattr(self, key) < 0:
                raise ValueError(f"train config: {key} must be >= 0, got {getattr(self, key)}")
        if (self.eval_every or self.early_stopping) and "val" not in self.eval_splits:
            raise ValueError(f"train config: eval_every and early_stopping evaluate the 'val' split, which "
                             f"eval_splits {list(self.eval_splits)} leaves out")


_SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "data": DataConfig}
SYNTHETIC_ONLY = ("rows", "cardinality_scale", "seed", "id_order")  # DataConfig fields of synthetic data alone
# [train] fields written only when they differ from these values (added later: older runs and sweep keys keep theirs)
LEFT_OUT_AT = {"precision": "fp32"}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """TOML-ready nested dict: ``[train]``, ``[model]``, ``[optim]``, ``[data]`` (None values, empty
    strings, empty tables and ``precision = "fp32"`` left out, so configs written before a field existed keep
    their meaning and their sweep keys; the synthetic settings of ``[data]`` left out for a prepared dataset)."""
    out: dict[str, Any] = {"train": {}}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in _SECTIONS:
            out[f.name] = {k: _plain(v) for k, v in dataclasses.asdict(value).items() if v is not None and v != {} and v != ""}
        elif f.name not in LEFT_OUT_AT or value != LEFT_OUT_AT[f.name]:
            out["train"][f.name] = _plain(value)
    if config.data.source != "synthetic":
        out["data"] = {k: v for k, v in out["data"].items() if k not in SYNTHETIC_ONLY}
    return out


def config_from_dict(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a config from a nested dict, with errors naming the unknown section or key."""
    unknown = sorted(set(raw) - {"train", *_SECTIONS})
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; expected [train], [model], [optim], [data]")
    parts: dict[str, Any] = {}
    for section, cls in (*_SECTIONS.items(), ("train", None)):
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"{where}: [{section}] must be a table")
        known = {f.name for f in dataclasses.fields(cls or TrainConfig)} - (set(_SECTIONS) if cls is None else set())
        bad = sorted(set(values) - known)
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad} in [{section}]; known: {sorted(known)}")
        try:
            if cls is None:
                parts.update(values)
            else:
                parts[section] = cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: [{section}]: {err}") from None
    try:
        return TrainConfig(**parts)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: [train]: {err}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML run config."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such config file", str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    return config_from_dict(raw, where=str(path))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as TOML, atomically."""
    atomic_write_bytes(Path(path), tomli_w.dumps(config_to_dict(config)).encode())
