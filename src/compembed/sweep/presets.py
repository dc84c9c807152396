"""Named sweeps: a tiny one for tests, a small one that finishes in minutes, and the paper's grid."""
from __future__ import annotations

import dataclasses

from ..models import ModelConfig
from ..training.config import DataConfig, OptimConfig, TrainConfig
from .grid import SweepSpec

__all__ = ["PRESETS", "preset", "study_methods", "COMPEMBED_METHODS", "FIELD_METHODS"]


def _tiny() -> SweepSpec:
    # Seconds: small MLPs and data, one arch, one seed; exercises every study and the report.
    model = ModelConfig(bottom_mlp=(16,), top_mlp=(16,), deep_mlp=(16,), cross_layers=2)
    base = TrainConfig(model=model, data=DataConfig(rows=3000, cardinality_scale=0.0005), batch_size=256,
                       eval_splits=("val", "test"), log_every=1000, checkpoint_every=0)
    return SweepSpec(base=base, archs=("dlrm",), collisions=(4, 60), operations=("add", "mult"), path_hidden=(8,),
                     thresholds=(1, 200), optimizers=("adagrad",), seeds=(0,), budget_collisions=(2,))


def _small() -> SweepSpec:
    # A few minutes on 2 cores: DLRM with the paper's MLPs on 60k synthetic rows.
    base = TrainConfig(data=DataConfig(rows=60_000, cardinality_scale=0.001), batch_size=256,
                       optim=OptimConfig(lr=0.02), log_every=1000, checkpoint_every=0)
    return SweepSpec(base=base, archs=("dlrm",), collisions=(2, 4, 60), path_hidden=(16, 64),
                     thresholds=(1, 200, 2000), optimizers=("adagrad",), seeds=(0,))


def _paper() -> SweepSpec:
    # The paper's grid (both models, every collision count, threshold and optimizer, 3 seeds)
    # at a synthetic scale this machine can run; see docs/results/README.md for the choice.
    base = TrainConfig(data=DataConfig(rows=100_000, cardinality_scale=0.001), batch_size=256,
                       optim=OptimConfig(lr=0.02), log_every=1000, checkpoint_every=0)
    return SweepSpec(base=base)


def _budget() -> SweepSpec:
    # The accuracy-per-byte study: DLRM at matched bytes, 2M synthetic rows with the Criteo Kaggle
    # cardinalities x 0.05 (1.69M categories, about 31 training occurrences per id as on the real
    # Kaggle file), ids in frequency order; the default recipe; 3 seeds. About an hour with --jobs 2.
    base = TrainConfig(data=DataConfig(rows=2_000_000, cardinality_scale=0.05, id_order="frequency"), batch_size=256,
                       log_every=1000, checkpoint_every=0)
    return SweepSpec(base=base, archs=("dlrm",), studies=("budget",), optimizers=("adagrad",), seeds=(0, 1, 2),
                     budgets=(4, 16, 64, 256, 1000), budget_extra=(("planner", 100),))


# The loss-vs-bytes study's methods in chart order: compembed's (the planners, hot rows plus compositions
# or plus ROBE-Z arrays, and the paper's family), then the field's; a method enters once
# ``planning.UNIFORM_METHODS`` offers it.
COMPEMBED_METHODS = ("planner", "planner-robe", "hashing", "qr", "gqr")
FIELD_METHODS = ("robe", "dhe", "tt", "md", "cce")


def study_methods() -> tuple[str, ...]:
    from ..planning import UNIFORM_METHODS

    return (*COMPEMBED_METHODS, *(m for m in FIELD_METHODS if m in UNIFORM_METHODS))


def _methods() -> SweepSpec:
    # The loss-vs-bytes study (issue 11): every method at 2x..10,000x of the full tables' bytes, DLRM
    # (and DCN at 16x, 256x and 10,000x) on the budget preset's 2M synthetic rows; each method's table
    # learning rate tuned first (3 candidates, seed 0, its budget nearest 16x, by validation loss);
    # 3 seeds. Real datasets: --data FOLDER --archs dlrm.
    # DLRM and DCN with 64-wide MLPs: with the paper's (512-256-64 / 512-256) one DLRM run on the 2M
    # rows took 141 s on one core (52 s with these; MLP-bound), so the ~200-run grid would not fit 2
    # cores in a session; the study compares tables at matched bytes, the MLPs are the same for all.
    base = _budget().base
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, bottom_mlp=(64,), top_mlp=(64,),
                                                               deep_mlp=(64,), cross_layers=3))
    return SweepSpec(base=base, archs=("dlrm", "dcn"), studies=("budget",), optimizers=("adagrad",), seeds=(0, 1, 2),
                     budgets=(2, 4, 16, 64, 256, 1000, 10000), budget_methods=study_methods(), budget_collisions=(),
                     tune_lrs=(0.01, 0.05, 0.2), tune_target=16.0, dcn_budgets=(16, 256, 10000), dhe_max_width=1024)


PRESETS = {"tiny": _tiny, "small": _small, "paper": _paper, "budget": _budget, "methods": _methods}


def preset(name: str) -> SweepSpec:
    if name not in PRESETS:
        raise ValueError(f"unknown sweep preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()
