"""Is the difference real? Statistics across the cells of run and grid folders, from saved results only.

:func:`compare` reads the tidy results (and, where saved, each cell's test predictions) of one or more
sources (:mod:`medadapt.reporting.sources`) and never recomputes a model. A *cell* is one (dataset, method,
seed, fold); a method's score on a dataset is the mean over its cells.

- **Summary** per (dataset, method): ``n`` cells, mean ± std, the t-interval of the mean over seeds × folds,
  and a bootstrap interval over test images: each resample redraws every test set (one per fold; seeds on one
  fold share it) and the statistic is the mean over cells, so the interval is the test-sample uncertainty of
  the reported mean. With patient ids in the predictions the bootstrap resamples patients (cluster bootstrap).
- **Pairs** (same dataset): the difference of means over the cells both methods have, its paired bootstrap
  interval (both methods evaluated on the same resampled images: the same resamples are drawn for every
  method of a dataset), a bootstrap p-value and the Wilcoxon signed-rank test over the paired cells.
- **Many methods**: Friedman over blocks (datasets, each a method's mean over its cells; or, with one dataset,
  its seed × fold cells), Iman–Davenport, Nemenyi with its critical difference, Holm-corrected Wilcoxon
  against a control (default: the best average rank) (:mod:`medadapt.evaluation.ranking`).
- **Calibration**: ECE and Brier per cell, averaged; a reliability curve of the method's pooled cells.
- **Subgroups** (``subgroup=COLUMN``) and the **shortcut check** (``confounder=COLUMN``) from the metadata saved
  with the predictions (:mod:`medadapt.evaluation.subgroups`).

Everything that needs predictions says which cells lack them (``Comparison.missing``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._io import atomic_write
from ..errors import ConfigError, DataError
from ..evaluation import bootstrap as boot
from ..evaluation import ranking
from ..evaluation.calibration import (
    LOWER_IS_BETTER,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)
from ..evaluation.subgroups import confounder_report, subgroup_report
from .leaderboard import COST_COLUMNS
from .results import write_json
from .sources import METHOD, Sources, fold_key

__all__ = ["CompareOptions", "Comparison", "compare", "BLOCKS"]

log = logging.getLogger(__name__)

#: How Friedman blocks are formed: ``auto`` (datasets when there are two or more, else cells).
BLOCKS = ("auto", "datasets", "cells")
_INFO = ["backbone", "strategy", "head"]
#: The bootstrap's nan rule (:mod:`medadapt.evaluation.bootstrap`): at most this share of undefined resamples.
_MAX_NAN = 0.01


@dataclass
class CompareOptions:
    """What :func:`compare` computes; every field is a ``medadapt compare`` flag."""

    metric: str | None = None  # None: auc, or dice where the table holds masks' metrics only
    split: str = "test"
    alpha: float = 0.05
    confidence: float = 0.95
    blocks: str = "auto"
    control: str | None = None
    subgroup: str | None = None
    confounder: str | None = None
    n_resamples: int = 2000
    seed: int = 0
    gap: float = 0.10
    min_group: int = 10
    calibration_bins: int = 15
    cell_intervals: bool = True

    def __post_init__(self) -> None:
        if self.blocks not in BLOCKS:
            raise ConfigError(f"blocks must be one of {list(BLOCKS)}, got {self.blocks!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be between 0 and 1 (e.g. 0.05), got {self.alpha!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be between 0 and 1 (e.g. 0.95), got {self.confidence!r}")
        if self.n_resamples < 100:
            raise ConfigError(f"n_resamples must be at least 100 (2000 is usual), got {self.n_resamples}")

    @property
    def higher_is_better(self) -> bool:
        return (self.metric or "auc") not in LOWER_IS_BETTER


@dataclass
class Comparison:
    """The tables of a comparison (see :meth:`write` for the files); ``None`` where not computed."""

    options: CompareOptions
    summary: pd.DataFrame
    cells: pd.DataFrame
    blocks: str | None = None
    friedman: dict[str, Any] | None = None
    nemenyi: dict[str, Any] | None = None
    ranks: pd.DataFrame | None = None
    holm: pd.DataFrame | None = None
    pairwise: pd.DataFrame | None = None
    calibration: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None
    subgroups: pd.DataFrame | None = None
    subgroup_gaps: pd.DataFrame | None = None
    confounder: pd.DataFrame | None = None
    confounder_gaps: pd.DataFrame | None = None
    sentences: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self, out: str | Path, *, figures: bool = True) -> dict[str, Path]:
        """Write the tables as CSV, ``comparison.json`` and (``figures``) the CD diagram and reliability
        diagrams as PNG and SVG under ``out/figures``; returns the written paths by name."""
        out = Path(out)
        paths: dict[str, Path] = {}
        for name in ("summary", "cells", "ranks", "holm", "pairwise", "calibration", "reliability", "subgroups",
                     "subgroup_gaps", "confounder", "confounder_gaps"):  # fmt: skip
            table = getattr(self, name)
            if table is not None and len(table):
                buffer = io.StringIO()
                table.to_csv(buffer, index=False)
                paths[name] = atomic_write(out / f"{name}.csv", buffer.getvalue())
        if self.nemenyi is not None:
            buffer = io.StringIO()
            self.nemenyi["p_values"].to_csv(buffer)
            paths["nemenyi"] = atomic_write(out / "pairwise_nemenyi.csv", buffer.getvalue())
        if figures:
            paths.update(self.draw(out / "figures"))
        paths["json"] = write_json(self.to_json(), out / "comparison.json")
        return paths

    def draw(self, folder: str | Path, *, reliability: bool = True) -> dict[str, Path]:
        """The critical-difference diagram (``cd_diagram.png/svg``) and (``reliability``) a reliability diagram
        per dataset (``reliability_I.png/svg``, in the order of the datasets)."""
        from .cd_diagram import cd_diagram
        from .plots import plot_reliability, save_figure

        folder, paths = Path(folder), {}
        if self.nemenyi is not None and self.ranks is not None:
            ranks = self.ranks.set_index(METHOD)["average_rank"]
            drawn = cd_diagram(ranks, self.nemenyi["p_values"], folder / "cd_diagram", alpha=self.options.alpha,
                               critical_difference=self.nemenyi["critical_difference"])  # fmt: skip
            paths["cd_diagram"] = drawn[0]
        if reliability and self.reliability is not None and len(self.reliability):
            for i, dataset in enumerate(dict.fromkeys(self.reliability["dataset"])):
                fig = plot_reliability(self.reliability, dataset=dataset)
                for ext in ("png", "svg"):
                    paths[f"reliability_{i}_{ext}"] = save_figure(fig, folder / f"reliability_{i}.{ext}")
        return paths

    def to_json(self) -> dict[str, Any]:
        """The JSON summary: options, tests, statistics, p-values, critical difference, alpha, blocks."""
        nemenyi = None
        if self.nemenyi is not None:
            nemenyi = {k: v for k, v in self.nemenyi.items() if k != "p_values"}
            nemenyi["p_values"] = self.nemenyi["p_values"].round(12).to_dict()
        return {
            "options": dataclasses.asdict(self.options),
            "higher_is_better": self.options.higher_is_better,
            "blocks": self.blocks,
            "datasets": sorted(self.summary["dataset"].unique().tolist()) if len(self.summary) else [],
            "methods": sorted(self.summary[METHOD].unique().tolist()) if len(self.summary) else [],
            "friedman": self.friedman,
            "nemenyi": nemenyi,
            "holm_wilcoxon": None if self.holm is None else self.holm.to_dict("records"),
            "sentences": self.sentences,
            "missing_predictions": self.missing,
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------------------------- compare
def compare(sources: Sources, options: CompareOptions | None = None, **kwargs: Any) -> Comparison:
    """Compare the methods of ``sources`` on ``options.metric`` (see the module docstring).

    Example:
        >>> from medadapt.reporting.sources import load_sources
        >>> result = compare(load_sources(["runs/grid"]), metric="auc")  # doctest: +SKIP
        >>> result.write("runs/grid/compare")  # doctest: +SKIP
    """
    opts = dataclasses.replace(options, **kwargs) if options is not None else CompareOptions(**kwargs)
    if opts.metric is None:
        opts = dataclasses.replace(opts, metric=_default_metric(sources.table, opts.split))
    cells = _cells(sources.table, opts)
    preds = _load_predictions(sources, cells, opts)
    missing = [_cell_name(c) for c in cells.itertuples() if c.Index not in preds]
    result = Comparison(options=opts, summary=pd.DataFrame(), cells=cells, missing=missing)
    if opts.cell_intervals:
        _cell_intervals(cells, preds, opts)
    dists = _summaries(result, cells, preds, sources.table, opts)
    result.pairwise = _pairwise(cells, dists, opts)
    _rank(result, cells, opts)
    _calibration(result, cells, preds, opts)
    if opts.subgroup:
        result.subgroups, result.subgroup_gaps = _by_group(cells, preds, opts, subgroup_report, opts.subgroup)
    if opts.confounder:
        result.confounder, result.confounder_gaps = _by_group(
            cells, preds, opts, confounder_report, opts.confounder
        )
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        result.notes.append(f"predictions missing for {len(missing)} cell(s): a method with any of them gets no "
                            f"bootstrap interval; calibration and subgroups use its other cells: {shown}")  # fmt: skip
    return result


def _default_metric(table: pd.DataFrame, split: str) -> str:
    """``auc``, or ``dice`` where the table scores masks and has no AUC (a segmentation run)."""
    known = set(table.loc[table["split"] == split, "metric"])
    return "dice" if "auc" not in known and "dice" in known else "auc"


def _cells(table: pd.DataFrame, opts: CompareOptions) -> pd.DataFrame:
    """One row per (dataset, method, seed, fold): the metric's value on ``opts.split``."""
    rows = table[table["split"] == opts.split]
    if rows.empty:
        raise DataError(
            f"the results hold no {opts.split!r} rows; splits there: {sorted(table['split'].unique())}"
        )
    known = sorted(rows["metric"].unique())
    if opts.metric not in known:
        raise DataError(f"the results hold no {opts.split} {opts.metric!r} values; metrics there: {known}")
    cells = rows[rows["metric"] == opts.metric].copy()
    cells["fold"] = [fold_key(f) for f in cells["fold"]]
    cells["seed"] = cells["seed"].fillna(-1).astype(int)
    keys = ["dataset", METHOD, "seed", "fold"]
    dup = cells.duplicated(keys, keep="last")
    if dup.any():
        log.warning("%d cells appear twice in the results; the last row of each is used", int(dup.sum()))
        cells = cells[~dup]
    cols = [*keys, *_INFO, "value", "run_path", "source"]
    return cells[cols].sort_values(keys, kind="stable").reset_index(drop=True)


