"""Cross-validation folds over a dataset's pooled rows: patient-grouped, stratified, as row views.

``folds: official`` keeps the dataset's own train / val / test splits. ``folds: K`` pools the rows of every
split and cuts ``K`` stratified patient-grouped folds (:func:`~medadapt.data.splits.patient_kfold`); fold ``f``
tests on its part and trains on the rest, less a validation part carved out of that training part,
patient-grouped and stratified too (``1 / val_folds`` of it: 1/8 by default, so 70 / 10 / 20 overall at
K = 5), on which the model is selected: a test fold never chooses anything. The folds depend only on
(labels, patient ids, ``seed``), never on the run's seed, so every method of a grid sees the same folds and
their scores pair up.

A patient found in two parts of one fold is an error (:func:`check_no_leakage`), not a warning. Rows
without a patient id column (MedMNIST) or with a blank id are groups of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, DataError
from .base import SPLITS, MedicalDataset
from .splits import patient_kfold

__all__ = [
    "RowView",
    "pooled",
    "patient_ids",
    "kfold_parts",
    "fold_parts",
    "fold_views",
    "fold_splits",
    "check_no_leakage",
]

PATIENT_COLUMN = "patient_id"


class RowView(MedicalDataset):
    """Rows of one or more datasets (e.g. the official splits, pooled) in the given order, without copying.

    ``parts`` lists ``(dataset, row indices)``; ``sources[i]`` / ``rows[i]`` say where row ``i`` comes from, so
    cached per-split features of the sources serve the view (:func:`medadapt.driver` does this).
    """

    def __init__(self, parts: Sequence[tuple[MedicalDataset, np.ndarray]], *, name: str, split: str) -> None:
        if not parts:
            raise DataError(f"{name} {split}: a row view needs at least one source dataset")
        first = parts[0][0]
        self.parts = [(ds, np.asarray(idx, dtype=np.int64)) for ds, idx in parts]
        self.name, self.split = name, split
        self.task, self.classes, self.n_channels = first.task, list(first.classes), first.n_channels
        self.sources = np.concatenate([np.full(len(idx), p) for p, (_, idx) in enumerate(self.parts)]).astype(
            int
        )
        self.rows = np.concatenate([idx for _, idx in self.parts]) if self.parts else np.zeros(0, int)
        self.labels = np.concatenate([ds.labels[idx] for ds, idx in self.parts])
        self.metadata = pd.concat(
            [ds.metadata.iloc[idx].assign(source_split=ds.split) for ds, idx in self.parts], ignore_index=True
        )
        if hasattr(first, "patient_col"):  # a CSV dataset's patient column travels with its rows
            self.patient_col = first.patient_col
        if hasattr(first, "mask"):  # a segmentation dataset's masks travel with its rows
            self.mask = self._mask

    def _mask(self, i: int) -> torch.Tensor:
        ds, _ = self.parts[self.sources[i]]
        return ds.mask(int(self.rows[i]))

    def image(self, i: int) -> torch.Tensor:
        ds, _ = self.parts[self.sources[i]]
        return ds.image(int(self.rows[i]))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch, fetched from each source with its own batched reader where it has one."""
        idx = np.asarray(indices, dtype=np.int64)
        out: list[dict[str, Any] | None] = [None] * len(idx)
        for p, (ds, _) in enumerate(self.parts):
            where = np.flatnonzero(self.sources[idx] == p)
            if not len(where):
                continue
            rows = self.rows[idx[where]].tolist()
            items = ds.__getitems__(rows) if hasattr(ds, "__getitems__") else [ds[r] for r in rows]
            for k, item in zip(where, items):
                out[k] = {**item, "index": int(idx[k])}
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"RowView({self.name!r}, split={self.split!r}, n={len(self)}, parts={len(self.parts)})"


def pooled(splits: Mapping[str, MedicalDataset]) -> RowView:
    """Every row of ``splits`` (train, val, test, in that order) as one view."""
    parts = [(splits[s], np.arange(len(splits[s]))) for s in SPLITS if s in splits]
    return RowView(parts, name=parts[0][0].name, split="all")


def patient_ids(ds: MedicalDataset) -> np.ndarray | None:
    """The dataset's patient ids as strings (a blank id becomes a group of its own), or ``None`` without a
    patient column (every row is its own group)."""
    column = getattr(ds, "patient_col", PATIENT_COLUMN)
    if column not in ds.metadata.columns:
        return None
    ids = ds.metadata[column].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    blank = ids == ""
    ids[blank] = [f"\x00row{i}" for i in np.flatnonzero(blank)]  # cannot equal a real id
    return ids.astype(str)


