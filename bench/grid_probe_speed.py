"""A probe grid run by ``medadapt benchmark`` vs the same cells as separate ``medadapt probe`` invocations.

The grid: 2 random-init backbones x 3 probe heads (linear, attention, kNN) x seeds x K folds (5-fold
cross-validation of the pooled official splits), one ``medadapt benchmark`` command with a fresh, empty
feature cache. It extracts each backbone's features once per official split (tokens included, since the
attention head reads them) and serves every head, seed and fold from them.

The reference: the same cells, each its own ``medadapt probe`` process (the real CLI, a subprocess) with its
own fresh ``--cache-dir``, so every invocation runs its backbone over its fold's images. ``medadapt probe``
has no folds, so each fold is written once as a ``csv:`` dataset: every image of the official splits as a
PNG, and per fold a ``labels.csv`` whose ``split`` column is the grid's fold assignment
(``medadapt.data.folds.fold_splits``, the rows in the grid's order). The reference runs with
``backbone_seed: 0`` (the grid's fixed backbone draw), so both sides train the same heads on the same
features and their test AUCs pair up. Writing the PNGs is not timed on either side.

Extractions are counted from the cache folders: one entry (``KEY/meta.json``) per backbone pass over a split.

Target: the grid >= 5x faster than the separate invocations, with exactly one extraction per backbone and
official split (2 x 3 = 6 entries).

    MEDADAPT_DATA=/path/to/medmnist python bench/grid_probe_speed.py --out docs/results/bench_grid_probe_speed.md
    python bench/grid_probe_speed.py --seeds 1 --folds 2 --epochs 5     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import (
    add_data_args,
    load_split,
    machine,
    markdown_table,
    prepend_command,
    report,
    scratch_folder,
)
from PIL import Image

from medadapt.data.folds import fold_splits

SPEEDUP_TARGET = 5.0
BACKBONES = {
    "resnet18": "timm:resnet18?init=torch",
    "vit-t-p7": "timm:vit_small_patch14_dinov2?embed_dim=192&depth=6&num_heads=3&patch_size=7",
}
HEADS = ("linear", "attention", "knn")
SPLITS = ("train", "val", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser, synthetic=False)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="grid workers; the reference runs as many invocations at once (default: %(default)s)",
    )
    parser.add_argument(
        "--size", type=int, default=28, help="image and model input size (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=30, help="(default: %(default)s)")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-3, 1e-4], help="linear / attention (default: %(default)s)"
    )
    parser.add_argument(
        "--attention-depth",
        type=int,
        default=None,
        help="self-attention blocks before the attention head's pooling (default: the head's default, 0)",
    )
    parser.add_argument(
        "--scratch", default=None, help="keep the runs in this folder (default: a temp folder)"
    )
    parser.add_argument("--note", default="", help="a line about the machine's state, added to the output")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def cli(*args: str) -> list[str]:
    """The real ``medadapt`` command line, run with this interpreter."""
    return [sys.executable, "-m", "medadapt", *args]


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` to the end; its wall seconds (raises with its output's tail when it fails)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}:\n{tail}")
    return seconds


# ----------------------------------------------------------------------------------------------------- grid
def write_grid(args, path: Path) -> Path:
    lrs = [float(x) for x in args.lrs]
    grid = {
        "name": "grid_probe_speed",
        "datasets": [{"address": f"medmnist:{args.dataset}", "folds": {"k": args.folds, "seed": 0}}],
        "backbones": [{"address": a, "name": n} for n, a in BACKBONES.items()],
        "methods": [
            {"name": "linear", "probe": "linear", "lrs": lrs},
            {"name": "attention", "probe": "attention", "lrs": lrs, **_attention_kwargs(args)},
            {"name": "knn", "probe": "knn"},
        ],
        "seeds": args.seeds,
        "settings": {"pretrained": False, "size": args.size, "img_size": args.size, "epochs": args.epochs},
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _attention_kwargs(args) -> dict:
    return {} if args.attention_depth is None else {"head_kwargs": {"depth": args.attention_depth}}


def run_grid(args, scratch: Path) -> dict:
    """One ``medadapt benchmark`` command, a fresh cache; its wall time, cache entries and test AUCs."""
    grid, out, cache = write_grid(args, scratch / "grid.yaml"), scratch / "grid", scratch / "grid-cache"
    cmd = [
        "benchmark",
        str(grid),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--workers",
        str(args.workers),
    ]
    seconds = run(cli(*cmd, *(["--data-root", args.data_root] if args.data_root else [])))
    table = pd.read_csv(out / "results.csv")
    test = table[(table["split"] == "test") & (table["metric"] == "auc")]
    aucs = {(r.backbone, r.run, int(r.fold), int(r.seed)): r.value for r in test.itertuples()}
    return {
        "seconds": seconds,
        "processes": 1,
        "cache": cache_stats([cache]),
        "auc": aucs,
        **cost_sums(table),
    }


def cost_sums(table: pd.DataFrame) -> dict[str, float]:
    """The cells' own extraction and head-training seconds (their ``cost`` rows), summed."""
    cost = table[table["split"] == "cost"]
    return {
        name: float(cost.loc[cost["metric"] == f"{name}_seconds", "value"].sum())
        for name in ("extract", "train")
    }


