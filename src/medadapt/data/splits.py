"""Deterministic patient-grouped, stratified splits: pure functions of (labels, groups, seed).

Rows of one group (patient) never cross splits. Stratification uses one stratum per row: the class index
for single-label data, and the rarest positive label of the row for multi-label data (all-negative rows
form their own stratum). Strata too small to spread over the folds are merged so that sklearn's
:class:`~sklearn.model_selection.StratifiedGroupKFold` can use them. No global RNG state is read or changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["grouped_split", "patient_kfold", "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
_SPLIT_NAMES = np.array(["train", "val", "test"])
_MAX_FOLDS = 20

Seed = int | np.random.Generator


def grouped_split(
    labels: np.ndarray | Sequence,
    groups: np.ndarray | Sequence | None = None,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: Seed = 0,
) -> np.ndarray:
    """Assign every row to "train", "val" or "test", keeping each group in one split.

    The rows are cut into ``k`` stratified group folds (``k`` the smallest number that makes every fraction
    a whole number of folds, 10 for 0.7/0.1/0.2) which are then handed out to the splits. With fewer groups
    than folds the groups are shuffled and cut by the fractions instead (no stratification).

    Args:
        labels: ``[N]`` class indices (or any hashable labels), or ``[N, L]`` 0/1 multi-label matrix.
        groups: ``[N]`` patient ids; ``None`` makes every row its own group.
        fractions: train, val and test fractions, summing to 1.
        seed: an int or a ``numpy.random.Generator``.

    Returns:
        ``[N]`` array of split names.

    Example:
        >>> split = grouped_split([0, 1, 0, 1], ["p1", "p1", "p2", "p3"], fractions=(0.5, 0, 0.5), seed=0)
        >>> split.tolist()
        ['train', 'train', 'test', 'train']
    """
    n_folds = _n_folds(fractions)
    strata, group_ids = _as_arrays(labels, groups)
    random_state = _random_state(seed)
    if len(np.unique(group_ids)) < n_folds:
        return _shuffled_group_cut(group_ids, fractions, random_state)
    folds = _fold_of_rows(strata, group_ids, n_folds, random_state)
    bounds = np.cumsum(np.rint(np.asarray(fractions) * n_folds).astype(int))
    return _SPLIT_NAMES[np.searchsorted(bounds, folds, side="right")]


def patient_kfold(
    labels: np.ndarray | Sequence,
    groups: np.ndarray | Sequence | None,
    *,
    k: int,
    seed: Seed = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group ``k``-fold cross-validation indices: ``[(train_idx, test_idx), ...]``.

    Example:
        >>> folds = patient_kfold([0, 1] * 5, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], k=5, seed=0)
        >>> len(folds), sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(10))
        (5, True)
    """
    strata, group_ids = _as_arrays(labels, groups)
    n_groups = len(np.unique(group_ids))
    if not 2 <= k <= n_groups:
        raise ConfigError(
            f"k={k} folds is not possible with {n_groups} groups (patients); use 2 <= k <= {n_groups}"
        )
    from sklearn.model_selection import StratifiedGroupKFold

    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=_random_state(seed))
    splits = cv.split(np.zeros(len(strata)), _merge_rare(strata, k), group_ids)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splits]


def _n_folds(fractions: Sequence[float]) -> int:
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ConfigError(
            f"split fractions {tuple(fractions)} are not valid; give three non-negative train/val/test "
            "fractions summing to 1, e.g. 0.7,0.1,0.2"
        )
    for k in range(1, _MAX_FOLDS + 1):
        if np.allclose(f * k, np.rint(f * k), atol=1e-6):
            return max(k, 2)
    raise ConfigError(
        f"split fractions {tuple(fractions)} must be multiples of 1/k for some k <= {_MAX_FOLDS}"
    )


def _as_arrays(
    labels: np.ndarray | Sequence, groups: np.ndarray | Sequence | None
) -> tuple[np.ndarray, np.ndarray]:
    strata = _strata(np.asarray(labels))
    if groups is None:
        return strata, np.arange(len(strata))
    group_ids = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()
    if len(group_ids) != len(strata):
        raise ConfigError(f"got {len(strata)} labels but {len(group_ids)} groups; give one group per row")
    return strata, group_ids


def _strata(labels: np.ndarray) -> np.ndarray:
    """One integer stratum per row; multi-label rows use their rarest positive label."""
    if labels.ndim == 2 and labels.shape[1] > 1:
        positive = np.nan_to_num(labels.astype(float), nan=0.0) > 0  # unknown (NaN) labels are not positives
        frequency = positive.sum(axis=0)
        rarity = np.where(positive, frequency, np.iinfo(np.int64).max)
        return np.where(positive.any(axis=1), rarity.argmin(axis=1), -1)
    return np.unique(labels.reshape(len(labels), -1)[:, 0].astype(str), return_inverse=True)[1].ravel()


def _merge_rare(strata: np.ndarray, min_count: int) -> np.ndarray:
    """Pool strata with fewer than ``min_count`` rows; pool into the largest if the pool is still too small."""
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    rare = counts[inverse] < min_count
    if rare.sum() >= min_count or not rare.any():
        return np.where(rare, len(values), inverse)
    return np.where(rare, counts.argmax(), inverse)


def _fold_of_rows(strata: np.ndarray, group_ids: np.ndarray, n_folds: int, random_state: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    folds = np.empty(len(strata), dtype=int)
    for fold, (_, test) in enumerate(
        cv.split(np.zeros(len(strata)), _merge_rare(strata, n_folds), group_ids)
    ):
        folds[test] = fold
    return folds


def _shuffled_group_cut(group_ids: np.ndarray, fractions: Sequence[float], random_state: int) -> np.ndarray:
    unique = np.random.default_rng(random_state).permutation(np.unique(group_ids))
    bounds = np.rint(np.cumsum(fractions) * len(unique)).astype(int)
    split_of_group = _SPLIT_NAMES[np.searchsorted(bounds, np.arange(len(unique)), side="right").clip(max=2)]
    return split_of_group[np.argsort(unique)][group_ids]


def _random_state(seed: Seed) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**31 - 1))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed)
    raise ConfigError(f"seed must be an int or a numpy.random.Generator, got {seed!r}")
