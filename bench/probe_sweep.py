"""LR sweep of a linear probe: cached features + one-pass grid (medadapt) vs the naive per-LR loop.

medadapt: extract the train and val features once (cold: a fresh, empty cache directory), then
``medadapt.training.train_probe`` trains one linear head per LR off the cached features in one pass.

naive (the way MedMNIST+ / MedAlmighty-style code trains a linear probe): for each LR separately, train the
head for E epochs with the frozen backbone run on every batch of every epoch (``torch.no_grad`` forward of
the backbone from the uint8 images through a DataLoader, then head forward/backward), evaluate the val set
through the backbone as well, and select on val AUC.

Like-for-like: both sides use the same data, backbone, batch size, seed, LR grid, epochs, evaluation epochs
(``--eval-every``), and medadapt's own head init (``_build_heads``), loss (``loss_fn``), AdamW + per-step
cosine schedule (``head_optimizer``), seeded batch order (``row_batches``), val metric and best-epoch/LR
selection (``_Best``), so only the data path differs. With ``--standardize`` (train_probe's default) the
naive side computes the train statistics with one extra backbone pass, shared by all LRs.

Targets: speedup (naive wall time / medadapt wall time) >= 50x, and best val AUC within 0.005 of each other.
The speedup cannot exceed the ratio of backbone forwards (about LRs x epochs with per-epoch validation), which
the table shows as "forward ratio".

    MEDADAPT_DATA=/path/to/medmnist python bench/probe_sweep.py
    python bench/probe_sweep.py --dataset pneumoniamnist --backbone timm:vit_small_patch14_dinov2 --img-size 56
    python bench/probe_sweep.py --epochs 30 --eval-every 0     # train_probe's defaults: evaluate at the end
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_data_args, add_run_args, apply_threads, load_split, machine, markdown_table, report
from torch.utils.data import DataLoader

from medadapt._device import autocast_context, seeded
from medadapt.backbones import Backbone, create_backbone
from medadapt.data import MedicalDataset, Preprocess, collate
from medadapt.evaluation.metrics import auc
from medadapt.features import extract_features
from medadapt.training import DEFAULT_LRS, loss_fn, to_scores, train_probe

# train_probe's private helpers, reused so that the naive loop differs from it only in the data path
from medadapt.training.probe import _Best, _build_heads, _selection_key, head_optimizer, row_batches

SPEEDUP_TARGET = 50.0
AUC_TOLERANCE = 0.005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser)
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="first N images of train and of val; 0 = all (default: %(default)s)",
    )
    parser.add_argument("--backbone", default="timm:resnet18", help="random init (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=64, help="model input size (default: %(default)s)")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), help="LR grid (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="evaluate val every N epochs and keep the best epoch (MedMNIST+ practice: 1); 0 = only after "
        "the last epoch (train_probe's default) (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="training and extraction (default: %(default)s)"
    )
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    parser.add_argument("--warmup-epochs", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardize the head input with train statistics (train_probe's default: on)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    add_run_args(parser)
    parser.add_argument("--out", default=None, help="also write the markdown tables to this file")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ medadapt
def run_medadapt(backbone, train, val, preprocess, args, scratch: Path) -> dict:
    """Cold extraction of train and val, then the whole LR grid in one train_probe call."""
    kw = dict(batch_size=args.batch_size, device=args.device, autocast=not args.no_autocast)
    cache = Path(tempfile.mkdtemp(dir=scratch))
    try:
        t0 = _now(args.device)
        fs_train = extract_features(backbone, train, preprocess, cache_dir=cache, **kw)
        fs_val = extract_features(backbone, val, preprocess, cache_dir=cache, **kw)
        t_heads = _now(args.device)
        res = train_probe(
            fs_train,
            fs_val,
            head="linear",
            task=train.task,
            num_outputs=train.num_outputs,
            lrs=args.lrs,
            epochs=args.epochs,
            eval_every=args.eval_every or None,
            warmup_epochs=args.warmup_epochs,
            standardize=args.standardize,
            seed=args.seed,
            **kw,
            weight_decay=args.weight_decay,
        )
        seconds, heads_seconds = _now(args.device) - t0, _now(args.device) - t_heads
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    names = [f"lr={lr:g}" for lr in args.lrs]
    return {
        "seconds": seconds,
        "heads_seconds": heads_seconds,
        "forwards": len(train) + len(val),
        "best": res.best,
        "auc": res.val_auc_by_setting[f"lr={res.best['lr']:g}"],
        "auc_by_lr": [res.val_auc_by_setting[n] for n in names],
    }


# --------------------------------------------------------------------------------------------------- naive
@torch.no_grad()
def embed(backbone: Backbone, loader: DataLoader, preprocess: Preprocess, args) -> torch.Tensor:
    """Global embeddings of every batch of ``loader``, the backbone run under ``torch.no_grad``."""
    outs = []
    for batch in loader:
        x = preprocess(batch["image"].to(args.device))
        with autocast_context(args.device, not args.no_autocast):
            outs.append(backbone.forward_features(x).embedding)
    return torch.cat(outs)


class Stopwatch:
    """Accumulates the time spent inside ``with watch:`` blocks."""

    def __init__(self, device) -> None:
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> None:
        self.t0 = _now(self.device)

    def __exit__(self, *exc) -> None:
        self.seconds += _now(self.device) - self.t0


def naive_one_lr(
    backbone, train, val, preprocess, lr: float, args, train_stats, watch: Stopwatch
) -> tuple[_Best, int]:
    """Train one head at ``lr`` with the backbone in the loop; returns its best evaluation and the forwards run.

    ``watch`` times the head's share (forward, backward, optimizer step, val metric) as in train_probe.
    """
    device, amp, task = args.device, not args.no_autocast, train.task
    heads = _build_heads("linear", backbone.num_features, train.num_outputs, 1, {}, args.seed)
    if train_stats is not None:
        heads[0].standardize_with(train_stats)
    steps = math.ceil(len(train) / args.batch_size)
    opt, sched = head_optimizer(
        heads.to(device), [lr], args.weight_decay, args.epochs * steps, args.warmup_epochs * steps
    )
    criterion, shuffle, best, forwards = loss_fn(task), torch.Generator().manual_seed(args.seed), _Best(), 0
    val_loader = DataLoader(val, batch_size=args.batch_size, collate_fn=collate)
    with seeded(args.seed, device):
        for epoch in range(1, args.epochs + 1):
            heads.train()
            order = list(row_batches(len(train), args.batch_size, shuffle))  # train_probe's batch order
            for batch in DataLoader(train, batch_sampler=order, collate_fn=collate):
                x = preprocess(batch["image"].to(device))
                with torch.no_grad(), autocast_context(device, amp):
                    feats = backbone.forward_features(x).embedding
                with watch:
                    with autocast_context(device, amp):
                        logits = heads[0](feats)
                    loss = criterion(logits.float(), batch["label"].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            forwards += len(train)
            if epoch == args.epochs or (args.eval_every and epoch % args.eval_every == 0):
                heads.eval()
                feats = embed(backbone, val_loader, preprocess, args)
                with watch:
                    with torch.no_grad(), autocast_context(device, amp):
                        logits = heads[0](feats).float().cpu()
                    v_loss = criterion(logits, torch.as_tensor(val.labels)).item()
                    v_auc = float(auc(task, val.labels, to_scores(task, logits).numpy()))
                    best.update(epoch, v_auc, v_loss, heads[0])
                forwards += len(val)
    return best, forwards


def run_naive(backbone, train, val, preprocess, args) -> dict:
    t0, watch = _now(args.device), Stopwatch(args.device)
    stats, forwards = None, 0
    if args.standardize:  # the train statistics the head standardizes with: one backbone pass, shared
        stats = embed(
            backbone, DataLoader(train, batch_size=args.batch_size, collate_fn=collate), preprocess, args
        )
        stats, forwards = stats.float().cpu().numpy(), len(train)
    results = []
    for lr in args.lrs:
        best, n = naive_one_lr(backbone, train, val, preprocess, lr, args, stats, watch)
        results.append(best)
        forwards += n
        print(f"  naive lr={lr:g}: val AUC {best.auc:.4f} (epoch {best.epoch})", file=sys.stderr)
    seconds = _now(args.device) - t0
    i = max(range(len(results)), key=lambda j: _selection_key(results[j].auc, results[j].loss))
    return {
        "seconds": seconds,
        "heads_seconds": watch.seconds,
        "forwards": forwards,
        "best": {"lr": float(args.lrs[i]), "epoch": results[i].epoch},
        "auc": results[i].auc,
        "auc_by_lr": [b.auc for b in results],
    }


def _now(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------------- main
def build(args) -> tuple[Backbone, MedicalDataset, MedicalDataset, Preprocess]:
    train = load_split(args.dataset, "train", data_root=args.data_root, limit=args.limit)
    val = load_split(args.dataset, "val", data_root=args.data_root, limit=args.limit)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        backbone = create_backbone(
            args.backbone, pretrained=False, img_size=args.img_size, data_chans=train.n_channels
        )
    backbone = backbone.eval().to(args.device)
    preprocess = Preprocess.for_backbone(backbone.spec, (args.img_size, args.img_size))
    return backbone, train, val, preprocess


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    backbone, train, val, preprocess = build(args)
    with tempfile.TemporaryDirectory(prefix="medadapt-bench-") as scratch:
        print("running medadapt (extract once + one-pass grid) ...", file=sys.stderr)
        ours = run_medadapt(backbone, train, val, preprocess, args, Path(scratch))
        print(f"  {ours['seconds']:.1f} s; running the naive per-LR loop ...", file=sys.stderr)
        naive = run_naive(backbone, train, val, preprocess, args)
    speedup = naive["seconds"] / ours["seconds"]
    gap = abs(naive["auc"] - ours["auc"])
    rows = [
        _row("medadapt: cached features, one-pass grid", ours),
        _row("naive: backbone in every step", naive),
    ]
    per_lr = [
        {"LR": f"{lr:g}", "medadapt val AUC": a, "naive val AUC": b, "|diff|": abs(a - b)}
        for lr, a, b in zip(args.lrs, ours["auc_by_lr"], naive["auc_by_lr"])
    ]
    ok = speedup >= SPEEDUP_TARGET and gap <= AUC_TOLERANCE
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: speedup {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x), best val AUC "
        f"differs by {gap:.4f} (target <= {AUC_TOLERANCE}); forward ratio {naive['forwards'] / ours['forwards']:.1f}x"
    )
    notes = [
        f"{train.name}: train {len(train)}, val {len(val)}; {args.backbone} (random init) at {args.img_size} px; "
        f"{len(args.lrs)} LRs x {args.epochs} epochs, batch {args.batch_size}, val every "
        f"{args.eval_every or args.epochs} epoch(s), standardize {args.standardize}, seed {args.seed}; "
        f"device {args.device}; {machine()}.",
        "forwards = images run through the backbone (the speedup cannot exceed their ratio); heads s = head "
        "forward/backward/optimizer and val metric (all of train_probe for medadapt); per-LR val AUC is the best "
        "evaluated epoch of each LR.",
        "",
        markdown_table(per_lr),
    ]
    table = markdown_table(rows)
    report("LR sweep of a linear probe: medadapt vs the naive per-LR loop", table, verdict, args.out, notes)
    return 0


def _row(name: str, r: dict) -> dict:
    return {
        "method": name,
        "backbone forwards": r["forwards"],
        "wall s": r["seconds"],
        "data + backbone s": r["seconds"] - r["heads_seconds"],
        "heads s": r["heads_seconds"],
        "selected": f"lr={r['best']['lr']:g}, epoch {r['best']['epoch']}",
        "best val AUC": r["auc"],
    }


if __name__ == "__main__":
    sys.exit(main())
