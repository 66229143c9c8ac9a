"""Scheduling overhead of ``medadapt benchmark``: many cheap kNN cells on cached features.

The grid: 1 random-init backbone x the kNN probe x seeds x K folds (default 40 x 5 = 200 cells) on
BreastMNIST. A one-cell grid warms the feature cache first, so the timed grids extract nothing: each cell is
one kNN fit over the k grid plus its files. The same grid runs twice through the real CLI (a subprocess), with
``--workers 2`` (persistent worker processes) and ``--workers 0`` (in the driver's process), each into a fresh
output folder with the warm cache.

Overhead per cell = (grid wall time - the cells' own work / workers) / cells. The cells' own work is the sum
of their ``cost`` rows' ``wall_seconds`` (``DIR/results.csv``, split ``cost``): the whole probe method
(features from the cache, the kNN fit, predictions, metrics, the cell's prediction and history files). What
is left is the grid's: interpreter start and imports, grid validation, the store, worker start-up, the
fold's row views, the cell's ``results.csv`` / ``done.json`` and the driver's ingest. The table splits it at
the cells' own ``seconds`` (``done.json``, in ``DIR/benchmark.sqlite``): in-cell bookkeeping vs the driver.

The plain reference: the same fits in one Python loop, ``train_probe(..., head="knn")`` on the cached
FeatureSets of each fold (the driver's own ``features_of``, read once per fold before the loop), then
predictions and metrics on val and test: no files, no processes.

Target: overhead <= 0.3 s per cell, with and without worker processes.

    MEDADAPT_DATA=/path/to/medmnist python bench/grid_overhead.py --out docs/results/bench_grid_overhead.md
    python bench/grid_overhead.py --seeds 4 --folds 5       # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from _common import add_data_args, machine, markdown_table, prepend_command, report, scratch_folder

TARGET = 0.3
BACKBONE = "timm:resnet18?init=torch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser, synthetic=False)
    parser.add_argument("--backbone", default=BACKBONE, help="random init (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=40, help="(default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="of the pool run (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=28, help="image and model input size (default: %(default)s)"
    )
    parser.add_argument(
        "--scratch", default=None, help="keep the runs in this folder (default: a temp folder)"
    )
    parser.add_argument("--note", default="", help="a line about the machine's state, added to the output")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def write_grid(args, path: Path, *, one_cell: bool = False) -> Path:
    grid = {
        "name": path.stem,
        "datasets": [{"address": f"medmnist:{args.dataset}", "folds": {"k": args.folds, "seed": 0}}],
        "backbones": [{"address": args.backbone, "name": "backbone"}],
        "methods": ["knn"],
        "seeds": args.seeds,
        "settings": {"pretrained": False, "size": args.size, "img_size": args.size},
    }
    if one_cell:
        grid["include"] = [{"seed": 0, "fold": 0}]
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def run_grid(args, grid: Path, out: Path, cache: Path, workers: int) -> float:
    """``medadapt benchmark`` as a subprocess of this interpreter; its wall seconds."""
    cmd = [sys.executable, "-m", "medadapt", "benchmark", str(grid), "--out", str(out)]
    cmd += ["--cache-dir", str(cache), "--workers", str(workers)]
    cmd += ["--data-root", args.data_root] if args.data_root else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return seconds


def grid_times(out: Path) -> dict[str, float]:
    """The cells' own work (``cost`` ``wall_seconds``) and their ``done.json`` seconds, summed; the count."""
    table = pd.read_csv(out / "results.csv")
    work = table[(table["split"] == "cost") & (table["metric"] == "wall_seconds")]["value"]
    with contextlib.closing(sqlite3.connect(out / "benchmark.sqlite")) as con:
        seconds = [s for (s,) in con.execute("SELECT seconds FROM cells WHERE status = 'done'")]
    return {"cells": len(seconds), "work": float(work.sum()), "cell_seconds": float(sum(seconds))}


