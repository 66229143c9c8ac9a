"""The Python API; every CLI subcommand calls one of these with the same arguments.

``probe`` and ``finetune`` are thin recipes over the run driver (:func:`medadapt.driver.run_cell`): their
loops over heads, arms and seeds, and where each cell's files go.

Example:
    >>> import medadapt
    >>> table = medadapt.probe(dataset="medmnist:breastmnist", backbone="timm:resnet18",
    ...                        pretrained=False, head="linear", size=28, out="runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from .config import FinetuneConfig, ProbeConfig
from .driver import CellContext, load_splits, recorded, run_cell, start_run
from .reporting.results import RUN_DIR, record_arm_configs, write_results

__all__ = ["probe", "finetune", "load_splits", "probe_dir"]

log = logging.getLogger(__name__)


def probe(
    config: ProbeConfig | None = None, /, *, show_progress: bool = False, **kwargs: Any
) -> pd.DataFrame:
    """Frozen-backbone probe: extract (cached) features, train the head grid, report val and test metrics.

    Writes ``out/results.csv``, ``out/HEAD/seedS/predictions/{val,test}.npz`` and the model
    ``out/HEAD/seedS/model.*`` (the layout of a finetune arm, so heads probed into one ``--out`` keep their
    files apart), ``out/config.yaml`` and ``out/env.json``; returns this run's rows of the results table.
    """
    cfg = replace(config, **kwargs) if config is not None else ProbeConfig(**kwargs)
    # before anything is written: seeds of this head probed with other settings would be pooled by results.csv
    record_arm_configs({cfg.head: _probe_record(cfg)}, cfg.out_dir)
    out, device, splits, img_size = start_run(cfg)
    frames = []
    for seed in cfg.seeds:
        ctx = CellContext(splits=splits, img_size=img_size, device=device, run_dir=probe_dir(out, cfg.head, seed),
                          show_progress=show_progress)  # fmt: skip
        rows = run_cell(cfg, ctx, method="probe", name=out.name, seed=seed)
        rows = [{**r, RUN_DIR: ctx.run_dir.relative_to(out).as_posix()} for r in rows]
        # after every seed (finished seeds survive a later failure); a rerun replaces its rows, not repeats them
        write_results(rows, out / "results.csv", replace=("run", "head", "seed"))
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


def _probe_record(cfg: ProbeConfig) -> dict[str, Any]:
    """The settings a probe head's results depend on: a kNN head has no LR grid, the others no k grid, and
    where features are cached and in what batches they are extracted change no result."""
    unused = ("lrs", "epochs", "batch_size", "weight_decay") if cfg.head == "knn" else ("ks",)
    not_results = {"cache_dir", "extract_batch_size", "with_tokens"}
    return {k: v for k, v in recorded(cfg).items() if k not in {*unused, *not_results}}


def probe_dir(out: Path, head: str, seed: int) -> Path:
    """Where a probe keeps one (head, seed)'s predictions and model: per head and per seed, as finetune arms do,
    so neither another head nor a seed run as its own process into the same ``--out`` overwrites them."""
    return Path(out) / head / f"seed{seed}"


def finetune(
    config: FinetuneConfig | None = None, /, *, show_progress: bool = False, **kwargs: Any
) -> pd.DataFrame:
    """Train backbone + head under one or more strategies ("arms") side by side; report val/test metrics + cost.

    Each (arm, seed) trains in ``out/ARM/seedS/`` (``checkpoint.pt`` every epoch, so ``resume=True``
    continues a killed run; ``predictions/{val,test}.npz``); ``out/results.csv`` collects the tidy rows of
    every arm, written after each run so finished runs survive a later failure.
    """
    cfg = replace(config, **kwargs) if config is not None else FinetuneConfig(**kwargs)
    arms = cfg.arm_configs()
    # before anything is written: an arm's seeds trained with other settings would be pooled by its name
    record_arm_configs({name: recorded(arm) for name, arm in arms}, cfg.out_dir)
    out, device, splits, img_size = start_run(cfg)
    frames = []
    for name, arm in arms:
        for seed in cfg.seeds:
            ctx = CellContext(splits=splits, img_size=img_size, device=device, run_dir=out / name / f"seed{seed}",
                              show_progress=show_progress)  # fmt: skip
            rows = run_cell(arm, ctx, method="finetune", name=name, seed=seed)
            rows = [{**r, RUN_DIR: f"{name}/seed{seed}"} for r in rows]
            write_results(rows, out / "results.csv", replace=("run", "seed"))  # a resumed run: no repeats
            frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)
