"""The Python API; every CLI subcommand calls one of these with the same arguments.

Example:
    >>> import medadapt
    >>> table = medadapt.probe(dataset="medmnist:breastmnist", backbone="timm:resnet18",
    ...                        pretrained=False, head="linear", size=28, out="runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ._device import resolve_device, seeded
from .backbones import create_backbone
from .backbones._factory import resolve_alias
from .config import FinetuneConfig, ProbeConfig, RunConfig
from .data import SPLITS, MedicalDataset, load_dataset
from .data.transforms import Preprocess
from .errors import BadRowsError, ConfigError
from .evaluation.metrics import compute_metrics
from .features import FeatureSet, extract_features
from .reporting.results import (
    environment_info,
    record_arm_configs,
    results_rows,
    save_predictions,
    write_environment,
    write_results,
    write_run_config,
)
from .saved import MODEL_FILE, ModelInfo, save_classifier, weights_path
from .strategies import build_classifier
from .training.probe import train_probe

__all__ = ["probe", "finetune", "load_splits"]

log = logging.getLogger(__name__)


def load_splits(cfg: RunConfig) -> dict[str, MedicalDataset]:
    """The train / val / test splits of ``cfg.dataset``."""
    opts: dict[str, Any] = {"root": cfg.data_root, "skip_bad": cfg.skip_bad_rows}
    if cfg.size is not None:
        opts["size"] = cfg.size
    splits, problems = {}, []
    for split in SPLITS:  # every split is checked, so one error lists the bad rows of all of them
        try:
            splits[split] = load_dataset(cfg.dataset, split, **opts)
        except BadRowsError as e:  # any other error (a missing file) is the same for every split: raised
            problems.append(str(e))
    if problems:
        raise BadRowsError("; also ".join(problems))
    return splits


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
    out, device, splits, img_size = _start_run(cfg)
    frames = []
    for seed in cfg.seeds:
        rows = _probe_one_seed(cfg, splits, seed=seed, img_size=img_size, device=device, out=out,
                               show_progress=show_progress)  # fmt: skip
        # after every seed (finished seeds survive a later failure); a rerun replaces its rows, not repeats them
        write_results(rows, out / "results.csv", replace=("run", "head", "seed"))
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


def _probe_record(cfg: ProbeConfig) -> dict[str, Any]:
    """The settings a probe head's results depend on: a kNN head has no LR grid, the others no k grid, and
    where features are cached and in what batches they are extracted change no result."""
    unused = ("lrs", "epochs", "batch_size", "weight_decay") if cfg.head == "knn" else ("ks",)
    return {k: v for k, v in _recorded(cfg).items() if k not in {*unused, "cache_dir", "extract_batch_size"}}


def probe_dir(out: Path, head: str, seed: int) -> Path:
    """Where a probe keeps one (head, seed)'s predictions and model: per head and per seed, as finetune arms do,
    so neither another head nor a seed run as its own process into the same ``--out`` overwrites them."""
    return Path(out) / head / f"seed{seed}"


def _start_run(cfg: RunConfig) -> tuple[Path, torch.device, dict[str, MedicalDataset], int]:
    """Load the data, resolve the device and image size, write ``config.yaml`` and ``env.json``."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    splits = load_splits(cfg)
    img_size = _image_size(cfg, splits["train"])
    written = write_run_config({**_recorded(cfg), "img_size": img_size}, out)
    write_environment(environment_info(seed=written["seeds"], device=str(device)), out)
    return out, device, splits, img_size


