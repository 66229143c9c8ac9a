"""Result sources: run and grid folders (or bare results CSVs), read into one tidy table that knows where each
row's predictions and history lie, and what produced them.

A source is a folder holding ``results.csv`` (``medadapt probe / finetune / distill --out``, a ``medadapt
benchmark`` grid) or a results CSV file. Every row gets ``source`` (the source's name) and ``run_path`` (the
absolute folder holding its ``predictions/`` and ``history.csv``: the table's ``run_dir`` column, or for tables
written before that column existed, the run layout ``RUN/seedS`` or ``HEAD/seedS`` where it exists).
A *method* is what the table names one way of adapting one backbone: its backbone and run name (a grid method,
a finetune arm, a probe's output folder), with the head or strategy added where one run holds several, and the
source added where two sources use one name.

Example:
    >>> sources = load_sources(["runs/grid", "runs/probe_x"])  # doctest: +SKIP
    >>> sources.table[["source", "method", "seed", "fold", "run_path"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import DataError
from .results import RUN_DIR, load_predictions, read_results

__all__ = ["Source", "Sources", "load_sources", "METHOD", "CELL_KEYS"]

#: The column naming a method (see the module docstring).
METHOD = "method"
#: What identifies one cell of a method: its dataset, seed and fold.
CELL_KEYS = ("dataset", METHOD, "seed", "fold")
_KIND_FILES = (("benchmark.sqlite", "grid"), ("grid.yaml", "grid"), ("outputs.json", "distill"))


@dataclass
class Source:
    """One results folder (or CSV file): its rows, what kind of run wrote it, and its records."""

    name: str
    path: Path
    kind: str  # grid | probe | finetune | distill | table
    table: pd.DataFrame
    env: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sources:
    """Every source's rows in one table (with ``source``, ``method`` and ``run_path`` columns)."""

    sources: list[Source]
    table: pd.DataFrame

    def predictions(self, run_path: str | os.PathLike, split: str = "test") -> dict[str, Any] | None:
        """The saved predictions of one cell (``None`` where the file is missing)."""
        path = Path(run_path) / "predictions" / f"{split}.npz"
        return load_predictions(path) if path.is_file() else None


def load_sources(paths: Sequence[str | os.PathLike]) -> Sources:
    """Read every source in ``paths``; raises :class:`DataError` naming a path that holds no results table."""
    if not paths:
        raise DataError("no results given: name run / grid folders or results CSV files")
    sources = [_source(Path(p)) for p in paths]
    names = [s.name for s in sources]
    for i, s in enumerate(sources):  # two folders named alike (runs/a/grid, runs/b/grid): tell them apart
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{i + 1}"
    frames = [s.table.assign(source=s.name) for s in sources]
    table = pd.concat(frames, ignore_index=True)
    table[METHOD] = _method_names(table)
    return Sources(sources=sources, table=table)


def _source(path: Path) -> Source:
    if not path.exists():
        raise DataError(
            f"no results at {path}: give a run or grid folder (holding results.csv) or a CSV file"
        )
    root = path if path.is_dir() else path.parent
    table = read_results(path)
    kind = "table" if path.is_file() else _kind(root, table)
    table = table.copy()
    table["run_path"] = _run_paths(root, table)
    config = _read_yaml(root / ("grid.yaml" if kind == "grid" else "config.yaml")) if path.is_dir() else {}
    env = _read_json(root / "env.json") if path.is_dir() else {}
    name = (path if path.is_dir() else path.with_suffix("")).resolve().name
    return Source(name=name, path=path, kind=kind, table=table, env=env, config=config)


def _kind(root: Path, table: pd.DataFrame) -> str:
    for file, kind in _KIND_FILES:
        if (root / file).exists():
            return kind
    strategies = set(table["strategy"].dropna())
    return "probe" if strategies <= {"frozen"} else "finetune"


def _run_paths(root: Path, table: pd.DataFrame) -> pd.Series:
    """Absolute cell folders: ``run_dir`` where recorded, else ``RUN/seedS`` or ``HEAD/seedS`` if it exists."""
    recorded = (
        table[RUN_DIR] if RUN_DIR in table.columns else pd.Series([None] * len(table), index=table.index)
    )
    out = []
    for run_dir, run, head, seed in zip(recorded, table["run"], table["head"], table["seed"]):
        if isinstance(run_dir, str) and run_dir:
            out.append(str((root / run_dir).resolve()))
            continue
        seed_dir = f"seed{int(seed)}" if pd.notna(seed) else None
        guesses = [root / str(n) / seed_dir for n in (run, head) if seed_dir and isinstance(n, str)]
        found = next((g for g in guesses if (g / "predictions").is_dir()), None)
        out.append(str(found.resolve()) if found else None)
    return pd.Series(out, index=table.index, dtype=object)


def _method_names(table: pd.DataFrame) -> pd.Series:
    """``backbone · run``, with the head / strategy where one run holds several, and the source where two
    sources hold one name."""
    parts = table[["backbone", "run"]].astype(str).agg(" · ".join, axis=1)
    for col in ("head", "strategy"):
        several = table.groupby(["source", "backbone", "run"], dropna=False)[col].transform("nunique") > 1
        parts = parts.where(~several, parts + " · " + table[col].astype(str))
    shared = table.assign(_m=parts).groupby("_m")["source"].transform("nunique") > 1
    return parts.where(~shared, table["source"].astype(str) + ": " + parts)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def fold_key(fold: Any) -> int:
    """A fold as an int; the official split (no fold) is ``-1``."""
    return -1 if fold is None or (isinstance(fold, float) and np.isnan(fold)) else int(fold)
