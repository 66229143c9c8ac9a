"""Extraction throughput: ``medadapt.features.extract_features`` vs a plain hand-written batched loop.

Measures images/s and GFLOP/s of a cold feature extraction (a fresh, empty cache directory every repetition,
so the whole cold path is timed: cache key with weight digest and dataset fingerprint, data loader and
collate, preprocessing, forward, streaming rows into preallocated ``.npy`` files, the final rename and re-open)
against the loop one would write by hand over the same backbone on the same uint8 images: under
``torch.inference_mode`` and the same ``medadapt._device.autocast_context``, slice a batch off a uint8 tensor
already in memory, preprocess it on the tensor, ``forward_features``, copy the embeddings (and tokens, as
float16) into preallocated numpy arrays. Same data, batch size and threads; a one-batch warm-up of each, then
the repetitions interleaved (A B B A A B ...). FLOPs per image are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOPs).

Target: medadapt / plain >= 0.95 for every backbone, with and without tokens. The table shows the measured
wall-clock ratio (median of the per-pair ratios) and, on CPU, a noise-robust one: the process CPU time that
medadapt adds outside the forwards of the data batches (which both paths share, and into which other
processes on a shared machine put most of the noise) is measured directly, by wrapping ``forward_features``,
and set against the plain loop's CPU time. The verdict uses the latter on CPU and the wall-clock ratio on GPU.

    MEDADAPT_DATA=/path/to/medmnist python bench/extract_throughput.py
    python bench/extract_throughput.py --limit 0 --reps 5 --backbones timm:vit_base_patch14_dinov2 --img-size 224
    python bench/extract_throughput.py --dataset synthetic --limit 2048 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from _common import (
    Prefix,
    add_data_args,
    add_run_args,
    apply_threads,
    load_split,
    machine,
    markdown_table,
    report,
)
from torch.utils.flop_counter import FlopCounterMode

from medadapt._device import autocast_context
from medadapt.backbones import Backbone, create_backbone
from medadapt.data import MedicalDataset, Preprocess
from medadapt.features import extract_features

TARGET = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser)
    parser.add_argument("--split", default="train", help="dataset split (default: %(default)s)")
    parser.add_argument(
        "--limit", type=int, default=192, help="first N images of the split; 0 = all (default: %(default)s)"
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["timm:vit_small_patch14_dinov2", "timm:resnet18"],
        help="backbone addresses, random init (default: %(default)s)",
    )
    parser.add_argument("--img-size", type=int, default=112, help="model input size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument(
        "--reps", type=int, default=4, help="timed repetitions of each (default: %(default)s)"
    )
    parser.add_argument(
        "--tokens",
        choices=["both", "off", "on"],
        default="both",
        help="with_tokens=False, True, or both rows (default: %(default)s)",
    )
    add_run_args(parser)
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of one extract_features call per row"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def plain_extract(
    backbone: Backbone,
    images: torch.Tensor,
    preprocess: Preprocess,
    *,
    batch_size: int,
    device: torch.device,
    autocast: bool,
    with_tokens: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The hand-written baseline: batches sliced off an in-memory uint8 tensor, features into numpy arrays."""
    emb = tok = None
    with torch.inference_mode(), autocast_context(device, autocast):
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size].to(device, non_blocking=True))
            feats = backbone.forward_features(x)
            if emb is None:  # allocated lazily: the shapes come from the first batch
                emb = np.empty((len(images), feats.embedding.shape[1]), dtype=np.float32)
                if with_tokens:
                    tok = np.empty((len(images), *feats.tokens.shape[1:]), dtype=np.float16)
            stop = start + x.shape[0]
            emb[start:stop] = feats.embedding.float().cpu().numpy()
            if tok is not None:
                tok[start:stop] = feats.tokens.to(torch.float16).cpu().numpy()
    return emb, tok


