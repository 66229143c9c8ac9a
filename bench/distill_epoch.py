"""Cost of distillation: a ``fit`` epoch with cached teacher logits vs a student-only epoch.

Both runs train the same student (``create_backbone`` random init + linear head, rebuilt from the same seed)
on the same data with the same recipe (Adam, no augmentation, one validation pass per epoch); the distilled
run adds :class:`medadapt.distill.DistillObjective` with the teacher's train-set logits computed once
beforehand (timed on its own and *not* part of the epoch: it is paid once per teacher and dataset, and then
read from the feature cache). Only the training part of each epoch is compared (validation timed apart, as
in ``train_throughput.py``). Runs are interleaved (A B B A ...), medians reported; on CPU the verdict uses
process CPU time, which does not depend on what else the machine runs.

Target: distilled / student-only epoch time <= 1.15.

    MEDADAPT_DATA=/path/to/medmnist python bench/distill_epoch.py
    python bench/distill_epoch.py --student resnet18_28 --teacher timm:vit_small_patch14_dinov2 --reps 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import asdict

from _common import add_data_args, add_run_args, apply_threads, load_split, machine, markdown_table, report
from _training import EpochClock, EvalClock, build_model, now, total

from medadapt._device import resolve_device
from medadapt.distill import DistillObjective, Teacher
from medadapt.saved import ModelInfo, save_classifier
from medadapt.strategies import create_strategy
from medadapt.training import TrainConfig, fit

TARGET = 1.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser, train_limit=True)
    parser.add_argument("--student", default="timm:resnet18", help="student backbone (default: %(default)s)")
    parser.add_argument(
        "--teacher",
        default="timm:vit_small_patch14_dinov2",
        help="teacher backbone, random init + linear head (default: %(default)s)",
    )
    parser.add_argument("--teacher-img-size", type=int, default=56, help="(default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=28, help="student input size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=2, help="timed epochs after one warm-up epoch (default: %(default)s)"
    )
    parser.add_argument("--reps", type=int, default=2, help="interleaved runs of each (default: %(default)s)")
    add_run_args(parser)
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def teacher_logits(args, train, cache_dir: str):
    """A random-init teacher (backbone + linear head), saved and loaded as a run's model; its train logits."""
    model, backbone, preprocess = build_model(
        args.teacher,
        img_size=args.teacher_img_size,
        data_chans=train.n_channels,
        num_outputs=train.num_outputs,
    )
    folder = os.path.join(cache_dir, "teacher")
    info = ModelInfo(backbone=args.teacher, head="linear", num_outputs=train.num_outputs, task=train.task,
                     img_size=args.teacher_img_size, data_chans=train.n_channels, channel_mode="sum",
                     preprocess=asdict(preprocess))  # fmt: skip
    save_classifier(folder, model, info)
    teacher = Teacher.from_paths([folder])
    t0 = now()
    logits, _ = teacher.dataset_logits(
        train, cache_dir=cache_dir, device=args.device, autocast=not args.no_autocast
    )
    return logits, now() - t0


def train_epochs(args, train, val, objective):
    """``fit`` for 1 + epochs epochs; the training part of each epoch (validation excluded) and the last record."""
    model, _, preprocess = build_model(
        args.student, img_size=args.img_size, data_chans=train.n_channels, num_outputs=train.num_outputs
    )
    cfg = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=1 + args.epochs,
                      batch_size=args.batch_size, autocast=not args.no_autocast, augment="none",
                      device=args.device)  # fmt: skip
    with EvalClock() as evals:
        clock = EpochClock()
        fit(model, create_strategy("scratch"), train, val, cfg=cfg, preprocess=preprocess, progress=clock,
            objective=objective)  # fmt: skip
    return clock.train_parts(evals)[1:], clock.records[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    train = load_split(args.dataset, "train", data_root=args.data_root, limit=args.limit)
    val = load_split(args.dataset, "val", data_root=args.data_root)
    with tempfile.TemporaryDirectory() as cache_dir:
        logits, once = teacher_logits(args, train, cache_dir)
    objective = DistillObjective(task=train.task, alpha=0.2, temperature=2.0, cached=logits)
    runs = {"student only": [], "distilled (cached teacher)": []}
    last = {}
    for rep in range(args.reps):
        names = list(runs) if rep % 2 == 0 else list(runs)[::-1]
        for name in names:
            parts, last[name] = train_epochs(
                args, train, val, objective if name.startswith("distilled") else None
            )
            runs[name].append(total(parts))
    base = runs["student only"]
    rows = []
    for name, spans in runs.items():
        rows.append({
            "run": name,
            "s/epoch": statistics.median(s.wall for s in spans) / args.epochs,
            "CPU s/epoch": statistics.median(s.cpu for s in spans) / args.epochs,
            "ratio (wall)": statistics.median(s.wall / b.wall for s, b in zip(spans, base)),
            "ratio (CPU)": statistics.median(s.cpu for s in spans) / statistics.median(b.cpu for b in base),
            "last train loss": last[name]["train_loss"],
            "last kd loss": last[name].get("train_kd_loss", float("nan")),
        })  # fmt: skip
    basis = "CPU" if resolve_device(args.device).type == "cpu" else "wall"
    ratio = rows[1][f"ratio ({basis})"]
    verdict = (
        f"{'PASS' if ratio <= TARGET else 'FAIL'}: a distillation epoch with cached teacher logits costs "
        f"{ratio:.3f}x a student-only epoch by {basis} time (target <= {TARGET})"
    )
    notes = [
        f"{train.name} train ({len(train)} images), student {args.student} at {args.img_size} px, batch "
        f"{args.batch_size}, Adam 1e-3, no augmentation; teacher {args.teacher} + linear head at "
        f"{args.teacher_img_size} px (random init), its train logits computed once in {once.wall:.1f} s "
        f"(CPU {once.cpu:.1f} s), not part of any epoch; 1 warm-up + {args.epochs} timed epochs per run, "
        f"{args.reps} interleaved runs each (median); device {args.device}; {machine()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "s/epoch: training part only (the validation pass is excluded). ratio = distilled / student only.",
    ]
    report("Distillation epoch cost: cached teacher logits vs student only", markdown_table(rows), verdict,
           args.out, notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