def _cell_name(c: Any) -> str:
    fold = "official split" if c.fold < 0 else f"fold {c.fold}"
    return f"{c.dataset} / {getattr(c, METHOD)} / seed {c.seed} / {fold}"


def _load_predictions(
    sources: Sources, cells: pd.DataFrame, opts: CompareOptions
) -> dict[int, dict[str, Any]]:
    preds = {}
    for i, path in zip(cells.index, cells["run_path"]):
        if isinstance(path, str):
            p = sources.predictions(path, opts.split)
            if p is not None:
                p.setdefault("task", _task_of(p))
                preds[i] = p
    return preds


def _task_of(p: dict[str, Any]) -> str:
    """The task of predictions saved without it: multilabel where labels are as wide as the scores."""
    labels, scores = np.asarray(p["labels"]), np.asarray(p["scores"])
    if (
        labels.ndim == 2
        and labels.shape[1] == scores.shape[1]
        and scores.shape[1] > 1
        and labels.shape[1] > 1
    ):
        return "multilabel"
    return "binary" if scores.shape[1] == 2 else "multiclass"


# ---------------------------------------------------------------------------------------------- summaries
def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    n = values.size
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    mean = float(values.mean())
    return mean - half, mean + half


def _test_sets(
    group: pd.DataFrame, preds: dict[int, dict[str, Any]]
) -> tuple[list[boot.Units], list[int]] | None:
    """A method's test sets (one per fold, in fold order) and each cell's set; ``None`` without predictions."""
    if not all(i in preds for i in group.index):
        return None
    folds = sorted(group["fold"].unique())
    units = []
    for f in folds:
        first = preds[group.index[group["fold"] == f][0]]
        groups = first.get("groups")
        units.append(
            boot.Units(n_rows=len(first["labels"]), groups=None if groups is None else np.asarray(groups))
        )
    return units, [folds.index(f) for f in group["fold"]]


