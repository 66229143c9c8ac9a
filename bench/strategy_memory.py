"""Peak memory and trainable parameters of every fine-tuning strategy on the same model.

Each strategy runs in a fresh Python subprocess, so the process-wide high-water mark is its own: the child
builds the classifier (``create_backbone`` random init + ``build_classifier(linear)``, same seed for all),
then ``medadapt.training.fit`` trains one epoch of ``--steps`` optimizer steps (batch ``--batch-size``)
followed by fit's validation pass (on 8 val images). Memory is read as the validation starts (by wrapping
``medadapt.training.loop.evaluate``), i.e. right after the training steps, and once more after fit returns:

* CPU: peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and, as a baseline, the
  resident size just before ``fit`` (weights, data, libraries). "training growth" = peak in training -
  baseline: the memory the steps themselves added (activations kept for backward, gradients, optimizer
  state, adapters).
* CUDA: ``torch.cuda.max_memory_allocated`` (fit resets the peak after moving the model to the GPU).

The default model is big enough for the differences to show next to the weights: ``timm:vit_base_patch16_224``
(86 M parameters) at 112 px, batch 32. Expectation: ``lora``, ``frozen``, ``ia3`` and ``ln_tune`` need
clearly less than ``full`` (no gradients or AdamW state for the backbone; ``frozen`` also keeps no
activations for backward).

Target: peak in training of ``lora`` and ``frozen`` below that of ``full``, and their training growth at most
75% of ``full``'s.

    MEDADAPT_DATA=/path/to/medmnist python bench/strategy_memory.py
    python bench/strategy_memory.py --strategies full lora frozen --batch-size 64 --device cuda
    python bench/strategy_memory.py --backbone "timm:vit_small_patch16_224" --img-size 224 --dataset synthetic
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _common import add_data_args, apply_threads, load_split, machine, markdown_table, report
from _training import EvalClock, build_model

from medadapt._device import resolve_device
from medadapt.strategies import create_strategy
from medadapt.training import TrainConfig, fit

STRATEGIES = ["frozen", "full", "differential", "llrd", "unfreeze", "lora", "ia3", "ln_tune"]
GROWTH_TARGET = 0.75
VAL_IMAGES = 8  # fit's validation pass runs on these (it needs a val set; its cost is not the point)
MB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser)
    parser.add_argument(
        "--strategies", nargs="+", default=STRATEGIES, help="strategy names (default: %(default)s)"
    )
    parser.add_argument(
        "--backbone", default="timm:vit_base_patch16_224", help="random init (default: %(default)s)"
    )
    parser.add_argument("--img-size", type=int, default=112, help="model input size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="training steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="(default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads; 0 = default (default: %(default)s)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one strategy
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- memory readers
def peak_rss() -> float:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)


def current_rss() -> float:
    """Resident set size now, in bytes (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * resource.getpagesize())
    except OSError:
        return peak_rss()


def peak_memory(device: torch.device) -> float:
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else peak_rss()


# ---------------------------------------------------------------------------------------------- one child
def child(args: argparse.Namespace) -> None:
    """Train ``args.child`` for ``args.steps`` steps in this (fresh) process; prints one JSON line."""
    device = resolve_device(args.device)
    n = args.batch_size * args.steps
    train = load_split(args.dataset, "train", data_root=args.data_root, limit=n, synthetic_n=n)
    val = load_split(args.dataset, "val", data_root=args.data_root, limit=VAL_IMAGES)
    model, _, preprocess = build_model(
        args.backbone, img_size=args.img_size, data_chans=train.n_channels, num_outputs=train.num_outputs
    )
    total = sum(p.numel() for p in model.parameters())
    cfg = TrainConfig(lr=args.lr, epochs=1, batch_size=args.batch_size, device=str(device), augment="none")
    baseline = current_rss() if device.type == "cpu" else 0.0
    t0 = time.perf_counter()
    with EvalClock(probe=lambda: peak_memory(device)) as evals:
        result = fit(model, create_strategy(args.child), train, val, cfg=cfg, preprocess=preprocess)
    print(
        json.dumps(
            {
                "baseline": baseline,
                "peak_training": evals.probed[0],
                "peak_fit": peak_memory(device),
                "trainable": result.cost["trainable_params"],
                "total": total,
                "seconds": time.perf_counter() - t0,
            }
        )
    )


