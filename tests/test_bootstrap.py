"""Bootstrap intervals: weighted metrics against the metrics on expanded rows, the resampling against a plain
``scipy.stats.bootstrap`` + sklearn loop, the cluster bootstrap, paired differences, the nan rule, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medadapt.errors import ConfigError, DataError, UnknownNameError
from medadapt.evaluation import TASKS, calibration
from medadapt.evaluation.bootstrap import (
    WEIGHTED_METRICS,
    BootstrapResult,
    Units,
    bootstrap_ci,
    bootstrap_cis,
    bootstrap_statistic,
    paired_bootstrap,
    prepare_metric,
    weighted_metric,
)
from medadapt.evaluation.metrics import METRICS
from medadapt.evaluation.weighted import SEGMENTATION_METRICS

# the classification metrics (the segmentation ones are checked in test_segmentation_metrics.py)
ALL_METRICS = [*(m for m in WEIGHTED_METRICS if m not in SEGMENTATION_METRICS), "cohen_kappa"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def make_case(task: str, seed: int, n: int = 60, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MedMNIST-layout labels (every class present; multilabel with ~10% nan) and probabilities."""
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        labels = (rng.random((n, 4)) < 0.4).astype(np.float64)
        labels[0], labels[1] = 1, 0
        labels[2:][rng.random((n - 2, 4)) < 0.1] = np.nan
        scores = 1 / (1 + np.exp(-(rng.normal(size=(n, 4)) + 1.5 * np.nan_to_num(labels))))
    else:
        k = 2 if task == "binary" else 4
        labels = rng.integers(0, k, size=(n, 1))
        labels[:k, 0] = np.arange(k)
        scores = _softmax(rng.normal(size=(n, k)) + 1.5 * (labels == np.arange(k)))
    return labels, (np.round(scores, 1) if ties else scores)  # rounding: heavy ties, binary 0.5 exactly


def reference(metric: str):
    """The unweighted function a weighted metric must reproduce."""
    return {"ece": calibration.expected_calibration_error, "brier": calibration.brier_score}.get(
        metric, METRICS.get(metric) if metric in METRICS else None
    )


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-12


# ---------------------------------------------------------------------------------------- weighted metrics
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_unit_weights_give_the_metrics(task: str, ties: bool) -> None:
    for seed in range(3):
        labels, scores = make_case(task, seed, ties=ties)
        for metric in ALL_METRICS:
            expected = reference(metric)(task, labels, scores)
            got = weighted_metric(metric, task, labels, scores, np.ones(len(labels)))
            assert np.ndim(got) == 0 and not np.isnan(expected)
            assert _same(float(got), expected), (task, seed, metric, got, expected)


@pytest.mark.parametrize("task", TASKS)
def test_integer_weights_give_the_metric_of_the_repeated_rows(task: str) -> None:
    rng = np.random.default_rng(7)
    for seed in range(2):
        labels, scores = make_case(task, seed, n=40, ties=seed == 1)
        weights = rng.integers(0, 4, size=(4, len(labels)))
        for metric in ALL_METRICS:
            got = weighted_metric(metric, task, labels, scores, weights)
            assert got.shape == (4,)
            for w, value in zip(weights, got):
                rows = np.repeat(np.arange(len(labels)), w)
                expected = reference(metric)(task, labels[rows], scores[rows])
                assert _same(value, expected), (task, seed, metric, value, expected)


def test_auc_counts_a_tied_pair_one_half_as_sklearn() -> None:
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    p = np.array([0.5, 0.5, 0.2, 0.9, 0.2, 0.9, 0.5, 0.1])  # ties across the classes at 0.2, 0.5 and 0.9
    weights = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [3, 0, 2, 1, 1, 0, 2, 5]])
    got = weighted_metric("auc", "binary", y[:, None], np.stack([1 - p, p], 1), weights)
    assert got[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got[1] == pytest.approx(roc_auc_score(y, p, sample_weight=weights[1]), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 3, 1])  # no ties; a few (a correction); heavy (per tie group)
def test_auc_paths_match_sklearn_with_sample_weights(decimals: int | None) -> None:
    rng = np.random.default_rng(decimals or 0)
    y = (rng.random(300) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=300) + y)))
    p = p if decimals is None else np.round(p, decimals)
    weights = rng.integers(0, 4, size=(5, 300))
    got = weighted_metric("auc", "binary", y[:, None], np.stack([1 - p, p], 1), weights)
    want = [roc_auc_score(y, p, sample_weight=w) for w in weights]
    assert np.abs(got - want).max() <= 1e-12


