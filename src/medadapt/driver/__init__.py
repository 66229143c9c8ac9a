"""One run driver: :func:`run_cell` runs one cell (dataset, backbone, method, seed, fold) and records it.

``medadapt probe``, ``finetune`` and ``distill`` are thin recipes over it (their loops over seeds and arms),
and a benchmark grid is a loop over cells. Methods are registered in :data:`METHODS`: ``probe``,
``finetune`` and ``distill`` here; adding one is a module and its ``METHODS.register`` line.
"""

from . import distill, finetune, probe  # noqa: F401  (register the methods)
from .base import (
    HISTORY_FILE,
    METHODS,
    CellContext,
    epoch_bar,
    features_of,
    image_size,
    load_splits,
    model_info,
    preprocess_for,
    recorded,
    require_rows,
    run_cell,
    start_run,
    write_history,
)

__all__ = [
    "HISTORY_FILE",
    "METHODS",
    "CellContext",
    "epoch_bar",
    "features_of",
    "image_size",
    "load_splits",
    "model_info",
    "preprocess_for",
    "recorded",
    "require_rows",
    "run_cell",
    "start_run",
    "write_history",
]