def run_child(args: argparse.Namespace, strategy: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", strategy]
    for flag in (
        "dataset",
        "data_root",
        "backbone",
        "img_size",
        "batch_size",
        "steps",
        "lr",
        "device",
        "threads",
    ):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"child run of strategy {strategy!r} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    if args.child is not None:
        child(args)
        return 0
    cuda = resolve_device(args.device).type == "cuda"
    runs = {}
    for strategy in args.strategies:
        print(f"{strategy}: {args.steps} steps in a fresh process ...", file=sys.stderr)
        runs[strategy] = run_child(args, strategy)
    rows = [_row(name, r, cuda) for name, r in runs.items()]
    verdict = _verdict(runs, cuda)
    what = "torch.cuda.max_memory_allocated" if cuda else "peak RSS (ru_maxrss) of a fresh process"
    notes = [
        f"{args.backbone} (random init) at {args.img_size} px, batch {args.batch_size}, {args.steps} training "
        f"steps + fit's validation pass on {VAL_IMAGES} images, AdamW lr {args.lr:g}, one fresh process "
        f"per strategy; device {args.device}; {machine()}.",
        f"Memory: {what}. 'peak in training' is read as the validation starts (right after the steps), "
        "'peak of fit' after fit returns (adds the validation pass and fit's CPU copy of the best weights)."
        + (
            ""
            if cuda
            else " 'baseline' = resident size just before fit (weights, data, libraries); "
            "'training growth' = peak in training - baseline."
        ),
        "unfreeze is in its first epoch, where only the head trains (backbone stages join from epoch 2 on).",
    ]
    report("Peak memory per strategy", markdown_table(rows), verdict, args.out, notes)
    return 0


def _row(name: str, r: dict, cuda: bool) -> dict:
    row = {
        "strategy": name,
        "trainable params": int(r["trainable"]),
        "trainable %": 100 * r["trainable"] / r["total"],
    }
    if not cuda:
        row["baseline MB"] = r["baseline"] / MB
        row["training growth MB"] = (r["peak_training"] - r["baseline"]) / MB
    row["peak in training MB"] = r["peak_training"] / MB
    row["peak of fit MB"] = r["peak_fit"] / MB
    row["s"] = r["seconds"]
    return row


def _verdict(runs: dict[str, dict], cuda: bool) -> str:
    if "full" not in runs or not {"lora", "frozen"} & set(runs):
        return "SKIP: the verdict compares lora and frozen with full; run all three"
    full = runs["full"]
    checks = []
    for name in ("lora", "frozen"):
        if name not in runs:
            continue
        r = runs[name]
        below = r["peak_training"] < full["peak_training"]
        if cuda:
            ok, growth = below, ""
        else:
            share = (r["peak_training"] - r["baseline"]) / max(full["peak_training"] - full["baseline"], 1.0)
            ok, growth = below and share <= GROWTH_TARGET, f", training growth {share:.0%} of full's"
        ratio = r["peak_training"] / full["peak_training"]
        checks.append((ok, f"{name} peak {ratio:.0%} of full's{growth}"))
    target = "peak below full's" + ("" if cuda else f" and training growth <= {GROWTH_TARGET:.0%} of full's")
    passed = all(ok for ok, _ in checks)
    return (
        f"{'PASS' if passed else 'FAIL'}: " + "; ".join(text for _, text in checks) + f" (target: {target})"
    )


if __name__ == "__main__":
    sys.exit(main())
