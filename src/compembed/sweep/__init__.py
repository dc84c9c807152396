"""The reproduction sweep: a grid of training runs, its results table, plots and a report on the paper's claims."""
from .grid import STUDIES, Cell, SweepSpec, cell_key
from .presets import PRESETS, preset
from .report import judge_claims, make_plots, summarize, write_report
from .results import load_rows, write_table
from .runner import cell_row, run_sweep, train_cell

__all__ = [
    "STUDIES", "Cell", "SweepSpec", "cell_key", "PRESETS", "preset", "run_sweep", "cell_row", "train_cell",
    "summarize", "make_plots", "judge_claims", "write_report", "load_rows", "write_table",
]
