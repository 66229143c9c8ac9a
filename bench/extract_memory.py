"""Peak memory of feature extraction stays flat as the dataset grows (tokens are streamed to disk).

Runs ``medadapt.features.extract_features(..., with_tokens=True)`` over a synthetic dataset of N images and
of 10 x N images, each in a fresh Python subprocess, and reports the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). The dataset generates every image on the fly from
``(seed, index)``, so it does not itself grow with N; the token array that extraction writes does (shown as
"tokens on disk"), so any part of it held in memory would show up as a higher peak at 10 x N.

Target: peak RSS at 10 x N / peak RSS at N < 1.2.

    python bench/extract_memory.py
    python bench/extract_memory.py --n 5000 --factors 1 10 20 --img-size 224
    python bench/extract_memory.py --backbone timm:vit_small_patch14_dinov2 --n 500
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from _common import SyntheticDataset, machine, markdown_table, report

from medadapt.backbones import create_backbone
from medadapt.data import Preprocess
from medadapt.features import extract_features

TARGET = 1.2
TINY_VIT = "timm:vit_small_patch14_dinov2?embed_dim=96&depth=2&num_heads=2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="images at 1x (default: %(default)s)")
    parser.add_argument(
        "--factors",
        type=int,
        nargs="+",
        default=[1, 10],
        help="dataset sizes as multiples of --n (default: %(default)s)",
    )
    parser.add_argument(
        "--backbone", default=TINY_VIT, help="random init; a tiny ViT by default (default: %(default)s)"
    )
    parser.add_argument("--img-size", type=int, default=112, help="model input size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: one run
    return parser.parse_args(argv)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """One extraction of ``args.child`` images in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    dataset = SyntheticDataset(args.child)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = create_backbone(args.backbone, pretrained=False, img_size=args.img_size, data_chans=1)
    preprocess = Preprocess(size=(args.img_size,) * 2, mean=backbone.spec.mean, std=backbone.spec.std)
    before = _peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="medadapt-bench-") as cache:
        t0 = time.perf_counter()
        fs = extract_features(
            backbone, dataset, preprocess, cache_dir=cache, with_tokens=True, batch_size=args.batch_size
        )
        seconds = time.perf_counter() - t0
        result = {
            "images": args.child,
            "seconds": seconds,
            "tokens_mb": fs.tokens.nbytes / 2**20,
            "tokens_shape": list(fs.tokens.shape),
            "rss_before_mb": before,
            "peak_rss_mb": _peak_rss_mb(),
        }
    print(json.dumps(result))


def run_child(args: argparse.Namespace, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--backbone", args.backbone]
    cmd += [
        "--img-size",
        str(args.img_size),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"child run with {n} images failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    runs = []
    for factor in args.factors:
        print(f"extracting {factor * args.n} images in a fresh process ...", file=sys.stderr)
        runs.append((factor, run_child(args, factor * args.n)))
    base = runs[0][1]["peak_rss_mb"]
    rows = [
        {
            "size": f"{factor}x",
            "images": r["images"],
            "tokens on disk MB": r["tokens_mb"],
            "RSS before extraction MB": r["rss_before_mb"],
            "peak RSS MB": r["peak_rss_mb"],
            "growth during extraction MB": r["peak_rss_mb"] - r["rss_before_mb"],
            "peak / 1x": r["peak_rss_mb"] / base,
            "img/s": r["images"] / r["seconds"],
        }
        for factor, r in runs
    ]
    worst = max(row["peak / 1x"] for row in rows)
    verdict = (
        f"{'PASS' if worst < TARGET else 'FAIL'}: peak RSS at {runs[-1][0]}x is {rows[-1]['peak / 1x']:.2f}x "
        f"the peak at {runs[0][0]}x (target < {TARGET}); worst ratio {worst:.2f}"
    )
    notes = [
        f"{args.backbone} (random init) at {args.img_size} px, with_tokens=True, batch {args.batch_size}, tokens "
        f"{runs[0][1]['tokens_shape'][1:]} float16 per image; synthetic 28 px gray images made per index; each size "
        f"in a fresh subprocess; peak RSS = ru_maxrss, growth = peak RSS - peak RSS before extract_features; {machine().rsplit(',', 1)[0]}, {args.threads} thread(s).",
    ]
    report("Feature extraction peak memory vs dataset size", markdown_table(rows), verdict, args.out, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