def cache_stats(roots: list[Path]) -> dict:
    """Entries written (``KEY/meta.json``), those with tokens, and the images run through the backbone."""
    metas = [json.loads(p.read_text()) for root in roots for p in root.glob("*/meta.json")]
    return {
        "entries": len(metas),
        "with_tokens": sum(bool(m["tokens"]) for m in metas),
        "images": sum(int(m["n"]) for m in metas),
    }


# ------------------------------------------------------------------------------------------------ reference
def export_images(splits: dict, root: Path) -> dict[str, list[str]]:
    """Every image of the official splits as ``root/SPLIT/NNNNN.png``; the paths, per split, by row."""
    paths = {}
    for split, ds in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        paths[split] = []
        for i in range(len(ds)):
            image = ds.image(i).numpy()
            pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
            pil.save(root / split / f"{i:05d}.png")
            paths[split].append(f"{split}/{i:05d}.png")
    return paths


def write_fold_csvs(splits: dict, paths: dict[str, list[str]], k: int, root: Path) -> list[Path]:
    """One ``csv:`` dataset per fold: the grid's fold assignment as the ``split`` column, rows in its order."""
    if splits["train"].task == "multilabel":
        raise SystemExit("multi-label datasets are not supported by this bench (one label column)")
    out = []
    for fold in range(k):
        views, frames = fold_splits(splits, k=k, fold=fold, seed=0, val_folds=8), []
        for split, view in views.items():
            rows = [paths[ds.split][r] for ds, idx in view.parts for r in idx]
            labels = np.asarray(view.labels).reshape(len(view), -1)[:, 0].astype(int)
            frames.append(pd.DataFrame({"path": rows, "label": labels, "split": split.split("-")[-1]}))
        path = root / f"fold{fold}.csv"
        pd.concat(frames).to_csv(path, index=False)
        out.append(path)
    return out


def probe_command(args, config: Path, csv: Path, cell: tuple, out: Path, cache: Path) -> list[str]:
    backbone, head, _, seed = cell
    cmd = ["probe", "--config", str(config), "--dataset", f"csv:{csv}", "--backbone", BACKBONES[backbone]]
    cmd += ["--head", head, "--seeds", str(seed), "--out", str(out), "--cache-dir", str(cache)]
    if head == "attention" and args.attention_depth is not None:
        cmd += ["--head-option", f"depth={args.attention_depth}"]
    return cli(*cmd, *(["--lrs", *map(str, args.lrs)] if head != "knn" else []))


def run_reference(args, scratch: Path, csvs: list[Path]) -> dict:
    """Every cell its own ``medadapt probe`` process with its own fresh cache (``--workers`` at a time)."""
    config = scratch / "probe.yaml"
    config.write_text(yaml.safe_dump({"pretrained": False, "img_size": args.size, "epochs": args.epochs,
                                      "backbone_seed": 0}))  # fmt: skip
    cells = [
        (b, h, f, s) for b in BACKBONES for h in HEADS for f in range(args.folds) for s in range(args.seeds)
    ]
    folder = {c: scratch / "ref" / "/".join(map(str, c)) for c in cells}
    env = dict(os.environ)
    if args.workers > 1:  # as the grid divides the CPU threads between its workers
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))

    def one(cell: tuple) -> float:
        cmd = probe_command(args, config, csvs[cell[2]], cell, folder[cell] / "run", folder[cell] / "cache")
        return run(cmd, env)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        per_cell = list(pool.map(one, cells))
    seconds = time.perf_counter() - t0
    tables = {cell: pd.read_csv(folder[cell] / "run" / "results.csv") for cell in cells}
    aucs = {c: t[(t["split"] == "test") & (t["metric"] == "auc")]["value"].item() for c, t in tables.items()}
    stats = cache_stats([folder[c] / "cache" for c in cells])
    return {"seconds": seconds, "processes": len(cells), "cache": stats, "auc": aucs, "per_cell": per_cell,
            **cost_sums(pd.concat(tables.values()))}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- main
def prepare(args, scratch: Path) -> tuple[list[Path], float]:
    """The fold CSVs of the reference (and the seconds the PNGs took, timed on neither side)."""
    splits = {s: load_split(args.dataset, s, data_root=args.data_root) for s in SPLITS}
    t0 = time.perf_counter()
    paths = export_images(splits, scratch / "images")
    seconds = time.perf_counter() - t0
    return write_fold_csvs(splits, paths, args.folds, scratch / "images"), seconds


