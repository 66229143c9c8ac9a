"""``medadapt report`` on a 500-cell grid: seconds to build the page (target <= 15 s on this machine).

The grid is written without training, in the layout ``medadapt benchmark`` leaves: ``DIR/results.csv`` (val,
test and cost rows with ``run_dir``), and per cell ``cells/DATASET/BACKBONE/METHOD/foldK/seedS/`` with
``predictions/{val,test}.npz`` and a 30-epoch ``history.csv``. Default shape: 2 datasets (test sets of 156
and 624 images, BreastMNIST's and PneumoniaMNIST's sizes; 5-fold CV on the first: 5 test sets of ~156;
the official split on the second) x 5 backbones x 5 methods x 20 cells (3 seeds x 5 folds, 5 seeds on the official split): 500 cells. Scores are
synthetic (a method's strength plus noise).

Timed: the real CLI in a subprocess (``medadapt report DIR -o DIR/report.html``: interpreter start, imports,
every statistic of ``medadapt compare`` with 2,000 bootstrap resamples, its CSV/JSON/PNG/SVG files, the
learning curves of 500 histories, the page). The reference line is ``medadapt results DIR`` (the leaderboard
of means alone) in the same run.

    python bench/report_speed.py --out docs/results/bench_report_speed.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import machine, markdown_table, prepend_command, report, scratch_folder

from medadapt.evaluation.metrics import compute_metrics
from medadapt.reporting.results import RUN_DIR, results_rows, save_predictions, write_results

TARGET = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--methods", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument(
        "--seeds", type=int, default=3, help="per fold on the CV dataset (default: %(default)s)"
    )
    parser.add_argument("--folds", type=int, default=5, help="on the CV dataset (default: %(default)s)")
    parser.add_argument(
        "--official-seeds", type=int, default=5, help="on the official-split dataset (default: %(default)s)"
    )
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples (default: %(default)s)"
    )
    parser.add_argument(
        "--scratch", default=None, help="keep the grid in this folder (default: a temp folder)"
    )
    parser.add_argument("--note", default="", help="a line about the machine's state, added to the output")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def _cell(root: Path, rows: list, *, dataset: str, backbone: str, method: str, strength: float, fold: int | None,
          seed: int, y_test: np.ndarray, y_val: np.ndarray, rng: np.random.Generator) -> None:  # fmt: skip
    run_dir = (
        f"cells/{dataset}/{backbone}/{method}/{'official' if fold is None else f'fold{fold}'}/seed{seed}"
    )
    ids = dict(run=method, dataset=dataset, backbone=backbone, strategy="full", head="linear", seed=seed, fold=fold,
               **{RUN_DIR: run_dir})  # fmt: skip
    for split, y in (("val", y_val), ("test", y_test)):
        p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1, len(y)))))
        scores = np.stack([1 - p, p], axis=1)
        save_predictions(root / run_dir, split, labels=y[:, None], scores=scores, task="binary")
        rows += results_rows(
            metrics=compute_metrics("binary", y[:, None], scores, ["auc", "acc"]), split=split, **ids
        )
    cost = {
        "trainable_params": 1e5 * (1 + strength),
        "peak_memory_bytes": 2e8,
        "wall_seconds": 10 + 5 * strength,
    }
    rows += results_rows(metrics=cost, split="cost", **ids)
    epochs = np.arange(1, 31)
    history = pd.DataFrame({"epoch": epochs, "train_loss": 0.7 * np.exp(-epochs / (10 + strength)),
                            "val_auc": 0.5 + 0.4 * (1 - np.exp(-epochs / 8)) * strength / 2, "seconds": 0.5})  # fmt: skip
    history.to_csv(root / run_dir / "history.csv", index=False)


def write_grid(root: Path, args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    rows: list = []
    cells = 0
    plans = [("breastmnist", 156 * args.folds, list(range(args.folds)), args.seeds),
             ("pneumoniamnist", 624, [None], args.official_seeds)]  # fmt: skip
    for dataset, n, folds, seeds in plans:
        y_all = (rng.random(n) < 0.3).astype(np.int64)
        for b in range(args.backbones):
            for m in range(args.methods):
                strength = 0.5 + 0.1 * b + 0.05 * m
                for fold in folds:
                    part = y_all if fold is None else y_all[fold :: args.folds]
                    for seed in range(seeds):
                        _cell(root, rows, dataset=dataset, backbone=f"backbone{b}", method=f"method{m}",
                              strength=strength, fold=fold, seed=seed, y_test=part, y_val=part[: len(part) // 4 + 8],
                              rng=rng)  # fmt: skip
                        cells += 1
    write_results(rows, root / "results.csv")
    (root / "grid.yaml").write_text("name: report-speed\n")
    return cells


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_folder(args.scratch) as scratch:
        grid = scratch / "grid"
        t0 = time.perf_counter()
        cells = write_grid(grid, args)
        written = time.perf_counter() - t0
        cli = [sys.executable, "-m", "medadapt"]
        t_results = timed([*cli, "results", str(grid), "--out", str(scratch / "board")])
        page = grid / "report.html"
        t_report = timed([*cli, "report", str(grid), "-o", str(page), "--resamples", str(args.resamples)])
        size = page.stat().st_size
    rows = [
        {"command": "medadapt results DIR (leaderboard of means)", "cells": cells, "wall s": t_results},
        {"command": f"medadapt report DIR ({args.resamples} resamples)", "cells": cells, "wall s": t_report},
    ]
    notes = [
        f"Grid: 2 datasets x {args.backbones} backbones x {args.methods} methods; {args.folds} folds x {args.seeds} "
        f"seeds on one, the official split x {args.official_seeds} seeds on the other = {cells} cells, written in "
        f"{written:.1f} s (not timed). The page: {size / 1e6:.2f} MB, self-contained.",
        f"Machine: {machine()}. Wall-clock, interpreter start and imports included. {args.note}".strip(),
    ]
    verdict = f"{'PASS' if t_report <= TARGET else 'FAIL'}: medadapt report took {t_report:.1f} s (target <= {TARGET:.0f} s)"
    report("medadapt report on a 500-cell grid", markdown_table(rows), verdict, args.out, notes)
    if args.out:
        prepend_command(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