# ------------------------------------------------------------------------------------------------ reference
def fold_features(args, cache: Path) -> tuple[list[dict], object, object, float]:
    """Each fold's FeatureSets, through the driver's own feature path (the warm cache); the train split (for
    task and outputs), the config and the seconds of one ``fold_splits`` call."""
    import torch

    from medadapt._device import seeded
    from medadapt.backbones import create_backbone
    from medadapt.config import ProbeConfig
    from medadapt.data.folds import fold_splits
    from medadapt.driver import features_of, load_splits, preprocess_for
    from medadapt.driver.base import extractor

    cfg = ProbeConfig(dataset=f"medmnist:{args.dataset}", backbone=args.backbone, head="knn", pretrained=False,
                      size=args.size, img_size=args.size, data_root=args.data_root, cache_dir=str(cache),
                      backbone_seed=0)  # fmt: skip
    splits = load_splits(cfg)
    with seeded(0):  # the grid's fixed backbone draw (backbone seed 0), so the cache entries are the grid's
        backbone = create_backbone(cfg.backbone, pretrained=False, img_size=args.size,
                                   data_chans=splits["train"].n_channels, channel_mode=cfg.channel_mode)  # fmt: skip
    extract = extractor(cfg, backbone, preprocess_for(cfg, backbone, args.size), torch.device("cpu"),
                        with_tokens=False, show_progress=False)  # fmt: skip
    feats = []
    for fold in range(args.folds):
        views = fold_splits(splits, k=args.folds, fold=fold, seed=0, val_folds=8)
        feats.append({s: features_of(v, extract) for s, v in views.items()})
    t0 = time.perf_counter()
    fold_splits(splits, k=args.folds, fold=0, seed=0, val_folds=8)
    return feats, splits["train"], cfg, time.perf_counter() - t0


def plain_loop(args, cache: Path) -> dict:
    """The same kNN fits in one loop: no files, no processes; fit and evaluation timed apart."""
    from medadapt.evaluation.metrics import compute_metrics
    from medadapt.training.probe import train_probe

    feats, train, cfg, fold_seconds = fold_features(args, cache)
    fit = evaluate = 0.0
    t_start = time.perf_counter()
    for fs in feats:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            result = train_probe(fs["train"], fs["val"], head="knn", task=train.task, num_outputs=train.num_outputs,
                                 ks=cfg.ks, seed=seed, device="cpu", autocast=cfg.autocast)  # fmt: skip
            t1 = time.perf_counter()
            for split in ("val", "test"):
                compute_metrics(train.task, fs[split].labels, result.predict(fs[split]))
            fit, evaluate = fit + t1 - t0, evaluate + time.perf_counter() - t1
    wall = time.perf_counter() - t_start
    return {
        "cells": len(feats) * args.seeds,
        "wall": wall,
        "fit": fit,
        "evaluate": evaluate,
        "fold": fold_seconds,
    }


# ---------------------------------------------------------------------------------------------------- main
def measure(args, scratch: Path) -> tuple[dict, dict, dict]:
    """Warm the cache (a one-cell grid), then the grid with a worker pool and in-process, then the loop."""
    cache = scratch / "cache"
    warm = run_grid(args, write_grid(args, scratch / "warm.yaml", one_cell=True), scratch / "warm", cache, 0)
    entries = len(list(cache.glob("*/meta.json")))
    print(f"cache warmed ({entries} entries) by a one-cell grid in {warm:.1f} s", file=sys.stderr)
    grid, runs = write_grid(args, scratch / "grid.yaml"), {}
    for name, workers in (("pool", args.workers), ("in-process", 0)):
        wall = run_grid(args, grid, scratch / name, cache, workers)
        runs[name] = {"workers": workers, "wall": wall, **grid_times(scratch / name)}
        print(f"  --workers {workers}: {wall:.1f} s", file=sys.stderr)
    loop = plain_loop(args, cache)
    if len(list(cache.glob("*/meta.json"))) != entries:
        raise SystemExit("the timed runs extracted features: the cache was not warm")
    return runs, loop, {"warm": warm, "entries": entries}


