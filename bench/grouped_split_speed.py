"""Patient-grouped stratified splits on CheXpert-size input: medadapt's ``grouped_split`` / ``patient_kfold``
vs sklearn's ``StratifiedGroupKFold`` called directly (what they ran before).

The job: ~190,000 rows of ~64,000 patients (1-10 rows each, geometric: most have few), 14 multi-label columns
of 0/1/NaN with CheXpert-like prevalences and blank (NaN) shares, string patient ids ("patient01234"); seeded.
The strata are medadapt's (the rarest positive label of a row, all-negative rows apart: 15 strata).

- plain reference: what medadapt ran before (its strata and group ids, rare strata merged, then
  ``sklearn.model_selection.StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(...)``)
  (10 folds for 0.7/0.1/0.2, cut into train/val/test; 5 folds for ``patient_kfold``). It runs once.
- ``grouped_split`` (cold): the first call in the process (the memo cleared); median of 3 runs.
- ``grouped_split`` x 3 (train, val, test): what a dataset kind does for its three splits; the memo makes the
  2nd and 3rd calls cheap. Median of 3 runs, the memo cleared before each.
- ``patient_kfold k=5`` (cold): median of 3 runs.

Both medadapt paths must give the reference's split of every row (identical, not close). Target: a cold
``grouped_split`` >= 10x faster than the reference.

    python bench/grouped_split_speed.py --out docs/results/bench_grouped_split.md
    python bench/grouped_split_speed.py --patients 8000          # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from _common import machine, markdown_table, prepend_command, report
from sklearn.model_selection import StratifiedGroupKFold

from medadapt.data import splits
from medadapt.data.splits import DEFAULT_FRACTIONS, grouped_split, patient_kfold

SPEEDUP_TARGET = 10.0
# CheXpert's 14 observations (No Finding ... Support Devices): share of positives, share of blanks (NaN)
PREVALENCE = [0.09, 0.05, 0.12, 0.47, 0.04, 0.24, 0.07, 0.03, 0.15, 0.09, 0.38, 0.016, 0.04, 0.52]
BLANK = [0.85, 0.80, 0.70, 0.40, 0.85, 0.55, 0.75, 0.85, 0.65, 0.70, 0.45, 0.90, 0.88, 0.40]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=64_000, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and split seed (default: %(default)s)")
    parser.add_argument("--k", type=int, default=5, help="patient_kfold folds (default: %(default)s)")
    parser.add_argument("--note", default="", help="a line about the machine's state, added to the output")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def make_data(patients: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 14]`` 0/1/NaN labels and ``[N]`` string patient ids; 1-10 rows per patient (mean ~3)."""
    rng = np.random.default_rng(seed)
    p = 0.69 ** np.arange(10)
    sizes = rng.choice(np.arange(1, 11), size=patients, p=p / p.sum())
    ids = np.char.add("patient", np.char.zfill(rng.permutation(patients).astype(str), 5))
    groups = np.repeat(ids, sizes)
    labels = (rng.random((len(groups), 14)) < PREVALENCE).astype(float)
    labels[rng.random(labels.shape) < BLANK] = np.nan
    return labels, groups


def reference_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold of every row from sklearn's StratifiedGroupKFold, called as medadapt did before."""
    strata, group_ids = splits._as_arrays(labels, groups)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.empty(len(strata), dtype=int)
    for fold, (_, test) in enumerate(
        cv.split(np.zeros(len(strata)), splits._merge_rare(strata, k), group_ids)
    ):
        folds[test] = fold
    return folds


def reference_grouped_split(labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    n_folds = splits._n_folds(DEFAULT_FRACTIONS)
    folds = reference_folds(labels, groups, n_folds, seed)
    bounds = np.cumsum(np.rint(np.asarray(DEFAULT_FRACTIONS) * n_folds).astype(int))
    return np.array(["train", "val", "test"])[np.searchsorted(bounds, folds, side="right")]


def timed(fn, repeats: int = 3):
    """Median seconds of ``repeats`` cold runs of ``fn()`` (the memo cleared before each); the last result."""
    seconds = []
    for _ in range(repeats):
        splits._fold_cache.clear()
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), result


