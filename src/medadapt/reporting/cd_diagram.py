"""Critical-difference (CD) diagrams of average ranks (Demšar 2006, Section 3.2.4), drawn by scikit-posthocs.

The axis carries the methods' average ranks (1 = best, on the left); methods joined by a bar are not
significantly different (post-hoc p-value >= alpha); the CD bar above the axis shows the Nemenyi critical
difference. The figure is drawn on its own matplotlib ``Figure`` with an Agg canvas (no pyplot figure state,
no display) and written atomically as PNG and SVG. matplotlib and scikit-posthocs are imported when the
function runs, so ``import medadapt`` works without the ``plots`` and ``stats`` extras.

Example:
    >>> from medadapt.evaluation.ranking import nemenyi_test
    >>> nemenyi = nemenyi_test(scores)  # doctest: +SKIP
    >>> cd_diagram(nemenyi["average_ranks"], nemenyi["p_values"], "out/cd_auc",
    ...            critical_difference=nemenyi["critical_difference"], title="AUC")  # doctest: +SKIP
    [PosixPath('out/cd_auc.png'), PosixPath('out/cd_auc.svg')]
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write
from .._optional import require
from ..errors import ConfigError

__all__ = ["cd_diagram"]

StrPath = str | os.PathLike
_DPI = 150


def _figure(width: float, height: float) -> Any:
    # The same Agg-canvas Figure as reporting.figures._figure, which this module does not import: figures.py
    # loads torch (for Grad-CAM) at import, and a rank diagram needs none of it.
    figure = require("matplotlib.figure", extra="plots", package="matplotlib")
    agg = require("matplotlib.backends.backend_agg", extra="plots", package="matplotlib")
    fig = figure.Figure(figsize=(width, height), layout="constrained")
    agg.FigureCanvasAgg(fig)
    return fig


def _check_ranks(average_ranks: pd.Series | Mapping[Hashable, float]) -> pd.Series:
    ranks = (
        pd.Series(average_ranks, dtype=np.float64) if isinstance(average_ranks, Mapping) else average_ranks
    )
    if not isinstance(ranks, pd.Series) or len(ranks) < 2:
        raise ConfigError(
            "average_ranks must be a pandas Series or a {method: rank} mapping of at least 2 methods, e.g. "
            f"nemenyi_test(scores)['average_ranks'], got {average_ranks!r:.80}"
        )
    ranks = ranks.astype(np.float64)
    if not ranks.index.is_unique or not np.isfinite(ranks.to_numpy()).all():
        raise ConfigError("average_ranks needs one finite rank per method (unique names, no NaN)")
    labels = [str(m) for m in ranks.index]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"average_ranks has methods whose names print the same: {labels}; rename them")
    return ranks.sort_values(kind="stable")


def _check_sig(sig_matrix: pd.DataFrame, methods: pd.Index) -> pd.DataFrame:
    if not isinstance(sig_matrix, pd.DataFrame):
        raise ConfigError(
            "sig_matrix must be a methods × methods DataFrame of post-hoc p-values, e.g. "
            f"nemenyi_test(scores)['p_values'], got {type(sig_matrix).__name__}"
        )
    missing = [str(m) for m in methods if m not in sig_matrix.index or m not in sig_matrix.columns]
    if missing:
        raise ConfigError(
            f"sig_matrix has no row or column for {missing} (its columns: "
            f"{[str(c) for c in sig_matrix.columns]}); pass the p-values of the same methods as average_ranks"
        )
    sig = sig_matrix.loc[methods, methods].astype(np.float64)
    values = sig.to_numpy()
    if np.isnan(values).any() or (values < 0).any() or (values > 1).any():
        raise ConfigError("sig_matrix must hold p-values between 0 and 1 (no NaN)")
    return sig


def _text(name: Hashable) -> str:
    # A method name is drawn verbatim: "$" would otherwise start matplotlib mathtext.
    return str(name).replace("$", r"\$")


def _draw_cd(ax: Any, best: float, cd: float, alpha: float) -> None:
    # scikit-posthocs can draw the CD bar, but labels it with 2 significant digits ("CD = 1.2" for 1.25).
    # x in ranks, y in points above the axis line: clear of the tick labels whatever the figure's height.
    transforms = require("matplotlib.transforms", extra="plots", package="matplotlib")
    bar = transforms.offset_copy(ax.transData, fig=ax.figure, y=26, units="points")
    ends = [best, best + cd]
    ax.plot(ends, [0, 0], color="k", linewidth=1.5, solid_capstyle="butt", transform=bar, clip_on=False)
    tick = transforms.offset_copy(ax.transData, fig=ax.figure, y=23, units="points")
    for x in ends:
        ax.plot([x, x], [0, 0], marker="|", markersize=8, color="k", transform=tick, clip_on=False)
    label = transforms.offset_copy(ax.transData, fig=ax.figure, y=30, units="points")
    ax.text(best + cd / 2, 0, f"CD = {cd:.2f} at alpha {alpha:g}", ha="center", va="bottom", transform=label)


def _output_paths(path_stem: StrPath) -> list[Path]:
    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".svg"):  # "cd.png" means the stem "cd"
        stem = stem.with_suffix("")
    return [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]


def cd_diagram(
    average_ranks: pd.Series | Mapping[Hashable, float],
    sig_matrix: pd.DataFrame,
    path_stem: StrPath,
    *,
    alpha: float = 0.05,
    critical_difference: float | None = None,
    title: str | None = None,
) -> list[Path]:
    """Draw a critical-difference diagram and write ``PATH_STEM.png`` and ``PATH_STEM.svg``.

    ``average_ranks`` ({method: average rank}, 1 = best) and ``sig_matrix`` (methods × methods post-hoc
    p-values) are typically ``nemenyi_test(scores)["average_ranks"]`` and ``["p_values"]``; methods whose
    p-value is >= ``alpha`` are joined by a bar (``scikit_posthocs.critical_difference_diagram``). With
    ``critical_difference`` a bar of that length is drawn above the axis, labelled "CD = 1.25 at alpha 0.05".
    Method names are drawn verbatim; the SVG keeps each name as text in a comment next to its glyphs.

    Returns:
        The PNG and SVG paths.

    Raises:
        ConfigError: fewer than 2 methods, non-finite ranks, a ``sig_matrix`` without every method or
            with values outside [0, 1], or a bad ``alpha`` / ``critical_difference``.
        MissingDependencyError: matplotlib or scikit-posthocs is missing (``pip install 'medadapt[plots,stats]'``).

    Example:
        >>> cd_diagram({"a": 1.2, "b": 2.1, "c": 2.7}, p_values, "cd", critical_difference=1.25)  # doctest: +SKIP
        [PosixPath('cd.png'), PosixPath('cd.svg')]
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a significance level between 0 and 1 (e.g. 0.05), got {alpha!r}")
    if critical_difference is not None and not (
        isinstance(critical_difference, (int, float)) and 0 < critical_difference < math.inf
    ):
        raise ConfigError(
            f"critical_difference must be a positive number or None, got {critical_difference!r}"
        )
    ranks = _check_ranks(average_ranks)
    sig = _check_sig(sig_matrix, ranks.index)
    posthocs = require("scikit_posthocs", extra="stats", package="scikit-posthocs")
    labels = {m: _text(m) for m in ranks.index}
    k = len(ranks)
    fig = _figure(7.0, 1.6 + 0.3 * k)
    ax = fig.add_subplot()
    posthocs.critical_difference_diagram(
        ranks.rename(labels),
        sig.rename(index=labels, columns=labels),
        alpha=alpha,
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
    )
    ax.set_xlim(0.9, k + 0.1)
    ax.set_xticks(range(1, k + 1))
    if critical_difference is not None:
        _draw_cd(ax, float(ranks.iloc[0]), float(critical_difference), alpha)
    if title:
        ax.set_title(title, pad=50 if critical_difference is not None else 24)
    paths = _output_paths(path_stem)
    for path in paths:
        fmt = path.suffix[1:]
        atomic_write(
            path,
            lambda f, fmt=fmt: fig.savefig(
                f, format=fmt, dpi=_DPI, facecolor="white", bbox_inches="tight", pad_inches=0.1
            ),
        )
    return paths
