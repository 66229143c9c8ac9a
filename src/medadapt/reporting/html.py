"""The HTML report: one self-contained page (inline CSS, figures as base64 ``data:`` URIs, no script, no
network) rendered from a :class:`ReportData` by a Jinja2 template with autoescaping.

Every piece of text from the data (dataset, method, column and group names, notes, warnings) reaches the page
through the template's autoescaping; the only markup built here is the ``data:`` URI of an image, made of
base64 characters. Optional tables that are ``None`` or empty leave their section out (the contents line
says why), and a figure that cannot be drawn becomes a warning, never a failed report.

Example:
    >>> data = ReportData(title="medadapt report: grid", metric="auc", higher_is_better=True,
    ...     alpha=0.05, confidence=0.95, generated="2025-01-01 12:00", runs=runs, leaderboard=board,
    ... )  # doctest: +SKIP
    >>> render_report(data, "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._io import atomic_write
from ..errors import MedadaptError
from . import plots

__all__ = ["ReportData", "render_report", "report_html"]

log = logging.getLogger(__name__)
StrPath = str | os.PathLike
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
_DASH = "—"


@dataclass
class ReportData:
    """Everything the report shows, already computed (the statistics live in ``medadapt compare``).

    Tables and their columns (optional ones may be ``None`` or empty: their section is left out; a missing
    value is NaN and shows as a dash):

    - ``runs``: source, kind, datasets, backbones, methods, seeds, folds, cells, seconds, machine, versions,
      git
    - ``leaderboard``: dataset, method, backbone, strategy, head, n, mean, std, t_low, t_high, boot_low,
      boot_high, trainable_params, peak_memory_bytes, wall_seconds, best
    - ``ranks``: method, average_rank; ``pairwise``: dataset, method_a, method_b, n, mean_diff, boot_low,
      boot_high, wilcoxon_p; ``friedman``: n_blocks, n_methods, chi2, p_value, iman_davenport_f,
      iman_davenport_p, blocks, note; ``cd_figure``: a PNG
    - ``cost``: dataset, method, mean, trainable_params, peak_memory_bytes, wall_seconds
    - ``histories``: dataset, method, seed, fold, epoch, column, value (long)
    - ``calibration``: dataset, method, ece, brier; ``reliability``: dataset, method, bin, lower, upper,
      count, confidence, accuracy
    - ``subgroups``: dataset, method, column, group, n, value, low, high, note; ``subgroup_gaps``: dataset,
      method, column, gap, worst_group
    - ``confounder``: dataset, method, column, level, n_pos, sensitivity, sens_low, sens_high, n_neg,
      specificity, spec_low, spec_high, flagged
    - ``figures``: (caption, image path) pairs; ``warnings``: shown in a notice box
    """

    title: str
    metric: str
    higher_is_better: bool
    alpha: float
    confidence: float
    generated: str
    runs: pd.DataFrame
    leaderboard: pd.DataFrame
    sentences: list[str] = field(default_factory=list)
    friedman: dict | None = None
    cd_figure: Path | None = None
    ranks: pd.DataFrame | None = None
    pairwise: pd.DataFrame | None = None
    cost: pd.DataFrame = field(default_factory=pd.DataFrame)
    histories: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None
    subgroups: pd.DataFrame | None = None
    subgroup_gaps: pd.DataFrame | None = None
    confounder: pd.DataFrame | None = None
    confounder_gaps: pd.DataFrame | None = None
    figures: list[tuple[str, Path]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def render_report(data: ReportData, path: StrPath) -> Path:
    """Write the report page for ``data`` to ``path`` atomically and return the path."""
    return atomic_write(path, report_html(data))


def report_html(data: ReportData) -> str:
    """The report page for ``data`` as one self-contained HTML string."""
    return _environment().get_template("report.html.j2").render(_Page(data).context())


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    loader = jinja2.FileSystemLoader(Path(__file__).with_name("templates"))
    return jinja2.Environment(
        loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )


# ------------------------------------------------------------------------------------------- formatting
def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_number(value: Any, digits: int = 3) -> str:
    """``0.912``; large values with thousands separators; NaN/None as a dash."""
    v = _finite(value)
    if v is None:
        return _DASH
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def fmt_params(value: Any) -> str:
    """A parameter count as ``950``, ``12.3k``, ``350k``, ``1.2M`` or ``3.4B``."""
    v = _finite(value)
    if v is None:
        return _DASH
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.{0 if abs(v) >= 100 * scale else 1}f}{unit}"
    return f"{v:.0f}"


def fmt_gb(value: Any) -> str:
    """Bytes as gigabytes (1e9), two decimals."""
    v = _finite(value)
    return _DASH if v is None else f"{v / 1e9:.2f}"


def fmt_seconds(value: Any) -> str:
    """Seconds: one decimal under 100, whole seconds above."""
    v = _finite(value)
    return _DASH if v is None else (f"{v:.1f}" if abs(v) < 100 else f"{v:,.0f}")


def fmt_duration(value: Any) -> str:
    """A wall time in words: ``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    v = _finite(value)
    if v is None:
        return _DASH
    s = round(v)
    if s < 60:
        return f"{v:.0f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_p(value: Any) -> str:
    """A p-value: three significant digits, scientific notation below 0.001."""
    v = _finite(value)
    return _DASH if v is None else (f"{v:.1e}" if v < 1e-3 else f"{v:.3g}")


