"""Bootstrap confidence intervals of AUC: medadapt's weighted, vectorised resamples vs a plain sklearn loop.

The job: percentile intervals of the AUC of M methods (default 20) on one test set of N images (default
10,000), from R resamples each (default 2,000). Synthetic, seeded: binary labels with ~30% positives, and
per method positive-class scores ``sigmoid(signal * (2y - 1) + noise)`` whose signal grows with the method
(AUCs from about 0.6 to 0.85); every other method's scores are rounded to 3 decimals, so that half of them
hold many tied scores (the tie-aware path).

- plain reference: for each method, ``scipy.stats.bootstrap((y, p), roc_auc_score, paired=True,
  vectorized=False, method="percentile")``: scipy draws the resamples and sklearn scores each one.
- ``bootstrap_ci``: medadapt, one call per method (the same seed, so the same resamples as the reference).
- ``bootstrap_cis``: medadapt, one call for all methods: the resamples and their weights are made once.

Both medadapt paths must give the reference's interval ends (the target: within 1e-3; they agree to float
rounding, as the resamples are the same). Target: the M methods' intervals >= 20x faster than the reference.
The medadapt timings are the median of 3 runs; the reference runs once (``--reference-methods K`` times it on
the first K methods only and scales to M, for a quick check).

    python bench/bootstrap_speed.py --out docs/results/bench_bootstrap_speed.md
    python bench/bootstrap_speed.py --methods 4 --images 2000 --resamples 500       # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from _common import machine, markdown_table, prepend_command, report
from scipy import stats
from sklearn.metrics import roc_auc_score

from medadapt.evaluation import bootstrap_ci, bootstrap_cis

SPEEDUP_TARGET = 20.0
TOLERANCE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", type=int, default=20, help="(default: %(default)s)")
    parser.add_argument("--images", type=int, default=10_000, help="test images (default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=2000, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and resampling seed (default: %(default)s)")
    parser.add_argument(
        "--reference-methods",
        type=int,
        default=0,
        help="time the plain reference on the first K methods only and scale to --methods; 0 = all "
        "(default: %(default)s)",
    )
    parser.add_argument("--note", default="", help="a line about the machine's state, added to the output")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def make_data(methods: int, images: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels ``[N, 1]`` (~30% positives) and per method ``[N, 2]`` softmax-layout scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(images) < 0.3).astype(np.int64)
    scores = []
    for m, signal in enumerate(np.linspace(0.4, 1.5, methods)):
        p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=images))))
        p = np.round(p, 3) if m % 2 else p
        scores.append(np.stack([1 - p, p], axis=1))
    return y[:, None], scores


def plain_reference(
    labels: np.ndarray, scores: list[np.ndarray], args
) -> tuple[float, list[tuple[float, float]]]:
    """scipy's bootstrap with sklearn's AUC on every resample, one method at a time: seconds, intervals."""
    intervals = []
    t0 = time.perf_counter()
    for s in scores:
        res = stats.bootstrap((labels[:, 0], s[:, 1]), lambda a, b: roc_auc_score(a, b), paired=True,
                              vectorized=False, n_resamples=args.resamples, method="percentile",
                              rng=np.random.default_rng(args.seed))  # fmt: skip
        intervals.append((float(res.confidence_interval.low), float(res.confidence_interval.high)))
        print(f"  reference: method {len(intervals)}/{len(scores)}", file=sys.stderr)
    return time.perf_counter() - t0, intervals


def timed(fn, repeats: int = 3) -> tuple[float, list[tuple[float, float]]]:
    """Median seconds of ``repeats`` runs of ``fn() -> results``; the intervals of the last."""
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), [(r.low, r.high) for r in results]


def max_diff(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels, scores = make_data(args.methods, args.images, args.seed)
    common = {"n_resamples": args.resamples, "seed": args.seed}
    one_each = timed(lambda: [bootstrap_ci("binary", labels, s, **common) for s in scores])
    shared = timed(lambda: bootstrap_cis("binary", labels, scores, **common))
    k = args.reference_methods or args.methods
    ref_seconds, ref_intervals = plain_reference(labels, scores[:k], args)
    ref_total = ref_seconds * args.methods / k
    rows = [
        _row("plain: scipy.stats.bootstrap + sklearn roc_auc_score per resample, per method", ref_total, ref_total,
             None, k, args),
        _row("medadapt bootstrap_ci, one call per method", one_each[0], ref_total,
             max_diff(one_each[1][:k], ref_intervals), k, args),
        _row("medadapt bootstrap_cis, one call for all methods", shared[0], ref_total,
             max_diff(shared[1][:k], ref_intervals), k, args),
    ]  # fmt: skip
    worst = max(max_diff(one_each[1][:k], ref_intervals), max_diff(shared[1][:k], ref_intervals))
    ok = rows[2]["speed-up"] >= SPEEDUP_TARGET and worst <= TOLERANCE
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: {args.methods} methods' AUC intervals {rows[2]['speed-up']:.1f}x faster "
        f"with bootstrap_cis ({rows[1]['speed-up']:.1f}x with one bootstrap_ci call per method) than the plain "
        f"loop; interval ends within {worst:.1e} of it (targets: >= {SPEEDUP_TARGET:.0f}x, <= {TOLERANCE:g})"
    )
    title = (
        f"Bootstrap AUC intervals: {args.methods} methods x {args.images} images x {args.resamples} resamples"
    )
    report(title, markdown_table(rows), verdict, args.out, _notes(args, k))
    if args.out:
        prepend_command(args.out)
    return 0


def _row(name: str, seconds: float, ref_total: float, diff: float | None, k: int, args) -> dict:
    return {
        "run": name,
        "seconds (all methods)": seconds,
        "ms per method": seconds / args.methods * 1e3,
        "speed-up": ref_total / seconds,
        "max abs diff of interval ends": "(reference)" if diff is None else f"{diff:.1e}",
    }


def _notes(args, k: int) -> list[str]:
    scaled = (
        f"The plain reference ran on the first {k} of {args.methods} methods and its time is scaled by "
        f"{args.methods}/{k}; the interval differences are over those {k}."
        if k < args.methods
        else f"The plain reference ran on all {args.methods} methods, once."
    )
    return [
        f"Synthetic binary task, seed {args.seed}: {args.images} images (~30% positives), {args.methods} methods "
        f"(every other one's scores rounded to 3 decimals: many ties), {args.resamples} resamples, 95% "
        "percentile intervals. All three paths use scipy's resampling with the same seed, so the same resamples.",
        f"{scaled} medadapt's times are the median of 3 runs. Speed-up = the reference's seconds for all "
        "methods / the row's seconds.",
        f"Machine: {machine()}. {args.note}".rstrip(),
    ]


if __name__ == "__main__":
    sys.exit(main())
