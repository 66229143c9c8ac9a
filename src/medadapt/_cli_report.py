"""The ``compare`` and ``report`` subcommands (the statistics of :mod:`medadapt.reporting.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_compare", "add_report", "compare_options"]


def _add_options(p: argparse.ArgumentParser) -> None:
    # no argparse choices here: they would import the statistics stack (and torch) to build the parser;
    # CompareOptions checks the value
    p.add_argument("sources", nargs="+", metavar="RESULTS",
                   help="run / grid folders (holding results.csv and the cells' predictions) or results CSV files")  # fmt: skip
    p.add_argument(
        "--metric", help="the metric compared, one of the results table (default: auc, or dice for masks)"
    )
    p.add_argument("--split", default="test", help="the split compared (default: test)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--blocks", default="auto",
                   help="Friedman blocks: datasets (each method's mean over seeds x folds) or cells (seed x fold); "
                   "auto: datasets when there are two or more (default: auto)")  # fmt: skip
    p.add_argument(
        "--control", help="the method Holm-corrected Wilcoxon tests compare to (default: best rank)"
    )
    p.add_argument(
        "--subgroup", metavar="COLUMN", help="metadata column: every metric per group, gaps, worst group"
    )
    p.add_argument("--confounder", metavar="COLUMN",
                   help="metadata column: sensitivity / specificity within each level (the shortcut check)")  # fmt: skip
    p.add_argument(
        "--gap", type=float, default=0.10, help="confounder gap that flags a method (default: 0.10)"
    )
    p.add_argument("--min-group", type=int, default=10, dest="min_group",
                   help="fewest images for a group to get a number (default: 10)")  # fmt: skip
    p.add_argument(
        "--resamples", type=int, default=2000, dest="n_resamples", help="bootstrap resamples (default: 2000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--bins", type=int, default=15, dest="calibration_bins",
                   help="equal-width calibration bins (default: 15)")  # fmt: skip


def compare_options(args: argparse.Namespace):
    """The :class:`~medadapt.reporting.compare.CompareOptions` of parsed ``compare`` / ``report`` flags."""
    import dataclasses

    from .reporting.compare import CompareOptions

    names = [f.name for f in dataclasses.fields(CompareOptions)]
    return CompareOptions(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="is the difference real? intervals, paired tests, Friedman + Nemenyi, calibration, subgroups",
        description="Statistics over the cells of run and grid folders, from their saved results and predictions "
        "(nothing is retrained): per-method summaries with t- and bootstrap intervals, paired bootstrap and "
        "Wilcoxon tests, Friedman / Iman-Davenport / Nemenyi with a critical-difference diagram, Holm-corrected "
        "Wilcoxon against a control, calibration (ECE, Brier, reliability), subgroups and the shortcut check. "
        "Writes CSV tables, comparison.json and figures to --out.",
    )
    _add_options(p)
    p.add_argument("--no-cell-intervals", action="store_false", dest="cell_intervals",
                   help="skip each cell's own bootstrap interval in cells.csv (the methods' intervals stay)")  # fmt: skip
    p.add_argument("--out", help="where to write the tables and figures (default: FIRST/compare)")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from .reporting.compare import compare
    from .reporting.sources import load_sources

    first = Path(args.sources[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "compare"
    result = compare(load_sources(args.sources), compare_options(args))
    paths = result.write(out)
    _print_summary(result)
    print(f"written: {out} ({', '.join(sorted(p.name for p in paths.values()))})")
    return 0


def _print_summary(result) -> None:
    opts = result.options
    cols = ["dataset", "method", "n", "mean", "std", "t_low", "t_high", "boot_low", "boot_high"]
    show = result.summary[cols].copy()
    for c in cols[3:]:
        show[c] = show[c].map(lambda v: "" if v != v else f"{v:.3f}")
    print(f"{opts.metric} on {opts.split} (mean over seeds x folds; {opts.confidence:.0%} intervals):")
    print(show.to_string(index=False))
    for line in [*result.sentences, *result.notes]:
        print(line)
    if result.confounder is not None:
        flagged = result.confounder[result.confounder["flagged"]]
        for (dataset, method), _ in flagged.groupby(["dataset", "method"], sort=False):
            print(f"shortcut check: {dataset} / {method} is flagged (its sensitivity or specificity gap between "
                  f"levels of {opts.confounder!r} is >= {opts.gap:g} and its interval excludes 0)")  # fmt: skip


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: what ran, leaderboard, CD diagram, cost, curves, calibration",
        description="Compare the sources (as medadapt compare does) and render one self-contained HTML page "
        "(styles, figures and data inline: no network needed to view it). The comparison's tables and "
        "figures are written beside it (OUT_files/).",
    )
    _add_options(p)
    p.add_argument("--cell-intervals", action="store_true",
                   help="also each cell's own bootstrap interval in OUT_files/cells.csv (the page does not show it)")  # fmt: skip
    p.add_argument("-o", "--output", default=None, help="the HTML file (default: FIRST/report.html)")
    p.add_argument("--title", help="the page title")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .reporting.report import write_report

    first = Path(args.sources[0])
    out = Path(args.output) if args.output else (first if first.is_dir() else first.parent) / "report.html"
    page, result = write_report(args.sources, out, options=compare_options(args), title=args.title)
    _print_summary(result)
    print(f"report: {page}")
    return 0
