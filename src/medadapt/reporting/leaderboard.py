"""The leaderboard: per dataset × backbone × method, mean ± std over seeds × folds, with the cost columns.

A pure function of the tidy results table (:func:`leaderboard`), written as CSV, Markdown and LaTeX
(booktabs) by :func:`write_leaderboard`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_write
from ..errors import DataError

__all__ = ["leaderboard", "write_leaderboard", "COST_COLUMNS"]

#: Cost rows shown (their mean over a method's cells) and their column titles.
COST_COLUMNS = {"trainable_params": "trainable params", "peak_memory_bytes": "peak memory (GB)",
                "wall_seconds": "wall time (s)"}  # fmt: skip
_KEYS = ["dataset", "backbone", "run"]


def leaderboard(
    table: pd.DataFrame, *, metrics: Sequence[str] = ("auc", "acc"), split: str = "test"
) -> pd.DataFrame:
    """One row per (dataset, backbone, method): ``n`` cells (seeds × folds), ``METRIC_mean`` / ``METRIC_std``
    per metric, and the cost columns' mean; sorted by dataset, then the first metric's mean (best first).

    Example:
        >>> board = leaderboard(read_results("runs/grid"), metrics=["auc"])  # doctest: +SKIP
    """
    if table.empty:
        raise DataError("the results table is empty: no cell has finished yet")
    known = sorted(table.loc[table["split"] == split, "metric"].unique())
    missing = [m for m in metrics if m not in known]
    if missing:
        raise DataError(f"no {split} rows for metric(s) {missing}; the table has {known}")
    scores = table[(table["split"] == split) & table["metric"].isin(metrics)]
    cells = scores.assign(fold=scores["fold"].fillna(-1))
    stats = cells.groupby([*_KEYS, "metric"], sort=False)["value"].agg(
        mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), n="count"
    )
    wide = stats.unstack("metric")
    out = pd.DataFrame(index=wide.index)
    out["n"] = wide["n"].max(axis=1).astype(int)
    for m in metrics:
        out[f"{m}_mean"], out[f"{m}_std"] = wide["mean"][m], wide["std"][m]
    cost = table[(table["split"] == "cost") & table["metric"].isin(list(COST_COLUMNS))]
    if len(cost):
        means = cost.pivot_table(index=_KEYS, columns="metric", values="value", aggfunc="mean")
        out = out.join(means.reindex(columns=[c for c in COST_COLUMNS if c in means.columns]))
    out = out.reset_index().rename(columns={"run": "method"})
    first = f"{metrics[0]}_mean"
    order = out.groupby("dataset", sort=False).ngroup()
    return (
        out.assign(_d=order)
        .sort_values(["_d", first], ascending=[True, False])
        .drop(columns="_d")
        .reset_index(drop=True)
    )


def _best(board: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Whether each metric's mean is the best of its dataset (ties: all of them)."""
    return pd.DataFrame({m: np.isclose(board[f"{m}_mean"], board.groupby("dataset")[f"{m}_mean"].transform("max"))
                         for m in metrics})  # fmt: skip


def _display(
    board: pd.DataFrame, metrics: Sequence[str], *, bold: tuple[str, str] = ("", "")
) -> pd.DataFrame:
    """Mean ± std strings (the best of each dataset wrapped in ``bold``), cost columns rounded."""
    show = board[["dataset", "backbone", "method", "n"]].copy()
    best = _best(board, metrics)
    for m in metrics:
        text = [
            f"{a:.3f} ± {s:.3f}" if np.isfinite(s) else f"{a:.3f}"
            for a, s in zip(board[f"{m}_mean"], board[f"{m}_std"])
        ]
        show[m] = [f"{bold[0]}{t}{bold[1]}" if b else t for t, b in zip(text, best[m])]
    for col, title in COST_COLUMNS.items():
        if col in board:
            values = board[col] / 1e9 if col == "peak_memory_bytes" else board[col]
            whole = col == "trainable_params"  # counts are whole numbers; times and sizes are not
            show[title] = values.map(
                lambda v, w=whole: "" if pd.isna(v) else f"{v:,.0f}" if w or abs(v) >= 100 else f"{v:.2f}"
            )
    return show


def write_leaderboard(
    board: pd.DataFrame, out: str | Path, *, metrics: Sequence[str], stem: str = "leaderboard"
) -> dict[str, Path]:
    """``out/leaderboard.{csv,md,tex}``; returns their paths. The best mean per dataset is bold in MD and LaTeX."""
    out = Path(out)
    buffer = io.StringIO()
    board.to_csv(buffer, index=False)
    paths = {"csv": atomic_write(out / f"{stem}.csv", buffer.getvalue())}
    md = _display(board, metrics, bold=("**", "**")).to_markdown(index=False, disable_numparse=True)
    paths["md"] = atomic_write(out / f"{stem}.md", md + "\n")
    paths["tex"] = atomic_write(out / f"{stem}.tex", _latex(_display(board, metrics), _best(board, metrics)))
    return paths


def _latex(show: pd.DataFrame, best: pd.DataFrame) -> str:
    """A booktabs tabular through pandas' Styler: user text LaTeX-escaped, the best of each dataset bold."""
    styled = show.style.format(escape="latex").hide(axis="index")
    styled = styled.apply(lambda col: ["textbf:--rwrap;" if b else "" for b in best[col.name]],
                          axis=0, subset=list(best.columns))  # fmt: skip
    return styled.to_latex(hrules=True, column_format="lll" + "r" * (len(show.columns) - 3))
