"""Benchmark grids: many backbones × methods × datasets × seeds × folds in one resumable command.

:func:`run_benchmark` runs a grid file (:mod:`.grid`) with an executor (:mod:`.executors`: local worker
processes or SLURM through submitit), each cell through the run driver (:mod:`medadapt.driver`) in its own
folder (:mod:`.worker`), and collects the results in ``DIR/benchmark.sqlite`` (:mod:`.store`) and
``DIR/results.csv``.
"""

from .executors import EXECUTORS
from .grid import CellSpec, Grid, load_grid, parse_grid
from .methods import GRID_METHODS
from .run import GridSummary, Plan, grid_status, plan, run_benchmark
from .store import Store

__all__ = [
    "EXECUTORS",
    "GRID_METHODS",
    "CellSpec",
    "Grid",
    "GridSummary",
    "Plan",
    "Store",
    "grid_status",
    "load_grid",
    "parse_grid",
    "plan",
    "run_benchmark",
]
