"""``medadapt`` command line: a thin table of subcommands over the Python API.

Every user error becomes one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._cli_report import add_compare, add_report
from .errors import ConfigError, MedadaptError

__all__ = ["main"]

log = logging.getLogger("medadapt")


def _add_run_flags(p: argparse.ArgumentParser, *, heads: str) -> None:
    """Flags every run shares (data, backbone, input, seeds, device, output)."""
    p.add_argument("--config", help="YAML file of settings (flags override it)")
    p.add_argument("--dataset", help="dataset address, e.g. medmnist:breastmnist or csv:/data/labels.csv")
    p.add_argument(
        "--backbone", help="backbone address or catalogue name, e.g. timm:vit_small_patch14_dinov2.lvd142m"
    )
    p.add_argument(
        "--head", help=f"head on the backbone's output: {heads} (medadapt list heads; default: linear)"
    )
    p.add_argument("--head-option", dest="head_kwargs", action="append", metavar="KEY=VALUE",
                   help="a head option, e.g. --head-option levels=4 --head-option stride_out=16 (repeatable)")  # fmt: skip
    p.add_argument("--size", type=int, help="stored dataset resolution (MedMNIST: 28, 64, 128, 224)")
    p.add_argument("--img-size", type=int, help="backbone input size (default: --size)")
    p.add_argument(
        "--resize-mode",
        help="resize (interpolate), pad (centre on a black canvas) or pad_mean (on the normalisation "
        "mean, as the MedMNIST+ reference code)",
    )
    p.add_argument("--interpolation", help="nearest, bilinear or bicubic")
    p.add_argument(
        "--channel-mode", help="gray images: sum, mean, first (fold into the first conv) or repeat"
    )
    p.add_argument("--weights", help="local weights file (safetensors / .pth) or HF directory")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--no-pretrained", dest="pretrained", action="store_const", const=False, default=None,
                      help="random initialisation (recorded in the results)")  # fmt: skip
    init.add_argument("--pretrained", dest="pretrained", action="store_const", const=True, default=None,
                      help="pretrained weights (the default), over a preset's or config's pretrained: false")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed (default: 0)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-autocast", dest="autocast", action="store_const", const=False, default=None,
                   help="float32 throughout (default: bf16 autocast where the hardware has native bf16)")  # fmt: skip
    p.add_argument("--data-root", help="folder of dataset files (default: $MEDADAPT_DATA or ~/.medmnist)")
    p.add_argument("--num-workers", type=int, help="data-loading processes (default: 0, in the main process)")
    p.add_argument("--skip-bad-rows", action="store_const", const=True, default=None,
                   help="drop unreadable / unlabelled rows of a CSV dataset and report how many")  # fmt: skip
    p.add_argument("--out", help="output directory")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="frozen backbone + linear / attention / kNN probe",
        description="Extract frozen features once (cached), train a grid of probes, report val/test metrics.",
    )
    _add_run_flags(p, heads="any head")
    p.add_argument("--lrs", type=float, nargs="+", help="LR grid trained in one pass (default 1e-3 ... 1e-5)")
    p.add_argument("--ks", type=int, nargs="+", help="k grid for the kNN head")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--extract-batch-size", type=int)
    p.add_argument(
        "--cache-dir", help="feature cache (default: $MEDADAPT_CACHE or ~/.cache/medadapt/features)"
    )
    p.set_defaults(func=_run_probe)


_TRAIN_FLAGS = {
    "optimizer": dict(help="adamw, adam or sgd"),
    "lr": dict(type=float, help="learning rate (strategies derive theirs from it)"),
    "weight_decay": dict(type=float),
    "epochs": dict(type=int),
    "batch_size": dict(type=int),
    "schedule": dict(help="cosine, multistep or constant"),
    "milestones": dict(
        type=int, nargs="+", help="multistep: epochs after which the LR is multiplied by --gamma"
    ),
    "gamma": dict(type=float),
    "warmup_epochs": dict(type=int),
    "grad_clip": dict(type=float, help="clip the gradient norm"),
    "class_weights": dict(
        action="store_const", const=True, default=None, help="inverse-frequency loss weights"
    ),
    "early_stop": dict(help="val_auc or val_loss (segmentation: val_auc means val_dice)"),
    "patience": dict(type=int),
    "select_on": dict(
        help="val_auc (default; ties: lower loss; segmentation: val_dice), val_auc_first (official MedMNIST), "
        "val_loss or last"
    ),
    "loss": dict(help="segmentation loss: ce, dice or ce+dice (default)"),
    "augment": dict(help="none, light or natural"),
    "eval_every": dict(type=int),
    "checkpoint_every": dict(
        type=int,
        help="write the checkpoint every n epochs and after the last (default 1; --resume replays the rest)",
    ),
}


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="train backbone + head under one or more strategies side by side",
        description="Fine-tune with a strategy (full, differential, llrd, unfreeze, lora, ...) or a protocol "
        "preset; every epoch is checkpointed, --resume continues a killed run.",
    )
    _add_run_flags(p, heads="a trainable head")
    _add_training_flags(p)
    p.set_defaults(func=_run_finetune)


def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a frozen teacher (foundation model + head, or an ensemble) into a student CNN",
        description="Train the student alone and distilled (alpha * CE + (1 - alpha) * t^2 * KL(teacher || "
        "student)) side by side over seeds; report teacher / student / distilled with a paired test, the "
        "ablation grid, t-SNE and Grad-CAM figures.",
    )
    _add_run_flags(p, heads="a trainable head")
    p.add_argument(
        "--student", dest="backbone", help="the student's backbone address (default timm:resnet18)"
    )
    p.add_argument("--teacher", nargs="+",
                   help="run directories / saved-model folders (all models found form one ensemble), or a "
                   "backbone address whose linear probe is trained first")  # fmt: skip
    p.add_argument(
        "--teacher-img-size", type=int, help="input size of a backbone teacher (default --img-size)"
    )
    p.add_argument("--teacher-weights", help="local weights file of a backbone teacher")
    p.add_argument("--teacher-no-pretrained", dest="teacher_pretrained", action="store_const", const=False,
                   default=None, help="random-init backbone teacher (for tests and offline checks)")  # fmt: skip
    p.add_argument("--teacher-channel-mode", help="gray images into a backbone teacher (default sum)")
    p.add_argument("--teacher-pairing",
                   help="saved teachers: 'ensemble' (default; every model found, for every seed) or 'seed' "
                   "(student seed S taught by the teacher models of seed S)")  # fmt: skip
    p.add_argument("--alpha", type=float, help="weight of the label loss (default 0.2)")
    p.add_argument("--temperature", type=float, help="softmax temperature t (default 2.0)")
    p.add_argument("--alphas", type=float, nargs="+", help="ablation grid over alpha (with --temperatures)")
    p.add_argument("--temperatures", type=float, nargs="+", help="ablation grid over t")
    p.add_argument("--no-baseline", dest="baseline", action="store_const", const=False, default=None,
                   help="do not train the student alone")  # fmt: skip
    p.add_argument("--no-figures", dest="figures", action="store_const", const=False, default=None,
                   help="skip t-SNE, Grad-CAM and heatmap PNGs")  # fmt: skip
    p.add_argument("--gradcam-images", type=int, help="test images in the Grad-CAM figure (default 8)")
    p.add_argument(
        "--cache-dir", help="feature cache (default: $MEDADAPT_CACHE or ~/.cache/medadapt/features)"
    )
    _add_training_flags(p)
    p.set_defaults(func=_run_distill)


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """Preset, strategy, LR search, resume and the training recipe (finetune and distill)."""
    p.add_argument(
        "--preset", help="protocol preset (medadapt list presets), applied before --config and flags"
    )
    p.add_argument("--strategy", help="medadapt list strategies")
    p.add_argument("--option", dest="strategy_options", action="append", metavar="KEY=VALUE",
                   help="a strategy option, e.g. --option r=8 --option encoder_lr=1e-7 (repeatable)")  # fmt: skip
    p.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        help="search these LRs, keeping the best by the --select-on rule (validation AUC, or val loss)",
    )
    p.add_argument("--resume", action="store_const", const=True, default=None,
                   help="continue from the checkpoints in --out")  # fmt: skip
    for name, kwargs in _TRAIN_FLAGS.items():  # a value's metavar without the "train." of the dest
        kwargs = kwargs if "action" in kwargs else {"metavar": name.upper(), **kwargs}
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"train.{name}", **kwargs)


def _training_config(cls, args: argparse.Namespace):
    """``cls`` from preset < --config < flags, checked (see :func:`_checked`)."""
    from .config import load_preset, load_yaml

    flags = _flags(args)
    if flags.get("strategy_options"):
        flags["strategy_options"] = _key_values(flags["strategy_options"], "--option")
    layers = [load_preset(args.preset)] if args.preset else []
    layers += [load_yaml(args.config)] if args.config else []
    return _checked(cls, *layers, flags)


def _checked(cls, *layers: dict[str, Any]):
    """The config from its layers, checked before torch is imported so that any mistake is reported in a
    fraction of a second: values, the dataset address and its files, the backbone address (source, alias,
    options), then the registry names and options (heads, strategies, training settings: lazy registries
    over modules that import torch only inside their functions)."""
    from .backbones import BackboneAddress
    from .config import merge_config, names_checked_later
    from .data.base import check_dataset

    with names_checked_later():
        cfg = merge_config(cls, *layers)
    check_dataset(cfg.dataset)
    BackboneAddress.parse(cfg.backbone)
    cfg.check_names()
    return cfg


def _run_distill(args: argparse.Namespace) -> int:
    from .config import DistillConfig

    cfg = _training_config(DistillConfig, args)
    from .distill.run import distill

    table = distill(cfg, show_progress=True)
    print(side_by_side(table))
    out = cfg.out_dir
    print((out / "comparison.md").read_text())
    outputs = json.loads((out / "outputs.json").read_text())
    for kind, names in outputs.items():
        print(f"{kind}: " + ", ".join(str(out / n) for n in names))
    return 0


def _flags(args: argparse.Namespace, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    skip = {"func", "config", "command", "verbose", "preset", *drop}
    flags = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("train.")}
    train = {
        k.removeprefix("train."): v for k, v in vars(args).items() if k.startswith("train.") and v is not None
    }
    if train:
        flags["train"] = train
    if flags.get("head_kwargs"):
        flags["head_kwargs"] = _key_values(flags["head_kwargs"], "--head-option")
    return flags


def _run_finetune(args: argparse.Namespace) -> int:
    from .config import FinetuneConfig

    cfg = _training_config(FinetuneConfig, args)
    from .api import finetune

    table = finetune(cfg, show_progress=True)
    print(side_by_side(table))
    print(f"results: {cfg.out_dir / 'results.csv'}")
    return 0


def _key_values(items: list[str], flag: str) -> dict[str, Any]:
    import yaml

    from ._yaml import load as load_yaml_text

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} is not KEY=VALUE (e.g. {flag} r=8)")
        try:
            out[key] = load_yaml_text(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML ({e})") from e
    return out


def side_by_side(table) -> str:
    """Test AUC / ACC (segmentation: Dice / IoU / HD95) as mean ± std over seeds per arm, with the cost
    columns."""
    from .evaluation import format_mean_std

    headline = ["auc", "acc"] if "auc" in set(table["metric"]) else ["dice", "iou", "hd95"]
    test = table[(table["split"] == "test") & table["metric"].isin(headline)]
    # a NaN seed (a diverged run) shows as nan instead of being left out of the mean
    stats = test.groupby(["run", "metric"], sort=False)["value"].agg(lambda v: format_mean_std(v.to_numpy()))
    cells = stats.unstack("metric")
    cost = table[table["split"] == "cost"].pivot_table(
        index="run", columns="metric", values="value", aggfunc="mean"
    )
    keep = [
        c
        for c in ("trainable_params", "peak_memory_bytes", "wall_seconds", "train_images_per_second")
        if c in cost
    ]
    return cells.join(cost[keep].round(1)).to_string()


def _run_probe(args: argparse.Namespace) -> int:
    from .config import ProbeConfig, load_yaml

    flags = _flags(args)
    layers = [load_yaml(args.config)] if args.config else []
    cfg = _checked(ProbeConfig, *layers, flags)
    from .api import probe

    table = probe(cfg, show_progress=True)
    scored = table[table["split"].isin(["val", "test"])]
    headline = ["auc", "acc"] if "auc" in set(scored["metric"]) else ["dice", "iou"]  # masks: Dice, IoU
    shown = scored[scored["metric"].isin(headline)]
    print(shown.pivot_table(index=["seed"], columns=["split", "metric"], values="value").round(4).to_string())
    print(f"results: {cfg.out_dir / 'results.csv'}")
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list", help="list registered backbones, datasets, heads, metrics, strategies or presets"
    )
    p.add_argument("what", choices=["backbones", "datasets", "heads", "metrics", "strategies", "presets"])
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. '*dinov2*'")
    p.set_defaults(func=_run_list)


def _registry_lister(module: str, name: str) -> Callable[[str], list[str]]:
    def list_names(pattern: str) -> list[str]:
        return getattr(importlib.import_module(module), name).list(pattern)

    return list_names


def _described(module: str, name: str, *, options: bool = False) -> Callable[[str], list[str]]:
    """Lines ``name  first docstring line`` (and, for strategies, their ``--option`` defaults)."""

    def lines(pattern: str) -> list[str]:
        import dataclasses

        registry = getattr(importlib.import_module(module), name)
        names = registry.list(pattern)
        width = max((len(n) for n in names), default=0)
        out = []
        for n in names:
            cls = registry.get(n)
            doc = (cls.__doc__ or "").strip().splitlines()
            out.append(f"{n:<{width}}  {doc[0].replace('``', '`') if doc else ''}")
            if options and dataclasses.is_dataclass(cls):
                fields = [
                    f.name if f.default is dataclasses.MISSING else f"{f.name}={f.default}"
                    for f in dataclasses.fields(cls)
                    if not f.name.startswith("_")
                ]
                if fields:
                    out.append(f"{'':<{width}}  --option " + ", ".join(fields))
        return out

    return lines


def _run_list(args: argparse.Namespace) -> int:
    lister: dict[str, Callable[[str], list[str]]] = {
        "backbones": _list_backbones,
        "datasets": _list_datasets,
        "heads": _described("medadapt.heads", "HEADS"),
        "metrics": _registry_lister("medadapt.evaluation.metrics", "METRICS"),
        "strategies": _described("medadapt.strategies", "STRATEGIES", options=True),
        "presets": _list_presets,
    }
    lines = lister[args.what](args.pattern)
    print("\n".join(lines) if lines else f"no {args.what} match {args.pattern!r}")
    return 0


def _list_presets(pattern: str) -> list[str]:
    """Each matching preset's name, then its description (the protocol, and where it differs), indented."""
    import fnmatch
    import textwrap

    from .config import preset_description, preset_names

    lines = []
    for name in (n for n in preset_names() if fnmatch.fnmatchcase(n, pattern)):
        indent = dict(initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
        lines += [name, *textwrap.wrap(preset_description(name), 100, **indent)]
    return lines


def _list_backbones(pattern: str) -> list[str]:
    from .backbones import list_backbones

    rows = list_backbones(pattern)
    width = max((len(r["alias"]) for r in rows), default=0)
    return [f"{r['alias']:<{width}}  {r['address']}  ({r['license']})" for r in rows]


def _list_datasets(pattern: str) -> list[str]:
    """Every dataset kind's addresses (its ``examples`` in the registry, else ``KIND:LOCATION``)."""
    import fnmatch

    from .data import DATASETS

    names = [
        n
        for kind in DATASETS
        for n in DATASETS.meta(kind).get("examples", lambda k=kind: [f"{k}:LOCATION"])()
    ]
    return [
        n
        for n in names
        if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.split(":", 1)[1], pattern)
    ]


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="run a grid: datasets x backbones x methods x seeds x folds, resumable, locally or on SLURM",
        description="Run every cell of a grid file (medadapt benchmark GRID.yaml --out DIR), each in its own folder, "
        "results in DIR/benchmark.sqlite and DIR/results.csv; the same command after a kill continues. "
        "'medadapt benchmark status DIR' reports where a grid stands.",
    )
    p.add_argument("grid", metavar="GRID.yaml", help="the grid file (or the word status, then DIR)")
    p.add_argument("dir", nargs="?", metavar="DIR", help="with status: the grid's output folder")
    p.add_argument("--out", help="output folder of the grid (default: runs/GRID_NAME)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells, the backbone passes they need and which are done; run nothing")  # fmt: skip
    p.add_argument("--executor", help="local (default) or slurm (through submitit)")
    p.add_argument("--workers", type=int,
                   help="local: worker processes, CPU threads divided between them (0: in this process; default 1, "
                   "on GPUs one per device)")  # fmt: skip
    p.add_argument("--retry-failed", action="store_true", help="run the cells that failed again")
    p.add_argument("--report", action="store_true",
                   help="then write DIR/report.html (as medadapt report DIR, with its defaults)")  # fmt: skip
    p.add_argument("--data-root", help="folder of dataset files (default: $MEDADAPT_DATA or ~/.medmnist)")
    p.add_argument(
        "--cache-dir", help="feature cache (default: $MEDADAPT_CACHE or ~/.cache/medadapt/features)"
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (over the grid file's settings)")
    slurm = p.add_argument_group("slurm executor (over the grid file's executor: mapping)")
    slurm.add_argument("--partition")
    slurm.add_argument("--gpus", type=int, help="GPUs per job")
    slurm.add_argument("--cpus", type=int, help="CPUs per job")
    slurm.add_argument("--mem-gb", type=int, dest="mem_gb")
    slurm.add_argument(
        "--time", type=int, help="time limit per job in minutes (a job reaching it is requeued)"
    )
    slurm.add_argument(
        "--array-parallelism", type=int, dest="array_parallelism", help="jobs of the array at once"
    )
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    p.set_defaults(func=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import grid_status, load_grid, plan, run_benchmark

    if args.grid == "status":
        if not args.dir:
            raise ConfigError(
                "medadapt benchmark status needs the grid's folder: medadapt benchmark status DIR"
            )
        lines, _ = grid_status(args.dir)
        print("\n".join(lines))
        return 0
    if args.dir:
        raise ConfigError(f"unexpected argument {args.dir!r}; give the output folder with --out")
    overrides = {"data_root": args.data_root, "cache_dir": args.cache_dir, "device": args.device}
    out = args.out or f"runs/{load_grid(args.grid, overrides=overrides).name}"
    if args.dry_run:
        print("\n".join(plan(args.grid, out, overrides=overrides).lines()))
        return 0
    options = {k: getattr(args, k) for k in ("partition", "gpus", "cpus", "mem_gb", "time", "array_parallelism",
                                             "account", "qos")}  # fmt: skip
    summary = run_benchmark(args.grid, out, executor=args.executor, workers=args.workers, retry_failed=args.retry_failed,
                            overrides=overrides, executor_options=options, show_progress=True)  # fmt: skip
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items()))
    print(f"{out}: {counts}; results: {summary.results}")
    for key, error in summary.failed.items():
        print(f"failed: {key}: {error.splitlines()[0] if error else ''}", file=sys.stderr)
    if args.report:
        from .reporting.report import write_report

        page, _ = write_report([out], Path(out) / "report.html")
        print(f"report: {page}")
    if summary.failed:
        print(f"medadapt: {len(summary.failed)} cell(s) failed (errors in their error.json); rerun with "
              "--retry-failed to run them again", file=sys.stderr)  # fmt: skip
    return 0 if summary.ok else 1


def _add_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="leaderboard of a grid or run folder: mean ± std over seeds x folds, with cost",
                       description="Per dataset x backbone x method: mean ± std of the chosen metrics over seeds x "
                       "folds, with trainable parameters, peak memory and wall time; written as CSV, Markdown "
                       "and LaTeX (booktabs) next to the results.")  # fmt: skip
    p.add_argument("dirs", nargs="+", metavar="DIR", help="grid / run folders (or results CSV files)")
    p.add_argument("--metrics", nargs="+", default=["auc", "acc"], help="metrics to show (default: auc acc)")
    p.add_argument("--split", default="test", help="split to rank on (default: test)")
    p.add_argument("--out", help="where to write leaderboard.{csv,md,tex} (default: the first DIR)")
    p.set_defaults(func=_run_results)