def test_a_weighting_without_both_classes_is_nan_not_an_error() -> None:
    labels, scores = make_case("binary", 0)
    only_negatives = (labels[:, 0] == 0).astype(float)
    got = weighted_metric("auc", "binary", labels, scores, np.stack([np.ones(len(labels)), only_negatives]))
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_registry_names_and_direction() -> None:
    assert {
        "auc",
        "acc",
        "sensitivity",
        "specificity",
        "balanced_accuracy",
        "f1_macro",
        "brier",
        "ece",
    } <= set(WEIGHTED_METRICS)
    assert (
        not WEIGHTED_METRICS.meta("ece")["higher_is_better"]
        and WEIGHTED_METRICS.meta("auc")["higher_is_better"]
    )
    labels, scores = make_case("multiclass", 1)
    w = np.ones((2, len(labels)))
    assert np.allclose(
        WEIGHTED_METRICS.get("acc")("multiclass", labels, scores, w),
        METRICS.get("acc")("multiclass", labels, scores),
    )


# ----------------------------------------------------------------------------------------------- resampling
def _scipy_sklearn_reference(y: np.ndarray, p: np.ndarray, seed: int, method: str, n_resamples: int):
    """The plain way: scipy resamples the rows, sklearn scores each resample (no vectorisation)."""
    return stats.bootstrap((y, p), lambda a, b: roc_auc_score(a, b), paired=True, vectorized=False,
                           n_resamples=n_resamples, method=method, rng=np.random.default_rng(seed))  # fmt: skip


@pytest.mark.parametrize("method", ["percentile", "basic", "BCa"])
def test_bootstrap_ci_is_scipy_with_sklearn_on_the_same_resamples(method: str) -> None:
    labels, scores = make_case("binary", 3, n=97)
    ref = _scipy_sklearn_reference(labels[:, 0], scores[:, 1], seed=11, method=method, n_resamples=300)
    got = bootstrap_ci("binary", labels, scores, n_resamples=300, method=method, seed=11)
    assert np.abs(got.distribution - ref.bootstrap_distribution).max() <= 1e-12
    # BCa counts the resamples below / equal to the estimate: a resample whose AUC equals it mathematically
    # may fall either side by one ulp in sklearn's trapezoid. None does here (n=97), so the intervals agree.
    assert np.abs(ref.bootstrap_distribution - got.estimate).min() > 1e-9
    assert got.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert got.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert got.se == pytest.approx(ref.standard_error, abs=1e-12)
    assert got.estimate == pytest.approx(roc_auc_score(labels[:, 0], scores[:, 1]), abs=1e-12)
    assert (got.n_resamples, got.n_nan, got.method, got.units, got.p_value) == (300, 0, method, [97], None)


def test_the_resamples_do_not_depend_on_the_batch_size() -> None:
    labels, scores = make_case("binary", 4, n=50)
    results = [bootstrap_ci("binary", labels, scores, n_resamples=101, seed=2, batch=b) for b in (1, 7, None)]
    assert all(np.array_equal(r.distribution, results[0].distribution) for r in results)


def test_same_seed_same_interval_other_seed_another() -> None:
    labels, scores = make_case("multiclass", 5)
    a, b = (
        bootstrap_ci("multiclass", labels, scores, metric="f1_macro", n_resamples=200, seed=s) for s in (3, 3)
    )
    c = bootstrap_ci("multiclass", labels, scores, metric="f1_macro", n_resamples=200, seed=4)
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    bootstrap_ci("multiclass", labels, scores, n_resamples=20, seed=np.random.default_rng(9))
    assert rng.bit_generator.state == state  # no global or shared RNG state touched


def test_several_test_sets_are_resampled_independently_as_scipy() -> None:
    folds = [make_case("binary", s, n=n) for s, n in ((0, 30), (1, 45), (2, 38))]
    fns = [prepare_metric("auc", "binary", y, s) for y, s in folds]
    got = bootstrap_statistic([Units(len(y)) for y, _ in folds], lambda ws: np.mean([f(w) for f, w in zip(fns, ws)], 0),
                              n_resamples=150, seed=5, batch=10)  # fmt: skip

    def plain(*idx: np.ndarray) -> float:
        return float(np.mean([roc_auc_score(y[i, 0], s[i, 1]) for (y, s), i in zip(folds, idx)]))

    ref = stats.bootstrap([np.arange(len(y)) for y, _ in folds], plain, vectorized=False, paired=False,
                          n_resamples=150, batch=10, method="percentile", rng=np.random.default_rng(5))  # fmt: skip
    assert np.abs(got.distribution - ref.bootstrap_distribution).max() <= 1e-12
    assert (got.low, got.high) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)
    assert got.estimate == pytest.approx(
        np.mean([roc_auc_score(y[:, 0], s[:, 1]) for y, s in folds]), abs=1e-12
    )
    assert got.units == [30, 45, 38]


