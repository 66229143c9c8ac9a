"""Deterministic patient-grouped, stratified splits: pure functions of (labels, groups, seed).

Rows of one group (patient) never cross splits. Stratification uses one stratum per row: the class index
for single-label data, and the rarest positive label of the row for multi-label data (all-negative rows
form their own stratum). Strata too small to spread over the folds are merged so that sklearn's
:class:`~sklearn.model_selection.StratifiedGroupKFold` can use them. No global RNG state is read or changed.

The folds are sklearn's ``StratifiedGroupKFold(shuffle=True)`` folds, row for row, computed by the faster exact
re-implementation in :mod:`._sgkf` (sklearn's takes ~25 s on CheXpert-size input), and memoised per process:
a dataset that asks for its train, val and test rows computes them once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ._sgkf import stratified_group_folds

__all__ = ["grouped_split", "patient_kfold", "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
_SPLIT_NAMES = np.array(["train", "val", "test"])
_MAX_FOLDS = 20
_CACHE_SIZE = 8  # fold assignments kept per process (an [N] int array each)
_fold_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_fold_cache_lock = threading.Lock()

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
    if _n_groups(group_ids) < n_folds:
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
    n_groups = _n_groups(group_ids)
    if not 2 <= k <= n_groups:
        raise ConfigError(
            f"k={k} folds is not possible with {n_groups} groups (patients); use 2 <= k <= {n_groups}"
        )
    folds = _fold_of_rows(strata, group_ids, k, _random_state(seed))
    return [(np.flatnonzero(folds != i), np.flatnonzero(folds == i)) for i in range(k)]


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
    group_ids = _group_ids(np.asarray(groups))
    if len(group_ids) != len(strata):
        raise ConfigError(f"got {len(strata)} labels but {len(group_ids)} groups; give one group per row")
    return strata, group_ids


def _group_ids(groups: np.ndarray) -> np.ndarray:
    """Dense group indices, numbered in the sorted order of the ids as strings (as the splits have always used)."""
    if groups.ndim == 1 and groups.dtype.kind in "iu":  # fast path: sort the distinct ints' strings only
        values, inverse = np.unique(groups, return_inverse=True)
        rank = np.empty(len(values), dtype=np.intp)
        rank[np.argsort(values.astype(str))] = np.arange(len(values))
        return rank[inverse.ravel()]
    return np.unique(groups.astype(str), return_inverse=True)[1].ravel()


def _n_groups(group_ids: np.ndarray) -> int:
    return int(group_ids.max()) + 1 if len(group_ids) else 0  # group ids are dense: 0 .. n_groups - 1


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
    """``[N]`` fold of every row: the test fold of ``StratifiedGroupKFold(n_folds, shuffle=True, random_state)``
    on the merged strata (exactly, see :mod:`._sgkf`); memoised, a fresh copy on every call."""
    digest = hashlib.blake2b(digest_size=16)
    for a in (strata, group_ids):
        a = np.ascontiguousarray(a, dtype=np.int64)
        digest.update(np.int64(len(a)).tobytes())
        digest.update(a.tobytes())
    key = (digest.hexdigest(), n_folds, random_state)
    with _fold_cache_lock:
        folds = _fold_cache.get(key)
        if folds is not None:
            _fold_cache.move_to_end(key)
            return folds.copy()
    folds = stratified_group_folds(
        _merge_rare(strata, n_folds), group_ids, n_folds, random_state=random_state
    )
    folds.setflags(write=False)
    with _fold_cache_lock:
        _fold_cache[key] = folds
        while len(_fold_cache) > _CACHE_SIZE:
            _fold_cache.popitem(last=False)
    return folds.copy()


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