def fmt_interval(low: Any, high: Any, digits: int = 3) -> str:
    """``[0.891, 0.934]``; a dash when either end is missing."""
    if _finite(low) is None or _finite(high) is None:
        return _DASH
    return f"[{fmt_number(low, digits)}, {fmt_number(high, digits)}]"


def fmt_text(value: Any) -> str:
    """A cell's text: lists joined with commas, missing values as a dash."""
    if isinstance(value, list | tuple | set | np.ndarray):
        return ", ".join(str(v) for v in (sorted(value, key=str) if isinstance(value, set) else value))
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return _DASH
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))  # a count that went through a float column (5.0 -> 5)
    return str(value)


def _slug(text: object, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _present(df: pd.DataFrame | None) -> bool:
    return df is not None and isinstance(df, pd.DataFrame) and not df.empty


# ------------------------------------------------------------------------------------------------ tables
#: How a table column's values are shown (by column name); any other column is shown as text.
_FORMATS: dict[str, Callable[[Any], str]] = {
    **dict.fromkeys(
        [
            "mean",
            "std",
            "ece",
            "brier",
            "value",
            "gap",
            "sensitivity",
            "specificity",
            "sensitivity_gap",
            "specificity_gap",
        ],
        fmt_number,
    ),
    "mean_diff": fmt_number,
    "average_rank": lambda v: fmt_number(v, 2),
    "wilcoxon_p": fmt_p,
    "trainable_params": fmt_params,
    "peak_memory_bytes": fmt_gb,
    "wall_seconds": fmt_seconds,
    "seconds": fmt_duration,
}
#: Interval cells made from two columns: ``NAME_interval`` from (low, high).
_INTERVALS = {"t": ("t_low", "t_high"), "boot": ("boot_low", "boot_high"), "ci": ("low", "high"),
              "sens": ("sens_low", "sens_high"), "spec": ("spec_low", "spec_high"),
              "sens_gap": ("sensitivity_gap_low", "sensitivity_gap_high"),
              "spec_gap": ("specificity_gap_low", "specificity_gap_high")}  # fmt: skip
_RUN_ORDER = ["source", "kind", "datasets", "backbones", "methods", "seeds", "folds", "cells", "seconds",
              "machine", "versions", "git"]  # fmt: skip

#: The leaderboard's cost columns: (title, cell key, cell class).
_COST_CELLS = [
    ("params", "trainable_params", "num"),
    ("memory (GB)", "peak_memory_bytes", "num"),
    ("time (s)", "wall_seconds", "num"),
]


def _rows(df: pd.DataFrame, css: Callable[[dict], str] | None = None) -> list[dict[str, str]]:
    """Each row of ``df`` as ``{column: text}`` (plus ``X_interval`` cells and the row's ``_css`` class)."""
    out = []
    for record in df.to_dict("records"):
        cells = {str(k): _FORMATS.get(str(k), fmt_text)(v) for k, v in record.items()}
        for name, (low, high) in _INTERVALS.items():
            if low in record and high in record:
                cells[f"{name}_interval"] = fmt_interval(record[low], record[high])
        cells["_css"] = css(record) if css else ""
        out.append(cells)
    return out


def _is_true(value: Any) -> bool:
    return isinstance(value, bool | np.bool_ | int | np.integer) and bool(value)


def _data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _file_uri(path: Path) -> str:
    """An image file as a ``data:`` URI; a ValueError for a type a browser would not show in ``<img>``."""
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path} is not an image file ({', '.join(_IMAGE_TYPES)})")
    return _data_uri(path.read_bytes(), mime)