def test_bootstrap_cis_equals_one_call_per_method() -> None:
    labels, scores = make_case("binary", 6, n=70)
    other = make_case("binary", 7, n=70)[1]
    many = bootstrap_cis("binary", labels, {"a": scores, "b": other}, n_resamples=120, seed=1)
    for name, s in (("a", scores), ("b", other)):
        one = bootstrap_ci("binary", labels, s, n_resamples=120, seed=1)
        assert np.array_equal(many[name].distribution, one.distribution)
        assert (many[name].low, many[name].high, many[name].estimate) == (one.low, one.high, one.estimate)
    assert isinstance(bootstrap_cis("binary", labels, [scores], n_resamples=10), list)


def test_fallback_metric_loops_over_resamples_as_a_plain_reference() -> None:
    labels, scores = make_case("ordinal", 8, n=40)
    got = bootstrap_ci("ordinal", labels, scores, metric="cohen_kappa", n_resamples=60, seed=2)
    ref = stats.bootstrap((labels[:, 0], scores.argmax(1)), lambda a, b: cohen_kappa_score(a, b, weights="quadratic",
                          labels=np.arange(4)), paired=True, vectorized=False, n_resamples=60, method="percentile",
                          rng=np.random.default_rng(2))  # fmt: skip
    assert np.abs(got.distribution - ref.bootstrap_distribution).max() <= 1e-12


# ------------------------------------------------------------------------------------------ cluster bootstrap
def test_one_row_per_group_is_the_row_bootstrap() -> None:
    labels, scores = make_case("binary", 9, n=50)
    ids = [f"patient-{k}" for k in np.random.default_rng(0).permutation(1000)[:50]]  # distinct, unordered
    rows = bootstrap_ci("binary", labels, scores, n_resamples=200, seed=3)
    grouped = bootstrap_ci("binary", labels, scores, groups=ids, n_resamples=200, seed=3)
    assert np.array_equal(rows.distribution, grouped.distribution) and (rows.low, rows.high) == (
        grouped.low,
        grouped.high,
    )


def test_duplicated_images_widen_the_cluster_interval_not_the_row_one() -> None:
    labels, scores = make_case("binary", 10, n=60)
    dup = 5  # every patient has 5 identical images
    y, s, patients = np.repeat(labels, dup, 0), np.repeat(scores, dup, 0), np.repeat(np.arange(60), dup)
    naive = bootstrap_ci("binary", y, s, n_resamples=400, seed=0)
    cluster = bootstrap_ci("binary", y, s, groups=patients, n_resamples=400, seed=0)
    per_patient = bootstrap_ci("binary", labels, scores, n_resamples=400, seed=0)
    assert cluster.high - cluster.low > 1.5 * (naive.high - naive.low)
    assert cluster.units == [60] and naive.units == [300]
    # weights 5 c_p on each image of patient p is the AUC of weights c_p: the patient-level row bootstrap
    assert np.abs(cluster.distribution - per_patient.distribution).max() <= 1e-12


def test_a_resample_holds_whole_patients() -> None:
    groups = np.array(["a", "b", "a", "c", "b", "a", "d"])
    units = Units(7, groups=groups)
    assert units.n_units == 4 and units.codes.tolist() == [0, 1, 0, 2, 1, 0, 3]
    idx = np.random.default_rng(0).integers(0, 4, size=(50, 4))
    w = units.weights(idx)
    for drawn, row_weights in zip(idx, w):
        counts = np.bincount(drawn, minlength=4)
        assert np.array_equal(row_weights, counts[units.codes])  # every image of a patient: its count
    assert np.array_equal(w.sum(1), (np.bincount(units.codes)[idx]).sum(1))


# ------------------------------------------------------------------------------------------------- paired
def test_identical_scores_differ_by_exactly_zero() -> None:
    labels, scores = make_case("binary", 11)
    r = paired_bootstrap("binary", labels, scores, scores.copy(), n_resamples=200)
    assert (r.estimate, r.low, r.high, r.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_a_clearly_better_model_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(300, 1))
    good = np.clip(0.5 + 0.4 * (y[:, 0] - 0.5) + rng.normal(0, 0.15, 300), 0, 1)
    weak = np.clip(0.5 + 0.1 * (y[:, 0] - 0.5) + rng.normal(0, 0.15, 300), 0, 1)
    a, b = np.stack([1 - good, good], 1), np.stack([1 - weak, weak], 1)
    r = paired_bootstrap("binary", y, a, b, n_resamples=500, seed=1)
    assert r.low > 0 and r.p_value < 0.01 and r.estimate > 0.2
    alone = [bootstrap_ci("binary", y, s, n_resamples=500, seed=1).distribution for s in (a, b)]
    assert np.abs(r.distribution - (alone[0] - alone[1])).max() <= 1e-12  # the same resampled images
    back = paired_bootstrap("binary", y, b, a, n_resamples=500, seed=1)
    assert back.high < 0 and back.p_value == r.p_value


