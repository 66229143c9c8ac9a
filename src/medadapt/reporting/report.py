"""``medadapt report``: one self-contained HTML page from run and grid folders, a pure function of what they
saved (results tables, predictions, histories, records and figures) and of :func:`compare`'s statistics.

Example:
    >>> write_report(["runs/grid"], "runs/grid/report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .compare import CompareOptions, Comparison, compare
from .html import ReportData, render_report
from .sources import METHOD, Source, Sources, load_sources

__all__ = ["write_report", "report_data", "histories"]

log = logging.getLogger(__name__)

#: History columns drawn as learning curves, where a run has them.
CURVE_COLUMNS = ("train_loss", "val_loss", "val_auc", "val_acc", "val_dice")
_PACKAGES = ("medadapt", "torch", "timm")


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    options: CompareOptions | None = None,
    title: str | None = None,
    tables: str | os.PathLike | None = None,
) -> tuple[Path, Comparison]:
    """Compare the sources in ``paths`` and render the page to ``out``; also writes the comparison's tables
    and figures to ``tables`` (default: ``OUT_STEM_files/`` beside the page). Returns the page and the
    comparison."""
    out = Path(out)
    sources = load_sources(paths)
    result = compare(sources, options or CompareOptions(cell_intervals=False))  # the page shows methods
    folder = Path(tables) if tables is not None else out.with_name(out.stem + "_files")
    written = result.write(folder, figures=False)  # the page draws its own figures: the CD diagram is shared
    written.update(result.draw(folder / "figures", reliability=False))
    data = report_data(sources, result, cd_figure=written.get("cd_diagram"), title=title)
    return render_report(data, out), result


def report_data(sources: Sources, result: Comparison, *, cd_figure: Path | None = None,
                title: str | None = None) -> ReportData:  # fmt: skip
    """The page's content (see :class:`~medadapt.reporting.html.ReportData`)."""
    opts = result.options
    names = ", ".join(s.name for s in sources.sources)
    summary = result.summary
    cost_cols = [c for c in ("trainable_params", "peak_memory_bytes", "wall_seconds") if c in summary.columns]
    warnings = list(result.notes)
    return ReportData(
        title=title or f"medadapt report: {names}",
        metric=opts.metric,
        higher_is_better=opts.higher_is_better,
        alpha=opts.alpha,
        confidence=opts.confidence,
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        runs=pd.DataFrame(
            [
                _run_row(s, sources.table[sources.table["source"] == s.name], opts.split)
                for s in sources.sources
            ]
        ),
        leaderboard=summary,
        sentences=list(result.sentences),
        friedman=result.friedman,
        cd_figure=cd_figure,
        ranks=result.ranks,
        pairwise=result.pairwise,
        cost=summary[["dataset", METHOD, "mean", *cost_cols]],
        histories=histories(result.cells),
        calibration=result.calibration,
        reliability=result.reliability,
        subgroups=_subgroup_rows(result),
        subgroup_gaps=_on_metric(result.subgroup_gaps, opts.metric),
        confounder=result.confounder,
        confounder_gaps=result.confounder_gaps,
        figures=_figures(sources),
        warnings=warnings,
    )


def _subgroup_rows(result: Comparison) -> pd.DataFrame | None:
    """The subgroup table on the compared metric (the CSV keeps every metric)."""
    return _on_metric(result.subgroups, result.options.metric)


def _on_metric(table: pd.DataFrame | None, metric: str) -> pd.DataFrame | None:
    if table is None:
        return None
    return table[table["metric"] == metric].drop(columns=["metric"])


def _run_row(source: Source, t: pd.DataFrame, split: str) -> dict[str, Any]:
    scored = t[t["split"] == split]
    seconds = t[(t["split"] == "cost") & (t["metric"] == "wall_seconds")]["value"].sum()
    env = source.env
    packages = env.get("packages", {}) if isinstance(env.get("packages"), dict) else {}
    versions = ", ".join(f"{p} {packages[p]}" for p in _PACKAGES if packages.get(p))
    machine = env.get("gpu") or env.get("cpu") or ""
    if env.get("cpu_count") and not env.get("gpu"):
        machine = f"{machine} ({env['cpu_count']} CPUs)"
    folds = sorted({-1 if pd.isna(f) else int(f) for f in scored["fold"]})
    return {
        "source": source.name,
        "kind": source.kind,
        "datasets": ", ".join(sorted(scored["dataset"].dropna().unique())),
        "backbones": ", ".join(sorted(scored["backbone"].dropna().unique())),
        "methods": _methods_text(scored),
        "seeds": ", ".join(str(int(s)) for s in sorted(scored["seed"].dropna().unique())),
        "folds": ", ".join("official" if f < 0 else str(f) for f in folds),
        "cells": int(scored.drop_duplicates(["dataset", "run", "backbone", "head", "seed", "fold"]).shape[0]),
        "seconds": float(seconds),
        "machine": machine,
        "versions": versions,
        "git": (env.get("git_sha") or "")[:10],
    }


