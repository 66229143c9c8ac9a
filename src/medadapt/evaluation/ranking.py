"""Comparing many methods over many blocks by their ranks (Demšar 2006), checked against scipy and
scikit-posthocs.

``scores`` is a ``pandas.DataFrame`` with one row per *block* (a dataset, or one seed×fold cell) and one
column per *method*; ``higher_is_better=False`` for losses such as ECE or Brier. Within each block the methods
are ranked 1 = best; :func:`friedman_test` asks whether the average ranks differ more than chance allows,
:func:`nemenyi_test` which pairs differ (all against all, with one critical difference, as drawn in a CD
diagram by :func:`medadapt.reporting.cd_diagram.cd_diagram`), :func:`holm_wilcoxon` which methods differ from
one chosen control (more powerful when the question is "does anything beat the baseline?"), and
:func:`describe` says the result in sentences.

Ties:
    * Tied scores within a block share the average of the ranks they span (``scipy.stats.rankdata``
      ``method="average"``), as in Demšar's Table 6: two best methods tied on a block both get 1.5.
    * The Friedman chi2 is ``scipy.stats.friedmanchisquare``'s, which divides by the tie correction
      ``1 - sum(t^3 - t) / (N k (k^2 - 1))``; ``tie_correction=False`` gives the uncorrected textbook
      statistic that Demšar (2006) prints. Without ties the two agree. The Iman–Davenport F is derived from
      whichever chi2 is returned. When every block ties every method the chi2 is 0 and p is 1.
    * Nemenyi p-values come from ``scikit_posthocs.posthoc_nemenyi_friedman`` on the same average ranks; like
      the critical difference, they carry no tie correction.
    * A Wilcoxon zero difference (a method tied with the control on a block) is split between the positive and
      negative rank sums (``zero_method="zsplit"``, Demšar's Section 3.1.3); see :func:`holm_wilcoxon`.

Missing scores: ranks are comparable only over blocks on which every method was scored, so a block (row)
holding any NaN is dropped from every function here, with a logged warning; the tests list the dropped
blocks in their ``note``. Infinite scores raise :class:`~medadapt.errors.DataError`.

Reference: J. Demšar (2006), "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7:1-30.

Example:
    >>> scores = pd.DataFrame(
    ...     {"dinov2": [0.91, 0.85, 0.78, 0.88], "rad-dino": [0.93, 0.86, 0.80, 0.87],
    ...      "resnet50": [0.88, 0.80, 0.75, 0.84]},
    ...     index=["pneumonia", "breast", "derma", "blood"],
    ... )
    >>> average_ranks(scores).round(2).to_dict()
    {'rad-dino': 1.25, 'dinov2': 1.75, 'resnet50': 3.0}
    >>> friedman = friedman_test(scores)
    >>> round(friedman["chi2"], 2), round(friedman["p_value"], 3)
    (6.5, 0.039)
"""

from __future__ import annotations

import difflib
import logging
import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._optional import require
from ..errors import ConfigError, DataError

__all__ = [
    "average_ranks",
    "friedman_test",
    "nemenyi_q",
    "critical_difference",
    "nemenyi_test",
    "holm_wilcoxon",
    "describe",
]

log = logging.getLogger(__name__)

_ZERO_METHODS = ("zsplit", "wilcox", "pratt")
#: Iman–Davenport's denominator N(k-1) - chi2 below this fraction of N(k-1) is 0: perfect agreement.
_REL_TOL = 1e-12


# ------------------------------------------------------------------------------------------- checks
def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a significance level between 0 and 1 (e.g. 0.05), got {alpha!r}")
    return float(alpha)


def _check_direction(higher_is_better: object) -> bool:
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise ConfigError(
            f"higher_is_better must be True (AUC, accuracy) or False (ECE, Brier, loss), got {higher_is_better!r}"
        )
    return bool(higher_is_better)


