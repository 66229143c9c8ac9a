"""The ``probe`` method: frozen backbone, cached features, a grid of head settings, the best kept on val."""

from __future__ import annotations

import time
from typing import Any

from .._device import seeded
from ..backbones import create_backbone
from ..config import ProbeConfig
from ..evaluation.metrics import compute_metrics
from ..heads import HEADS
from ..reporting.results import results_rows
from ..saved import save_classifier
from ..strategies import build_classifier
from ..tasks import get_task
from ..training.loop import peak_memory, reset_peak_memory
from ..training.probe import train_probe
from .base import (
    METHODS,
    CellContext,
    epoch_bar,
    extractor,
    features_of,
    model_info,
    preprocess_for,
    probe_ids,
    save_split_predictions,
    write_history,
)
from .seg_probe import run_seg_probe

__all__ = ["run_probe"]


@METHODS.register("probe", kinds=("classification", "segmentation"))
def run_probe(cfg: ProbeConfig, ctx: CellContext, *, name: str, seed: int) -> list[dict[str, Any]]:
    """One (head, seed) of a frozen probe in ``ctx.run_dir``; its tidy rows (val, test, cost).

    The backbone is drawn from ``cfg.backbone_seed`` (default: ``seed``): a random-init backbone then differs
    per seed; a grid fixes it, so that every seed and fold of a (dataset, backbone) shares one extraction.
    """
    if get_task(ctx.splits["train"].task).kind == "segmentation":
        backbone, preprocess = _backbone(cfg, ctx, seed)
        return run_seg_probe(cfg, ctx, name=name, seed=seed, backbone=backbone, preprocess=preprocess,
                             memo_key=_backbone_key(cfg, ctx, seed))  # fmt: skip
    t_start = time.perf_counter()
    reset_peak_memory(ctx.device)
    train = ctx.splits["train"]
    backbone, preprocess = _backbone(cfg, ctx, seed)
    # a head that reads patch tokens needs them; a grid asks for them for every probe that shares its features
    tokens = HEADS.get(cfg.head).input_key == "tokens" or bool(cfg.with_tokens)
    extract = extractor(cfg, backbone, preprocess, ctx.device, with_tokens=tokens,
                        show_progress=ctx.show_progress, memo=ctx.memo, memo_key=_backbone_key(cfg, ctx, seed))  # fmt: skip
    t0 = time.perf_counter()
    feats = {s: features_of(ds, extract) for s, ds in ctx.splits.items()}
    t_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    clock = _EpochClock()
    bar = epoch_bar(cfg.epochs, f"{cfg.head} probe (seed {seed})") if ctx.show_progress else None
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
        device=ctx.device,
        autocast=cfg.autocast,
        head_kwargs=cfg.head_kwargs,
        progress=clock.wrap(bar),
    )
    t_train = time.perf_counter() - t0
    ids = probe_ids(cfg, ctx, name=name, seed=seed, backbone=backbone, best=result.best)
    rows: list[dict[str, Any]] = []
    for split in ("val", "test"):
        fs = feats[split]
        scores = result.predict(fs)
        save_split_predictions(ctx.run_dir, split, ctx.splits[split], fs.labels, scores)
        rows += results_rows(metrics=compute_metrics(train.task, fs.labels, scores), split=split, **ids)
    write_history(ctx.run_dir, _history(result, clock.seconds))
    if result.head_name != "knn":  # a kNN head is its training features: nothing to reload as a model
        model = build_classifier(backbone, cfg.head, train.num_outputs, **cfg.head_kwargs)
        model.head.load_state_dict(result.head.state_dict())
        info = model_info(cfg, model, train, preprocess, img_size=ctx.img_size, seed=seed, strategy="frozen",
                          stored="head" if backbone.spec.pretrained else "model")  # fmt: skip
        save_classifier(ctx.run_dir, model, info)
    n_images = sum(len(fs) for fs in feats.values())
    head_params = sum(p.numel() for p in result.head.parameters())
    cost = {
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "head_params": head_params,
        "trainable_params": head_params,
        "extract_seconds": t_extract,
        "extract_images_per_second": n_images / t_extract if t_extract > 0 else float("nan"),
        "train_seconds": t_train,
        "peak_memory_bytes": peak_memory(ctx.device),
        "wall_seconds": time.perf_counter() - t_start,
    }
    return rows + results_rows(metrics=cost, split="cost", **ids)


def _backbone_key(cfg: ProbeConfig, ctx: CellContext, seed: int) -> tuple:
    """What the frozen backbone and its preprocessing depend on (cells of a worker with the same key share them)."""
    init = cfg.backbone_seed if cfg.backbone_seed is not None else seed
    return (cfg.backbone, cfg.pretrained, cfg.weights, ctx.img_size, ctx.splits["train"].n_channels,
            cfg.channel_mode, init if not cfg.pretrained else None, cfg.resize_mode, cfg.interpolation,
            cfg.autocast, str(ctx.device))  # fmt: skip


def _backbone(cfg: ProbeConfig, ctx: CellContext, seed: int):
    key = ("backbone", _backbone_key(cfg, ctx, seed))
    if ctx.memo is not None and key in ctx.memo:
        return ctx.memo[key]
    init = cfg.backbone_seed if cfg.backbone_seed is not None else seed
    with seeded(init):  # random-init backbones differ per init seed; pretrained ones do not
        backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights,
                                   img_size=ctx.img_size, data_chans=ctx.splits["train"].n_channels,
                                   channel_mode=cfg.channel_mode)  # fmt: skip
    built = (backbone, preprocess_for(cfg, backbone, ctx.img_size))
    if ctx.memo is not None:  # one backbone (and its features) at a time per worker: grids run cells in order
        ctx.memo.clear()
        ctx.memo[key] = built
    return built


class _EpochClock:
    """Seconds of each epoch, from the probe's progress callback."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def wrap(self, bar):
        def progress(epoch: int, epochs: int, record: dict) -> None:
            now = time.perf_counter()
            self.seconds.append(now - self._last)
            self._last = now
            if bar is not None:
                bar(epoch, epochs, record)

        return progress


def _history(result, seconds: list[float]) -> list[dict[str, Any]]:
    """One record per (epoch, setting): ``epoch, setting, lr, train_loss, val_auc, val_loss, seconds``; a kNN
    head has one per ``k`` (``setting, k, val_auc, val_loss``)."""
    if not result.history:  # kNN: nothing trains, one evaluation per k
        return [{"setting": s, "k": int(s.split("=")[1]), "val_auc": result.val_auc_by_setting[s],
                 "val_loss": result.val_loss_by_setting[s]} for s in result.val_auc_by_setting]  # fmt: skip
    records = []
    for i, record in enumerate(result.history):
        for setting, loss in record["train_loss"].items():
            records.append({"epoch": record["epoch"], "setting": setting, "lr": float(setting.split("=")[1]),
                            "train_loss": loss, "val_auc": record.get("val_auc", {}).get(setting),
                            "val_loss": record.get("val_loss", {}).get(setting),
                            "seconds": seconds[i] if i < len(seconds) else None})  # fmt: skip
    return records