def _strata(labels: np.ndarray) -> np.ndarray:
    return labels if labels.ndim == 2 and labels.shape[1] > 1 else labels.reshape(len(labels), -1)[:, 0]


def kfold_parts(
    labels: np.ndarray, groups: np.ndarray | None, *, k: int, seed: int = 0, val_folds: int = 8
) -> list[dict[str, np.ndarray]]:
    """``k`` folds of row indices ``{"train", "val", "test"}``; ``val`` is ``1/val_folds`` of the training part.

    Example:
        >>> parts = kfold_parts(np.array([0, 1] * 20), None, k=5, seed=0, val_folds=4)
        >>> [len(p["test"]) for p in parts], len(parts[0]["val"]) + len(parts[0]["train"])
        ([8, 8, 8, 8, 8], 32)
    """
    labels = np.asarray(labels)
    if val_folds < 2:
        raise ConfigError(
            f"val_folds must be >= 2 (the validation part is 1/val_folds of training), got {val_folds}"
        )
    folds = []
    for train_idx, test_idx in patient_kfold(labels, groups, k=k, seed=seed):
        sub_groups = None if groups is None else groups[train_idx]
        inner = patient_kfold(_strata(labels[train_idx]), sub_groups, k=val_folds, seed=seed)
        fit, val = inner[0]
        folds.append(
            {"train": np.sort(train_idx[fit]), "val": np.sort(train_idx[val]), "test": np.sort(test_idx)}
        )
    return folds


def check_no_leakage(parts: Mapping[str, np.ndarray], groups: np.ndarray | None, *, where: str) -> None:
    """Raise :class:`~medadapt.errors.DataError` if a row or a patient is in two parts of one fold."""
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows = np.intersect1d(parts[a], parts[b])
            if len(rows):
                raise DataError(f"{where}: rows {rows[:5].tolist()} are in both {a} and {b}")
            if groups is not None:
                shared = np.intersect1d(groups[parts[a]], groups[parts[b]])
                if len(shared):
                    raise DataError(
                        f"{where}: patient(s) {shared[:5].tolist()} are in both {a} and {b} (leakage); the "
                        "folds must keep every patient in one part"
                    )


def fold_parts(
    splits: Mapping[str, MedicalDataset], *, k: int, seed: int = 0, val_folds: int = 8
) -> tuple[RowView, list[dict[str, np.ndarray]]]:
    """The pooled ``splits`` and the row indices of every fold's parts, each checked for leakage.

    Computing the folds costs about a second for a few thousand rows (``StratifiedGroupKFold``), so a grid's
    worker computes them once per dataset and takes each cell's views with :func:`fold_views`.
    """
    pool = pooled(splits)
    groups = patient_ids(pool)
    parts = kfold_parts(pool.labels, groups, k=k, seed=seed, val_folds=val_folds)
    for fold, part in enumerate(parts):
        check_no_leakage(part, groups, where=f"{pool.name} fold {fold} of {k}")
    return pool, parts


def fold_views(pool: RowView, parts: list[dict[str, np.ndarray]], fold: int) -> dict[str, RowView]:
    """The train / val / test views of fold ``fold`` (0-based) from :func:`fold_parts`."""
    if not 0 <= fold < len(parts):
        raise ConfigError(f"fold {fold} does not exist: folds are 0 ... {len(parts) - 1}")
    views = {}
    for split, idx in parts[fold].items():
        sources = [(pool.parts[s][0], pool.rows[idx][pool.sources[idx] == s]) for s in range(len(pool.parts))
                   if (pool.sources[idx] == s).any()]  # fmt: skip
        empty = [(pool.parts[0][0], np.zeros(0, np.int64))]
        views[split] = RowView(sources or empty, name=pool.name, split=f"fold{fold}-{split}")
    return views


def fold_splits(
    splits: Mapping[str, MedicalDataset], *, k: int, fold: int, seed: int = 0, val_folds: int = 8
) -> dict[str, RowView]:
    """The train / val / test views of fold ``fold`` (0-based) of ``k`` over the pooled ``splits``."""
    if not 0 <= fold < k:
        raise ConfigError(f"fold {fold} does not exist: folds are 0 ... {k - 1}")
    pool, parts = fold_parts(splits, k=k, seed=seed, val_folds=val_folds)
    return fold_views(pool, parts, fold)
