"""Rank-based comparison of many methods against scipy, scikit-posthocs, statsmodels and Demšar (2006)'s worked
example: average ranks, Friedman / Iman–Davenport, Nemenyi CD and cliques, Holm-Wilcoxon, sentences, the CD
diagram and the errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medadapt.errors import ConfigError, DataError
from medadapt.evaluation.ranking import (
    average_ranks,
    critical_difference,
    describe,
    friedman_test,
    holm_wilcoxon,
    nemenyi_q,
    nemenyi_test,
)

posthocs = pytest.importorskip("scikit_posthocs")
multitest = pytest.importorskip("statsmodels.stats.multitest")

# J. Demšar (2006), "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7:1-30, Table 6
# (Section 3.2.2): AUC of C4.5 (m = 0, cf = 0.25) and C4.5 with m, cf or both tuned, on 14 UCI data sets.
# Typed from the paper's text (https://jmlr.org/papers/v7/demsar06a.html; a plain-text copy is at
# https://is.muni.cz/el/fi/podzim2020/PA164/projekt/Statistical_Comparison_of_Classifiers_over_Multiple_Data_Sets.txt)
# and checked against public reproductions of the table (an R script, a Java port citing García & Herrera's
# course slides, a Python Friedman example) found in the code search index.
PAPER_METHODS = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
PAPER_AUC = {
    "adult (sample)": [0.763, 0.768, 0.771, 0.798],
    "breast cancer": [0.599, 0.591, 0.590, 0.569],
    "breast cancer wisconsin": [0.954, 0.971, 0.968, 0.967],
    "cmc": [0.628, 0.661, 0.654, 0.657],
    "ionosphere": [0.882, 0.888, 0.886, 0.898],
    "iris": [0.936, 0.931, 0.916, 0.931],
    "liver disorders": [0.661, 0.668, 0.609, 0.685],
    "lung cancer": [0.583, 0.583, 0.563, 0.625],
    "lymphography": [0.775, 0.838, 0.866, 0.875],
    "mushroom": [1.000, 1.000, 1.000, 1.000],
    "primary tumor": [0.940, 0.962, 0.965, 0.962],
    "rheum": [0.619, 0.666, 0.614, 0.669],
    "voting": [0.972, 0.981, 0.975, 0.975],
    "wine": [0.957, 0.978, 0.946, 0.970],
}


def _paper_scores() -> pd.DataFrame:
    scores = pd.DataFrame.from_dict(PAPER_AUC, orient="index", columns=PAPER_METHODS)
    # The table prints 0.975 for both C4.5+cf and C4.5+m+cf on "voting" but ranks them 2 and 3 (the AUCs are
    # rounded for print): the paper's average ranks 2.893 and 1.964 need that order, and with the printed
    # tie they would be 2.929 and 1.929. Its ties are those of iris, lung cancer, mushroom and primary tumor.
    scores.loc["voting", "C4.5+cf"] = 0.9751
    return scores


def _random_scores(seed: int, n: int = 12, k: int = 5, *, ties: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, size=(n, k)) / 4 if ties else rng.normal(size=(n, k)) + np.linspace(0, 1, k)
    return pd.DataFrame(values, index=[f"ds{i}" for i in range(n)], columns=[f"m{j}" for j in range(k)])


# ------------------------------------------------------------------------------------------ average ranks
def test_average_ranks_by_hand_with_ties() -> None:
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.7], "b": [0.9, 0.7, 0.8], "c": [0.5, 0.6, 0.6]})
    # block 0: a, b tie for 1-2 -> 1.5 each, c 3; block 1: a 1, b 2, c 3; block 2: b 1, a 2, c 3
    expected = {"a": (1.5 + 1 + 2) / 3, "b": (1.5 + 2 + 1) / 3, "c": 3.0}
    ranks = average_ranks(scores)
    assert ranks.to_dict() == pytest.approx(expected)
    assert list(ranks.index) == ["a", "b", "c"]  # best first; a tie keeps the column order


def test_lower_is_better_flips_the_ranks() -> None:
    scores = _random_scores(1)
    k = scores.shape[1]
    high, low = average_ranks(scores), average_ranks(scores, higher_is_better=False)
    assert low.to_dict() == pytest.approx((k + 1 - high).to_dict())
    assert low.is_monotonic_increasing and high.is_monotonic_increasing  # best first


# --------------------------------------------------------------------------------------------- Friedman
@pytest.mark.parametrize("ties", [False, True])
def test_friedman_matches_scipy(ties: bool) -> None:
    scores = _random_scores(7, ties=ties)
    ref = stats.friedmanchisquare(*scores.to_numpy().T)
    r = friedman_test(scores)
    assert r["test"] == "Friedman" and (r["n_blocks"], r["n_methods"]) == (12, 5)
    assert r["chi2"] == pytest.approx(ref.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert r["average_ranks"] == pytest.approx(average_ranks(scores).to_dict())
    assert ("ties in" in r["note"]) == ties
    # the direction changes the ranks, not the statistic
    assert friedman_test(scores, higher_is_better=False)["chi2"] == pytest.approx(r["chi2"], rel=1e-12)


def test_uncorrected_chi2_is_scipy_times_the_tie_factor() -> None:
    scores = _random_scores(3, ties=True)
    n, k = scores.shape
    t = [np.unique(row, return_counts=True)[1] for row in scores.to_numpy()]
    factor = 1 - sum(float(np.sum(c**3 - c)) for c in t) / (n * k * (k**2 - 1))
    corrected, raw = friedman_test(scores), friedman_test(scores, tie_correction=False)
    assert factor < 1 and raw["tie_correction"] is False
    assert raw["chi2"] == pytest.approx(corrected["chi2"] * factor, rel=1e-12)
    assert raw["p_value"] == pytest.approx(stats.chi2.sf(raw["chi2"], k - 1))


def test_iman_davenport_from_the_formula() -> None:
    scores = _random_scores(5)
    r = friedman_test(scores)
    (n, k), chi2 = scores.shape, r["chi2"]
    f = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert r["iman_davenport_f"] == pytest.approx(f, rel=1e-12)
    assert r["iman_davenport_df"] == (k - 1, (k - 1) * (n - 1))
    assert r["iman_davenport_p"] == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)), rel=1e-12)


def test_degenerate_blocks() -> None:
    tied = pd.DataFrame(np.ones((4, 3)), columns=["a", "b", "c"])
    r = friedman_test(tied)
    assert (r["chi2"], r["p_value"], r["iman_davenport_f"], r["iman_davenport_p"]) == (0.0, 1.0, 0.0, 1.0)
    assert "every block ties every method" in r["note"]
    agree = pd.DataFrame({"a": [3.0, 2, 5, 4], "b": [2.0, 1, 4, 3], "c": [1.0, 0, 3, 2]})
    r = friedman_test(agree)
    assert r["chi2"] == pytest.approx(4 * 2) and r["iman_davenport_f"] == math.inf
    assert r["iman_davenport_p"] == pytest.approx(r["p_value"])  # the F approximation breaks down: chi2's p
    two = friedman_test(agree.iloc[:2])  # 2 blocks, 3 methods: the exact p is 1/6, never "rejects at 0.05"
    assert (
        two["iman_davenport_p"] > 0.05 and "does not reject" in describe(two, nemenyi_test(agree.iloc[:2]))[0]
    )


# ---------------------------------------------------------------------------------------------- Nemenyi
@pytest.mark.parametrize("ties", [False, True])
def test_nemenyi_p_values_match_scikit_posthocs(ties: bool) -> None:
    scores = _random_scores(11, n=20, ties=ties)
    r = nemenyi_test(scores)
    pd.testing.assert_frame_equal(r["p_values"], posthocs.posthoc_nemenyi_friedman(scores))
    # indistinguishable pairs (rank difference < CD) are those with p > alpha
    ranks, cd = r["average_ranks"], r["critical_difference"]
    assert cd == pytest.approx(critical_difference(5, 20))
    for a, b in [(a, b) for a in ranks for b in ranks if a != b]:
        close = abs(ranks[a] - ranks[b]) < cd
        assert close == (r["p_values"].loc[a, b] > 0.05)
        assert close == ((a, b) in r["indistinguishable"] or (b, a) in r["indistinguishable"])


def test_nemenyi_lower_is_better_flips_ranks_not_p_values() -> None:
    scores = _random_scores(2)
    high, low = nemenyi_test(scores), nemenyi_test(scores, higher_is_better=False)
    pd.testing.assert_frame_equal(high["p_values"], low["p_values"])
    assert low["average_ranks"] == pytest.approx({m: 6 - r for m, r in high["average_ranks"].items()})
    assert list(low["average_ranks"].values()) == sorted(low["average_ranks"].values())  # best first


def test_cliques_are_maximal_runs() -> None:
    # 60 identical blocks: ranks 1..5 exactly, CD(5, 60) = 0.79 at alpha 0.05 and 2.13 at alpha 1e-12
    scores = pd.DataFrame(np.tile([5.0, 4, 3, 2, 1], (60, 1)), columns=list("abcde"))
    assert nemenyi_test(scores)["cliques"] == []
    assert nemenyi_test(scores)["indistinguishable"] == []
    loose = nemenyi_test(scores, alpha=1e-12)
    assert loose["cliques"] == [["a", "b", "c"], ["b", "c", "d"], ["c", "d", "e"]]


# Demšar (2006), Table 5(a): critical values of the two-tailed Nemenyi test (printed to 3 decimals)
TABLE_5A = {
    0.05: [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164],
    0.10: [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920],
}


@pytest.mark.parametrize("alpha", [0.05, 0.10])
@pytest.mark.parametrize("k", range(2, 11))
def test_q_alpha_matches_demsar_table_5a(k: int, alpha: float) -> None:
    assert nemenyi_q(k, alpha=alpha) == pytest.approx(TABLE_5A[alpha][k - 2], abs=1e-3)


def test_critical_difference_formula() -> None:
    assert critical_difference(4, 14) == pytest.approx(1.25, abs=5e-3)  # Demšar's example
    assert critical_difference(4, 14, alpha=0.10) == pytest.approx(1.12, abs=5e-3)
    assert critical_difference(5, 10) == pytest.approx(2.728 * math.sqrt(5 * 6 / (6 * 10)), abs=1e-3)


# ------------------------------------------------------------------------------ Demšar's worked example
def test_demsar_friedman_example() -> None:
    scores = _paper_scores()
    assert average_ranks(scores).round(3).to_dict() == {
        "C4.5+m+cf": 1.964,
        "C4.5+m": 2.000,
        "C4.5+cf": 2.893,
        "C4.5": 3.143,
    }
    paper = friedman_test(scores, tie_correction=False)  # the paper's chi2 has no tie correction
    assert round(paper["chi2"], 2) == 9.28 and round(paper["iman_davenport_f"], 2) == 3.69
    assert paper["iman_davenport_df"] == (3, 39)
    assert stats.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=5e-3)  # "the critical value ... is 2.85"
    assert paper["iman_davenport_p"] < 0.05
    default = friedman_test(scores)  # scipy's tie-corrected chi2: the table's 4 tied blocks raise it
    assert default["chi2"] == pytest.approx(stats.friedmanchisquare(*scores.to_numpy().T).statistic)
    assert default["chi2"] > paper["chi2"] and "ties in 4 of 14 blocks" in default["note"]


def test_demsar_nemenyi_example() -> None:
    scores = _paper_scores()
    strict = nemenyi_test(scores)
    assert round(strict["q_alpha"], 3) == 2.569 and round(strict["critical_difference"], 2) == 1.25
    # "even the difference between the best and the worst performing algorithm is already smaller"
    assert strict["cliques"] == [["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]]
    loose = nemenyi_test(scores, alpha=0.10)
    assert round(loose["q_alpha"], 3) == 2.291 and round(loose["critical_difference"], 2) == 1.12
    # "pure C4.5 is significantly worse than C4.5+m and C4.5+m+cf. We cannot tell which group C4.5+cf belongs to"
    assert loose["cliques"] == [["C4.5+m+cf", "C4.5+m", "C4.5+cf"], ["C4.5+cf", "C4.5"]]
    pairs = {frozenset(p) for p in loose["indistinguishable"]}
    assert frozenset(("C4.5", "C4.5+m")) not in pairs and frozenset(("C4.5", "C4.5+m+cf")) not in pairs


def test_demsar_wilcoxon_example() -> None:
    # Section 3.1.3 / Table 2: C4.5 vs C4.5+m, zero differences split: R+ = 93, R- = 12, so T = 12
    table = holm_wilcoxon(_paper_scores()[["C4.5", "C4.5+m"]], control="C4.5")
    row = table.iloc[0]
    assert row["method"] == "C4.5+m" and row["n"] == 14 and row["statistic"] == 12.0
    assert row["median_diff"] > 0 and row["p_value"] < 0.05


def test_demsar_sentences() -> None:
    scores = _paper_scores()
    friedman = friedman_test(scores, tie_correction=False)
    strict = describe(friedman, nemenyi_test(scores), block_noun="datasets")
    assert strict[0] == (
        "The Friedman test rejects equal performance (chi2 = 9.28, p = 0.026; "
        "Iman–Davenport F = 3.69, p = 0.020) over 14 datasets."
    )
    assert strict[1].startswith("No two methods differ at alpha 0.05") and "1.18" in strict[1]
    loose = describe(friedman, nemenyi_test(scores, alpha=0.10))
    assert loose[1:] == [
        "C4.5+m+cf, C4.5+m and C4.5+cf are indistinguishable at alpha 0.1 (largest rank difference 0.93 < CD 1.12).",
        "C4.5+cf and C4.5 are indistinguishable at alpha 0.1 (rank difference 0.25 < CD 1.12).",
        "C4.5+m+cf is better than C4.5 at alpha 0.1 (rank difference 1.18 >= CD 1.12).",
        "C4.5+m is better than C4.5 at alpha 0.1 (rank difference 1.14 >= CD 1.12).",
        "The data are not sufficient to tell which group C4.5+cf belongs to.",
    ]


def test_describe_without_rejection_claims_no_pairs() -> None:
    scores = pd.DataFrame(
        {"a <b>": [0.9, 0.8, 0.7, 0.9], "b": [0.8, 0.7, 0.6, 0.8], "c": [0.7, 0.9, 0.5, 0.6]}
    )
    sentences = describe(friedman_test(scores), nemenyi_test(scores))
    assert sentences[0].startswith("The Friedman test does not reject equal performance (chi2 = 3.50")
    assert len(sentences) == 2 and "No pairwise differences are claimed" in sentences[1]
    with pytest.raises(ConfigError, match="alpha=0.1 but the Nemenyi test ran at alpha=0.05"):
        describe(friedman_test(scores), nemenyi_test(scores), alpha=0.1)
    with pytest.raises(ConfigError, match="different scores"):
        describe(friedman_test(scores), nemenyi_test(scores.iloc[:3]))


# ------------------------------------------------------------------------------------------ Holm-Wilcoxon
@pytest.mark.parametrize("zero_method", ["zsplit", "wilcox", "pratt"])
def test_holm_wilcoxon_matches_scipy_and_statsmodels(zero_method: str) -> None:
    scores = _random_scores(13, n=15)
    scores.iloc[0, 1] = scores.iloc[0, 0]  # one zero difference against the control
    table = holm_wilcoxon(scores, control="m0", zero_method=zero_method)
    assert list(table.columns) == ["method", "n", "median_diff", "statistic", "p_value", "p_holm", "reject"]
    assert list(table["method"]) == ["m1", "m2", "m3", "m4"] and set(table["n"]) == {15}
    for row in table.itertuples():
        ref = stats.wilcoxon(scores[row.method], scores["m0"], zero_method=zero_method)
        assert row.statistic == pytest.approx(ref.statistic) and row.p_value == pytest.approx(ref.pvalue)
        assert row.median_diff == pytest.approx(np.median(scores[row.method] - scores["m0"]))
    reject, p_holm, _, _ = multitest.multipletests(table["p_value"], alpha=0.05, method="holm")
    np.testing.assert_allclose(table["p_holm"], p_holm)
    np.testing.assert_array_equal(table["reject"], reject)
    assert table.attrs["control"] == "m0" and table.attrs["zero_method"] == zero_method


def test_holm_wilcoxon_lower_is_better_flips_the_sign() -> None:
    scores = _random_scores(17)
    high, low = (
        holm_wilcoxon(scores, control="m2"),
        holm_wilcoxon(scores, control="m2", higher_is_better=False),
    )
    np.testing.assert_allclose(low["median_diff"], -high["median_diff"])
    np.testing.assert_allclose(low["p_value"], high["p_value"])


def test_holm_wilcoxon_identical_method_gives_p_one() -> None:
    scores = _random_scores(19, k=3)
    scores["copy"] = scores["m0"]
    row = holm_wilcoxon(scores, control="m0", zero_method="wilcox").set_index("method").loc["copy"]
    assert math.isnan(row["statistic"]) and row["p_value"] == 1.0 and not row["reject"]


# ------------------------------------------------------------------------------------ missing and bad input
def test_blocks_with_missing_scores_are_dropped_and_listed() -> None:
    scores = _random_scores(23)
    scores.loc["ds3", "m1"] = np.nan
    scores.loc["ds8", "m4"] = np.nan
    r = friedman_test(scores)
    complete = scores.drop(index=["ds3", "ds8"])
    assert r["n_blocks"] == 10 and r["dropped_blocks"] == ["ds3", "ds8"]
    assert "dropped 2 block(s) with a missing score: 'ds3', 'ds8'" in r["note"]
    assert r["chi2"] == pytest.approx(friedman_test(complete)["chi2"])
    assert nemenyi_test(scores)["dropped_blocks"] == ["ds3", "ds8"]
    assert average_ranks(scores).to_dict() == pytest.approx(average_ranks(complete).to_dict())
    assert set(holm_wilcoxon(scores, control="m0")["n"]) == {10}


def test_too_few_methods_or_blocks() -> None:
    with pytest.raises(ConfigError, match="at least 3 methods .* got 2"):
        friedman_test(_random_scores(0, k=2))
    with pytest.raises(ConfigError, match="at least 3 methods"):
        nemenyi_test(_random_scores(0, k=2))
    with pytest.raises(ConfigError, match="at least 2 blocks .* got 1"):
        friedman_test(_random_scores(0, n=1))
    nan_rows = _random_scores(0, n=3)
    nan_rows.iloc[1:, 0] = np.nan
    with pytest.raises(ConfigError, match="got 1 after dropping 2 with a missing score"):
        nemenyi_test(nan_rows)


def test_unknown_control_suggests_a_method() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("unknown control method 'C4.5+M'; did you mean 'C4.5+m'")
    ) as e:
        holm_wilcoxon(_paper_scores(), control="C4.5+M")
    assert "methods in scores: C4.5, C4.5+m, C4.5+cf, C4.5+m+cf" in str(e.value)


def test_bad_scores_and_options() -> None:
    scores = _random_scores(29)
    with pytest.raises(ConfigError, match="pandas DataFrame"):
        friedman_test(scores.to_numpy())
    with pytest.raises(DataError, match=r"not numeric"):
        friedman_test(scores.assign(m1="x"))
    with pytest.raises(DataError, match="infinite values at .*'ds2', 'm3'"):
        friedman_test(scores.where(~((scores.index == "ds2")[:, None] & (scores.columns == "m3")), np.inf))
    with pytest.raises(ConfigError, match="duplicate method columns"):
        friedman_test(scores.set_axis(["a", "a", "b", "c", "d"], axis=1))
    with pytest.raises(ConfigError, match="alpha must be"):
        nemenyi_test(scores, alpha=5)
    with pytest.raises(ConfigError, match="higher_is_better must be"):
        average_ranks(scores, higher_is_better="false")
    with pytest.raises(ConfigError, match="zero_method must be one of"):
        holm_wilcoxon(scores, control="m0", zero_method="split")
    with pytest.raises(ConfigError, match="n_methods must be"):
        critical_difference(1, 10)


# -------------------------------------------------------------------------------------------- CD diagram
def test_cd_diagram_writes_png_and_svg(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    pyplot = pytest.importorskip("matplotlib.pyplot")
    from medadapt.reporting.cd_diagram import cd_diagram

    scores = _paper_scores().rename(columns={"C4.5+cf": "C4.5 $cf$"})
    nemenyi = nemenyi_test(scores, alpha=0.10)
    figures_before = pyplot.get_fignums()
    paths = cd_diagram(
        nemenyi["average_ranks"],
        nemenyi["p_values"],
        tmp_path / "cd" / "auc",
        alpha=0.10,
        critical_difference=nemenyi["critical_difference"],
        title="AUC",
    )
    assert paths == [tmp_path / "cd" / "auc.png", tmp_path / "cd" / "auc.svg"]
    png, svg = paths[0].read_bytes(), paths[1].read_text(encoding="utf-8")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    for name in scores.columns:  # verbatim, "$" included (not taken for mathtext)
        assert name in svg
    assert "CD = 1.12 at alpha 0.1" in svg
    assert pyplot.get_fignums() == figures_before  # drawn without pyplot's figure state


def test_cd_diagram_rejects_mismatched_inputs(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from medadapt.reporting.cd_diagram import cd_diagram

    nemenyi = nemenyi_test(_random_scores(31))
    with pytest.raises(ConfigError, match=r"sig_matrix has no row or column for \['m9'\]"):
        cd_diagram({**nemenyi["average_ranks"], "m9": 2.0}, nemenyi["p_values"], tmp_path / "cd")
    with pytest.raises(ConfigError, match="at least 2 methods"):
        cd_diagram({"m0": 1.0}, nemenyi["p_values"], tmp_path / "cd")
    assert not list(tmp_path.iterdir())
