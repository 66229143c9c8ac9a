"""Metrics per subgroup (sex, site, device, ...) and the shortcut check (a confounder such as a chest tube).

Both work on one method's cells: its saved test predictions (``labels``, ``scores``, ``task``, and the
row-aligned ``metadata`` table with the grouping column), the test set each cell was scored on (cells of one
fold share it), and that set's resampling :class:`~medadapt.evaluation.bootstrap.Units` (rows, or patients).
A group's value is the mean over cells of the metric on the group's rows; its interval is a bootstrap over the
whole test set (rows or patients) in which the metric is taken on the resampled rows of the group, the same
resamples for every group and metric (so their gaps are paired).

**Too small.** A group with fewer than ``min_group`` images (default 10) gets no number for any metric; AUC
needs at least :data:`MIN_CLASS` images of each class in the group, sensitivity that many positives and
specificity that many negatives. Such entries are ``nan`` with a ``note`` saying what was short, never a
number from a handful of images. Counts are per test pass (each fold's test set once, not once per seed).

**Shortcut check** (:func:`confounder_report`, binary tasks): sensitivity (recall of the positive class,
column 1) and specificity within each level of the confounder, with intervals, and for each the gap between
its best and worst level with a paired bootstrap interval; a method is ``flagged`` when either gap is at
least ``gap_threshold`` (default 0.10) and its interval excludes 0 (a gap beyond the sampling noise of small
groups, not only a large one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from .bootstrap import Units, bootstrap_statistic, prepare_metric
from .calibration import LOWER_IS_BETTER

__all__ = ["subgroup_report", "confounder_report", "MIN_CLASS", "SUBGROUP_METRICS", "group_values"]

#: Images of each class a group needs for AUC (positives for sensitivity, negatives for specificity).
MIN_CLASS = 5
#: Metrics reported per subgroup (with the compared metric first where it is another).
SUBGROUP_METRICS = ("auc", "acc", "sensitivity", "specificity")
#: ... and per subgroup of a segmentation dataset (images are the rows).
SEGMENTATION_SUBGROUP_METRICS = ("dice", "iou")
_BLANK = "(blank)"


def group_values(metadata: pd.DataFrame, column: str) -> np.ndarray:
    """The column's values as strings, blanks named ``(blank)``."""
    if column not in metadata.columns:
        raise DataError(
            f"the predictions' metadata has no column {column!r}; columns: {list(metadata.columns)}"
        )
    values = metadata[column].astype("string").fillna("").str.strip()
    return values.mask(values == "", _BLANK).to_numpy(dtype=str)


def _positives(p: dict[str, Any]) -> np.ndarray:
    """Binary: the rows of class 1; other tasks: ``None``-like (all False)."""
    labels = np.asarray(p["labels"])
    if p["task"] != "binary":
        return np.zeros(len(labels), dtype=bool)
    return labels.reshape(len(labels), -1)[:, 0] == 1


