"""The ``probe`` method on a segmentation dataset: frozen backbone, cached patch tokens, a grid of heads.

The backbone runs once per split into the feature cache (tokens included); a segmentation head per learning
rate (:data:`medadapt.training.seg_probe.SEG_HEADS`: ``linear`` is BN + 1x1 convolution + bilinear
upsampling, ``decoder`` a light progressive-upsampling decoder, ``multiscale`` a linear fusion of several
levels) trains on the tokens and the masks, and the best on validation Dice is scored on test: Dice, IoU
(per image, and pooled over the dataset) and HD95 (:mod:`medadapt.evaluation.segmentation`, with its stated
rules for empty masks). The cell keeps its predicted masks (``predictions/{val,test}.npz``: ``labels`` the
true masks, ``scores`` the predicted class maps, uint8), its history and ``figures/overlays_test.png`` (the
best, median and worst test images by Dice, listed in its ``outputs.json`` for ``medadapt report``) and
its model (``model.json`` + ``model.safetensors``: the head alone over a hub or file backbone, else every
weight), which :func:`medadapt.saved.load_classifier` rebuilds as a
:class:`~medadapt.strategies.model.Segmenter`.

``--head multiscale`` extracts several levels of the backbone (:meth:`~medadapt.backbones.base.Backbone.
forward_levels`) into the cache: head option ``levels`` (``head_kwargs``, YAML ``head_kwargs: {levels: 4}``)
says how many, the last ones; by default 4 (the last four blocks of a ViT, as DINOv2; the last four stages
of a hierarchical backbone, i.e. strides 4/8/16/32 of a ConvNeXt, Swin or ResNet), or all of them where the
backbone has fewer. An explicit ``levels`` above what the backbone has is a ConfigError. The other head
options (``stride_out``, ``width``) go to the head.
"""

from __future__ import annotations

import time
from typing import Any

from ..reporting.results import results_rows
from ..saved import save_classifier
from ..strategies.model import Segmenter, resolve_levels
from ..training.loop import peak_memory, reset_peak_memory
from ..training.seg_probe import train_seg_probe
from .base import (
    CellContext,
    epoch_bar,
    extractor,
    features_of,
    model_info,
    probe_ids,
    save_split_predictions,
    write_history,
)
from .seg_outputs import SEG_METRICS, seg_scores, split_masks, write_test_overlays

__all__ = ["run_seg_probe", "SEG_METRICS"]


#: Levels the multiscale head fuses unless head option ``levels`` says otherwise (fewer where a backbone has
#: fewer): the last four blocks of a ViT (DINOv2's multi-layer probe), the four stages of a ConvNeXt / Swin.
def run_seg_probe(cfg, ctx: CellContext, *, name: str, seed: int, backbone, preprocess,
                  memo_key: Any) -> list[dict[str, Any]]:  # fmt: skip
    """One (head, seed) of a segmentation probe in ``ctx.run_dir``; its tidy rows (val, test, cost)."""
    t_start = time.perf_counter()
    reset_peak_memory(ctx.device)
    train = ctx.splits["train"]
    head_kwargs, levels = dict(cfg.head_kwargs or {}), None
    if cfg.head == "multiscale":
        levels = resolve_levels(head_kwargs.pop("levels", None), backbone)
    extract = extractor(cfg, backbone, preprocess, ctx.device, with_tokens=True, show_progress=ctx.show_progress,
                        memo=ctx.memo, memo_key=memo_key, levels=levels)  # fmt: skip
    t0 = time.perf_counter()
    feats = {s: features_of(ds, extract) for s, ds in ctx.splits.items()}
    t_extract = time.perf_counter() - t0
    masks = {s: split_masks(ds) for s, ds in ctx.splits.items()}
    t0 = time.perf_counter()
    bar = epoch_bar(cfg.epochs, f"{cfg.head} segmentation probe (seed {seed})") if ctx.show_progress else None
    result = train_seg_probe(feats["train"], feats["val"], masks["train"], masks["val"], num_classes=len(train.classes),
                             head=cfg.head, lrs=cfg.lrs, epochs=cfg.epochs, batch_size=cfg.batch_size,
                             weight_decay=cfg.weight_decay, seed=seed, device=ctx.device, autocast=cfg.autocast,
                             head_kwargs=head_kwargs, progress=bar)  # fmt: skip
    t_train = time.perf_counter() - t0
    ids = probe_ids(cfg, ctx, name=name, seed=seed, backbone=backbone, best=result.best)
    rows: list[dict[str, Any]] = []
    for split in ("val", "test"):
        truth = masks[split]
        pred = result.predict(
            feats[split], out_size=truth.shape[1:], batch_size=cfg.batch_size, device=ctx.device
        )
        save_split_predictions(ctx.run_dir, split, ctx.splits[split], truth, pred)
        if split == "test":
            write_test_overlays(ctx, truth, pred, len(train.classes))
        rows += results_rows(metrics=seg_scores(truth, pred, len(train.classes)), split=split, **ids)
    write_history(ctx.run_dir, _history(result))
    model = Segmenter(backbone, result.head, levels=levels)  # reloadable (medadapt.saved.load_classifier)
    kwargs = {**head_kwargs, **({"levels": levels} if levels is not None else {})}
    info = model_info(cfg, model, train, preprocess, img_size=ctx.img_size, seed=seed, strategy="frozen",
                      stored="head" if backbone.spec.pretrained else "model")  # fmt: skip
    info.head_kwargs = kwargs
    save_classifier(ctx.run_dir, model, info)
    head_params = sum(p.numel() for p in result.head.parameters())
    cost = {
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "head_params": head_params,
        "trainable_params": head_params,
        "extract_seconds": t_extract,
        "train_seconds": t_train,
        "peak_memory_bytes": peak_memory(ctx.device),
        "wall_seconds": time.perf_counter() - t_start,
    }
    return rows + results_rows(metrics=cost, split="cost", **ids)


def _history(result) -> list[dict[str, Any]]:
    """One record per (epoch, learning rate): ``epoch, setting, lr, train_loss, val_dice``."""
    records = []
    for record in result.history:
        for setting, loss in record["train_loss"].items():
            records.append({"epoch": record["epoch"], "setting": setting, "lr": float(setting.split("=")[1]),
                            "train_loss": loss, "val_dice": record.get("val_dice", {}).get(setting)})  # fmt: skip
    return records
