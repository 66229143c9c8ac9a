"""A linear segmentation probe trained on cached tokens vs the same head with the backbone run in every step.

Cached side (what ``medadapt probe`` does on a mask dataset): ``extract_features(..., with_tokens=True)``
runs the frozen backbone once over train, val and test into a fresh on-disk cache, then
``medadapt.training.seg_probe.train_seg_probe`` trains one ``linear`` head (BatchNorm + 1x1 conv + bilinear
upsampling) on the memory-mapped tokens, and the selected head predicts the test masks from the test tokens.
Its time INCLUDES the extraction.

Reference (the plain loop): the images are decoded once into memory, then every training step runs the
frozen backbone on its batch (``torch.no_grad``) and trains the same head on the live tokens; validation
runs the backbone on the val images at every evaluation, and the selected head predicts test from a
backbone pass over the test images. Same head init, LR and schedule (AdamW + cosine: the package's
``head_optimizer``), batch size, batch order (``row_batches``), epochs, evaluation epochs and best-epoch
rule, seed and backbone precision: the tokens' origin is the only difference (float16 cache rows vs the live
tensors), so the test Dice should match.

Masks are loaded once, as uint8, before either side and shared (untimed; its seconds are printed). The
extraction batch defaults to the training batch, so both sides run the backbone on batches of one size and
the comparison measures the caching, not a batch size (on a 2-core CPU a ViT-S/14 at 224 px took about 100
ms an image at batch 16 and 110 to 135 at 64).

Target: cached >= 20x faster (extraction included) at the same test Dice (|difference| <= 0.01). The
verdict reads process CPU time with one CPU thread (stable on a shared machine: wall-clock also counts the
time other jobs hold the cores), else wall-clock; both are printed.
The cached side pays the extraction once, so the speed-up grows with the epochs towards the ratio of a
reference step (backbone + head) to a cached step (head only); the bench prints that projection.

    python bench/seg_probe_speed.py                                    # synthetic masks, ~10 min on 2 CPUs
    python bench/seg_probe_speed.py --data ../shared/data/segmentation/kvasir-seg --n-train 200
    MEDADAPT_KVASIR=../shared/data/segmentation/kvasir-seg python bench/seg_probe_speed.py --n-train 0
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from typing import Any

import numpy as np
import pandas as pd
import torch
from _common import (
    add_run_args,
    apply_threads,
    machine,
    markdown_table,
    prepend_command,
    report,
    scratch_folder,
)
from _training import Seconds, now
from torch import nn

from medadapt._device import autocast_context, runs_bf16, seeded
from medadapt.backbones import create_backbone
from medadapt.data import MedicalDataset, Preprocess, load_dataset
from medadapt.evaluation.segmentation import dice_per_image
from medadapt.features import extract_features
from medadapt.heads.segmentation import create_segmentation_head
from medadapt.tasks import class_map, get_task
from medadapt.training.probe import head_optimizer, row_batches
from medadapt.training.seg_probe import train_seg_probe

SPEEDUP_TARGET = 20.0
DICE_TOLERANCE = 0.01
BACKBONE = "timm:vit_small_patch14_dinov2"  # ViT-S/14, DINOv2 architecture; random init here
SYNTHETIC_TRAIN = 96


# ------------------------------------------------------------------------------------------------ datasets
class SyntheticSegDataset(MedicalDataset):
    """RGB images of one brighter ellipse (the "lesion") on noise, its mask the ellipse; made per
    ``(seed, index)``, so memory does not grow with ``n`` (only the ``[n, 1]`` "has foreground" labels).

    ``mask(i)`` is an int64 ``[H, W]`` tensor, as :class:`medadapt.data.segfolder.SegmentationDataset` gives.
    """

    task = "segmentation"

    def __init__(self, n: int, *, size: int = 224, seed: int = 0, split: str = "train"):
        self.n, self.size, self.seed = n, size, seed
        self.name, self.split = f"synthetic-seg:n={n}&size={size}&seed={seed}", split
        self.classes, self.n_channels = ["background", "lesion"], 3
        self.labels = np.ones((n, 1), dtype=np.int64)
        self.metadata = pd.DataFrame({"index": np.arange(n)})

    def _draw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, int(i)))
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s]
        cy, cx = rng.uniform(0.2, 0.8, 2) * s
        ry, rx = rng.uniform(0.08, 0.3, 2) * s
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image = rng.uniform(50, 130, (3, 1, 1)) + rng.normal(0, 30, (3, s, s))
        image += mask * rng.uniform(30, 70, (3, 1, 1))
        return np.clip(image, 0, 255).astype(np.uint8), mask

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._draw(i)[0])

    def mask(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._draw(i)[1].astype(np.int64))


class SegPrefix(MedicalDataset):
    """The first ``n`` image/mask pairs of a segmentation dataset."""

    task = "segmentation"

    def __init__(self, base: MedicalDataset, n: int):
        self.base, n = base, min(n, len(base))
        self.name, self.split = f"{base.name}[:{n}]", base.split
        self.classes, self.n_channels = base.classes, base.n_channels
        self.labels, self.metadata = base.labels[:n], base.metadata.iloc[:n]

    def image(self, i: int) -> torch.Tensor:
        return self.base.image(i)

    def mask(self, i: int) -> torch.Tensor:
        return self.base.mask(i)


def load_splits(args: argparse.Namespace) -> tuple[dict[str, MedicalDataset], str]:
    """train / val / test (Kvasir-SEG's rule: ``val.txt`` is the test set, 10% of train is val), or synthetic."""
    if args.data:
        address = f"segfolder:{args.data}?size={args.img_size}"
        splits = {s: load_dataset(address, s) for s in ("train", "val", "test")}
        if args.n_train:
            splits["train"] = SegPrefix(splits["train"], args.n_train)
        if args.n_eval:
            splits.update({s: SegPrefix(splits[s], args.n_eval) for s in ("val", "test")})
        return splits, address
    n = args.n_train or SYNTHETIC_TRAIN
    n_eval = args.n_eval or max(16, n // 4)
    sizes, seeds = {"train": n, "val": n_eval, "test": n_eval}, {"train": 0, "val": 1, "test": 2}
    splits = {s: SyntheticSegDataset(sizes[s], size=args.img_size, seed=seeds[s], split=s) for s in sizes}
    return splits, "synthetic ellipses (generated)"


def uint8_masks(ds: MedicalDataset) -> np.ndarray:
    """``[N, H, W]`` uint8 masks, each converted as it is read (both sides share them)."""
    out = np.empty((len(ds), *ds.mask(0).shape), dtype=np.uint8)
    for i in range(len(ds)):
        out[i] = ds.mask(i).numpy()
    return out


def mean_dice(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean over images of the foreground Dice (what ``train_seg_probe`` selects on and ``medadapt probe``
    reports as ``dice``)."""
    return float(np.mean(dice_per_image(truth.astype(np.int64), pred.astype(np.int64), n_classes)))


# ------------------------------------------------------------------------------------------------ the sides
def run_cached(args, splits, masks, backbone, preprocess, cache) -> dict[str, Any]:
    """Extract tokens once (fresh cache), train on them, predict test from the test tokens."""
    n_classes = len(splits["train"].classes)
    t0 = now()
    feats = {
        s: extract_features(backbone, ds, preprocess, cache_dir=cache, with_tokens=True,
                            batch_size=args.extract_batch_size, device=args.device, autocast=args.autocast)
        for s, ds in splits.items()
    }  # fmt: skip
    t1 = now()
    result = train_seg_probe(feats["train"], feats["val"], masks["train"], masks["val"], num_classes=n_classes,
                             head="linear", lrs=[args.lr], epochs=args.epochs, batch_size=args.batch_size,
                             seed=args.seed, device=args.device, autocast=args.autocast,
                             eval_every=args.eval_every)  # fmt: skip
    t2 = now()
    pred = result.predict(feats["test"], out_size=masks["test"].shape[1:], batch_size=args.batch_size,
                          device=args.device)  # fmt: skip
    t3 = now()
    val_dice = max(r["val_dice"][f"lr={args.lr:g}"] for r in result.history if "val_dice" in r)
    return {
        "prepare": t1 - t0,
        "train": t2 - t1,
        "test": t3 - t2,
        "total": t3 - t0,
        "forwards": sum(len(ds) for ds in splits.values()),
        "best_epoch": result.best["epoch"],
        "val_dice": val_dice,
        "test_dice": mean_dice(masks["test"], pred, n_classes),
        "tokens_mb": sum(f.tokens.nbytes for f in feats.values()) / 2**20,
    }


def run_reference(args, splits, masks, backbone, preprocess) -> dict[str, Any]:
    """The plain loop: images in memory, the frozen backbone run on every batch of every step."""
    device, n_classes, task = (
        torch.device(args.device),
        len(splits["train"].classes),
        get_task("segmentation"),
    )
    backbone = backbone.eval().to(device)
    t0 = now()
    images = {s: torch.stack([ds.image(i) for i in range(len(ds))]) for s, ds in splits.items()}
    t1 = now()
    out_size = masks["train"].shape[1:]
    forwards = 0

    def tokens_of(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        nonlocal forwards
        forwards += len(x)
        with torch.no_grad(), autocast_context(device, args.autocast):
            feats = backbone.forward_features(preprocess(x.to(device)))
        return feats.tokens, tuple(feats.grid)

    def predict(head: nn.Module, split: str) -> np.ndarray:
        head.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(images[split]), args.batch_size):
                tokens, grid = tokens_of(images[split][start : start + args.batch_size])
                out.append(class_map(head(tokens, grid, out_size)).to(torch.uint8).cpu())
        return torch.cat(out).numpy()

    with seeded(args.seed):
        head = create_segmentation_head("linear", backbone.token_dim, n_classes)
    heads = nn.ModuleList([head])
    n = len(images["train"])
    opt, sched = head_optimizer(
        heads.to(device), [args.lr], 1e-4, args.epochs * math.ceil(n / args.batch_size), 0
    )
    shuffle = torch.Generator().manual_seed(args.seed)
    best_dice, best_epoch, best_state = -math.inf, 0, None
    head_autocast = args.autocast and device.type == "cuda"  # as train_seg_probe: the head in float32 on CPU
    with seeded(args.seed, device):
        for epoch in range(1, args.epochs + 1):
            head.train()
            for rows in row_batches(n, args.batch_size, shuffle):
                if len(rows) < 2:  # as train_seg_probe: batch norm cannot train on one image
                    continue
                tokens, grid = tokens_of(images["train"][torch.from_numpy(rows)])
                target = torch.from_numpy(masks["train"][rows]).to(device)  # uint8, as train_seg_probe
                opt.zero_grad(set_to_none=True)
                with autocast_context(device, head_autocast):
                    loss = task.loss(head(tokens, grid, out_size), target)
                loss.backward()
                opt.step()
                sched.step()
            if epoch == args.epochs or epoch % max(1, args.eval_every) == 0:
                dice = mean_dice(masks["val"], predict(head, "val"), n_classes)
                if best_state is None or dice > best_dice:
                    best_dice, best_epoch, best_state = dice, epoch, copy.deepcopy(head.state_dict())
    t2 = now()
    head.load_state_dict(best_state)
    pred = predict(head, "test")
    t3 = now()
    return {
        "prepare": t1 - t0,
        "train": t2 - t1,
        "test": t3 - t2,
        "total": t3 - t0,
        "forwards": forwards,
        "best_epoch": best_epoch,
        "val_dice": best_dice,
        "test_dice": mean_dice(masks["test"], pred, n_classes),
    }


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("MEDADAPT_KVASIR"),
        help="Kvasir-SEG folder (a segfolder: root); default $MEDADAPT_KVASIR, else synthetic masks",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help=f"first N train images; 0 or unset = all of Kvasir's train part ({SYNTHETIC_TRAIN} synthetic)",
    )
    parser.add_argument(
        "--n-eval",
        type=int,
        default=0,
        help="first N val and test images; 0 = all (synthetic: max(16, n_train / 4)) (default: %(default)s)",
    )
    parser.add_argument("--backbone", default=BACKBONE, help="random init (default: %(default)s)")
    parser.add_argument(
        "--img-size", type=int, default=224, help="image and model size (default: %(default)s)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="the linear probe's schedule in docs/results/segmentation_kvasir.md (default: %(default)s)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="one head per side (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (default: %(default)s)")
    parser.add_argument(
        "--extract-batch-size",
        type=int,
        default=None,
        help="extraction batch (default: --batch-size, the batch the reference runs the backbone on)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=5, help="validation every N epochs (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    add_run_args(parser)
    parser.add_argument("--scratch", default=None, help="feature cache folder (default: a temp folder)")
    parser.add_argument("--note", default="", help="a line about the machine's state, added to the output")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    args.autocast = not args.no_autocast
    args.extract_batch_size = args.extract_batch_size or args.batch_size
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads)
    splits, data = load_splits(args)
    t0 = now()
    masks = {s: uint8_masks(ds) for s, ds in splits.items()}
    mask_seconds = (now() - t0).wall
    with seeded(0):
        backbone = create_backbone(
            args.backbone, pretrained=False, img_size=args.img_size, data_chans=splits["train"].n_channels
        )
    backbone = backbone.eval().to(args.device)
    preprocess = Preprocess.for_backbone(backbone.spec, (args.img_size, args.img_size))
    sizes = {s: len(ds) for s, ds in splits.items()}
    print(f"{data}: {sizes}; masks loaded in {mask_seconds:.1f} s; cached side ...", file=sys.stderr)
    with scratch_folder(args.scratch) as cache:
        cached = run_cached(args, splits, masks, backbone, preprocess, cache / "features")
    print(f"  {cached['total'].wall:.1f} s; reference ...", file=sys.stderr)
    ref = run_reference(args, splits, masks, backbone, preprocess)
    print(f"  {ref['total'].wall:.1f} s", file=sys.stderr)
    return {"cached": cached, "ref": ref, "data": data, "sizes": sizes, "mask_seconds": mask_seconds}


def projection(
    cached: dict, ref: dict, epochs: int, clock: str, at: tuple[int, ...] = (10, 20, 40, 100)
) -> str:
    """Speed-up at other epoch counts from this run's fixed and per-epoch seconds (validation included)."""

    def parts(r: dict) -> tuple[float, float]:
        s = {k: getattr(r[k], clock) for k in ("prepare", "test", "train")}
        return s["prepare"] + s["test"], s["train"] / epochs

    (cf, ce), (rf, re) = parts(cached), parts(ref)
    points = ", ".join(f"{e}: {(rf + e * re) / (cf + e * ce):.1f}x" for e in at)
    return (
        f"Speed-up projected from this run's {'CPU' if clock == 'cpu' else 'wall'} seconds (fixed: extraction "
        f"or image loading + test; per epoch: "
        f"training with its validations): {points}; limit (epochs -> inf) {re / ce:.1f}x, the cost of a "
        f"reference epoch over a cached one ({re:.2f} s vs {ce:.2f} s)."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    m = measure(args)
    cached, ref = m["cached"], m["ref"]
    speedup, cpu_speedup = ref["total"].wall / cached["total"].wall, ref["total"].cpu / cached["total"].cpu
    # one CPU thread: process CPU time is the work, whatever else runs on a shared machine; else wall-clock
    by_cpu = args.device == "cpu" and args.threads == 1
    measure_name, judged = ("CPU time", cpu_speedup) if by_cpu else ("wall-clock", speedup)
    diff = cached["test_dice"] - ref["test_dice"]
    ok = judged >= SPEEDUP_TARGET and abs(diff) <= DICE_TOLERANCE
    rows = [
        _row("cached tokens (extract once, train_seg_probe)", cached, "extract train+val+test"),
        _row("reference (backbone in every step)", ref, "decode images into memory"),
    ]
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: speed-up {judged:.1f}x by {measure_name} (wall-clock {speedup:.1f}x, CPU "
        f"time {cpu_speedup:.1f}x), target >= {SPEEDUP_TARGET:g}x; test Dice cached {cached['test_dice']:.4f} vs reference "
        f"{ref['test_dice']:.4f}, difference {diff:+.4f} (target |diff| <= {DICE_TOLERANCE:g})"
    )
    precision = "bf16 autocast" if runs_bf16(args.device, args.autocast) else "float32"
    notes = [
        f"Data: {m['data']}, {m['sizes']} images at {args.img_size} px (train / val / test). Backbone "
        f"`{args.backbone}`, RANDOM INIT (no pretrained weights on this machine; one draw, seed 0, shared by "
        f"both sides), run in {precision} on {args.device}; tokens {cached['tokens_mb']:.0f} MB float16 on "
        f"disk. Head `linear` (BN + 1x1 conv + bilinear upsampling), one LR ({args.lr:g}) per side, "
        f"{args.epochs} epochs, batch {args.batch_size}, validation Dice every {args.eval_every} epochs (best "
        f"epoch kept), seed {args.seed}, AdamW + cosine schedule, loss CE + soft Dice at full resolution.",
        f"Masks loaded once as uint8 before both sides, untimed ({m['mask_seconds']:.1f} s); both sides decode "
        f"images only. The backbone runs on batches of {args.extract_batch_size} (extraction) and "
        f"{args.batch_size} (reference).",
        projection(cached, ref, args.epochs, "cpu" if by_cpu else "wall"),
        f"Machine: {machine()}. Wall-clock and process CPU seconds.",
    ]
    if args.note:
        notes.append(args.note)
    title = "Linear segmentation probe: cached tokens vs the backbone in every step"
    report(title, markdown_table(rows), verdict, args.out, notes)
    if args.out:
        prepend_command(args.out)
    return 0


def _row(name: str, r: dict[str, Any], prepare: str) -> dict[str, Any]:
    seconds: dict[str, Seconds] = {k: r[k] for k in ("prepare", "train", "test", "total")}
    return {
        "side": name,
        "once before training": prepare,
        "images through the backbone": r["forwards"],
        "once s": seconds["prepare"].wall,
        "training + validation s": seconds["train"].wall,
        "test s": seconds["test"].wall,
        "total wall s": seconds["total"].wall,
        "total CPU s": seconds["total"].cpu,
        "best epoch": r["best_epoch"],
        "val Dice": r["val_dice"],
        "test Dice": r["test_dice"],
    }


if __name__ == "__main__":
    sys.exit(main())
