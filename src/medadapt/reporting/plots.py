"""The HTML report's figures: accuracy vs cost with the Pareto front, learning curves, reliability diagrams
and sensitivity per confounder level.

Each ``plot_*`` function is a pure function of one of the report's tidy tables and returns a matplotlib
``Figure`` on its own Agg canvas (no pyplot: no global figure state, no display); :func:`figure_bytes` renders
it to PNG or SVG bytes and :func:`save_figure` writes it atomically. matplotlib is imported when a function
runs, so ``import medadapt`` works without the ``plots`` extra. One colour per method
(:func:`method_colors`) is kept across every figure of a report.

Example:
    >>> colors = method_colors(cost["method"])  # doctest: +SKIP
    >>> fig = plot_cost(cost, cost_column="trainable_params", metric="auc", colors=colors)  # doctest: +SKIP
    >>> save_figure(fig, "cost.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write
from .._optional import require
from ..errors import ConfigError

__all__ = [
    "COST_AXES",
    "pareto_front",
    "method_colors",
    "curve_columns",
    "plot_cost",
    "plot_learning_curves",
    "plot_reliability",
    "plot_sensitivity",
    "figure_bytes",
    "save_figure",
]

StrPath = str | os.PathLike
_DPI = 110  # the page is ~1000 px wide: a 9-inch figure fills it
_FRONT_COLOR = "#222222"
_FLAG_COLOR = "#c0392b"

#: Cost column -> (axis label, divisor applied to the values).
COST_AXES: dict[str, tuple[str, float]] = {
    "trainable_params": ("trainable parameters", 1.0),
    "peak_memory_bytes": ("peak memory (GB)", 1e9),
    "wall_seconds": ("wall time (s)", 1.0),
}
#: Above this many methods a reliability figure is laid out by hand (constrained layout would take seconds).
_CONSTRAINED_PANELS = 6
_LOG_SPAN = 20.0  # a cost axis is logarithmic where its largest value is this many times its smallest


# ------------------------------------------------------------------------------------------------ common
def _figure(width: float, height: float, *, constrained: bool = True) -> Any:
    """A figure on its own Agg canvas; ``constrained=False`` for many panels (constrained layout costs seconds
    there: margins are set by hand instead)."""
    figure = require("matplotlib.figure", extra="plots", package="matplotlib")
    agg = require("matplotlib.backends.backend_agg", extra="plots", package="matplotlib")
    fig = figure.Figure(figsize=(width, height), layout="constrained" if constrained else None)
    agg.FigureCanvasAgg(fig)
    return fig


def figure_bytes(fig: Any, *, format: str = "png", dpi: int = _DPI) -> bytes:
    """The figure rendered to ``png`` or ``svg`` bytes (white background, tight bounding box)."""
    if format not in ("png", "svg"):
        raise ConfigError(f"figure format must be 'png' or 'svg', got {format!r}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.1)
    return buffer.getvalue()


def save_figure(fig: Any, path: StrPath, *, dpi: int = _DPI) -> Path:
    """Write the figure atomically as PNG or SVG, chosen by the suffix of ``path``."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg"):
        raise ConfigError(f"save a figure as .png or .svg, got {str(path)!r}")
    return atomic_write(path, figure_bytes(fig, format=suffix, dpi=dpi))


def _text(value: object) -> str:
    """User text as matplotlib shows it literally: a ``$`` would otherwise start mathtext (and may fail)."""
    return str(value).replace("$", r"\$")


def method_colors(methods: Iterable[object]) -> dict[str, Any]:
    """One colourblind-friendly colour per method name (sorted, so the same names get the same colours)."""
    names = sorted({str(m) for m in methods})
    cm = require("matplotlib", extra="plots").colormaps
    if len(names) <= 10:
        return {n: cm["tab10"](i) for i, n in enumerate(names)}
    if len(names) <= 20:
        return {n: cm["tab20"](i) for i, n in enumerate(names)}
    return {n: cm["viridis"](v) for n, v in zip(names, np.linspace(0, 0.95, len(names)))}