def _mean_statistic(group: pd.DataFrame, preds: dict[int, dict[str, Any]], which: list[int], metric: str):
    """The statistic of a method's bootstrap: its mean over cells of the metric on each resample."""
    fns = [
        boot.prepare_metric(metric, preds[i]["task"], preds[i]["labels"], preds[i]["scores"])
        for i in group.index
    ]

    def statistic(weights: list[np.ndarray]) -> np.ndarray:
        return np.mean([fn(weights[k]) for fn, k in zip(fns, which)], axis=0)

    return statistic


def _summaries(
    result: Comparison, cells: pd.DataFrame, preds, table: pd.DataFrame, opts: CompareOptions
) -> dict:
    rows, dists = [], {}
    for (dataset, method), group in cells.groupby(["dataset", METHOD], sort=False):
        values = group["value"].to_numpy(dtype=float)
        low, high = _t_interval(values, opts.confidence)
        row = {"dataset": dataset, METHOD: method, **group.iloc[0][_INFO].to_dict(), "n": len(values),
               "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
               "t_low": low, "t_high": high, "boot_low": math.nan, "boot_high": math.nan}  # fmt: skip
        sets = _test_sets(group, preds)
        if sets is not None:
            units, which = sets
            res = boot.bootstrap_statistic(units, _mean_statistic(group, preds, which, opts.metric),
                                           n_resamples=opts.n_resamples, confidence=opts.confidence, seed=opts.seed)  # fmt: skip
            row["boot_low"], row["boot_high"] = res.low, res.high
            _check_estimate(result, dataset, method, row["mean"], res.estimate)
            dists[(dataset, method)] = (group, units, res.distribution)
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary = summary.join(_costs(table), on=["dataset", METHOD])
    best = summary.groupby("dataset")["mean"].transform("max" if opts.higher_is_better else "min")
    summary["best"] = summary["mean"] == best
    summary = summary.sort_values(
        ["dataset", "mean"], ascending=[True, not opts.higher_is_better], kind="stable"
    )
    result.summary = summary.reset_index(drop=True)
    return dists