def _counts(cells: Sequence[dict], which: Sequence[int], masks: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """Images, positives and negatives of a group, counting each test set once."""
    n = pos = 0
    seen = set()
    for p, k, m in zip(cells, which, masks):
        if k in seen:
            continue
        seen.add(k)
        n += int(m.sum())
        pos += int((m & _positives(p)).sum())
    return n, pos, n - pos


def _too_small(metric: str, task: str, n: int, pos: int, neg: int, min_group: int) -> str | None:
    if n < min_group:
        return f"too small: {n} images (needs {min_group})"
    if task != "binary":
        return None
    if metric == "auc" and min(pos, neg) < MIN_CLASS:
        return f"too small: {pos} positives and {neg} negatives (AUC needs {MIN_CLASS} of each)"
    if metric == "sensitivity" and pos < MIN_CLASS:
        return f"too small: {pos} positives (needs {MIN_CLASS})"
    if metric == "specificity" and neg < MIN_CLASS:
        return f"too small: {neg} negatives (needs {MIN_CLASS})"
    return None


def _group_stat(cells, which, masks, metric):
    fns = [prepare_metric(metric, p["task"], p["labels"], p["scores"]) for p in cells]

    def statistic(weights: list[np.ndarray]) -> np.ndarray:
        return np.mean([fn(weights[k] * m) for fn, k, m in zip(fns, which, masks)], axis=0)

    return statistic


def _measure(
    cells, which, units, masks, metric, *, n_resamples, confidence, seed, min_group
) -> dict[str, Any]:
    n, pos, neg = _counts(cells, which, masks)
    note = _too_small(metric, cells[0]["task"], n, pos, neg, min_group)
    row = {"metric": metric, "n": n, "n_pos": pos, "n_neg": neg, "value": math.nan, "low": math.nan,
           "high": math.nan, "note": note or ""}  # fmt: skip
    if note:
        return row
    res = bootstrap_statistic(units, _group_stat(cells, which, masks, metric), n_resamples=n_resamples,
                              confidence=confidence, seed=seed)  # fmt: skip
    row.update(value=res.estimate, low=res.low, high=res.high)
    if not np.isfinite(res.estimate):
        row["note"] = "undefined: a class is absent from this group"
    elif getattr(res, "note", None):
        row["note"] = res.note
    return row


def _levels(cells: Sequence[dict], column: str) -> tuple[list[str], list[np.ndarray]]:
    values = [group_values(p["metadata"], column) for p in cells]
    levels = sorted(set(np.concatenate(values).tolist()))
    return levels, values


def subgroup_report(*, cells: Sequence[dict], which: Sequence[int], units: Sequence[Units], column: str,
                    metric: str = "auc", n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                    min_group: int = 10, gap_threshold: float = 0.10) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Every metric per level of ``column`` with its interval, and per metric the gap between the best and
    the worst group (``gap``, ``worst_group``). Returns ``(groups, gaps)``."""
    levels, values = _levels(cells, column)
    shown = SEGMENTATION_SUBGROUP_METRICS if cells[0]["task"] == "segmentation" else SUBGROUP_METRICS
    metrics = list(dict.fromkeys([metric, *shown]))
    rows = []
    for level in levels:
        masks = [v == level for v in values]
        for m in metrics:
            opts = dict(n_resamples=n_resamples, confidence=confidence, seed=seed, min_group=min_group)
            rows.append({"column": column, "group": level, **_measure(cells, which, units, masks, m, **opts)})
    table = pd.DataFrame(rows)
    return table, _gaps(table, column)


def _gaps(table: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = []
    for m, part in table.groupby("metric", sort=False):
        lower_is_better = m in LOWER_IS_BETTER
        known = part.dropna(subset=["value"])
        if len(known) < 2:
            rows.append({"column": column, "metric": m, "gap": math.nan, "best_group": "", "worst_group": "",
                         "groups": len(known)})  # fmt: skip
            continue
        order = known.sort_values("value", ascending=lower_is_better)
        rows.append({"column": column, "metric": m, "gap": float(abs(order["value"].iloc[0] - order["value"].iloc[-1])),
                     "best_group": order["group"].iloc[0], "worst_group": order["group"].iloc[-1],
                     "groups": len(known)})  # fmt: skip
    return pd.DataFrame(rows)


def confounder_report(*, cells: Sequence[dict], which: Sequence[int], units: Sequence[Units], column: str,
                      metric: str = "auc", n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                      min_group: int = 10, gap_threshold: float = 0.10) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Sensitivity and specificity within each level of the confounder ``column`` (binary tasks), with
    intervals; their gaps between levels with paired intervals; ``flagged`` where a gap is at least
    ``gap_threshold`` and its interval excludes 0. Returns ``(levels, gaps)``."""
    if any(p["task"] != "binary" for p in cells):
        raise DataError(f"the shortcut check ({column!r}) needs a binary task (sensitivity of class 1); "
                        f"these predictions are {cells[0]['task']}: use subgroups instead")  # fmt: skip
    levels, values = _levels(cells, column)
    opts = dict(n_resamples=n_resamples, confidence=confidence, seed=seed, min_group=min_group)
    rows = []
    for level in levels:
        masks = [v == level for v in values]
        sens = _measure(cells, which, units, masks, "sensitivity", **opts)
        spec = _measure(cells, which, units, masks, "specificity", **opts)
        rows.append({"column": column, "level": level, "n_pos": sens["n_pos"], "sensitivity": sens["value"],
                     "sens_low": sens["low"], "sens_high": sens["high"], "n_neg": spec["n_neg"],
                     "specificity": spec["value"], "spec_low": spec["low"], "spec_high": spec["high"],
                     "note": "; ".join(n for n in (sens["note"], spec["note"]) if n)})  # fmt: skip
    table = pd.DataFrame(rows)
    gap_row: dict[str, Any] = {"column": column}
    for name in ("sensitivity", "specificity"):
        gap_row.update(_gap(cells, which, units, values, table, name, n_resamples=n_resamples,
                            confidence=confidence, seed=seed))  # fmt: skip
    flagged = any(
        np.isfinite(gap_row[f"{k}_gap"])
        and gap_row[f"{k}_gap"] >= gap_threshold
        and gap_row[f"{k}_gap_low"] > 0
        for k in ("sensitivity", "specificity")
    )
    table["flagged"] = flagged
    return table, pd.DataFrame([{**gap_row, "threshold": gap_threshold, "flagged": flagged}])


def _gap(cells, which, units, values, table: pd.DataFrame, name: str, **boot: Any) -> dict[str, Any]:
    """The gap of ``name`` between its best and worst level, with a paired bootstrap interval (both levels'
    rows weighted by the same resamples)."""
    known = table.dropna(subset=[name])
    out = {f"{name}_gap": math.nan, f"{name}_gap_low": math.nan, f"{name}_gap_high": math.nan}
    if len(known) < 2:
        return out
    order = known.sort_values(name, kind="stable")["level"].tolist()  # two levels even where they tie
    hi, lo = order[-1], order[0]
    fns = [prepare_metric(name, p["task"], p["labels"], p["scores"]) for p in cells]
    m_hi, m_lo = [v == hi for v in values], [v == lo for v in values]

    def statistic(weights: list[np.ndarray]) -> np.ndarray:
        return np.mean(
            [fn(weights[k] * a) - fn(weights[k] * b) for fn, k, a, b in zip(fns, which, m_hi, m_lo)], 0
        )

    res = bootstrap_statistic(units, statistic, **boot)
    out.update({f"{name}_gap": res.estimate, f"{name}_gap_low": res.low, f"{name}_gap_high": res.high})
    return out
