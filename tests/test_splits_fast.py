"""The fast splits give sklearn's StratifiedGroupKFold folds exactly, and the same splits as before the change."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from medadapt.data import splits
from medadapt.data._sgkf import stratified_group_folds
from medadapt.data.splits import grouped_split, patient_kfold


def _sklearn_folds(y, groups, k: int, *, shuffle: bool = True, random_state=None) -> np.ndarray:
    cv = StratifiedGroupKFold(n_splits=k, shuffle=shuffle, random_state=random_state)
    folds = np.full(len(y), -1)
    for fold, (train, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        assert len(train) + len(test) == len(y)
        folds[test] = fold
    return folds


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    n = int(rng.integers(10, 600))
    n_groups = int(rng.integers(2, n + 1))
    n_classes = int(rng.integers(1, 17))
    # small alphas make rare classes (sklearn warns when a class has fewer members than folds)
    shares = rng.dirichlet(np.full(n_classes, rng.choice([0.2, 1.0, 10.0])))
    y = rng.choice(n_classes, n, p=shares)
    groups = rng.integers(0, n_groups, n)
    if rng.random() < 0.5:  # clustered: a group's rows tend to share a class, as a patient's do
        y = np.where(rng.random(n) < 0.7, groups % n_classes, y)
    k = int(rng.integers(2, 21))
    return y, groups, k


def _same_outcome(y, groups, k: int, **kw) -> None:
    """Our folds equal sklearn's, or both raise the same error; both warn or neither."""
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        try:
            expected = _sklearn_folds(y, groups, k, **kw)
        except ValueError as error:
            with pytest.raises(ValueError, match=str(error).split(" ")[0]):
                stratified_group_folds(y, groups, k, **kw)
            return
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        got = stratified_group_folds(y, groups, k, **kw)
    assert [type(w.message) for w in ours] == [type(w.message) for w in theirs]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", range(12))
def test_matches_sklearn_on_random_inputs(case: int) -> None:
    rng = np.random.default_rng(case)
    for trial in range(8):
        y, groups, k = _random_case(rng)
        as_text = trial % 3 == 0
        labels = np.array([f"c{v}" for v in y]) if as_text else y  # string and int classes
        # string and int groups
        group_ids = np.char.add("patient", groups.astype(str)) if trial % 2 else groups
        _same_outcome(labels, group_ids, k, shuffle=True, random_state=int(rng.integers(2**31 - 1)))


@pytest.mark.parametrize("k", [2, 5, 8, 10, 20])
def test_matches_sklearn_with_one_class_and_with_many_ties(k: int) -> None:
    rng = np.random.default_rng(k)
    groups = rng.integers(0, 200, 600)
    # one class: numpy sums the folds pairwise (not one after another) there
    _same_outcome(np.zeros(600, dtype=int), groups, k, random_state=k)
    # every group the same: only the tie-breaks decide
    _same_outcome(np.arange(600) % 3, np.arange(600) // 3, k, random_state=k)
    # one huge group and many single rows
    _same_outcome(
        rng.integers(0, 4, 600), np.where(np.arange(600) < 300, -1, np.arange(600)), k, random_state=0
    )


def test_matches_sklearn_without_shuffle_and_with_a_random_state_object() -> None:
    rng = np.random.default_rng(3)
    y, groups = rng.integers(0, 5, 400), rng.integers(0, 90, 400)
    _same_outcome(y, groups, 7, shuffle=False)
    ours = stratified_group_folds(y, groups, 7, random_state=np.random.RandomState(5))
    np.testing.assert_array_equal(ours, _sklearn_folds(y, groups, 7, random_state=np.random.RandomState(5)))


def test_matches_sklearn_on_a_larger_chexpert_like_input() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 11, 1500)
    groups = np.repeat(rng.permutation(1500), sizes)
    labels = (rng.random((len(groups), 14)) < np.linspace(0.02, 0.5, 14)).astype(float)
    labels[rng.random(labels.shape) < 0.6] = np.nan
    strata = splits._merge_rare(splits._strata(labels), 10)
    _same_outcome(strata, groups, 10, random_state=11)


# ------------------------------------------------------------------------- the splits as they were before
def _old_as_arrays(labels, groups) -> tuple[np.ndarray, np.ndarray]:
    strata = splits._strata(np.asarray(labels))
    if groups is None:
        return strata, np.arange(len(strata))
    return strata, np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()


def _old_fold_of_rows(strata, group_ids, n_folds: int, random_state: int) -> np.ndarray:
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    folds = np.empty(len(strata), dtype=int)
    for fold, (_, test) in enumerate(
        cv.split(np.zeros(len(strata)), splits._merge_rare(strata, n_folds), group_ids)
    ):
        folds[test] = fold
    return folds


def _old_grouped_split(labels, groups, *, fractions=splits.DEFAULT_FRACTIONS, seed=0) -> np.ndarray:
    n_folds = splits._n_folds(fractions)
    strata, group_ids = _old_as_arrays(labels, groups)
    random_state = splits._random_state(seed)
    if len(np.unique(group_ids)) < n_folds:
        return splits._shuffled_group_cut(group_ids, fractions, random_state)
    folds = _old_fold_of_rows(strata, group_ids, n_folds, random_state)
    bounds = np.cumsum(np.rint(np.asarray(fractions) * n_folds).astype(int))
    return splits._SPLIT_NAMES[np.searchsorted(bounds, folds, side="right")]