def _check_frame(scores: object) -> pd.DataFrame:
    if not isinstance(scores, pd.DataFrame):
        raise ConfigError(
            f"scores must be a pandas DataFrame with one row per block (dataset or seed×fold cell) and one "
            f"column per method, got {type(scores).__name__}; e.g. results.pivot_table(index='dataset', "
            "columns='backbone', values='value')"
        )
    if not scores.columns.is_unique:
        dup = sorted({str(c) for c in scores.columns[scores.columns.duplicated()]})
        raise ConfigError(f"scores has duplicate method columns {dup}; give every method one column")
    bad = [str(c) for c in scores.columns if not _numeric(scores[c])]
    if bad:
        raise DataError(
            f"scores columns {bad} are not numeric; pass one number per (block, method) cell "
            "(NaN where a method was not scored on a block)"
        )
    frame = scores.astype(np.float64)
    values = frame.to_numpy()
    if np.isinf(values).any():
        rows, cols = np.nonzero(np.isinf(values))
        cells = [(scores.index[r], scores.columns[c]) for r, c in zip(rows[:5], cols[:5])]
        raise DataError(
            f"scores hold infinite values at (block, method) {cells}{' ...' if rows.size > 5 else ''} "
            "(a diverged run?); replace them with NaN to drop those blocks, or with a finite worst score"
        )
    return frame


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _complete_blocks(
    scores: object, *, what: str, min_methods: int, min_blocks: int
) -> tuple[pd.DataFrame, list[Hashable]]:
    """The blocks of ``scores`` with a score for every method, and the labels of those dropped."""
    frame = _check_frame(scores)
    missing = frame.isna().any(axis=1).to_numpy()
    dropped = list(frame.index[missing])
    if dropped:
        log.warning("%s: dropped %d block(s) with a missing score: %s", what, len(dropped), _labels(dropped))
    complete = frame.loc[~missing]
    n, k = complete.shape
    if k < min_methods:
        raise ConfigError(
            f"{what} needs at least {min_methods} methods (columns of scores), got {k}: "
            f"{[str(c) for c in complete.columns]}"
            + ("; compare two methods with holm_wilcoxon or evaluation.stats.paired_test" if k == 2 else "")
        )
    if n < min_blocks:
        after = f" after dropping {len(dropped)} with a missing score ({_labels(dropped)})" if dropped else ""
        raise ConfigError(
            f"{what} needs at least {min_blocks} blocks (rows of scores, each a dataset or seed×fold cell "
            f"scored for every method), got {n}{after}; add datasets or seeds, or fill in the missing runs"
        )
    return complete, dropped


def _drop_note(dropped: Sequence[Hashable]) -> str:
    return f"dropped {len(dropped)} block(s) with a missing score: {_labels(dropped)}" if dropped else ""


def _labels(labels: Sequence[Hashable], limit: int = 10) -> str:
    shown = ", ".join(repr(b) for b in labels[:limit])
    return shown + (f" ... ({len(labels) - limit} more)" if len(labels) > limit else "")


# ------------------------------------------------------------------------------------------------ ranks
def _block_ranks(complete: pd.DataFrame, higher_is_better: bool) -> np.ndarray:
    """``[N, k]`` ranks within each block: 1 = best, ties share their average rank."""
    values = complete.to_numpy()
    return stats.rankdata(-values if higher_is_better else values, method="average", axis=1)


def _mean_ranks(complete: pd.DataFrame, higher_is_better: bool) -> pd.Series:
    ranks = _block_ranks(complete, higher_is_better).mean(axis=0)
    return pd.Series(ranks, index=complete.columns, name="average_rank").sort_values(kind="stable")


def average_ranks(scores: pd.DataFrame, *, higher_is_better: bool = True) -> pd.Series:
    """Average rank of each method over the blocks (rows) of ``scores``, best (lowest) first.

    Each block ranks the methods 1 = best; tied scores share their average rank (``scipy.stats.rankdata``
    ``"average"``); the ranks are then averaged over blocks. Blocks with a missing score are dropped (logged).

    Raises:
        ConfigError: ``scores`` is not a DataFrame, has fewer than 2 methods or no complete block.
        DataError: a column is not numeric or a score is infinite.

    Example:
        >>> scores = pd.DataFrame({"a": [0.9, 0.8, 0.7], "b": [0.9, 0.7, 0.8], "c": [0.5, 0.6, 0.6]})
        >>> average_ranks(scores).round(3).to_dict()
        {'a': 1.5, 'b': 1.5, 'c': 3.0}
        >>> average_ranks(scores, higher_is_better=False).round(3).to_dict()  # e.g. ECE: lower is better
        {'c': 1.0, 'a': 2.5, 'b': 2.5}
    """
    direction = _check_direction(higher_is_better)
    complete, _ = _complete_blocks(scores, what="average_ranks", min_methods=2, min_blocks=1)
    return _mean_ranks(complete, direction)