def _row(name: str, r: dict) -> dict:
    parallel = max(1, r["workers"])
    overhead = (r["wall"] - r["work"] / parallel) / r["cells"]
    in_cell = (r["cell_seconds"] - r["work"]) / r["cells"]
    return {
        "run": name,
        "cells": r["cells"],
        "wall s": r["wall"],
        "cells' work s (sum)": r["work"],
        "overhead s/cell": overhead,
        "of which in the cell (done.json s - work) s/cell": in_cell,
        "of which driver, start-up, hand-off s/cell": overhead - in_cell / parallel,
    }


def _loop_row(loop: dict) -> dict:
    return {
        "run": "plain loop: train_probe + predict + metrics (no files, no processes)",
        "cells": loop["cells"],
        "wall s": loop["wall"],
        "cells' work s (sum)": loop["fit"] + loop["evaluate"],
        "overhead s/cell": float("nan"),
        "of which in the cell (done.json s - work) s/cell": float("nan"),
        "of which driver, start-up, hand-off s/cell": float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_folder(args.scratch) as scratch:
        runs, loop, warm = measure(args, scratch)
    rows = [_row(f"medadapt benchmark --workers {args.workers} (worker processes)", runs["pool"]),
            _row("medadapt benchmark --workers 0 (in-process)", runs["in-process"]), _loop_row(loop)]  # fmt: skip
    worst = max(rows[0]["overhead s/cell"], rows[1]["overhead s/cell"])
    verdict = (
        f"{'PASS' if worst <= TARGET else 'FAIL'}: overhead {rows[0]['overhead s/cell']:.3f} s/cell with "
        f"--workers {args.workers}, {rows[1]['overhead s/cell']:.3f} s/cell in-process (target <= {TARGET} s/cell)"
    )
    title = "Scheduling overhead of a grid of kNN cells on cached features"
    report(title, markdown_table(rows), verdict, args.out, _notes(args, runs, loop, warm))
    if args.out:
        prepend_command(args.out)
    return 0


def _notes(args, runs: dict, loop: dict, warm: dict) -> list[str]:
    n = loop["cells"]
    return [
        f"{args.dataset}, {args.folds} folds x {args.seeds} seeds = {n} kNN cells (default k grid) on "
        f"`{args.backbone}` (RANDOM INIT: no pretrained weights here; backbone seed 0) at {args.size} px. The "
        f"cache was warmed by a one-cell grid ({warm['entries']} entries, {warm['warm']:.1f} s wall for that "
        "whole command, extraction included); the timed runs extracted nothing.",
        f"overhead = (wall - cells' work / workers) / cells, workers = {args.workers} for the pool and 1 "
        "in-process; cells' work = the sum of the cells' `cost` `wall_seconds` rows (`DIR/results.csv`). The "
        "in-cell part is the cells' own `done.json` seconds (the `seconds` column of `DIR/benchmark.sqlite`) "
        "less their work; the rest (divided likewise) is the driver's. Wall time is the whole CLI command, "
        "interpreter start and imports included.",
        f"Plain loop: {n} fits {loop['fit']:.2f} s ({loop['fit'] / n * 1e3:.1f} ms each), predictions and "
        f"metrics on val and test {loop['evaluate']:.2f} s ({loop['evaluate'] / n * 1e3:.1f} ms each); the "
        f"folds' FeatureSets were read once before the loop. One `fold_splits` call (a dataset's folds: a grid "
        f"worker computes them once per dataset) took {loop['fold'] * 1e3:.1f} ms.",
        f"Threads: the pool's workers 1 each (the CPU threads divided between them), the in-process run and the "
        f"loop torch's default. Machine: {machine()}; bf16 autocast where native. {args.note}".rstrip(),
    ]


if __name__ == "__main__":
    sys.exit(main())