def _run_results(args: argparse.Namespace) -> int:

    import pandas as pd

    from .benchmark import Store
    from .reporting.leaderboard import leaderboard, write_leaderboard
    from .reporting.results import read_results

    tables = []
    for d in args.dirs:
        store = Store(d)
        tables.append(store.results() if store.exists() else read_results(d))
    board = leaderboard(pd.concat(tables, ignore_index=True), metrics=args.metrics, split=args.split)
    first = Path(args.dirs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent)
    paths = write_leaderboard(board, out, metrics=args.metrics)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medadapt",
        description="Which foundation model, adapted how, works best on my medical images, at what cost?",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_list(sub)
    _add_probe(sub)
    _add_finetune(sub)
    _add_distill(sub)
    _add_benchmark(sub)
    _add_results(sub)
    add_compare(sub)
    add_report(sub)
    return parser


def _close_progress_bars() -> None:
    """Close the bars an error left open, so that its message starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line_foreign_errors(record: logging.LogRecord) -> bool:
    """A logging filter: another library's log record keeps its message but loses its traceback (pydicom
    logs a failed JPEG 2000 decode with ``logger.exception`` before medadapt's own one-line error), which
    becomes ``(ErrorType: message)`` at the end of the line."""
    if record.exc_info and not record.name.startswith("medadapt"):
        error = record.exc_info[1]
        record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", ()
        record.exc_info = record.exc_text = None
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # huggingface_hub prints through a handler of its own and propagates too: each of its messages (e.g. a
    # minute of "Retrying" lines offline) would print twice
    logging.getLogger("huggingface_hub").propagate = False
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_one_line_foreign_errors)
    try:
        return _run(args)
    finally:  # main() may be called from Python: leave the caller's handlers as they were
        for handler in handlers:
            handler.removeFilter(_one_line_foreign_errors)


def _run(args: argparse.Namespace) -> int:
    """Run the subcommand; medadapt's own errors become one line and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except MedadaptError as e:
        _close_progress_bars()
        print(f"medadapt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`medadapt list backbones | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe
        return 1
    except KeyboardInterrupt:
        _close_progress_bars()
        print(
            "medadapt: interrupted; finished seeds and cached features are kept, rerun to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