# --------------------------------------------------------------------------------------------- Friedman
def _friedman_chi2(complete: pd.DataFrame, ranks: pd.Series, tie_correction: bool) -> float:
    n, k = complete.shape
    if tie_correction:
        with warnings.catch_warnings():  # 0 / 0 when every block ties every method: handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            chi2 = float(stats.friedmanchisquare(*complete.to_numpy().T).statistic)
        return 0.0 if math.isnan(chi2) else chi2
    # scipy always applies the tie correction; this is the uncorrected statistic of Demšar's Section 3.2.2
    # (Friedman 1937), the one his worked example prints.
    r = ranks.to_numpy()
    return max(0.0, 12 * n / (k * (k + 1)) * (float(np.sum(r**2)) - k * (k + 1) ** 2 / 4))


def _iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    # Neither scipy nor scikit-posthocs offers it: F_F = (N-1) chi2 / (N(k-1) - chi2) with k-1 and (k-1)(N-1)
    # degrees of freedom (Iman & Davenport 1980; Demšar 2006, Section 3.2.2).
    denominator = n * (k - 1) - chi2
    if denominator <= _REL_TOL * n * (k - 1):
        # every block ranks the methods alike: chi2 is at its maximum and F infinite, where the F approximation
        # says nothing (with 2 blocks and 3 methods the exact p is 1/6, not 0): the chi-square p stands in
        return math.inf, float(stats.chi2.sf(chi2, k - 1))
    f = (n - 1) * chi2 / denominator
    return f, float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def _friedman_note(ranks: np.ndarray, dropped: list[Hashable], tie_correction: bool) -> str:
    parts = []
    if dropped:
        parts.append(_drop_note(dropped))
    k = ranks.shape[1]
    tied = int(sum(len(np.unique(row)) < k for row in ranks))
    if tied and all(np.all(row == row[0]) for row in ranks):
        parts.append("every block ties every method: no evidence of a difference (chi2 = 0, p = 1)")
    elif tied:
        how = "scipy's tie correction" if tie_correction else "no tie correction (Demšar's formula)"
        parts.append(f"ties in {tied} of {len(ranks)} blocks share average ranks; chi2 with {how}")
    return "; ".join(parts)


def friedman_test(
    scores: pd.DataFrame, *, higher_is_better: bool = True, tie_correction: bool = True
) -> dict[str, Any]:
    """Friedman test of equal performance of the methods (columns) over the blocks (rows) of ``scores``.

    Returns ``test`` ("Friedman"), ``n_blocks``, ``n_methods``, ``average_ranks`` ({method: rank}, best
    first), ``chi2`` and ``p_value`` (``scipy.stats.friedmanchisquare``, with its tie correction; the
    uncorrected statistic of Demšar's formula with ``tie_correction=False``), ``iman_davenport_f`` and
    ``iman_davenport_p`` (F = (N-1) chi2 / (N(k-1) - chi2) with k-1 and (k-1)(N-1) degrees of freedom, less
    conservative than chi2: Demšar recommends it), ``iman_davenport_df``, ``tie_correction``,
    ``higher_is_better``, ``dropped_blocks`` (labels of the blocks with a missing score) and ``note`` (dropped
    blocks and ties, "" when neither). When every block ranks the methods alike the F is ``inf`` and its p is the chi-square p (the F
    approximation breaks down there).

    Raises:
        ConfigError: fewer than 3 methods, or fewer than 2 complete blocks.
        DataError: a column is not numeric or a score is infinite.

    Example:
        >>> scores = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.9], "b": [0.8, 0.7, 0.6, 0.8],
        ...                        "c": [0.7, 0.9, 0.5, 0.6]})
        >>> r = friedman_test(scores)
        >>> r["average_ranks"], round(r["chi2"], 2), round(r["p_value"], 3)
        ({'a': 1.25, 'b': 2.25, 'c': 2.5}, 3.5, 0.174)
    """
    direction = _check_direction(higher_is_better)
    complete, dropped = _complete_blocks(scores, what="the Friedman test", min_methods=3, min_blocks=2)
    n, k = complete.shape
    ranks = _mean_ranks(complete, direction)
    chi2 = _friedman_chi2(complete, ranks, bool(tie_correction))
    f, f_p = _iman_davenport(chi2, n, k)
    return {
        "test": "Friedman",
        "n_blocks": n,
        "n_methods": k,
        "average_ranks": {m: float(r) for m, r in ranks.items()},
        "chi2": chi2,
        "p_value": float(stats.chi2.sf(chi2, k - 1)),
        "iman_davenport_f": f,
        "iman_davenport_p": f_p,
        "iman_davenport_df": (k - 1, (k - 1) * (n - 1)),
        "tie_correction": bool(tie_correction),
        "higher_is_better": direction,
        "dropped_blocks": dropped,
        "note": _friedman_note(_block_ranks(complete, direction), dropped, bool(tie_correction)),
    }