def _old_patient_kfold(labels, groups, *, k: int, seed=0) -> list[tuple[np.ndarray, np.ndarray]]:
    strata, group_ids = _old_as_arrays(labels, groups)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=splits._random_state(seed))
    folds = cv.split(np.zeros(len(strata)), splits._merge_rare(strata, k), group_ids)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in folds]


def _inputs(case: int):
    """(labels, groups): multi-label with NaN, class names, ints; string, int (sorted as text) or no groups."""
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(30, 900))
    n_groups = int(rng.integers(12, max(13, n // 2)))
    groups = rng.integers(-50, n_groups * 7, n)  # negative and multi-digit: text order is not number order
    kind = case % 3
    if kind == 0:
        labels = (rng.random((n, 6)) < [0.4, 0.2, 0.1, 0.05, 0.01, 0.003]).astype(float)
        labels[rng.random(labels.shape) < 0.3] = np.nan
    elif kind == 1:
        labels = rng.choice(np.array(["benign", "malignant", "normal", "rare"]), n, p=[0.5, 0.3, 0.19, 0.01])
    else:
        labels = rng.integers(0, int(rng.integers(1, 9)), n)[:, None]
    group_kind = case % 4
    if group_kind == 0:
        return labels, np.char.add("p", groups.astype(str))
    if group_kind == 1:
        return labels, groups.astype(object)
    if group_kind == 2:
        return labels, None
    return labels, groups


@pytest.mark.parametrize("case", range(16))
def test_grouped_split_and_patient_kfold_are_unchanged(case: int) -> None:
    labels, groups = _inputs(case)
    fractions = [(0.7, 0.1, 0.2), (0.6, 0.2, 0.2), (0.9, 0.1, 0.0), (0.5, 0.25, 0.25)][case % 4]
    splits._fold_cache.clear()
    got = grouped_split(labels, groups, fractions=fractions, seed=case)
    np.testing.assert_array_equal(got, _old_grouped_split(labels, groups, fractions=fractions, seed=case))
    again = grouped_split(labels, groups, fractions=fractions, seed=case)  # from the memo
    np.testing.assert_array_equal(again, got)
    ours = grouped_split(labels, groups, fractions=fractions, seed=np.random.default_rng(case))
    theirs = _old_grouped_split(labels, groups, fractions=fractions, seed=np.random.default_rng(case))
    np.testing.assert_array_equal(ours, theirs)
    k = 2 + case % 6
    new, old = (
        patient_kfold(labels, groups, k=k, seed=case),
        _old_patient_kfold(labels, groups, k=k, seed=case),
    )
    assert len(new) == len(old) == k
    for (new_train, new_test), (old_train, old_test) in zip(new, old):
        assert new_train.dtype == old_train.dtype and new_test.dtype == old_test.dtype
        np.testing.assert_array_equal(new_train, old_train)
        np.testing.assert_array_equal(new_test, old_test)


def test_int_group_ids_are_numbered_in_text_order() -> None:
    for groups in (
        np.array([10, 2, -3, 2, 100, 7, -3, 0, 10**12], dtype=np.int64),
        np.array([10, 2, -3, 2, 100, 7, -3, 0], dtype=np.int8),
        np.array([5, 40, 300, 5, 2**40], dtype=np.uint64),
    ):
        expected = np.unique(groups.astype(str), return_inverse=True)[1]
        np.testing.assert_array_equal(splits._group_ids(groups), expected)


def test_memo_returns_fresh_arrays_and_stays_small() -> None:
    rng = np.random.default_rng(0)
    labels, groups = rng.integers(0, 3, 300), rng.integers(0, 60, 300).astype(str)
    splits._fold_cache.clear()
    first = grouped_split(labels, groups, seed=1)
    expected = first.copy()
    first[:] = "test"  # the caller owns what it gets
    assert len(splits._fold_cache) == 1
    np.testing.assert_array_equal(grouped_split(labels, groups, seed=1), expected)
    assert len(splits._fold_cache) == 1  # a hit
    folds = patient_kfold(labels, groups, k=4, seed=1)
    folds[0][1][:] = 0
    assert patient_kfold(labels, groups, k=4, seed=1)[0][1].tolist() != [0] * len(folds[0][1])
    for seed in range(2, 2 + splits._CACHE_SIZE + 3):
        grouped_split(labels, groups, seed=seed)
    assert len(splits._fold_cache) == splits._CACHE_SIZE
    # a Generator seed is still drawn from on every call, hit or not: the same stream as before
    gen_a, gen_b = np.random.default_rng(9), np.random.default_rng(9)
    grouped_split(labels, groups, seed=gen_a)
    grouped_split(labels, groups, seed=gen_a)
    _old_grouped_split(labels, groups, seed=gen_b)
    _old_grouped_split(labels, groups, seed=gen_b)
    assert gen_a.integers(1000) == gen_b.integers(1000)
