"""Training and evaluation loops, checkpoints and metrics."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import OPTIMIZERS, DataConfig, OptimConfig, TrainConfig, load_config, save_config
from .evaluate import EvalResult, evaluate
from .loop import NonFiniteLossError, RunResult, open_data, train, train_step
from .optim import SparseAMSGrad, build_optimizers, uses_sparse_gradients
from .report import MemoryReport, format_table, memory_report

__all__ = [
    "OPTIMIZERS", "DataConfig", "EvalResult", "MemoryReport", "NonFiniteLossError", "OptimConfig", "RunResult",
    "SparseAMSGrad", "TrainConfig", "build_optimizers", "evaluate", "format_table", "load_checkpoint",
    "load_config", "memory_report", "open_data", "save_checkpoint", "save_config", "train", "train_step",
    "uses_sparse_gradients",
]