def medadapt_extract(backbone, dataset, preprocess, *, scratch: Path, **kwargs) -> tuple[Seconds, np.ndarray]:
    """Time of one cold ``extract_features`` call into a fresh, empty cache directory, and its embeddings.

    Creating and removing the scratch directory is not timed.
    """
    cache = Path(tempfile.mkdtemp(dir=scratch))
    try:
        t0 = _now()
        fs = extract_features(backbone, dataset, preprocess, cache_dir=cache, **kwargs)
        return _now() - t0, np.array(fs.embeddings)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def timed_plain(backbone, images, preprocess, **kwargs) -> tuple[Seconds, np.ndarray]:
    t0 = _now()
    emb, _ = plain_extract(backbone, images, preprocess, **kwargs)
    return _now() - t0, emb


class Seconds(NamedTuple):
    wall: float
    cpu: float  # CPU time of this process (all its threads): what the work costs, whatever else runs

    def __sub__(self, other: Seconds) -> Seconds:  # type: ignore[override]
        return Seconds(self.wall - other.wall, self.cpu - other.cpu)


def _now() -> Seconds:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return Seconds(time.perf_counter(), time.process_time())


def flops_per_image(backbone: Backbone, preprocess: Preprocess, image: torch.Tensor, device) -> float:
    x = preprocess(image[None].to(device))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        backbone.forward_features(x)
    return float(counter.get_total_flops())