def measure(args, scratch: Path) -> tuple[dict, dict, float]:
    csvs, export_seconds = prepare(args, scratch)
    print(f"PNGs written in {export_seconds:.1f} s; running the grid ...", file=sys.stderr)
    grid = run_grid(args, scratch)
    print(
        f"  {grid['seconds']:.1f} s; running {len(grid['auc'])} medadapt probe invocations ...",
        file=sys.stderr,
    )
    ref = run_reference(args, scratch, csvs)
    return grid, ref, export_seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_folder(args.scratch) as scratch:
        grid, ref, export_seconds = measure(args, scratch)
    missing = sorted(set(ref["auc"]) - set(grid["auc"]))
    if missing:
        raise SystemExit(f"cells missing from the grid's results: {missing[:3]}")
    cells = len(ref["auc"])
    speedup = ref["seconds"] / grid["seconds"]
    want = len(BACKBONES) * len(SPLITS)
    ok = speedup >= SPEEDUP_TARGET and grid["cache"]["entries"] == want
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: speedup {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x); the grid wrote "
        f"{grid['cache']['entries']} cache entries (target: {want}, one per backbone and official split), the "
        f"invocations {ref['cache']['entries']}"
    )
    rows = [_row("medadapt benchmark (one command, one cache)", grid, cells),
            _row("medadapt probe per cell (own process, own cache)", ref, cells)]  # fmt: skip
    notes = _notes(args, grid, ref, cells, export_seconds)
    title = "A probe grid: medadapt benchmark vs one medadapt probe invocation per cell"
    report(title, markdown_table(rows), verdict, args.out, notes)
    if args.out:
        prepend_command(args.out)
    return 0


def _row(name: str, r: dict, cells: int) -> dict:
    return {
        "side": name,
        "cells": cells,
        "processes": r["processes"],
        "cache entries written (with tokens)": f"{r['cache']['entries']} ({r['cache']['with_tokens']})",
        "images through the backbone": r["cache"]["images"],
        "wall s": r["seconds"],
        "s per cell": r["seconds"] / cells,
        "extraction s (cells' sum)": r["extract"],
        "head training s (cells' sum)": r["train"],
        "mean test AUC": float(np.mean([r["auc"][c] for c in sorted(r["auc"])])),
    }


def _notes(args, grid: dict, ref: dict, cells: int, export_seconds: float) -> list[str]:
    diffs = [abs(grid["auc"][c] - ref["auc"][c]) for c in ref["auc"]]
    per_cell = np.asarray(ref["per_cell"])
    return [
        f"{args.dataset}: {len(BACKBONES)} backbones ({', '.join(f'{n} = `{a}`' for n, a in BACKBONES.items())}, "
        f"RANDOM INIT: no pretrained weights here; one fixed draw, backbone seed 0, on both sides) x heads "
        f"{', '.join(HEADS)} x {args.seeds} seed(s) x {args.folds} folds = {cells} cells; {args.size} px; "
        f"linear / attention: LRs {args.lrs}, {args.epochs} epochs; attention head depth "
        f"{'0 (its default)' if args.attention_depth is None else args.attention_depth}; kNN: the default k "
        "grid. Grid workers: "
        f"{args.workers}; the invocations ran {args.workers} at a time.",
        f"The reference reads each fold as a `csv:` dataset of PNGs (the grid's own fold assignment); writing "
        f"the PNGs took {export_seconds:.1f} s, counted on neither side. Its linear and kNN invocations extract "
        "no patch tokens (only the attention head needs them), while the grid extracts them once for all "
        "heads. One invocation: median {:.1f} s, min {:.1f} s, max {:.1f} s, interpreter start and imports "
        "included.".format(np.median(per_cell), per_cell.min(), per_cell.max()),
        "Wall s less the summed head training (the same work on both sides; exact only with one worker, "
        f"here {args.workers}): grid {grid['seconds'] - grid['train']:.1f} s, reference {ref['seconds'] - ref['train']:.1f} s: "
        f"{(ref['seconds'] - ref['train']) / (grid['seconds'] - grid['train']):.1f}x. Extraction and head-training "
        "seconds are the cells' own `cost` rows (`extract_seconds`, `train_seconds`), summed.",
        f"Same cells, same features: test AUC |grid - reference| per cell: max {max(diffs):.2e}, mean "
        f"{np.mean(diffs):.2e} (a fold's features are rows of the official splits' features in the grid, its "
        "own extraction in the reference: bf16 batches of other rows).",
        f"Machine: {machine()}; bf16 autocast where native. Timings are wall-clock. {args.note}".rstrip(),
    ]


if __name__ == "__main__":
    sys.exit(main())