# ---------------------------------------------------------------------------------------------- Nemenyi
def nemenyi_q(n_methods: int, *, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the two-tailed Nemenyi test: the studentized range quantile over sqrt(2).

    Example:
        >>> round(nemenyi_q(4), 3), round(nemenyi_q(4, alpha=0.10), 3)  # Demšar (2006), Table 5(a)
        (2.569, 2.291)
    """
    alpha = _check_alpha(alpha)
    if isinstance(n_methods, bool) or not isinstance(n_methods, (int, np.integer)) or n_methods < 2:
        raise ConfigError(
            f"n_methods must be an integer >= 2 (the number of methods compared), got {n_methods!r}"
        )
    # scipy has the studentized range, not Demšar's q_alpha: the range of k standard normals (df = inf) at
    # 1 - alpha, divided by sqrt(2) to put it on the scale of a difference of two average ranks.
    return float(stats.studentized_range.ppf(1 - alpha, int(n_methods), np.inf)) / math.sqrt(2)


def critical_difference(n_methods: int, n_blocks: int, *, alpha: float = 0.05) -> float:
    """Nemenyi critical difference CD = q_alpha * sqrt(k (k + 1) / (6 N)) of average ranks.

    Two methods differ at level ``alpha`` when their average ranks differ by at least CD (Demšar 2006,
    Section 3.2.2). Written out because scikit-posthocs gives p-values and draws a CD, but does not return it.

    Example:
        >>> round(critical_difference(4, 14), 2)  # Demšar's worked example
        1.25
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 1:
        raise ConfigError(f"n_blocks must be an integer >= 1 (datasets or seed×fold cells), got {n_blocks!r}")
    q = nemenyi_q(n_methods, alpha=alpha)
    return q * math.sqrt(n_methods * (n_methods + 1) / (6 * n_blocks))


def _cliques(ranks: pd.Series, cd: float) -> list[list[Hashable]]:
    """Maximal groups (of 2 or more) of methods whose average ranks all differ by less than ``cd``.

    On sorted ranks such a group is a run of neighbours: from each method, those ranked less than CD below it;
    a run inside the previous one is not maximal.
    """
    names, r = list(ranks.index), ranks.to_numpy()
    ends = [max(j for j in range(i, len(r)) if r[j] - r[i] < cd) for i in range(len(r))]
    return [names[i : end + 1] for i, end in enumerate(ends) if end > i and (i == 0 or end > ends[i - 1])]


def nemenyi_test(
    scores: pd.DataFrame, *, alpha: float = 0.05, higher_is_better: bool = True
) -> dict[str, Any]:
    """Nemenyi all-pairs post-hoc test after a Friedman test (Demšar 2006, Section 3.2.2).

    Returns ``test`` ("Nemenyi"), ``n_blocks``, ``n_methods``, ``alpha``, ``q_alpha``,
    ``critical_difference`` (CD), ``average_ranks`` ({method: rank}, best first), ``p_values`` (a
    methods × methods DataFrame in the column order of ``scores``, from
    ``scikit_posthocs.posthoc_nemenyi_friedman``), ``indistinguishable`` (the pairs ``(a, b)``, ``a`` ranked
    no worse, whose average ranks differ by less than CD: p > alpha), ``cliques`` (maximal groups of 2 or
    more methods that are pairwise indistinguishable, best first: the bars of a CD diagram),
    ``higher_is_better``, ``dropped_blocks`` and ``note``.

    Raises:
        ConfigError: bad ``alpha``, fewer than 3 methods, or fewer than 2 complete blocks.
        DataError: a column is not numeric or a score is infinite.
        MissingDependencyError: scikit-posthocs is not installed (``pip install 'medadapt[stats]'``).

    Example:
        >>> scores = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.9], "b": [0.8, 0.7, 0.6, 0.8],
        ...                        "c": [0.7, 0.9, 0.5, 0.6]})
        >>> r = nemenyi_test(scores)
        >>> round(r["critical_difference"], 2), r["cliques"]
        (1.66, [['a', 'b', 'c']])
    """
    alpha = _check_alpha(alpha)
    direction = _check_direction(higher_is_better)
    complete, dropped = _complete_blocks(scores, what="the Nemenyi test", min_methods=3, min_blocks=2)
    n, k = complete.shape
    posthocs = require("scikit_posthocs", extra="stats", package="scikit-posthocs")
    # The p-values depend only on |R_i - R_j|, the same whichever way the scores point.
    p_values = posthocs.posthoc_nemenyi_friedman(complete)
    ranks = _mean_ranks(complete, direction)
    cd = critical_difference(k, n, alpha=alpha)
    names = list(ranks.index)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if ranks[b] - ranks[a] < cd]
    return {
        "test": "Nemenyi",
        "n_blocks": n,
        "n_methods": k,
        "alpha": alpha,
        "q_alpha": nemenyi_q(k, alpha=alpha),
        "critical_difference": cd,
        "average_ranks": {m: float(r) for m, r in ranks.items()},
        "p_values": p_values,
        "indistinguishable": pairs,
        "cliques": _cliques(ranks, cd),
        "higher_is_better": direction,
        "dropped_blocks": dropped,
        "note": _drop_note(dropped),
    }