def _check_estimate(result: Comparison, dataset: str, method: str, mean: float, estimate: float) -> None:
    if np.isfinite(mean) and np.isfinite(estimate) and abs(mean - estimate) > 1e-6:
        result.notes.append(f"{dataset} / {method}: the saved predictions give {estimate:.6f}, the results table "
                            f"{mean:.6f}: the predictions may belong to another run")  # fmt: skip


def _costs(table: pd.DataFrame) -> pd.DataFrame:
    cost = table[(table["split"] == "cost") & table["metric"].isin(list(COST_COLUMNS))]
    cols = list(COST_COLUMNS)
    if cost.empty:
        return pd.DataFrame(
            columns=cols, index=pd.MultiIndex.from_arrays([[], []], names=["dataset", METHOD])
        )
    means = cost.pivot_table(index=["dataset", METHOD], columns="metric", values="value", aggfunc="mean")
    return means.reindex(columns=cols)


def _cell_intervals(cells: pd.DataFrame, preds, opts: CompareOptions) -> None:
    """Each cell's own bootstrap interval (``boot_low`` / ``boot_high`` in ``cells``): the uncertainty of one
    result over its test images. Cells scored on one test set share one set of resamples (one scipy call)."""
    low, high = {}, {}
    have = cells[cells.index.isin(list(preds))]
    for _, group in have.groupby(["dataset", "fold"], sort=False):
        first = preds[group.index[0]]
        same = [i for i in group.index if _same_test_set(preds[i], first)]
        others = [[i] for i in group.index if i not in same]  # another test set under one fold name: alone
        for chunk in [same, *others]:
            p = preds[chunk[0]]
            res = boot.bootstrap_cis(p["task"], p["labels"], {i: preds[i]["scores"] for i in chunk},
                                     metric=opts.metric, groups=p.get("groups"), n_resamples=opts.n_resamples,
                                     confidence=opts.confidence, seed=opts.seed)  # fmt: skip
            for i, r in res.items():
                low[i], high[i] = r.low, r.high
    cells["boot_low"] = pd.Series(low, dtype=float).reindex(cells.index)
    cells["boot_high"] = pd.Series(high, dtype=float).reindex(cells.index)