def _colors(colors: Mapping[str, Any] | None, methods: Iterable[object]) -> dict[str, Any]:
    own = method_colors(methods)
    return {m: (colors or {}).get(m, c) for m, c in own.items()}


def _panels(n: int, *, width: float = 3.6, height: float = 3.0, ncols_max: int = 3) -> tuple[Any, Any]:
    ncols = max(1, min(n, ncols_max))
    nrows = -(-n // ncols)
    fig = _figure(max(5.0, width * ncols + 1.0), height * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _method_legend(fig: Any, colors: Mapping[str, Any], methods: Sequence[str], **style: Any) -> None:
    line2d = require("matplotlib.lines", extra="plots", package="matplotlib").Line2D
    handles = [line2d([], [], color=colors[m], label=_text(m), **style) for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(f"the {what} table lacks column(s) {missing}; it has {list(df.columns)}")


def _dataset_rows(df: pd.DataFrame, columns: Sequence[str], what: str, dataset: str) -> pd.DataFrame:
    """The rows of ``dataset`` in the ``what`` table, which must have ``columns``; none is an error."""
    _require_columns(df, columns, what)
    rows = df[df["dataset"].astype(str) == str(dataset)]
    if rows.empty:
        raise ConfigError(f"no {what} rows for dataset {dataset!r}")
    return rows


# ------------------------------------------------------------------------------------------ Pareto front
def pareto_front(df: pd.DataFrame, value: str, cost: str, *, higher_is_better: bool = True) -> pd.Series:
    """Which rows are on the Pareto front: no other row is at least as good and at least as cheap, and
    strictly better in one of the two.

    Rows with a NaN value or cost are left out (``False``); identical rows do not dominate each other, so
    ties are all on the front. Returns a boolean Series aligned with ``df``'s index.

    Example:
        >>> df = pd.DataFrame({"auc": [0.9, 0.8, 0.95], "params": [10, 100, 1000]})
        >>> pareto_front(df, "auc", "params").tolist()
        [True, False, True]
    """
    _require_columns(df, [value, cost], "Pareto")
    v = pd.to_numeric(df[value], errors="coerce").to_numpy(dtype=np.float64)
    c = pd.to_numeric(df[cost], errors="coerce").to_numpy(dtype=np.float64)
    if not higher_is_better:
        v = -v
    ok = np.isfinite(v) & np.isfinite(c)
    vo, co = v[ok], c[ok]
    # dominated[i]: some j has v_j >= v_i and c_j <= c_i, with one of them strict.
    no_worse = (vo[None, :] >= vo[:, None]) & (co[None, :] <= co[:, None])
    strictly = (vo[None, :] > vo[:, None]) | (co[None, :] < co[:, None])
    front = np.zeros(len(df), dtype=bool)
    front[np.flatnonzero(ok)] = ~(no_worse & strictly).any(axis=1)
    return pd.Series(front, index=df.index, name="pareto")


# -------------------------------------------------------------------------------------- accuracy vs cost
def plot_cost(
    cost: pd.DataFrame,
    *,
    cost_column: str,
    metric: str,
    higher_is_better: bool = True,
    colors: Mapping[str, Any] | None = None,
) -> Any:
    """The metric's mean vs one cost column, one panel per dataset, one point per method; the Pareto front
    (better metric for less cost) is joined by a step line and its points ringed.

    Args:
        cost: rows ``dataset, method, mean`` and the cost column (NaN costs are not drawn).
        cost_column: ``trainable_params``, ``peak_memory_bytes``, ``wall_seconds`` (see :data:`COST_AXES`),
            or any other numeric column (drawn as it is). The axis is logarithmic where a panel's costs
            span a factor of 20 or more.
        metric: the name of the metric, for the y label.
        higher_is_better: the metric's direction, for the front.
        colors: ``{method: colour}``; default :func:`method_colors`.
    """
    _require_columns(cost, ["dataset", "method", "mean", cost_column], "cost")
    label, scale = COST_AXES.get(cost_column, (cost_column, 1.0))
    data = cost.assign(_x=pd.to_numeric(cost[cost_column], errors="coerce") / scale,
                       mean=pd.to_numeric(cost["mean"], errors="coerce"))  # fmt: skip
    data = data[np.isfinite(data["_x"]) & np.isfinite(data["mean"])]
    if data.empty:
        raise ConfigError(f"no row has both a {metric} mean and a {cost_column}: nothing to draw")
    palette = _colors(colors, data["method"].astype(str))
    # the datasets in the order of the table (as in the other figures), those with something to draw
    datasets = [
        d for d in dict.fromkeys(cost["dataset"].astype(str)) if d in set(data["dataset"].astype(str))
    ]
    fig, axes = _panels(len(datasets))
    for ax, dataset in zip(axes, datasets):
        rows = data[data["dataset"].astype(str) == dataset]
        _cost_panel(ax, rows, palette, higher=higher_is_better)
        ax.set(title=_text(dataset), xlabel=label, ylabel=_text(metric))
    methods = sorted(data["method"].astype(str).unique())
    _method_legend(fig, palette, methods, marker="o", linestyle="", markersize=7)
    direction = "higher" if higher_is_better else "lower"
    fig.suptitle(f"{_text(metric)} ({direction} is better) vs {label}; ringed: Pareto front")
    return fig


def _cost_panel(ax: Any, rows: pd.DataFrame, palette: Mapping[str, Any], *, higher: bool) -> None:
    front = pareto_front(rows, "mean", "_x", higher_is_better=higher)
    on = rows[front].sort_values("_x")
    # The front as a staircase: each step holds its value until a cheaper-to-better point takes over.
    ax.step(on["_x"], on["mean"], where="post", color=_FRONT_COLOR, lw=1, ls="--", zorder=1)
    for _, row in rows.iterrows():
        ax.scatter(row["_x"], row["mean"], color=palette[str(row["method"])], s=45, zorder=2)
    ax.scatter(on["_x"], on["mean"], s=160, facecolors="none", edgecolors=_FRONT_COLOR, lw=1.3, zorder=3)
    x = rows["_x"].to_numpy(dtype=np.float64)
    if (x > 0).all() and x.max() >= _LOG_SPAN * x.min():
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(require("matplotlib.ticker", extra="plots").NullFormatter())
    ax.margins(x=0.15, y=0.15)
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------------------- learning curves
def curve_columns(histories: pd.DataFrame, metric: str) -> list[str]:
    """The history columns worth a panel: ``val_<metric>`` (else any ``val_*`` score), then ``train_loss``
    (else any loss column), then ``val_loss``; at most three, in that order, only those present.
    """
    if histories is None or histories.empty or "column" not in histories:
        return []
    present = list(dict.fromkeys(histories["column"].astype(str)))
    val_scores = [c for c in present if c.startswith("val_") and not c.endswith("loss")]
    picks = [f"val_{metric}"] if f"val_{metric}" in present else val_scores[:1]
    picks += ["train_loss"] if "train_loss" in present else [c for c in present if c.endswith("loss")][:1]
    picks += ["val_loss"] if "val_loss" in present else []
    return list(dict.fromkeys(picks))[:3]


def plot_learning_curves(
    histories: pd.DataFrame,
    *,
    dataset: str,
    columns: Sequence[str],
    colors: Mapping[str, Any] | None = None,
) -> Any:
    """One panel per history column for one dataset: one line per method, the mean over seeds × folds per
    epoch, with a band of ± one standard deviation where there are several runs.

    Args:
        histories: long rows ``dataset, method, seed, fold, epoch, column, value``.
        dataset: the dataset to draw.
        columns: the history columns to draw (see :func:`curve_columns`).
        colors: ``{method: colour}``; default :func:`method_colors`.
    """
    _require_columns(histories, ["dataset", "method", "epoch", "column", "value"], "histories")
    rows = histories[(histories["dataset"].astype(str) == str(dataset)) & histories["column"].isin(columns)]
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce")).dropna(subset=["value"])
    if rows.empty:
        raise ConfigError(f"no history rows for dataset {dataset!r} and columns {list(columns)}")
    stats = rows.groupby(["column", "method", "epoch"])["value"].agg(["mean", "std"]).reset_index()
    drawn = [c for c in columns if c in set(stats["column"])]
    palette = _colors(colors, stats["method"].astype(str))
    fig, axes = _panels(len(drawn), width=3.8, height=2.9)
    for ax, column in zip(axes, drawn):
        for method, line in stats[stats["column"] == column].groupby("method"):
            color = palette[str(method)]
            ax.plot(line["epoch"], line["mean"], color=color, lw=1.6, marker="o", markersize=3)
            ax.fill_between(line["epoch"], line["mean"] - line["std"].fillna(0),
                            line["mean"] + line["std"].fillna(0), color=color, alpha=0.15, lw=0)  # fmt: skip
        ax.set(title=_text(column), xlabel="epoch")
        ax.xaxis.set_major_locator(require("matplotlib.ticker", extra="plots").MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _method_legend(fig, palette, sorted(stats["method"].astype(str).unique()), lw=2)
    fig.suptitle(f"learning curves: {_text(dataset)} (mean over seeds × folds, band ± 1 sd)")
    return fig


# ----------------------------------------------------------------------------------- reliability diagram
def plot_reliability(
    reliability: pd.DataFrame, *, dataset: str, colors: Mapping[str, Any] | None = None
) -> Any:
    """Reliability diagrams for one dataset, one column per method: accuracy vs mean confidence per bin
    against the diagonal (perfect calibration), over a bar chart of how many predictions fall in each bin.

    Args:
        reliability: rows ``dataset, method, bin, lower, upper, count, confidence, accuracy``.
        dataset: the dataset to draw.
        colors: ``{method: colour}``; default :func:`method_colors`.
    """
    needed = ["dataset", "method", "lower", "upper", "count", "confidence", "accuracy"]
    rows = _dataset_rows(reliability, needed, "reliability", dataset)
    methods = sorted(rows["method"].astype(str).unique())
    palette = _colors(colors, methods)
    ncols = min(len(methods), 4)
    nrows = -(-len(methods) // ncols)
    if len(methods) > _CONSTRAINED_PANELS:
        return _reliability_compact(rows, methods, palette, dataset)
    fig = _figure(max(5.0, 2.6 * ncols + 0.6), 3.6 * nrows + 0.6)
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    for i, method in enumerate(methods):
        r, c = divmod(i, ncols)
        top = fig.add_subplot(grid[2 * r, c])
        bottom = fig.add_subplot(grid[2 * r + 1, c], sharex=top)
        _reliability_panel(top, bottom, rows[rows["method"].astype(str) == method], palette[method])
        top.set_title(_text(method), fontsize=10)
        top.set_ylabel("accuracy" if c == 0 else "")
        bottom.set_ylabel("count" if c == 0 else "")
    fig.suptitle(f"reliability: {_text(dataset)} (on the diagonal = calibrated)")
    return fig


def _reliability_compact(
    rows: pd.DataFrame, methods: list[str], palette: Mapping[str, Any], dataset: str
) -> Any:
    """Many methods: one small panel each, laid out by hand, bin counts as marker areas (no count bars)."""
    ncols = 6
    nrows = -(-len(methods) // ncols)
    fig = _figure(2.0 * ncols, 2.1 * nrows + 0.5, constrained=False)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.5 / (2.1 * nrows + 0.5) + 0.04,
                        top=1 - 0.45 / (2.1 * nrows + 0.5), wspace=0.12, hspace=0.35)  # fmt: skip
    for ax in axes.ravel()[len(methods) :]:
        ax.set_axis_off()
    for ax, method in zip(axes.ravel(), methods):
        part = rows[rows["method"].astype(str) == method].sort_values("lower")
        count = pd.to_numeric(part["count"], errors="coerce").fillna(0)
        filled = part[count > 0]
        ax.plot([0, 1], [0, 1], color="#888888", ls="--", lw=1)
        ax.plot(filled["confidence"], filled["accuracy"], color=palette[method], lw=1.2)
        ax.scatter(filled["confidence"], filled["accuracy"], s=8 + 60 * count[count > 0] / max(count.max(), 1),
                   color=palette[method])  # fmt: skip
        ax.set_title(_text(method), fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
        ax.grid(alpha=0.3)
    fig.suptitle(f"reliability: {_text(dataset)} (on the diagonal = calibrated; marker area = predictions in the bin)",
                 fontsize=10)  # fmt: skip
    return fig


def _reliability_panel(top: Any, bottom: Any, rows: pd.DataFrame, color: Any) -> None:
    rows = rows.sort_values("lower")
    filled = rows[pd.to_numeric(rows["count"], errors="coerce") > 0]
    top.plot([0, 1], [0, 1], color="#888888", ls="--", lw=1)
    top.plot(filled["confidence"], filled["accuracy"], color=color, marker="o", markersize=4, lw=1.5)
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.set_aspect("equal", adjustable="box")
    top.tick_params(labelbottom=False)
    top.grid(alpha=0.3)
    widths = rows["upper"] - rows["lower"]
    bottom.bar(rows["lower"], rows["count"], width=widths, align="edge", color=color, alpha=0.7, lw=0)
    bottom.set_xlabel("confidence")


# -------------------------------------------------------------------------------------- shortcut check
def plot_sensitivity(
    confounder: pd.DataFrame, *, dataset: str, colors: Mapping[str, Any] | None = None
) -> Any:
    """Sensitivity per level of each confounder column for one dataset, methods side by side, with their
    intervals as error bars; flagged levels are drawn as red-edged squares.

    Args:
        confounder: rows ``dataset, method, column, level, sensitivity, sens_low, sens_high, flagged``.
        dataset: the dataset to draw.
        colors: ``{method: colour}``; default :func:`method_colors`.
    """
    needed = ["dataset", "method", "column", "level", "sensitivity", "sens_low", "sens_high"]
    rows = _dataset_rows(confounder, needed, "confounder", dataset)
    columns = list(dict.fromkeys(rows["column"].astype(str)))
    methods = sorted(rows["method"].astype(str).unique())
    palette = _colors(colors, methods)
    fig, axes = _panels(len(columns), width=4.2, height=3.0, ncols_max=2)
    for ax, column in zip(axes, columns):
        _sensitivity_panel(ax, rows[rows["column"].astype(str) == column], methods, palette)
        ax.set(title=_text(column), ylabel="sensitivity", ylim=(-0.02, 1.05))
    _method_legend(fig, palette, methods, marker="o", linestyle="", markersize=7)
    fig.suptitle(f"sensitivity per level: {_text(dataset)} (red squares: flagged)")
    return fig


def _sensitivity_panel(
    ax: Any, rows: pd.DataFrame, methods: Sequence[str], palette: Mapping[str, Any]
) -> None:
    levels = list(dict.fromkeys(rows["level"].astype(str)))
    width = 0.7 / max(len(methods), 1)
    for k, method in enumerate(methods):
        mine = rows[rows["method"].astype(str) == method]
        x = np.array([levels.index(str(v)) for v in mine["level"]]) + (k - (len(methods) - 1) / 2) * width
        y = pd.to_numeric(mine["sensitivity"], errors="coerce").to_numpy(dtype=np.float64)
        low = pd.to_numeric(mine["sens_low"], errors="coerce").to_numpy(dtype=np.float64)
        high = pd.to_numeric(mine["sens_high"], errors="coerce").to_numpy(dtype=np.float64)
        err = np.nan_to_num(np.vstack([y - low, high - y]).clip(min=0))
        ax.errorbar(x, y, yerr=err, fmt="o", color=palette[method], markersize=5, capsize=3, lw=1.2)
        flagged = mine["flagged"].fillna(False).astype(bool).to_numpy() if "flagged" in mine else None
        if flagged is not None and flagged.any():
            ax.scatter(x[flagged], y[flagged], marker="s", s=110, facecolors="none",
                       edgecolors=_FLAG_COLOR, lw=1.8, zorder=3)  # fmt: skip
    ax.set_xticks(range(len(levels)), [_text(v) for v in levels], rotation=20 if len(levels) > 4 else 0)
    ax.set_xlim(-0.6, len(levels) - 0.4)
    ax.grid(axis="y", alpha=0.3)