def once(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels, groups = make_data(args.patients, args.seed)
    n_rows, n_groups = len(groups), len(np.unique(groups))
    n_strata = len(np.unique(splits._strata(labels)))
    split_args = {"fractions": DEFAULT_FRACTIONS, "seed": args.seed}
    cold = timed(lambda: grouped_split(labels, groups, **split_args))
    three = timed(lambda: [grouped_split(labels, groups, **split_args) for _ in range(3)])
    kfold = timed(lambda: patient_kfold(labels, groups, k=args.k, seed=args.seed))
    print("  reference: grouped_split ...", file=sys.stderr)
    ref_split = once(lambda: reference_grouped_split(labels, groups, args.seed))
    print(f"  reference: patient_kfold k={args.k} ...", file=sys.stderr)
    ref_kfold = once(lambda: reference_folds(labels, groups, args.k, args.seed))

    kfold_folds = np.empty(n_rows, dtype=int)
    for fold, (_, test) in enumerate(kfold[1]):
        kfold_folds[test] = fold
    same_split = np.array_equal(cold[1], ref_split[1]) and all(
        np.array_equal(s, ref_split[1]) for s in three[1]
    )
    same_kfold = np.array_equal(kfold_folds, ref_kfold[1])

    def row(name: str, seconds: float, ref: float, same: bool | None) -> dict:
        return {
            "run": name,
            "rows": n_rows,
            "groups": n_groups,
            "seconds": seconds,
            "speed-up": ref / seconds,
            "same split of every row": "(reference)" if same is None else ("yes" if same else "NO"),
        }

    rows = [
        row(
            "plain: sklearn StratifiedGroupKFold, 10 folds -> train/val/test",
            ref_split[0],
            ref_split[0],
            None,
        ),
        row("medadapt grouped_split (cold)", cold[0], ref_split[0], same_split),
        row("plain x 3 (train, val, test)", 3 * ref_split[0], 3 * ref_split[0], None),
        row(
            "medadapt grouped_split x 3 (train, val, test; memoised)", three[0], 3 * ref_split[0], same_split
        ),
        row(f"plain: sklearn StratifiedGroupKFold, k={args.k}", ref_kfold[0], ref_kfold[0], None),
        row(f"medadapt patient_kfold k={args.k} (cold)", kfold[0], ref_kfold[0], same_kfold),
    ]
    speedup = rows[1]["speed-up"]
    ok = speedup >= SPEEDUP_TARGET and same_split and same_kfold
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: grouped_split {speedup:.1f}x faster than sklearn's StratifiedGroupKFold "
        f"({rows[3]['speed-up']:.1f}x for a dataset's three splits, {rows[5]['speed-up']:.1f}x for "
        f"patient_kfold k={args.k}); the split of every row "
        f"{'identical' if same_split and same_kfold else 'DIFFERENT'} (targets: >= {SPEEDUP_TARGET:.0f}x, "
        "identical)"
    )
    title = f"Grouped stratified splits: {n_rows} rows, {n_groups} patients, {n_strata} strata"
    notes = [
        f"Synthetic CheXpert-like input, seed {args.seed}: 14 labels of 0/1/NaN, string patient ids; split seed "
        f"{args.seed}, fractions {DEFAULT_FRACTIONS} (10 folds). The references run once; medadapt's rows are the "
        "median of 3 runs, each with the memo cleared first (for 'x 3' before the first of its three calls). "
        "Speed-up = the reference's seconds / the row's seconds.",
        f"Machine: {machine()}. {args.note}".rstrip(),
    ]
    report(title, markdown_table(rows), verdict, args.out, notes)
    if args.out:
        prepend_command(args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
