"""The ``finetune`` method: backbone + head trained under a strategy, checkpointed every epoch, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._device import seeded
from ..backbones import create_backbone
from ..config import FinetuneConfig
from ..errors import ConfigError
from ..evaluation.metrics import compute_metrics
from ..reporting.results import results_rows
from ..saved import MODEL_FILE, save_classifier
from ..strategies import build_model
from ..tasks import get_task
from .base import (
    METHODS,
    CellContext,
    epoch_bar,
    model_info,
    preprocess_for,
    save_split_predictions,
    write_history,
)
from .seg_outputs import seg_scores, split_masks, write_test_overlays

__all__ = ["run_finetune"]


@METHODS.register("finetune", kinds=("classification", "segmentation"))
def run_finetune(
    cfg: FinetuneConfig, ctx: CellContext, *, name: str, seed: int, objective=None
) -> list[dict[str, Any]]:
    """Train one (arm, seed) in ``ctx.run_dir`` (the best LR of ``cfg.lrs``), save its model; its tidy rows.

    ``objective`` replaces the task loss (distillation). With ``cfg.resume`` a killed cell continues from its
    checkpoint.
    """
    from ..training.loop import TrainConfig, best_run, predict

    splits, run_dir = ctx.splits, ctx.run_dir
    train = splits["train"]
    lrs = cfg.lrs or [cfg.train.get("lr", TrainConfig.lr)]
    wheres = {lr: run_dir / f"lr{lr:g}" if len(cfg.lrs) > 1 else run_dir for lr in lrs}
    _refuse_finished_without_checkpoints(run_dir, list(wheres.values()))
    best = best_record = None
    histories = []
    for lr, where in wheres.items():
        fitted = _fit_one(cfg, ctx, lr=lr, seed=seed, run_dir=where, objective=objective,
                          desc=f"{name} (seed {seed}, lr {lr:g})" if ctx.show_progress else None)  # fmt: skip
        histories += _history(fitted[0], lr if len(wheres) > 1 else None)
        record = fitted[0].best_record
        # only the best so far is kept (ties: the first), so the next LR's peak memory is its own
        if best is None or best_run([best_record, record], fitted[3].select_on) == 1:
            best, best_record = fitted, record
        del fitted
    result, backbone, preprocess, tcfg, strategy = best
    ids = dict(run=name, dataset=cfg.dataset, backbone=cfg.backbone, strategy=cfg.strategy, head=cfg.head,
               seed=seed, fold=ctx.fold, pretrained=backbone.spec.pretrained or "random-init",
               img_size=ctx.img_size, selected=f"lr={tcfg.lr:g};epoch={result.best_epoch}")  # fmt: skip
    rows: list[dict[str, Any]] = []
    segmentation = get_task(train.task).kind == "segmentation"
    for split in ("val", "test"):
        ds = splits[split]
        scores = predict(result.model, ds, preprocess=preprocess, batch_size=cfg.batch_size_eval, device=ctx.device,
                         autocast=tcfg.autocast, num_workers=cfg.num_workers)  # fmt: skip
        if segmentation:  # scores are class maps; the labels kept are the true masks
            truth = split_masks(ds)
            save_split_predictions(run_dir, split, ds, truth, scores)
            metrics = seg_scores(truth, scores, train.num_outputs)
            if split == "test":
                write_test_overlays(ctx, truth, scores, train.num_outputs)
        else:
            save_split_predictions(run_dir, split, ds, ds.labels, scores)
            metrics = compute_metrics(train.task, ds.labels, scores)
        rows += results_rows(metrics=metrics, split=split, **ids)
    write_history(run_dir, histories)
    info = model_info(cfg, result.model, train, preprocess, img_size=ctx.img_size, seed=seed,
                      strategy=cfg.strategy, stored="model")  # fmt: skip
    save_classifier(run_dir, strategy.export(result.model), info)
    return rows + results_rows(metrics=result.cost, split="cost", **ids)


def _history(result, search_lr: float | None) -> list[dict[str, Any]]:
    """The fit's epochs with their seconds (and, in an LR search, the LR searched)."""
    extra = {} if search_lr is None else {"search_lr": search_lr}
    seconds = result.epoch_seconds
    return [{**extra, **record, "seconds": seconds[i] if i < len(seconds) else None}
            for i, record in enumerate(result.history)]  # fmt: skip


def _refuse_finished_without_checkpoints(run_dir: Path, wheres: list[Path]) -> None:
    """A finished run's checkpoints are what ``--resume`` reports it from; without them, training again would
    replace its saved model and predictions. (The model is saved after the last checkpoint, so a saved model
    without one means the checkpoint was deleted, not that the run was killed.)"""
    from ..training.checkpoint import CHECKPOINT_NAME

    missing = [str(w / CHECKPOINT_NAME) for w in wheres if not (w / CHECKPOINT_NAME).is_file()]
    if (run_dir / MODEL_FILE).is_file() and missing:
        raise ConfigError(
            f"{run_dir} holds a finished model ({MODEL_FILE}) but not {', '.join(missing)}, so it can neither be "
            f"resumed nor reported again; to train it again, delete {run_dir}; to add seeds, pass only the new "
            "ones to --seeds; or use another --out"
        )


def _fit_one(cfg: FinetuneConfig, ctx: CellContext, *, lr: float, seed: int, run_dir: Path, desc: str | None,
             objective=None):  # fmt: skip
    """Build the classifier for ``seed`` and train it at ``lr``; returns (FitResult, backbone, preprocess, TrainConfig, strategy)."""
    from ..strategies import create_strategy
    from ..training.checkpoint import CHECKPOINT_NAME
    from ..training.loop import TrainConfig, fit

    train = ctx.splits["train"]
    strategy = create_strategy(cfg.strategy, **cfg.strategy_options)
    with seeded(seed):  # the backbone's random init (scratch) and the head's init
        backbone = create_backbone(
            cfg.backbone,
            pretrained=cfg.pretrained and strategy.pretrained,
            weights=cfg.weights if strategy.pretrained else None,
            img_size=ctx.img_size,
            data_chans=train.n_channels,
            channel_mode=cfg.channel_mode,
        )
        model = build_model(backbone, cfg.head, train.task, train.num_outputs, **cfg.head_kwargs)
    preprocess = preprocess_for(cfg, backbone, ctx.img_size)
    settings = {
        **cfg.train,
        "lr": lr,
        "seed": seed,
        "device": str(ctx.device),
        "num_workers": cfg.num_workers,
    }
    tcfg = TrainConfig(**{"autocast": cfg.autocast, **settings})
    resuming = cfg.resume and (run_dir / CHECKPOINT_NAME).exists()  # a fresh run shows its bar at once
    bar = epoch_bar(tcfg.epochs, desc, resume=resuming) if desc else None
    result = fit(model, strategy, train, ctx.splits["val"], cfg=tcfg, preprocess=preprocess, out_dir=run_dir,
                 resume=cfg.resume, progress=bar, objective=objective)  # fmt: skip
    return result, backbone, preprocess, tcfg, strategy
