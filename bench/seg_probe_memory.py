"""Peak memory of the cached-token segmentation probe stays flat as the dataset grows (tokens memory-mapped).

Each size runs in a fresh Python subprocess the steps ``medadapt probe`` runs on a mask dataset
(``medadapt.driver.seg_probe.run_seg_probe``), with the package's own functions:

1. ``extract``: ``extract_features(..., with_tokens=True)`` over train, val and test into an on-disk cache;
2. ``masks``: the driver's mask loader (``medadapt.driver.seg_outputs.split_masks``) for the three splits;
3. ``train``: ``train_seg_probe`` (one ``linear`` head) on the memory-mapped tokens, with its validations;
4. ``evaluate``: the selected head predicts val and test, scored by the driver's ``seg_scores`` (Dice, IoU,
   HD95).

The peak resident memory of each step is the process's ``VmHWM`` (``/proc/self/status``), reset before the
step by ``medadapt.training.loop.reset_peak_memory`` (``/proc/self/clear_refs``) and read by ``peak_memory``,
as a probe cell measures its own peak; the whole run's peak is the largest. ``VmHWM`` counts the pages of
the memory-mapped token file that the process has read (``RssFile``) as well as its own memory
(``RssAnon``), so a thread also samples both every few milliseconds and reports their largest values.

The synthetic images (one ellipse on noise, :class:`seg_probe_speed.SyntheticSegDataset`) are made per
index, so the dataset itself does not grow; train, val and test all grow with the size (val = test =
train / 5).

Target: peak memory at the largest size / at the smallest < 1.3.

    python bench/seg_probe_memory.py                                   # 100 and 1000 train images, 224 px
    python bench/seg_probe_memory.py --sizes 100 300 1000 --backbone timm:vit_small_patch14_dinov2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _common import machine, markdown_table, report
from seg_probe_speed import SyntheticSegDataset

TARGET = 1.3
#: ViT-S/14 (DINOv2 architecture) cut to 4 blocks: the tokens of a ViT-S/14 (256 x 384 at 224 px, what the
#: cache holds), a third of its compute.
SMALL_VIT = "timm:vit_small_patch14_dinov2?depth=4"
PHASES = ("extract", "masks", "train", "evaluate")
_STATUS = Path("/proc/self/status")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="train images per run; val and test are a fifth each (default: %(default)s)",
    )
    parser.add_argument("--backbone", default=SMALL_VIT, help="random init (default: %(default)s)")
    parser.add_argument(
        "--img-size", type=int, default=224, help="image and model size (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (default: %(default)s)")
    parser.add_argument(
        "--extract-batch-size", type=int, default=64, help="extraction batch (default: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: one run
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- child process
def _status_kb(*keys: str) -> dict[str, int]:
    out = {}
    for line in _STATUS.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


class Sampler:
    """A thread reading ``RssAnon`` and ``RssFile`` every ``interval`` s; ``take()`` returns their largest
    values (MB) since the previous ``take()``."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peaks, self.lock = interval, {"RssAnon": 0, "RssFile": 0}, threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = _status_kb("RssAnon", "RssFile")
        with self.lock:
            for k, v in now.items():
                self.peaks[k] = max(self.peaks[k], v)

    def take(self) -> dict[str, float]:
        self._sample()
        with self.lock:
            out = {k: v / 1024 for k, v in self.peaks.items()}
            self.peaks = dict.fromkeys(self.peaks, 0)
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def child(args: argparse.Namespace) -> None:
    """One run with ``args.child`` train images in this (fresh) process; prints a JSON line."""
    from medadapt._device import seeded
    from medadapt.backbones import create_backbone
    from medadapt.data import Preprocess
    from medadapt.driver.seg_outputs import seg_scores, split_masks
    from medadapt.features import extract_features
    from medadapt.training.loop import peak_memory, reset_peak_memory
    from medadapt.training.seg_probe import train_seg_probe

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    n = args.child
    sizes = {"train": n, "val": max(2, n // 5), "test": max(2, n // 5)}
    splits = {
        s: SyntheticSegDataset(k, size=args.img_size, seed=i, split=s)
        for i, (s, k) in enumerate(sizes.items())
    }
    with seeded(0):
        backbone = create_backbone(args.backbone, pretrained=False, img_size=args.img_size, data_chans=3)
    preprocess = Preprocess.for_backbone(backbone.spec, (args.img_size, args.img_size))
    sampler = Sampler()
    peaks: dict[str, float] = {"setup": peak_memory(cpu) / 2**20}
    rss: dict[str, dict[str, float]] = {"setup": sampler.take()}
    seconds: dict[str, float] = {}
    starts: dict[str, dict[str, float]] = {}

    def phase(name: str, fn):
        reset_peak_memory(cpu)
        sampler.take()
        starts[name] = {k: v / 1024 for k, v in _status_kb("VmRSS", "RssAnon", "RssFile").items()}
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - t0
        peaks[name] = peak_memory(cpu) / 2**20
        rss[name] = sampler.take()
        return out

    with tempfile.TemporaryDirectory(prefix="medadapt-bench-") as cache:
        feats = phase("extract", lambda: {
            s: extract_features(backbone, ds, preprocess, cache_dir=cache, with_tokens=True,
                                batch_size=args.extract_batch_size)
            for s, ds in splits.items()
        })  # fmt: skip
        masks = phase("masks", lambda: {s: split_masks(ds) for s, ds in splits.items()})
        result = phase("train", lambda: train_seg_probe(
            feats["train"], feats["val"], masks["train"], masks["val"], num_classes=2, head="linear",
            lrs=[1e-3], epochs=args.epochs, batch_size=args.batch_size, eval_every=args.epochs,
        ))  # fmt: skip

        def evaluate() -> dict[str, float]:
            scores = {}
            for split in ("val", "test"):  # as run_seg_probe scores a cell
                truth = masks[split]
                pred = result.predict(feats[split], out_size=truth.shape[1:], batch_size=args.batch_size)
                scores[split] = seg_scores(truth, pred, 2)["dice"]
            return scores

        dice = phase("evaluate", evaluate)
        tokens_mb = sum(f.tokens.nbytes for f in feats.values()) / 2**20
        masks_mb = sum(m.nbytes for m in masks.values()) / 2**20
    sampler.close()
    print(json.dumps({"sizes": sizes, "peaks": peaks, "rss": rss, "starts": starts, "seconds": seconds, "tokens_mb": tokens_mb,
                      "masks_mb": masks_mb, "dice": dice, "tokens_shape": list(feats["train"].tokens.shape)}))  # fmt: skip


# ------------------------------------------------------------------------------------------------- parent
def run_child(args: argparse.Namespace, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--backbone", args.backbone]
    for flag in ("img_size", "epochs", "batch_size", "extract_batch_size", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"child run with {n} train images failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_of(runs: list[dict]) -> list[dict]:
    base = max(runs[0]["peaks"].values())
    rows = []
    for r in runs:
        peak = max(r["peaks"].values())
        rows.append({
            "train / val / test images": " / ".join(str(r["sizes"][s]) for s in ("train", "val", "test")),
            "tokens on disk MB": r["tokens_mb"],
            "masks held (uint8) MB": r["masks_mb"],
            "setup MB": r["peaks"]["setup"],
            **{f"{p} peak MB": r["peaks"][p] for p in PHASES},
            "peak MB": peak,
            "growth MB": peak - base,
            "peak / smallest": peak / base,
            "train: max RssAnon / RssFile MB": f"{r['rss']['train']['RssAnon']:.0f} / {r['rss']['train']['RssFile']:.0f}",
        })  # fmt: skip
    return rows


def detail_rows(runs: list[dict]) -> list[dict]:
    """Per size and step: resident memory at its start, its VmHWM peak, and the largest sampled anonymous /
    file-backed parts."""
    return [
        {
            "train images": r["sizes"]["train"],
            "step": p,
            "RSS at start MB": r["starts"][p]["VmRSS"],
            "peak (VmHWM) MB": r["peaks"][p],
            "peak - start MB": r["peaks"][p] - r["starts"][p]["VmRSS"],
            "max RssAnon MB": r["rss"][p]["RssAnon"],
            "max RssFile MB": r["rss"][p]["RssFile"],
            "seconds": r["seconds"][p],
        }
        for r in runs
        for p in PHASES
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    runs = []
    for n in args.sizes:
        print(f"{n} train images in a fresh process ...", file=sys.stderr)
        runs.append(run_child(args, n))
    rows = rows_of(runs)
    ratio = rows[-1]["peak / smallest"]
    worst = max(r["peak / smallest"] for r in rows)
    growth = {p: runs[-1]["peaks"][p] - runs[0]["peaks"][p] for p in ("setup", *PHASES)}
    grew = max(growth, key=growth.get)
    verdict = (
        f"{'PASS' if worst < TARGET else 'FAIL'}: peak memory with {args.sizes[-1]} train images is {ratio:.2f}x "
        f"the peak with {args.sizes[0]} (target < {TARGET}); worst ratio {worst:.2f}; the step that grew most: "
        f"{grew} (+{growth[grew]:.0f} MB)"
    )
    first = runs[0]
    notes = [
        f"`{args.backbone}` (RANDOM INIT) at {args.img_size} px; tokens {first['tokens_shape'][1:]} float16 per "
        f"image, cached on disk and memory-mapped; `linear` head, one LR, {args.epochs} epochs (one validation), "
        f"batch {args.batch_size}; synthetic RGB ellipse masks made per index. Each size in a fresh "
        "subprocess; a step's peak = VmHWM since it started (reset through /proc/self/clear_refs, as a probe "
        "cell measures it); setup = imports, backbone and datasets. RssAnon / RssFile: largest sampled values "
        "during training (RssFile: token-file pages read through the memory map, which VmHWM counts too).",
        "",
        "Per step (RSS at its start, its peak, the largest sampled anonymous and file-backed parts, seconds):",
        "",
        markdown_table(detail_rows(runs)),
        "",
        "Test Dice (mean per image): "
        + ", ".join(f"{r['sizes']['train']} images {r['dice']['test']:.3f}" for r in runs)
        + ".",
        f"Machine: {machine().rsplit(',', 1)[0]}, {args.threads} thread(s).",
    ]
    report("Segmentation probe (cached tokens) peak memory vs dataset size", markdown_table(rows), verdict,
           args.out, notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