# -------------------------------------------------------------------------------------------------- page
class _Page:
    """Builds the template's context from a :class:`ReportData`: tables as rows of text, figures as URIs.

    A section's method returns None where there is nothing to show, and records why in ``missing``.
    """

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self.warnings = [str(w) for w in data.warnings]
        self.missing: list[tuple[str, str]] = []
        self.colors: dict[str, Any] | None = None
        self.plots_ok = True

    def context(self) -> dict[str, Any]:
        d = self.data
        sections = {"runs": self.runs(), "leaderboards": self.leaderboards(),
                    "significance": self.significance(), "cost": self.cost(), "curves": self.curves(),
                    "calibration": self.calibration(), "subgroups": self.subgroups(),
                    "shortcut": self.shortcut(), "figures": self.extra_figures()}  # fmt: skip
        return {"title": str(d.title), "generated": str(d.generated), "metric": str(d.metric),
                "direction": "higher is better" if d.higher_is_better else "lower is better",
                "alpha": f"{d.alpha:g}", "confidence": f"{d.confidence:.0%}", "missing": self.missing,
                "warnings": self.warnings, **sections}  # fmt: skip

    # -- figures
    def figure(
        self, fig_id: str, caption: str, alt: str, plot: Callable, *args: Any, **kw: Any
    ) -> dict | None:
        """``plot(*args, **kw, colors=...)`` as a PNG; None, and a warning, where it cannot be drawn."""
        if not self.plots_ok:
            return None
        try:
            if self.colors is None:
                self.colors = plots.method_colors(self.methods())
            png = plots.figure_bytes(plot(*args, **kw, colors=self.colors))
        except ImportError as e:  # MissingDependencyError: matplotlib is the optional "plots" extra
            self.plots_ok = False
            self.warnings.append(f"figures left out: {e}")
            return None
        except (MedadaptError, ValueError, KeyError) as e:
            log.warning("figure %s not drawn: %s", fig_id, e)
            self.warnings.append(f"figure {fig_id} not drawn: {e}")
            return None
        return {"id": fig_id, "caption": caption, "alt": alt, "src": _data_uri(png, "image/png")}

    def file_figure(self, fig_id: str, caption: str, path: StrPath) -> dict | None:
        try:
            src = _file_uri(Path(path))
        except (OSError, ValueError) as e:
            self.warnings.append(f"figure {caption!r} not shown: {e}")
            return None
        return {"id": fig_id, "caption": caption, "alt": caption, "src": src}

    def per_dataset(
        self, df: pd.DataFrame | None, kind: str, plot: Callable, text: str, **kw: Any
    ) -> list[dict]:
        """One figure per dataset of ``df``, id ``fig-KIND-DATASETSLUG``; ``text`` with the dataset for ``{}``
        is its caption and alt text."""
        if not _present(df) or "dataset" not in df:
            return []
        taken: set[str] = set()
        figures = []
        for name in dict.fromkeys(df["dataset"].astype(str)):
            fig_id, caption = f"fig-{kind}-{_slug(name, taken)}", text.replace("{}", name)
            figures.append(self.figure(fig_id, caption, caption, plot, df, dataset=name, **kw))
        return [f for f in figures if f]

    def methods(self) -> list[str]:
        d = self.data
        tables = [d.leaderboard, d.cost, d.histories, d.reliability, d.confounder]
        return sorted({str(m) for t in tables if _present(t) and "method" in t for m in t["method"]})

    # -- sections
    def runs(self) -> dict:
        runs = self.data.runs if _present(self.data.runs) else pd.DataFrame()
        keys = [c for c in _RUN_ORDER if c in runs] + [str(c) for c in runs.columns if c not in _RUN_ORDER]
        total = pd.to_numeric(runs["seconds"], errors="coerce").sum() if "seconds" in runs else None
        cells = pd.to_numeric(runs["cells"], errors="coerce").sum() if "cells" in runs else None
        columns = [("wall time" if k == "seconds" else k, k, "num" if k in ("cells", "seconds") else "")
                   for k in keys]  # fmt: skip
        return {"rows": _rows(runs), "columns": columns, "total": fmt_duration(total),
                "cells": fmt_number(cells, 0), "sources": len(runs)}  # fmt: skip

    def leaderboards(self) -> list[dict]:
        board = self.data.leaderboard
        if not _present(board):
            self.warnings.append("the leaderboard is empty: no finished cell was found")
            return []
        taken: set[str] = set()
        return [self.leaderboard(str(name), rows, _slug(name, taken))
                for name, rows in board.groupby("dataset", sort=False)]  # fmt: skip

    def leaderboard(self, dataset: str, rows: pd.DataFrame, slug: str) -> dict:
        """One dataset's rows, best first (NaN last); the best mean (ties: all) has a star and the row class
        ``best``. It is found here from ``mean`` and the direction, so star and order always agree (the
        ``best`` column, where given, is not needed)."""
        mean = pd.to_numeric(rows["mean"], errors="coerce")
        key = mean if self.data.higher_is_better else -mean
        rows = rows.assign(_key=key).sort_values("_key", ascending=False, na_position="last", kind="stable")
        best = rows["_key"] == rows["_key"].max()
        table = _rows(rows.drop(columns="_key"), css=lambda r: "")
        for cells, is_best in zip(table, best):
            if is_best:
                cells["method"], cells["_css"] = f"★ {cells['method']}", "best"
            cells["mean_sd"] = (
                cells["mean"] if cells.get("std", _DASH) == _DASH else f"{cells['mean']} ± {cells['std']}"
            )
        # backbone / strategy / head: a column where they vary, else one line above the table
        parts = [k for k in ("backbone", "strategy", "head") if k in rows]
        varying = [(k, k, "") for k in parts if rows[k].astype(str).nunique() > 1]
        same = [(k, table[0][k]) for k in parts if (k, k, "") not in varying]
        stats = [("n", "n", "num"), (f"{self.data.metric} mean ± sd", "mean_sd", "num"),
                 ("t-interval", "t_interval", "num"), ("bootstrap", "boot_interval", "num")]  # fmt: skip
        columns = [("method", "method", ""), *varying, *stats, *_COST_CELLS]
        return {"dataset": dataset, "slug": slug, "rows": table, "columns": columns, "same": same}

    def significance(self) -> dict | None:
        d = self.data
        cd = self.file_figure("fig-cd", "critical-difference diagram", d.cd_figure) if d.cd_figure else None
        friedman = _friedman_items(d.friedman or {})
        ranks = _rows(d.ranks.sort_values("average_rank")) if _present(d.ranks) else []
        pairwise = _rows(d.pairwise, css=lambda r: _significant(r, d.alpha)) if _present(d.pairwise) else []
        if not (cd or friedman or ranks or pairwise or d.sentences):
            self.missing.append(
                ("Is the difference real?", "no rank or paired test (one method or one block)")
            )
            return None
        sentences = [str(s) for s in d.sentences]
        return {"cd": cd, "friedman": friedman, "sentences": sentences, "ranks": ranks, "pairwise": pairwise}

    def cost(self) -> dict | None:
        d, cost = self.data, self.data.cost
        usable = [c for c in plots.COST_AXES if _present(cost) and c in cost
                  and np.isfinite(pd.to_numeric(cost[c], errors="coerce")).any()]  # fmt: skip
        if not usable:
            self.missing.append(("Accuracy vs cost", "no cost was recorded"))
            return None
        figures = []
        for column in usable:
            label = plots.COST_AXES[column][0]
            alt = f"{d.metric} mean vs {label}, one panel per dataset, Pareto front ringed"
            figures.append(self.figure(f"fig-cost-{column.replace('_', '-')}", f"{d.metric} vs {label}", alt,
                                       plots.plot_cost, cost, cost_column=column, metric=d.metric,
                                       higher_is_better=d.higher_is_better))  # fmt: skip
        fronts = []
        for dataset, group in cost.groupby("dataset", sort=False):
            on = {
                c: plots.pareto_front(group, "mean", c, higher_is_better=d.higher_is_better) for c in usable
            }
            names = {
                c: ", ".join(group[m].sort_values(c)["method"].astype(str)) or _DASH for c, m in on.items()
            }
            fronts.append({"dataset": str(dataset), "_css": "", **names})
        columns = [("dataset", "dataset", "")] + [(plots.COST_AXES[c][0], c, "") for c in usable]
        return {"figures": [f for f in figures if f], "fronts": fronts, "front_columns": columns}

    def curves(self) -> list[dict] | None:
        h = self.data.histories
        columns = plots.curve_columns(h, self.data.metric) if _present(h) else []
        if not columns:
            self.missing.append(("Learning curves", "no training history was saved"))
            return None
        alt = "learning curves on {}: " + ", ".join(columns) + " per epoch, one line per method"
        return self.per_dataset(h, "curves", plots.plot_learning_curves, alt, columns=columns)

    def calibration(self) -> dict | None:
        cal, rel = self.data.calibration, self.data.reliability
        if not (_present(cal) or _present(rel)):
            self.missing.append(("Calibration", "no saved predictions to calibrate"))
            return None
        alt = "reliability diagram on {}: accuracy vs confidence per method, counts per bin"
        return {"rows": _rows(cal) if _present(cal) else [],
                "figures": self.per_dataset(rel, "reliability", plots.plot_reliability, alt)}  # fmt: skip

    def subgroups(self) -> dict | None:
        sub, gaps = self.data.subgroups, self.data.subgroup_gaps
        if not (_present(sub) or _present(gaps)):
            self.missing.append(("Subgroups", "no subgroup column in the datasets' metadata"))
            return None
        muted = lambda r: "muted" if _finite(r.get("value")) is None else ""  # noqa: E731
        return {"rows": _rows(sub, css=muted) if _present(sub) else [],
                "gaps": _rows(gaps) if _present(gaps) else []}  # fmt: skip

    def shortcut(self) -> dict | None:
        conf = self.data.confounder
        if not _present(conf):
            self.missing.append(("Shortcut check", "no confounder column was checked"))
            return None
        flagged = conf["flagged"].map(_is_true) if "flagged" in conf else pd.Series(False, index=conf.index)
        rows = _rows(conf, css=lambda r: "flagged" if _is_true(r.get("flagged")) else "")
        for cells, flag in zip(rows, flagged):
            cells["flag"] = "⚠ flagged" if flag else ""
        alt = "sensitivity per confounder level on {}, with intervals; flagged levels marked"
        figures = self.per_dataset(conf, "shortcut", plots.plot_sensitivity, alt)
        gaps = self.data.confounder_gaps
        gap_rows = (
            _rows(gaps, css=lambda r: "flagged" if _is_true(r.get("flagged")) else "")
            if _present(gaps)
            else []
        )
        return {"rows": rows, "figures": figures, "flagged": int(flagged.sum()), "gaps": gap_rows}

    def extra_figures(self) -> list[dict] | None:
        shown = [self.file_figure(f"fig-extra-{i}", str(caption), path)
                 for i, (caption, path) in enumerate(self.data.figures, start=1)]  # fmt: skip
        shown = [f for f in shown if f]
        if not shown:
            self.missing.append(("Figures", "no extra figure (t-SNE, Grad-CAM) in the run folders"))
        return shown or None


def _significant(row: dict, alpha: float) -> str:
    p = _finite(row.get("wilcoxon_p"))
    return "significant" if p is not None and p < alpha else ""


def _friedman_items(friedman: dict) -> list[tuple[str, str]]:
    labels = [("blocks", "blocks", fmt_text), ("n_blocks", "number of blocks", fmt_text),
              ("n_methods", "number of methods", fmt_text), ("chi2", "Friedman χ²", fmt_number),
              ("p_value", "Friedman p", fmt_p), ("iman_davenport_f", "Iman–Davenport F", fmt_number),
              ("iman_davenport_p", "Iman–Davenport p", fmt_p), ("note", "note", fmt_text)]  # fmt: skip
    return [(label, fmt(friedman[key])) for key, label, fmt in labels if friedman.get(key) is not None]