def _same_test_set(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["task"] == b["task"]
        and np.array_equal(a["labels"], b["labels"], equal_nan=True)
        and np.array_equal(a.get("groups", np.array([])), b.get("groups", np.array([])))
    )


# ------------------------------------------------------------------------------------------------- pairs
def _pairwise(cells: pd.DataFrame, dists: dict, opts: CompareOptions) -> pd.DataFrame:
    rows = []
    for dataset, part in cells.groupby("dataset", sort=False):
        methods = list(dict.fromkeys(part[METHOD]))
        wide = part.pivot_table(index=["seed", "fold"], columns=METHOD, values="value")[methods].to_numpy()
        pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
        index = {m: k for k, m in enumerate(methods)}
        diffs = [wide[:, index[a]] - wide[:, index[b]] for a, b in pairs]
        diffs = [d[np.isfinite(d)] for d in diffs]  # the cells both methods have
        for (a, b), diff, p in zip(pairs, diffs, _wilcoxon_many(diffs)):
            rows.append({"dataset": dataset, "method_a": a, "method_b": b,
                         **_pair(diff, p, dists.get((dataset, a)), dists.get((dataset, b)), opts)})  # fmt: skip
    return pd.DataFrame(rows)


def _pair(diff: np.ndarray, wilcoxon_p: float, da, db, opts: CompareOptions) -> dict[str, Any]:
    """Scores of the cells both methods have; the bootstrap only where both have the same cells (so that the
    two distributions are of the same test images, resampled alike), under the nan rule of the bootstrap."""
    out = {"n": len(diff), "mean_diff": float(diff.mean()) if len(diff) else math.nan,
           "boot_low": math.nan, "boot_high": math.nan, "boot_p": math.nan, "wilcoxon_p": wilcoxon_p}  # fmt: skip
    if da is None or db is None or not _same_cells(da, db, len(diff)):
        return out
    d = da[2] - db[2]
    finite = d[np.isfinite(d)]
    if finite.size and finite.size >= (1 - _MAX_NAN) * d.size:
        tail = (1 - opts.confidence) / 2
        out["boot_low"], out["boot_high"] = (float(v) for v in np.quantile(finite, [tail, 1 - tail]))
        out["boot_p"] = float(min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))))
    return out


def _same_cells(da, db, n_paired: int) -> bool:
    """Both methods have the same cells (seed, fold), all paired, on test sets of the same sizes: their
    bootstraps (same seed) drew the same resamples."""
    (ga, ua, _), (gb, ub, _) = da, db
    cells_a, cells_b = set(zip(ga["seed"], ga["fold"])), set(zip(gb["seed"], gb["fold"]))
    same_sizes = [u.n_rows for u in ua] == [u.n_rows for u in ub]
    return cells_a == cells_b and len(cells_a) == n_paired and same_sizes