class ForwardClock:
    """Wraps ``backbone.forward_features`` while active and records the process CPU time of every call."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone, self.calls = backbone, []
        self.forward = type(backbone).forward_features.__get__(backbone)

    def __call__(self, x: torch.Tensor):
        t0 = time.process_time()
        out = self.forward(x)
        self.calls.append(time.process_time() - t0)
        return out

    def __enter__(self) -> ForwardClock:
        self.calls = []
        self.backbone.forward_features = self
        return self

    def __exit__(self, *exc) -> None:
        del self.backbone.forward_features  # back to the class's method


def bench_row(
    backbone: Backbone,
    dataset: MedicalDataset,
    images: torch.Tensor,
    preprocess: Preprocess,
    *,
    args: argparse.Namespace,
    with_tokens: bool,
    scratch: Path,
) -> dict:
    device, autocast = torch.device(args.device), not args.no_autocast
    common = dict(batch_size=args.batch_size, device=device, autocast=autocast, with_tokens=with_tokens)

    clock = ForwardClock(backbone)
    added = []  # CPU seconds medadapt spends outside the data batches' forwards, minus the plain loop's

    def run_a(ds=dataset):
        with clock:
            t, emb = medadapt_extract(backbone, ds, preprocess, scratch=scratch, **common)
        return t, emb, t.cpu - sum(clock.calls[1:])  # calls[0] is extract_features' one-image shape probe

    def run_b(x=images):
        with clock:
            t, emb = timed_plain(backbone, x, preprocess, **common)
        return t, emb, t.cpu - sum(clock.calls)

    run_a(Prefix(dataset, args.batch_size))  # warm-up: one batch each
    run_b(images[: args.batch_size])
    times_a, times_b, max_diff = [], [], 0.0
    for i in range(args.reps):  # interleaved A B B A A B ..., so that slow drifts hit both alike
        if i % 2 == 0:
            (t_a, emb_a, out_a), (t_b, emb_b, out_b) = run_a(), run_b()
        else:
            (t_b, emb_b, out_b), (t_a, emb_a, out_a) = run_b(), run_a()
        times_a.append(t_a)
        times_b.append(t_b)
        added.append(out_a - out_b)
        max_diff = max(max_diff, float(np.abs(emb_a - emb_b).max()))  # both compute the same features
    print(f"  medadapt s: {_fmt_times(times_a)}\n  plain s:    {_fmt_times(times_b)}", file=sys.stderr)
    if args.profile:
        _print_profile(run_a, f"{backbone.spec.address} tokens={with_tokens}")
    n = len(dataset)
    rate_a = n / statistics.median(t.wall for t in times_a)
    rate_b = n / statistics.median(t.wall for t in times_b)
    gflop = flops_per_image(backbone, preprocess, images[0], device) / 1e9
    return {
        "backbone": backbone.spec.address,
        "img px": args.img_size,
        "tokens": with_tokens,
        "images": n,
        "GFLOP/img": gflop,
        "medadapt img/s": rate_a,
        "plain img/s": rate_b,
        "medadapt GFLOP/s": rate_a * gflop,
        "plain GFLOP/s": rate_b * gflop,
        "ratio (wall)": statistics.median(b.wall / a.wall for a, b in zip(times_a, times_b)),
        "added CPU s": statistics.median(added),
        "ratio (model)": _model_ratio(times_b, added) if device.type == "cpu" else float("nan"),
        "max |diff|": max_diff,
    }


def _model_ratio(plain: list[Seconds], added: list[float]) -> float:
    """plain / (plain + what medadapt adds), from CPU times: immune to noise in the forwards both paths share."""
    cpu = statistics.median(t.cpu for t in plain)
    return cpu / (cpu + statistics.median(added))


def _fmt_times(times: list[Seconds]) -> str:
    return " ".join(f"{t.wall:.2f} (cpu {t.cpu:.2f})" for t in times)


def _print_profile(fn, label: str) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    print(f"--- cProfile of one extract_features call, {label} (by own time) ---", file=sys.stderr)
    print(buf.getvalue(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    dataset = load_split(args.dataset, args.split, data_root=args.data_root, limit=args.limit)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # the plain loop's input
    token_modes = {"both": [False, True], "off": [False], "on": [True]}[args.tokens]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medadapt-bench-") as scratch:
        for address in args.backbones:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                backbone = create_backbone(
                    address, pretrained=False, img_size=args.img_size, data_chans=dataset.n_channels
                )
            backbone = backbone.eval().to(args.device)
            preprocess = Preprocess.for_backbone(backbone.spec, (args.img_size, args.img_size))
            for with_tokens in token_modes:
                row = bench_row(
                    backbone,
                    dataset,
                    images,
                    preprocess,
                    args=args,
                    with_tokens=with_tokens,
                    scratch=Path(scratch),
                )
                rows.append(row)
                print(f"done: {row['backbone']} tokens={with_tokens}", file=sys.stderr)
    basis = "model" if torch.device(args.device).type == "cpu" else "wall"
    worst = min(r[f"ratio ({basis})"] for r in rows)
    wall = min(r["ratio (wall)"] for r in rows)
    verdict = (
        f"{'PASS' if worst >= TARGET else 'FAIL'}: worst medadapt/plain ratio {worst:.3f} by the {basis} "
        f"ratio (target >= {TARGET}); worst measured wall-clock ratio {wall:.3f}"
    )
    load = f"load average {os.getloadavg()[0]:.1f} at the end"
    notes = [
        f"{dataset.name} {args.split}, batch {args.batch_size}, {args.reps} interleaved repetitions (median), "
        f"device {args.device}, autocast {'off' if args.no_autocast else 'on where native'}; {machine()}; "
        f"{load}.",
        "img/s and GFLOP/s: median wall clock. ratio (wall) = median over repetitions of plain / medadapt wall "
        "time. added CPU s = process CPU time medadapt spends outside the forwards of the data batches (cache "
        "key, shape probe, loader, writes, re-open) minus the same for the plain loop; ratio (model) = plain CPU "
        "time / (plain CPU time + added CPU s), which leaves out the noise other processes put into the "
        "forwards both paths share (the verdict uses it on CPU). max |diff| = largest embedding difference "
        "between the two paths.",
    ]
    report(
        "Feature extraction throughput: medadapt vs a plain loop",
        markdown_table(rows),
        verdict,
        args.out,
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
