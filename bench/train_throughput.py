"""Training throughput: ``medadapt.training.fit`` vs a minimal hand-written loop on the same model.

Both train the same classifier (``create_backbone`` random init + ``build_classifier(linear)``, rebuilt from
the same seed for every run) with the same strategy (``full``: its param groups go to AdamW in both), data
(the real BreastMNIST train split by default, uint8 in memory), batch size, AdamW at the same LR and weight
decay, the same ``medadapt._device.autocast_context`` and no augmentation. The minimal loop: a shuffled
index permutation per epoch, batches sliced off the in-memory uint8 tensor, the same ``Preprocess`` on the
tensor, forward, cross-entropy, ``zero_grad`` / ``backward`` / ``step``. ``fit`` adds its data loader and
collate, the per-step LR scheduler, seeded RNG forks, loss bookkeeping, and one validation pass per epoch.

Only the training part is compared. Each run trains one warm-up epoch and then ``--epochs`` timed epochs.
For ``fit`` the validation pass is timed on its own (by wrapping ``medadapt.training.loop.evaluate``; it is
shown as "fit val s/epoch" and is *not* in the throughput): the training part of an epoch runs from the end
of the previous epoch (``progress`` callback) to the start of its validation, so it includes fit's per-epoch
bookkeeping (RNG reseeding, strategy hook, trainable-parameter count). ``out_dir=None``: no checkpoints.
The runs are interleaved (A B B A ...) and the medians reported. On CPU the process CPU time is also
measured: it is what each loop costs whatever other processes do, and the verdict uses its ratio there
(wall-clock ratio on GPU).

Target: medadapt / plain >= 0.9 (images/s) for every backbone.

    MEDADAPT_DATA=/path/to/medmnist python bench/train_throughput.py
    python bench/train_throughput.py --backbones resnet18_28 --epochs 2 --reps 4
    python bench/train_throughput.py --dataset pneumoniamnist --batch-size 128 --threads 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from _common import add_data_args, add_run_args, apply_threads, load_split, machine, markdown_table, report
from _training import EpochClock, EvalClock, Seconds, build_model, now, stacked_images, total

from medadapt._device import autocast_context, resolve_device
from medadapt.data import MedicalDataset
from medadapt.strategies import create_strategy
from medadapt.training import TrainConfig, fit

TARGET = 0.9
TINY_VIT = "timm:vit_tiny_patch16_224?patch_size=4&depth=4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser, train_limit=True)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["resnet18_28", TINY_VIT],
        help="backbone addresses, random init (default: %(default)s)",
    )
    parser.add_argument("--img-size", type=int, default=28, help="model input size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW LR (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=1, help="timed epochs after one warm-up epoch (default: %(default)s)"
    )
    parser.add_argument(
        "--reps", type=int, default=2, help="interleaved runs of each loop (default: %(default)s)"
    )
    add_run_args(parser)
    parser.add_argument(
        "--plain-channels-last",
        action="store_true",
        help="put the minimal loop's model in channels-last memory format too, as fit does for CNNs on CPU: "
        "compares the loops alone",
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ the loops
def plain_train(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess,
    *,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[list[Seconds], float]:
    """The minimal loop; returns the time of every epoch (warm-up first) and the last epoch's mean loss."""
    groups = create_strategy("full").configure(model, lr=args.lr, weight_decay=args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    order = torch.Generator().manual_seed(0)
    layout = torch.channels_last if args.plain_channels_last else torch.preserve_format
    model.to(device, memory_format=layout).train()
    times, n = [], len(images)
    for _ in range(1 + args.epochs):
        t0, loss_sum = now(), 0.0
        for idx in torch.randperm(n, generator=order).split(args.batch_size):
            if len(idx) == 1:  # as fit: batch norm cannot train on one image
                continue
            x = preprocess(images[idx].to(device, non_blocking=True))
            y = labels[idx].to(device, non_blocking=True)
            with autocast_context(device, not args.no_autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
        times.append(now() - t0)
    return times, float(loss_sum) / n


def medadapt_train(
    model: torch.nn.Module,
    train: MedicalDataset,
    val: MedicalDataset,
    preprocess,
    *,
    args: argparse.Namespace,
) -> tuple[list[Seconds], list[Seconds], float]:
    """``fit`` for 1 + epochs epochs; returns the training part and the validation pass of every epoch."""
    cfg = TrainConfig(
        optimizer="adamw",
        lr=args.lr,
        weight_decay=args.weight_decay,
        epochs=1 + args.epochs,
        batch_size=args.batch_size,
        autocast=not args.no_autocast,
        augment="none",
        device=args.device,
    )
    with EvalClock() as evals:
        epochs = EpochClock()
        fit(model, create_strategy("full"), train, val, cfg=cfg, preprocess=preprocess, progress=epochs)
    return epochs.train_parts(evals), evals.spans, float(epochs.records[-1]["train_loss"])


# ---------------------------------------------------------------------------------------------- one backbone
def bench_backbone(address: str, train: MedicalDataset, val: MedicalDataset, args) -> dict:
    device = resolve_device(args.device)
    images, labels = stacked_images(train), torch.from_numpy(train.labels[:, 0]).long()

    def fresh():
        return build_model(
            address, img_size=args.img_size, data_chans=train.n_channels, num_outputs=train.num_outputs
        )

    med, plain, vals, losses = [], [], [], {}
    for rep in range(args.reps):
        for which in ("medadapt", "plain") if rep % 2 == 0 else ("plain", "medadapt"):
            model, _, preprocess = fresh()
            if which == "medadapt":
                parts, evals, losses["medadapt"] = medadapt_train(model, train, val, preprocess, args=args)
                med.append(total(parts[1:]))  # parts[0]: the warm-up epoch (with fit's setup)
                vals.append(statistics.median(e.wall for e in evals[1:]))
            else:
                times, losses["plain"] = plain_train(
                    model, images, labels, preprocess, args=args, device=device
                )
                plain.append(total(times[1:]))
    print(f"  {address}\n    medadapt s: {_fmt(med)}\n    plain s:    {_fmt(plain)}", file=sys.stderr)
    n = len(train) * args.epochs
    return {
        "backbone": address,
        "img px": args.img_size,
        "train images": len(train),
        "medadapt img/s": n / statistics.median(t.wall for t in med),
        "plain img/s": n / statistics.median(t.wall for t in plain),
        "ratio (wall)": statistics.median(p.wall / m.wall for m, p in zip(med, plain)),
        "ratio (CPU)": statistics.median(p.cpu for p in plain) / statistics.median(m.cpu for m in med),
        "fit val s/epoch": statistics.median(vals),
        "last loss medadapt": losses["medadapt"],
        "last loss plain": losses["plain"],
    }


def _fmt(times: list[Seconds]) -> str:
    return " ".join(f"{t.wall:.2f} (cpu {t.cpu:.2f})" for t in times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    train = load_split(args.dataset, "train", data_root=args.data_root, limit=args.limit)
    val = load_split(args.dataset, "val", data_root=args.data_root)
    rows = [bench_backbone(address, train, val, args) for address in args.backbones]
    basis = "CPU" if resolve_device(args.device).type == "cpu" else "wall"
    worst = min(r[f"ratio ({basis})"] for r in rows)
    wall = min(r["ratio (wall)"] for r in rows)
    verdict = (
        f"{'PASS' if worst >= TARGET else 'FAIL'}: worst medadapt/plain training throughput {worst:.3f} by "
        f"{basis} time (target >= {TARGET}); worst wall-clock ratio {wall:.3f}"
    )
    notes = [
        f"{train.name} train ({len(train)} images; val {len(val)}), batch {args.batch_size}, AdamW lr "
        f"{args.lr:g} wd {args.weight_decay:g}, strategy full, no augmentation, 1 warm-up + {args.epochs} "
        f"timed epoch(s) per run, {args.reps} interleaved runs of each (median); device {args.device}, "
        f"autocast {'off' if args.no_autocast else 'on where native'}; {machine()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "img/s: timed train images / median wall time of the timed epochs (fit: training part only, its "
        "validation pass excluded and shown as 'fit val s/epoch'). ratio (wall) = median over runs of plain / "
        "medadapt wall time; ratio (CPU) = median plain / median medadapt process CPU time (the verdict on "
        "CPU). last loss = mean train loss of the last epoch (same model, data and optimizer; different "
        "batch orders).",
        "fit moves a CNN to channels-last memory format on CPU (faster oneDNN convolutions), the minimal loop "
        f"{'does too (--plain-channels-last)' if args.plain_channels_last else 'keeps NCHW'}.",
    ]
    report(
        "Training throughput: medadapt fit vs a minimal loop", markdown_table(rows), verdict, args.out, notes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
