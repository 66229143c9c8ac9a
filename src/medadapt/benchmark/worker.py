"""Run one cell of a grid in its own folder: what every executor's worker calls.

``DIR/cells/<dataset>/<backbone>/<method>/<fold>/seed<S>/`` receives the run's files (predictions, model,
``history.csv``, checkpoints), then ``results.csv`` and, last, ``done.json`` (host, start, end, seconds):
a folder with ``done.json`` is finished, whatever happened after. A cell that raises writes ``error.json``
(the message and the traceback) instead and the grid goes on. The cell holds a lock on its folder while it
runs, so a second worker given the same cell (a driver restarted while an orphaned worker still runs it)
waits, then finds it done.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from .._io import atomic_write, exclusive_lock
from .store import CELL_RESULTS, CELLS, DONE_FILE, ERROR_FILE

__all__ = ["execute_cell", "WorkerState"]

log = logging.getLogger(__name__)

CELL_LOCK = ".cell.lock"


class WorkerState:
    """What a worker process keeps between cells: loaded datasets and the current backbone with its features."""

    def __init__(self) -> None:
        self.datasets: dict[Any, Any] = {}
        self.folds: dict[Any, Any] = {}
        self.memo: dict[Any, Any] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def execute_cell(spec: dict[str, Any], out: str | Path, *, state: WorkerState | None = None,
                 show_progress: bool = False) -> str:  # fmt: skip
    """Run the cell ``spec`` (a :class:`~medadapt.benchmark.grid.CellSpec` as a dict) under ``out``; returns
    ``"done"`` or ``"failed"`` (the error is in the folder's ``error.json``; nothing is raised)."""
    folder = Path(out) / CELLS / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / CELL_LOCK):  # not the folder's own lock, which the writers inside take
        if (folder / DONE_FILE).is_file():
            return "done"
        (folder / ERROR_FILE).unlink(missing_ok=True)
        started, t0 = _now(), time.perf_counter()
        try:
            rows = _run(spec, Path(out) / "cells", state or WorkerState(), show_progress)
        except (
            Exception
        ) as e:  # any failure of one cell (out of memory, bad data) is recorded; the grid goes on
            from ..errors import MedadaptError

            message = str(e) if isinstance(e, MedadaptError) else f"{type(e).__name__}: {e}"
            atomic_write(folder / ERROR_FILE, json.dumps({
                "error": message, "type": type(e).__name__, "traceback": traceback.format_exc(),
                "host": socket.gethostname(), "started": started, "ended": _now()}, indent=2))  # fmt: skip
            log.warning("cell %s failed: %s", spec["key"], message)
            return "failed"
        from ..reporting.results import write_results

        (folder / CELL_RESULTS).unlink(missing_ok=True)  # a resumed cell's table is this run's, not appended
        write_results(rows, folder / CELL_RESULTS)
        atomic_write(folder / DONE_FILE, json.dumps({
            "key": spec["key"], "host": socket.gethostname(), "pid": os.getpid(), "started": started,
            "ended": _now(), "seconds": time.perf_counter() - t0}, indent=2))  # fmt: skip
        return "done"


def _run(
    spec: dict[str, Any], cells_root: Path, state: WorkerState, show_progress: bool
) -> list[dict[str, Any]]:
    from .. import config as configs
    from .._device import resolve_device
    from ..driver import CellContext, image_size, run_cell

    cls = getattr(configs, spec["config_class"])
    resume = {"resume": True} if "resume" in cls.__dataclass_fields__ else {}  # a killed cell continues
    folder = cells_root / spec["folder"]
    config = dict(spec["config"])
    if spec.get("depends_folder"):  # a distillation's teacher: the saved model of the cell it depends on
        config["teacher"] = [str(cells_root / spec["depends_folder"])]
    cfg = cls(**{**config, "out": str(folder), **resume})
    fold, folds = spec["fold"], spec["folds"]
    splits = _splits(cfg, state, pooled=fold is not None)
    if fold is not None:
        splits = _fold(cfg, splits, folds, fold, state)
    ctx = CellContext(splits=splits, img_size=image_size(cfg, splits["train"]), device=resolve_device(cfg.device),
                      run_dir=folder, fold=fold, show_progress=show_progress, memo=state.memo)  # fmt: skip
    rows = run_cell(cfg, ctx, method=spec["driver"], name=spec["method"], seed=spec["seed"])
    # the grid's names, so that the table's run / dataset / backbone columns say what the grid file says
    names = {"run": spec["method"], "dataset": spec["dataset"], "backbone": spec["backbone"]}
    return [{**r, **names, "dataset_address": r["dataset"], "backbone_address": r["backbone"]} for r in rows]


def _splits(cfg, state: WorkerState, *, pooled: bool):
    """The dataset's official splits, loaded once per worker; ``pooled``: for cross-validation folds, which
    pool them (an automatic split is then not checked: :func:`~medadapt.data.tables.pooled_splits`)."""
    from ..data.tables import pooled_splits
    from ..driver import load_splits, require_rows

    key = (cfg.dataset, cfg.size, cfg.data_root, cfg.skip_bad_rows, pooled)
    if key not in state.datasets:
        state.datasets.clear()  # one dataset at a time: grids run a dataset's cells together
        state.folds.clear()
        with pooled_splits() if pooled else contextlib.nullcontext():
            state.datasets[key] = load_splits(cfg)
    if not pooled:
        require_rows(state.datasets[key], cfg.dataset)
    return state.datasets[key]


def _fold(cfg, splits, folds: dict[str, Any], fold: int, state: WorkerState):
    """A fold's views; the folds of a dataset are computed once per worker (they cost about a second)."""
    from ..data.folds import fold_parts, fold_views

    key = (cfg.dataset, cfg.size, folds["k"], folds["seed"], folds["val_folds"])
    if key not in state.folds:
        state.folds[key] = fold_parts(splits, k=folds["k"], seed=folds["seed"], val_folds=folds["val_folds"])
    return fold_views(*state.folds[key], fold)
