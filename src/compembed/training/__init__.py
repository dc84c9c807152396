"""Training and evaluation loops, checkpoints and metrics."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    DEFAULT_EMBEDDING_LR, DEFAULT_LR, OPTIMIZERS, DataConfig, OptimConfig, TrainConfig, load_config, save_config,
)
from .datasets import open_data
from .evaluate import EvalResult, evaluate
from .hooks import TrainStepHooks, reset_optimizer_state
from .liveness import LiveUnits, relu_layers
from .loop import DeadUnitsWarning, NonFiniteLossError, RunResult, train, train_step
from .optim import LinearWarmup, SparseAMSGrad, build_optimizers, uses_sparse_gradients
from .report import MemoryReport, format_table, memory_report

__all__ = [
    "DEFAULT_EMBEDDING_LR", "DEFAULT_LR", "OPTIMIZERS", "DataConfig", "DeadUnitsWarning", "EvalResult", "LinearWarmup",
    "LiveUnits", "MemoryReport", "NonFiniteLossError", "OptimConfig", "RunResult", "SparseAMSGrad", "TrainConfig",
    "TrainStepHooks", "reset_optimizer_state",
    "build_optimizers", "evaluate", "format_table", "load_checkpoint", "load_config", "memory_report", "open_data",
    "relu_layers", "save_checkpoint", "save_config", "train", "train_step", "uses_sparse_gradients",
]