def _methods_text(scored: pd.DataFrame) -> str:
    """The run names (grid methods, arms, heads) and how many backbone x method combinations they make."""
    runs = sorted(scored["run"].dropna().astype(str).unique())
    combos = scored[METHOD].nunique() if METHOD in scored else len(runs)
    return f"{', '.join(runs)} ({combos} with the backbones)" if combos != len(runs) else ", ".join(runs)


def histories(cells: pd.DataFrame) -> pd.DataFrame:
    """Learning curves of every cell with a ``history.csv``, long: dataset, method, seed, fold, epoch, column,
    value. A probe's history holds every learning rate it tried: only the selected one is kept."""
    frames = []
    for c in cells.itertuples(index=False):
        path = Path(c.run_path) / "history.csv" if isinstance(c.run_path, str) else None
        if path is None or not path.is_file():
            continue
        try:
            h = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "epoch" not in h.columns or h["epoch"].isna().all():
            continue  # kNN: nothing trains
        if "setting" in h.columns:
            h = h[h["setting"] == _selected_setting(path.parent, h)]
        cols = [col for col in CURVE_COLUMNS if col in h.columns]
        long = h.melt(id_vars=["epoch"], value_vars=cols, var_name="column", value_name="value").dropna()
        frames.append(
            long.assign(dataset=c.dataset, **{METHOD: getattr(c, METHOD)}, seed=c.seed, fold=c.fold)
        )
    if not frames:
        return pd.DataFrame(columns=["dataset", METHOD, "seed", "fold", "epoch", "column", "value"])
    table = pd.concat(frames, ignore_index=True)
    return table[["dataset", METHOD, "seed", "fold", "epoch", "column", "value"]]


def _selected_setting(run: Path, history: pd.DataFrame) -> str:
    """The probe setting (``lr=...``) its results selected, else the one with the best final val AUC."""
    results = run / "results.csv"
    if results.is_file():
        try:
            selected = pd.read_csv(results, usecols=["selected"])["selected"].dropna()
        except (ValueError, pd.errors.ParserError):
            selected = pd.Series(dtype=str)
        for text in selected:
            setting = str(text).split(";")[0]
            if setting in set(history["setting"]):
                return setting
    score = next((c for c in ("val_auc", "val_dice") if c in history), None)
    last = history.dropna(subset=[score]) if score else history.iloc[:0]
    if last.empty:
        return str(history["setting"].iloc[0])
    return str(last.sort_values(["epoch", score]).iloc[-1]["setting"])


def _figures(sources: Sources) -> list[tuple[str, Path]]:
    """Figures listed in an ``outputs.json``: a run's at its root (distillation: t-SNE, Grad-CAM, ablations),
    then a cell's in its folder (segmentation: overlays; the first cell of each method and dataset), captioned
    with the cell."""
    found, seen = [], set()
    for s in sources.sources:
        root = s.path if s.path.is_dir() else s.path.parent
        seen.add(root.resolve())
        found += [(f"{s.name}: {name}", path) for name, path in _listed_figures(root)]
    # one cell per method and dataset (its first seed and fold): a grid's page stays readable
    cells = sources.table.dropna(subset=["run_path"]).drop_duplicates(["source", "dataset", METHOD])
    for c in cells.itertuples(index=False):
        folder = Path(c.run_path)
        if folder in seen:
            continue
        found += [(f"{_cell_caption(c)}: {name}", path) for name, path in _listed_figures(folder)]
    return found


def _cell_caption(cell: Any) -> str:
    """``SOURCE: DATASET / METHOD (seed S, fold F)``."""
    where = [f"{key} {int(getattr(cell, key))}" for key in ("seed", "fold") if pd.notna(getattr(cell, key))]
    name = f"{cell.source}: {cell.dataset} / {getattr(cell, METHOD)}"
    return f"{name} ({', '.join(where)})" if where else name


def _listed_figures(folder: Path) -> list[tuple[str, Path]]:
    """The PNG files ``folder/outputs.json`` lists under ``figures``, named by their file names."""
    listed = folder / "outputs.json"
    if not listed.is_file():
        return []
    try:
        files = json.loads(listed.read_text()).get("figures", [])
    except (json.JSONDecodeError, AttributeError, OSError):
        return []
    paths = [(Path(f).stem.replace("_", " "), folder / f) for f in files]
    return [(name, path) for name, path in paths if path.suffix.lower() == ".png" and path.is_file()]