def _wilcoxon_many(diffs: list[np.ndarray]) -> list[float]:
    """Two-sided signed-rank p of each vector of paired differences, zero differences split between the signs
    (``zsplit``, as Demšar advises and the Holm tests do); 1 where every difference is 0, nan with fewer than
    2 pairs. Vectors of one length go to one vectorised ``scipy.stats.wilcoxon`` call (the same p-values as
    one call each, ~100x faster over hundreds of pairs)."""
    out = [math.nan if d.size < 2 else (1.0 if not np.any(d) else None) for d in diffs]
    by_length: dict[int, list[int]] = {}
    for k, d in enumerate(diffs):
        if out[k] is None:
            by_length.setdefault(d.size, []).append(k)
    for ks in by_length.values():
        p = stats.wilcoxon(np.stack([diffs[k] for k in ks]), axis=1, zero_method="zsplit").pvalue
        for k, v in zip(ks, np.atleast_1d(p)):
            out[k] = float(v)
    return out


# ----------------------------------------------------------------------------------------------- ranking
def _blocks(cells: pd.DataFrame, opts: CompareOptions) -> tuple[str, pd.DataFrame]:
    n_datasets = cells["dataset"].nunique()
    blocks = opts.blocks if opts.blocks != "auto" else ("datasets" if n_datasets >= 2 else "cells")
    if blocks == "datasets":
        matrix = cells.pivot_table(index="dataset", columns=METHOD, values="value", aggfunc="mean")
    else:
        matrix = cells.pivot_table(index=["dataset", "seed", "fold"], columns=METHOD, values="value")
        matrix.index = [
            f"{d} / seed {s} / {'official' if f < 0 else f'fold {f}'}" for d, s, f in matrix.index
        ]
    return blocks, matrix


def _complete(result: Comparison, matrix: pd.DataFrame) -> pd.DataFrame:
    """A complete blocks x methods matrix: where some method lacks some block, drop whichever loses fewer
    scores, the incomplete blocks or the incomplete methods (and say so)."""
    if not matrix.isna().any().any():
        return matrix
    rows, cols = matrix.dropna(axis=0), matrix.dropna(axis=1)
    if cols.size > rows.size and cols.shape[1] >= 3:
        gone = [str(m) for m in matrix.columns if m not in cols.columns]
        result.notes.append(
            f"ranked without {len(gone)} method(s) missing from some blocks: {', '.join(gone)}"
        )
        return cols
    gone = [str(b) for b in matrix.index if b not in rows.index]
    if gone:
        result.notes.append(f"ranked without {len(gone)} block(s) some method lacks: {', '.join(gone)}")
    return rows


def _rank(result: Comparison, cells: pd.DataFrame, opts: CompareOptions) -> None:
    blocks, matrix = _blocks(cells, opts)
    result.blocks = blocks
    matrix = _complete(result, matrix)
    complete = matrix.dropna()
    k, n = matrix.shape[1], len(complete)
    if k < 3 or n < 2:
        result.notes.append(f"no Friedman test: it needs at least 3 methods and 2 complete blocks ({blocks}); "
                            f"here {k} methods and {n} blocks")  # fmt: skip
        return
    hib = opts.higher_is_better
    result.friedman = {**ranking.friedman_test(matrix, higher_is_better=hib), "blocks": blocks}
    result.nemenyi = ranking.nemenyi_test(matrix, alpha=opts.alpha, higher_is_better=hib)
    ranks = ranking.average_ranks(complete, higher_is_better=hib)
    result.ranks = pd.DataFrame({METHOD: ranks.index, "average_rank": ranks.to_numpy()})
    control = opts.control or str(ranks.index[0])
    if control not in matrix.columns:
        raise ConfigError(f"--control {control!r} is not a method here; methods: {sorted(matrix.columns)}")
    result.holm = ranking.holm_wilcoxon(matrix, control=control, alpha=opts.alpha, higher_is_better=hib)
    what = "each method's mean over its seeds and folds" if blocks == "datasets" else "seed x fold cells"
    result.sentences = [f"Blocks: {n} {blocks} ({what})."]
    result.sentences += ranking.describe(result.friedman, result.nemenyi, alpha=opts.alpha, block_noun=blocks)