def _recorded(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as run records keep it, with ``backbone_address``: an alias names whatever the catalogue says
    now, the record what this run built."""
    return {**cfg.to_dict(), "backbone_address": resolve_alias(cfg.backbone)}


def _image_size(cfg: RunConfig, train: MedicalDataset) -> int:
    if cfg.img_size is not None:
        return cfg.img_size
    if cfg.size is not None:
        return cfg.size
    return int(max(train[0]["image"].shape[-2:]))


def _probe_one_seed(
    cfg: ProbeConfig,
    splits: dict[str, MedicalDataset],
    *,
    seed: int,
    img_size: int,
    device: torch.device,
    out: Path,
    show_progress: bool,
) -> list[dict[str, Any]]:
    train = splits["train"]
    with seeded(seed):  # random-init backbones differ per seed; pretrained ones do not
        backbone = create_backbone(
            cfg.backbone,
            pretrained=cfg.pretrained,
            weights=cfg.weights,
            img_size=img_size,
            data_chans=train.n_channels,
            channel_mode=cfg.channel_mode,
        )
    preprocess = _preprocess(cfg, backbone, img_size)
    t0 = time.perf_counter()
    feats = {s: _extract(cfg, backbone, ds, preprocess, device, show_progress) for s, ds in splits.items()}
    t_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = train_probe(
        feats["train"],
        feats["val"],
        head=cfg.head,
        task=train.task,
        num_outputs=train.num_outputs,
        lrs=cfg.lrs,
        ks=cfg.ks,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        seed=seed,
        device=device,
        autocast=cfg.autocast,
        head_kwargs=cfg.head_kwargs,
        progress=_epoch_bar(cfg.epochs, f"{cfg.head} probe (seed {seed})") if show_progress else None,
    )
    t_train = time.perf_counter() - t0
    ids = dict(
        run=out.name,
        dataset=cfg.dataset,
        backbone=cfg.backbone,
        strategy="frozen",
        head=cfg.head,
        seed=seed,
        fold=None,
        pretrained=backbone.spec.pretrained or "random-init",
        img_size=img_size,
        selected=";".join(f"{k}={v}" for k, v in result.best.items()),
    )
    rows: list[dict[str, Any]] = []
    run_dir = probe_dir(out, cfg.head, seed)
    for split in ("val", "test"):
        fs = feats[split]
        scores = result.predict(fs)
        save_predictions(run_dir, split, labels=fs.labels, scores=scores)
        rows += results_rows(metrics=compute_metrics(train.task, fs.labels, scores), split=split, **ids)
    if result.head_name != "knn":  # a kNN head is its training features: nothing to reload as a model
        model = build_classifier(backbone, cfg.head, train.num_outputs, **cfg.head_kwargs)
        model.head.load_state_dict(result.head.state_dict())
        info = _model_info(cfg, model, train, preprocess, img_size=img_size, seed=seed, strategy="frozen",
                           stored="head" if backbone.spec.pretrained else "model")  # fmt: skip
        save_classifier(run_dir, model, info)
    n_images = sum(len(fs) for fs in feats.values())
    cost = {
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "head_params": sum(p.numel() for p in result.head.parameters()),
        "extract_seconds": t_extract,
        "extract_images_per_second": n_images / t_extract if t_extract > 0 else float("nan"),
        "train_seconds": t_train,
    }
    return rows + results_rows(metrics=cost, split="cost", **ids)


def _model_info(cfg: RunConfig, model, train: MedicalDataset, preprocess: Preprocess, *, img_size: int, seed: int,
                strategy: str, stored: str) -> ModelInfo:  # fmt: skip
    """How to rebuild ``model`` later (see :mod:`medadapt.saved`)."""
    return ModelInfo(
        backbone=resolve_alias(cfg.backbone),  # the address: an alias may name another model later
        head=cfg.head,
        num_outputs=train.num_outputs,
        task=train.task,
        img_size=img_size,
        data_chans=train.n_channels,
        channel_mode=cfg.channel_mode,
        preprocess=dataclasses.asdict(preprocess),
        stored=stored,
        pretrained=bool(model.backbone.spec.pretrained),
        weights=weights_path(cfg.weights),
        head_kwargs=dict(cfg.head_kwargs),
        dataset=cfg.dataset,
        strategy=strategy,
        seed=seed,
        classes=[str(c) for c in train.classes],
    )


def _preprocess(cfg: RunConfig, backbone, img_size: int) -> Preprocess:
    """Preprocessing derived from the backbone's spec, never restated by hand."""
    return Preprocess.for_backbone(
        backbone.spec, (img_size, img_size), mode=cfg.resize_mode, interpolation=cfg.interpolation
    )


def _extract(cfg, backbone, dataset, preprocess, device, show_progress) -> FeatureSet:
    bar = tqdm(total=len(dataset), desc=f"features {dataset.split}", unit="img", disable=not show_progress)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        return extract_features(
            backbone,
            dataset,
            preprocess,
            cache_dir=cfg.cache_dir,
            with_tokens=cfg.head == "attention",
            batch_size=cfg.extract_batch_size,
            device=device,
            autocast=cfg.autocast,
            num_workers=cfg.num_workers,
            progress=progress,
        )
    finally:
        bar.close()


def _epoch_bar(epochs: int, desc: str, *, resume: bool = False):
    """An epoch progress bar; with ``resume`` it appears after the first epoch run, at that epoch (so that its
    rate and time left count only the epochs run in this process)."""
    bar = None if resume else tqdm(total=epochs, desc=desc, unit="epoch")

    def progress(epoch: int, epochs: int, record: dict) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=epochs, initial=epoch, desc=desc, unit="epoch")
        bar.update(epoch - bar.n)
        bar.refresh()  # epochs are long: show each at once (tqdm skips prints within its mininterval)
        if epoch == epochs:
            bar.close()

    return progress


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
    record_arm_configs({name: _recorded(arm) for name, arm in arms}, cfg.out_dir)
    out, device, splits, img_size = _start_run(cfg)
    frames = []
    for name, arm in arms:
        for seed in cfg.seeds:
            run_dir = out / name / f"seed{seed}"
            rows = _finetune_one(arm, splits, name=name, seed=seed, img_size=img_size, device=device,
                                 run_dir=run_dir, show_progress=show_progress)  # fmt: skip
            write_results(rows, out / "results.csv", replace=("run", "seed"))  # a resumed run: no repeats
            frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