# ---------------------------------------------------------------------------------------- Holm-Wilcoxon
def _check_control(control: object, methods: pd.Index) -> None:
    if control in methods:
        return
    names = [str(m) for m in methods]
    close = difflib.get_close_matches(str(control), names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown control method {control!r}{hint} (methods in scores: {', '.join(names)})")


def _wilcoxon(diff: np.ndarray, zero_method: str) -> tuple[float, float]:
    """Two-sided signed-rank statistic and p-value; ``(nan, 1.0)`` when every difference is zero."""
    if not np.any(diff):
        return math.nan, 1.0
    with warnings.catch_warnings():  # small-sample / ties notes from scipy: the p-value is still returned
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(diff, zero_method=zero_method, alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def holm_wilcoxon(
    scores: pd.DataFrame,
    *,
    control: Hashable,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    zero_method: str = "zsplit",
) -> pd.DataFrame:
    """Each method against ``control`` with the Wilcoxon signed-rank test, Holm-corrected over the methods.

    One row per method other than ``control``, in the column order of ``scores``: ``method``, ``n`` (blocks
    compared), ``median_diff`` (median over blocks of method - control, with the sign flipped when lower is
    better, so > 0 always means the method beats the control), ``statistic`` and ``p_value`` (two-sided
    ``scipy.stats.wilcoxon`` of the per-block differences; statistic nan and p 1 when they are all zero),
    ``p_holm`` and ``reject`` (``statsmodels.stats.multitest.multipletests(method="holm")`` at ``alpha``).

    ``zero_method="zsplit"`` (default) splits the ranks of zero differences between both sums, as Demšar
    (2006, Section 3.1.3) recommends (he also drops one zero when their number is odd, which scipy does not);
    "wilcox" discards zero differences, "pratt" ranks them and then discards them. ``df.attrs`` holds
    ``control``, ``alpha``, ``zero_method`` and ``note`` (dropped blocks).

    Raises:
        ConfigError: ``control`` is not a column, bad ``alpha`` or ``zero_method``, fewer than 2 methods or
            fewer than 2 complete blocks.
        DataError: a column is not numeric or a score is infinite.
        MissingDependencyError: statsmodels is not installed (``pip install 'medadapt[stats]'``).

    Example:
        >>> scores = pd.DataFrame({"base": [0.70, 0.80, 0.75, 0.82, 0.64, 0.90],
        ...                        "lora": [0.74, 0.83, 0.75, 0.86, 0.70, 0.93]})
        >>> table = holm_wilcoxon(scores, control="base")
        >>> table[["method", "median_diff", "p_value", "reject"]].round(3).to_dict("records")
        [{'method': 'lora', 'median_diff': 0.035, 'p_value': 0.062, 'reject': False}]
    """
    alpha = _check_alpha(alpha)
    direction = _check_direction(higher_is_better)
    if zero_method not in _ZERO_METHODS:
        raise ConfigError(f"zero_method must be one of {list(_ZERO_METHODS)}, got {zero_method!r}")
    complete, dropped = _complete_blocks(scores, what="holm_wilcoxon", min_methods=2, min_blocks=2)
    _check_control(control, complete.columns)
    rows = []
    for method in complete.columns.drop(control):
        diff = (complete[method] - complete[control]).to_numpy()
        diff = diff if direction else -diff
        statistic, p = _wilcoxon(diff, zero_method)
        rows.append((method, len(diff), float(np.median(diff)), statistic, p))
    table = pd.DataFrame(rows, columns=["method", "n", "median_diff", "statistic", "p_value"])
    multitest = require("statsmodels.stats.multitest", extra="stats", package="statsmodels")
    reject, p_holm, _, _ = multitest.multipletests(table["p_value"], alpha=alpha, method="holm")
    table["p_holm"], table["reject"] = p_holm, reject
    note = _drop_note(dropped)
    table.attrs.update(control=control, alpha=alpha, zero_method=zero_method, note=note)
    return table


# ------------------------------------------------------------------------------------------- sentences
def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _join(names: Sequence[object]) -> str:
    names = [str(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _pair(diff: float, cd: float) -> tuple[str, str]:
    """``diff`` and ``cd`` with 2 decimals, or 3 where 2 would print them equal."""
    digits = 2 if f"{diff:.2f}" != f"{cd:.2f}" else 3
    return f"{diff:.{digits}f}", f"{cd:.{digits}f}"


def _check_pairing(friedman: dict[str, Any], nemenyi: dict[str, Any]) -> None:
    need_f = {"chi2", "p_value", "iman_davenport_f", "iman_davenport_p", "n_blocks", "average_ranks"}
    need_n = {"critical_difference", "alpha", "average_ranks", "cliques", "n_blocks"}
    for name, result, need in (("friedman", friedman, need_f), ("nemenyi", nemenyi, need_n)):
        if not isinstance(result, dict) or not need <= result.keys():
            raise ConfigError(
                f"describe needs the dict returned by {name}_test as {name!r}, got {result!r:.80}"
            )
    if friedman["n_blocks"] != nemenyi["n_blocks"] or set(friedman["average_ranks"]) != set(
        nemenyi["average_ranks"]
    ):
        raise ConfigError(
            "friedman and nemenyi describe different scores (other blocks or methods); run friedman_test "
            "and nemenyi_test on the same DataFrame"
        )


def _friedman_sentence(friedman: dict[str, Any], reject: bool, block_noun: str) -> str:
    verdict = "rejects" if reject else "does not reject"
    return (
        f"The Friedman test {verdict} equal performance (chi2 = {friedman['chi2']:.2f}, "
        f"{_p(friedman['p_value'])}; Iman–Davenport F = {friedman['iman_davenport_f']:.2f}, "
        f"{_p(friedman['iman_davenport_p'])}) over {friedman['n_blocks']} {block_noun}."
    )


def _pairwise_sentences(nemenyi: dict[str, Any], alpha: float) -> list[str]:
    ranks, cd = pd.Series(nemenyi["average_ranks"]).sort_values(kind="stable"), nemenyi["critical_difference"]
    names, level = list(ranks.index), f"at alpha {alpha:g}"
    cliques = [c for c in nemenyi["cliques"] if len(c) > 1]
    if cliques and len(cliques[0]) == len(names):
        diff, cds = _pair(ranks.iloc[-1] - ranks.iloc[0], cd)
        return [
            f"No two methods differ {level}: even the best ({names[0]}) and the worst ({names[-1]}) differ "
            f"by {diff} in average rank, less than the critical difference {cds} (Nemenyi)."
        ]
    out = []
    for clique in cliques:
        diff, cds = _pair(ranks[clique[-1]] - ranks[clique[0]], cd)
        spread = "rank difference" if len(clique) == 2 else "largest rank difference"
        out.append(f"{_join(clique)} are indistinguishable {level} ({spread} {diff} < CD {cds}).")
    for i, a in enumerate(names):
        worse = [b for b in names[i + 1 :] if ranks[b] - ranks[a] >= cd]
        if worse:
            diffs = [_pair(ranks[b] - ranks[a], cd)[0] for b in worse]
            word = "rank difference" if len(worse) == 1 else "rank differences"
            out.append(f"{a} is better than {_join(worse)} {level} ({word} {_join(diffs)} >= CD {cd:.2f}).")
    unplaced = [m for m in names if sum(m in c for c in cliques) > 1]
    if unplaced:
        verb = "belongs" if len(unplaced) == 1 else "belong"
        out.append(f"The data are not sufficient to tell which group {_join(unplaced)} {verb} to.")
    return out


def describe(
    friedman: dict[str, Any],
    nemenyi: dict[str, Any],
    *,
    alpha: float | None = None,
    block_noun: str = "blocks",
) -> list[str]:
    """Plain-English sentences for a Friedman test and its Nemenyi post-hoc test.

    The Friedman sentence reports both statistics and decides on the Iman–Davenport p-value (Demšar 2006:
    chi2 is "undesirably conservative"). After a rejection, one sentence per clique of indistinguishable
    methods, one per method that is better than others, and one naming the methods that fall in two cliques
    (the data cannot place them); without a rejection no pairwise claims are made. ``alpha`` defaults to the Nemenyi
    test's. Method names are kept verbatim (escape them where the sentences are rendered, e.g. in HTML);
    ``block_noun`` names the blocks ("datasets", "seed×fold cells").

    Raises:
        ConfigError: the dicts are not from :func:`friedman_test` / :func:`nemenyi_test` on the same scores,
            or ``alpha`` differs from the Nemenyi test's.

    Example:
        >>> scores = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.9], "b": [0.8, 0.7, 0.6, 0.8],
        ...                        "c": [0.7, 0.9, 0.5, 0.6]})
        >>> describe(friedman_test(scores), nemenyi_test(scores), block_noun="datasets")[0]
        'The Friedman test does not reject equal performance (chi2 = 3.50, p = 0.174; Iman–Davenport F = 2.33, p = 0.178) over 4 datasets.'
    """
    _check_pairing(friedman, nemenyi)
    alpha = _check_alpha(nemenyi["alpha"] if alpha is None else alpha)
    if not math.isclose(alpha, nemenyi["alpha"]):
        raise ConfigError(
            f"describe got alpha={alpha:g} but the Nemenyi test ran at alpha={nemenyi['alpha']:g}; "
            f"rerun nemenyi_test(scores, alpha={alpha:g}) or leave alpha out"
        )
    reject = friedman["iman_davenport_p"] < alpha
    sentences = [_friedman_sentence(friedman, reject, block_noun)]
    if not reject:
        sentences.append(
            f"No pairwise differences are claimed: the post-hoc Nemenyi test is run only after the Friedman "
            f"test rejects at alpha {alpha:g}."
        )
        return sentences
    return sentences + _pairwise_sentences(nemenyi, alpha)