# ------------------------------------------------------------------------------------------- calibration
def _calibration(result: Comparison, cells: pd.DataFrame, preds, opts: CompareOptions) -> None:
    rows, curves = [], []
    for (dataset, method), group in cells.groupby(["dataset", METHOD], sort=False):
        have = [preds[i] for i in group.index if i in preds and preds[i]["task"] != "segmentation"]
        if not have:
            continue
        ece = [
            expected_calibration_error(p["task"], p["labels"], p["scores"], n_bins=opts.calibration_bins)
            for p in have
        ]
        brier = [brier_score(p["task"], p["labels"], p["scores"]) for p in have]
        rows.append({"dataset": dataset, METHOD: method, "cells": len(have), "ece": float(np.mean(ece)),
                     "brier": float(np.mean(brier))})  # fmt: skip
        if len({p["task"] for p in have}) == 1 and len({np.shape(p["scores"])[1] for p in have}) == 1:
            labels = np.concatenate([p["labels"] for p in have])
            scores = np.concatenate([p["scores"] for p in have])
            curve = reliability_curve(have[0]["task"], labels, scores, n_bins=opts.calibration_bins)
            curves.append(curve.assign(dataset=dataset, **{METHOD: method}))
    if any(p["task"] == "segmentation" for p in preds.values()):
        result.notes.append(
            "calibration: segmentation cells keep class maps, not probabilities; not computed for them"
        )
    if rows:
        result.calibration = pd.DataFrame(rows)
    if curves:
        curve = pd.concat(curves, ignore_index=True)
        result.reliability = curve[
            ["dataset", METHOD, *[c for c in curve.columns if c not in ("dataset", METHOD)]]
        ]


# --------------------------------------------------------------------------------------------- subgroups
def _by_group(cells: pd.DataFrame, preds, opts: CompareOptions, report, column: str):
    """Run ``report`` (subgroups or the confounder check) for every (dataset, method) with predictions."""
    frames, gaps, lacking = [], [], []
    for (dataset, method), group in cells.groupby(["dataset", METHOD], sort=False):
        have = [preds[i] for i in group.index if i in preds]
        if not have:
            continue
        if any(column not in p.get("metadata", pd.DataFrame()).columns for p in have):
            lacking.append(f"{dataset} / {method}")
            continue
        sets = _test_sets(group.loc[[i for i in group.index if i in preds]], preds)
        table, gap = report(
            cells=have,
            which=sets[1],
            units=sets[0],
            column=column,
            metric=opts.metric,
            n_resamples=opts.n_resamples,
            confidence=opts.confidence,
            seed=opts.seed,
            min_group=opts.min_group,
            gap_threshold=opts.gap,
        )
        frames.append(table.assign(dataset=dataset, **{METHOD: method}))
        if gap is not None:
            gaps.append(gap.assign(dataset=dataset, **{METHOD: method}))
    if not frames:
        available = sorted({c for p in preds.values() for c in p.get("metadata", pd.DataFrame()).columns})
        raise DataError(f"no saved predictions carry the metadata column {column!r}; columns there: "
                        f"{available or 'none (only CSV datasets with metadata columns save them)'}")  # fmt: skip
    table = _front(pd.concat(frames, ignore_index=True))
    gap_table = _front(pd.concat(gaps, ignore_index=True)) if gaps else None
    if lacking:
        log.warning(
            "%d methods' predictions lack the column %r: %s", len(lacking), column, ", ".join(lacking)
        )
    return table, gap_table


def _front(table: pd.DataFrame) -> pd.DataFrame:
    first = ["dataset", METHOD]
    return table[[*first, *[c for c in table.columns if c not in first]]]
