"""Patient-grouped stratified splits and k-fold: pure, deterministic, no leakage across splits."""

from __future__ import annotations

import numpy as np
import pytest

from medadapt.data.splits import grouped_split, patient_kfold
from medadapt.errors import ConfigError


def _data(n: int = 400, n_patients: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, n), rng.integers(0, n_patients, n).astype(str)


def _assert_no_group_crosses(split: np.ndarray, groups: np.ndarray) -> None:
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1, f"group {g} crosses splits"


def test_grouped_split_fractions_groups_and_strata() -> None:
    labels, groups = _data()
    split = grouped_split(labels, groups, seed=0)
    _assert_no_group_crosses(split, groups)
    share = {name: np.mean(split == name) for name in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.04)
    overall = np.bincount(labels) / len(labels)
    for name in ("train", "val", "test"):
        np.testing.assert_allclose(
            np.bincount(labels[split == name], minlength=3) / share[name] / len(labels), overall, atol=0.06
        )


def test_grouped_split_is_deterministic_and_pure() -> None:
    labels, groups = _data()
    state = np.random.get_state()
    first = grouped_split(labels, groups, seed=3)
    assert np.array_equal(first, grouped_split(labels, groups, seed=3))
    assert not np.array_equal(first, grouped_split(labels, groups, seed=4))
    assert np.array_equal(
        grouped_split(labels, groups, seed=np.random.default_rng(7)),
        grouped_split(labels, groups, seed=np.random.default_rng(7)),
    )
    assert all(np.array_equal(a, b) for a, b in zip(state, np.random.get_state()))


def test_multilabel_and_no_groups() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 4)) < [0.3, 0.2, 0.1, 0.02]).astype(int)
    split = grouped_split(labels, None, fractions=(0.6, 0.2, 0.2), seed=0)
    assert split.shape == (300,) and set(split) == {"train", "val", "test"}
    assert np.mean(split == "train") == pytest.approx(0.6, abs=0.05)


def test_few_groups_fall_back_to_a_group_cut() -> None:
    split = grouped_split([0, 1, 0, 1, 0, 1], ["a", "a", "b", "b", "c", "d"], seed=0)
    _assert_no_group_crosses(split, np.array(["a", "a", "b", "b", "c", "d"]))
    assert set(split) <= {"train", "val", "test"}


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (-0.1, 0.6, 0.5), (0.7, 0.123, 0.177)])
def test_bad_fractions(fractions: tuple) -> None:
    with pytest.raises(ConfigError, match="fractions"):
        grouped_split([0, 1] * 10, None, fractions=fractions)


def test_patient_kfold_partitions_rows_by_patient() -> None:
    labels, groups = _data(200, 40)
    folds = patient_kfold(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(200))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    again = patient_kfold(labels, groups, k=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(ConfigError, match="k=50"):
        patient_kfold(labels, groups, k=50, seed=0)


def test_unknown_multilabel_labels_are_not_positives_when_stratifying() -> None:
    from medadapt.data.splits import _strata

    labels = np.array([[np.nan, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert _strata(labels).tolist()[:2] == [-1, -1]  # the unknown row is all-negative, as row 1