# -------------------------------------------------------------------------------------------------- nan rule
def _rare(n: int, positives: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = np.zeros((n, 1), dtype=int)
    y[:positives] = 1
    p = np.clip(0.3 + 0.4 * y[:, 0] + rng.normal(0, 0.2, n), 0, 1)
    return y, np.stack([1 - p, p], 1)


def test_a_few_undefined_resamples_are_left_out_of_the_interval() -> None:
    y, s = _rare(40, 5)  # P(no positive drawn) = (35/40)^40 = 0.5%
    r = bootstrap_ci("binary", y, s, n_resamples=2000, seed=0)
    finite = r.distribution[np.isfinite(r.distribution)]
    assert 0 < r.n_nan <= 20 and r.n_nan == 2000 - finite.size
    assert (r.low, r.high) == pytest.approx(tuple(np.percentile(finite, [2.5, 97.5])), abs=1e-12)
    assert r.se == pytest.approx(finite.std(ddof=1), abs=1e-12) and "finite" in r.note


def test_many_undefined_resamples_give_no_interval_and_say_why() -> None:
    y, s = _rare(40, 2)  # P(no positive drawn) = 13%
    r = bootstrap_ci("binary", y, s, n_resamples=500, seed=0)
    assert np.isfinite(r.estimate) and np.isnan(r.low) and np.isnan(r.high) and np.isnan(r.se)
    assert r.n_nan > 25 and "more than 1%" in r.note
    lenient = bootstrap_ci("binary", y, s, n_resamples=500, seed=0, max_nan_fraction=0.5)
    assert np.isfinite(lenient.low) and lenient.n_nan == r.n_nan
    paired = paired_bootstrap("binary", y, s, s[::-1], n_resamples=500, seed=0)
    assert np.isnan(paired.p_value)


def test_a_metric_undefined_on_the_test_set_gives_nan_everywhere() -> None:
    y, s = _rare(30, 0)
    r = bootstrap_ci("binary", y, s, n_resamples=50)
    assert np.isnan([r.estimate, r.low, r.high, r.se]).all() and "test set itself" in r.note


# ---------------------------------------------------------------------------------------------------- errors
def test_bad_input_is_explained() -> None:
    labels, scores = make_case("binary", 12)
    with pytest.raises(DataError, match="row-aligned"):
        bootstrap_ci("binary", labels[:-1], scores)
    with pytest.raises(UnknownNameError, match="did you mean 'auc'"):
        bootstrap_ci("binary", labels, scores, metric="acu")
    for confidence in (0.0, 1.0, 95):
        with pytest.raises(ConfigError, match="confidence must be between 0 and 1"):
            bootstrap_ci("binary", labels, scores, confidence=confidence)
    with pytest.raises(ConfigError, match="method must be one of"):
        bootstrap_ci("binary", labels, scores, method="studentized")
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_ci("binary", labels, scores, n_resamples=0)
    with pytest.raises(DataError, match="one id per row"):
        bootstrap_ci("binary", labels, scores, groups=np.arange(5))
    with pytest.raises(DataError, match="at least 2 units"):
        bootstrap_ci("binary", labels, scores, groups=np.zeros(len(labels)))
    with pytest.raises(DataError, match="weights must be"):
        weighted_metric("auc", "binary", labels, scores, np.ones(3))
    with pytest.raises(DataError, match="nonnegative"):
        weighted_metric("auc", "binary", labels, scores, -np.ones(len(labels)))
    with pytest.raises(DataError, match="integer counts"):
        weighted_metric("cohen_kappa", "binary", labels, scores, np.full(len(labels), 0.5))
    with pytest.raises(ConfigError, match="one value per resample"):
        bootstrap_statistic([Units(len(labels))], lambda ws: np.zeros(3), n_resamples=10)


def test_result_is_a_plain_dataclass() -> None:
    labels, scores = make_case("binary", 13)
    r = bootstrap_ci("binary", labels, scores, n_resamples=50)
    assert isinstance(r, BootstrapResult) and "distribution" not in repr(r) and r.note == ""