def _finetune_one(
    cfg: FinetuneConfig,
    splits: dict[str, MedicalDataset],
    *,
    name: str,
    seed: int,
    img_size: int,
    device: torch.device,
    run_dir: Path,
    show_progress: bool,
    objective=None,
) -> list[dict[str, Any]]:
    """Train one (arm, seed) in ``run_dir`` (best LR of ``cfg.lrs``), save its model; the tidy result rows."""
    from .training.loop import TrainConfig, best_run, predict

    train, val, test = splits["train"], splits["val"], splits["test"]
    lrs = cfg.lrs or [cfg.train.get("lr", TrainConfig.lr)]
    wheres = {lr: run_dir / f"lr{lr:g}" if len(cfg.lrs) > 1 else run_dir for lr in lrs}
    _refuse_finished_without_checkpoints(run_dir, list(wheres.values()))
    best = best_record = None
    for lr, where in wheres.items():
        fitted = _fit_one(cfg, splits, lr=lr, seed=seed, img_size=img_size, device=device, run_dir=where,
                          desc=f"{name} (seed {seed}, lr {lr:g})" if show_progress else None, objective=objective)  # fmt: skip
        record = {"val_auc": fitted[0].best_val_auc, "val_loss": fitted[0].best_val_loss}
        # only the best so far is kept (ties: the first), so the next LR's peak memory is its own
        if best is None or best_run([best_record, record], fitted[3].select_on) == 1:
            best, best_record = fitted, record
        del fitted
    result, backbone, preprocess, tcfg, strategy = best
    ids = dict(
        run=name,
        dataset=cfg.dataset,
        backbone=cfg.backbone,
        strategy=cfg.strategy,
        head=cfg.head,
        seed=seed,
        fold=None,
        pretrained=backbone.spec.pretrained or "random-init",
        img_size=img_size,
        selected=f"lr={tcfg.lr:g};epoch={result.best_epoch}",
    )
    rows: list[dict[str, Any]] = []
    for split, ds in (("val", val), ("test", test)):
        scores = predict(result.model, ds, preprocess=preprocess, batch_size=cfg.batch_size_eval, device=device,
                         autocast=tcfg.autocast, num_workers=cfg.num_workers)  # fmt: skip
        save_predictions(run_dir, split, labels=ds.labels, scores=scores)
        rows += results_rows(metrics=compute_metrics(train.task, ds.labels, scores), split=split, **ids)
    info = _model_info(cfg, result.model, train, preprocess, img_size=img_size, seed=seed, strategy=cfg.strategy,
                       stored="model")  # fmt: skip
    save_classifier(run_dir, strategy.export(result.model), info)
    return rows + results_rows(metrics=result.cost, split="cost", **ids)


def _refuse_finished_without_checkpoints(run_dir: Path, wheres: list[Path]) -> None:
    """A finished run's checkpoints are what ``--resume`` reports it from; without them, training again would
    replace its saved model and predictions. (The model is saved after the last checkpoint, so a saved model
    without one means the checkpoint was deleted, not that the run was killed.)"""
    from .training.checkpoint import CHECKPOINT_NAME

    missing = [str(w / CHECKPOINT_NAME) for w in wheres if not (w / CHECKPOINT_NAME).is_file()]
    if (run_dir / MODEL_FILE).is_file() and missing:
        raise ConfigError(
            f"{run_dir} holds a finished model ({MODEL_FILE}) but not {', '.join(missing)}, so it can neither be "
            f"resumed nor reported again; to train it again, delete {run_dir}; to add seeds, pass only the new "
            "ones to --seeds; or use another --out"
        )


def _fit_one(cfg: FinetuneConfig, splits, *, lr: float, seed: int, img_size: int, device: torch.device,
             run_dir: Path, desc: str | None, objective=None):  # fmt: skip
    """Build the classifier for ``seed`` and train it at ``lr``; returns (FitResult, backbone, preprocess, TrainConfig, strategy)."""
    from .strategies import create_strategy
    from .training.checkpoint import CHECKPOINT_NAME
    from .training.loop import TrainConfig, fit

    train = splits["train"]
    strategy = create_strategy(cfg.strategy, **cfg.strategy_options)
    with seeded(seed):  # the backbone's random init (scratch) and the head's init
        backbone = create_backbone(
            cfg.backbone,
            pretrained=cfg.pretrained and strategy.pretrained,
            weights=cfg.weights if strategy.pretrained else None,
            img_size=img_size,
            data_chans=train.n_channels,
            channel_mode=cfg.channel_mode,
        )
        model = build_classifier(backbone, cfg.head, train.num_outputs, **cfg.head_kwargs)
    preprocess = _preprocess(cfg, backbone, img_size)
    settings = {**cfg.train, "lr": lr, "seed": seed, "device": str(device), "num_workers": cfg.num_workers}
    tcfg = TrainConfig(**{"autocast": cfg.autocast, **settings})
    resuming = cfg.resume and (run_dir / CHECKPOINT_NAME).exists()  # a fresh run shows its bar at once
    bar = _epoch_bar(tcfg.epochs, desc, resume=resuming) if desc else None
    result = fit(model, strategy, train, splits["val"], cfg=tcfg, preprocess=preprocess, out_dir=run_dir,
                 resume=cfg.resume, progress=bar, objective=objective)  # fmt: skip
    return result, backbone, preprocess, tcfg, strategy
