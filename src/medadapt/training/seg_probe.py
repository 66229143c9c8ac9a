"""Segmentation probes on cached patch tokens: a grid of heads (one per learning rate) trained in one pass.

The frozen backbone's tokens ``[N, T, D]`` (float16, usually a memory-mapped cache entry) and the masks
``[N, H, W]`` are all a probe needs: each batch of tokens goes through every head of the LR grid, which
upsamples to the mask size (:mod:`medadapt.heads.segmentation`), and the task's loss (cross-entropy + soft
Dice) trains it. The head with the best validation Dice (mean over images of the foreground Dice) is kept,
at its best evaluated epoch, as the classification probes keep the best AUC.

Example:
    >>> res = train_seg_probe(train_fs, val_fs, train_masks, val_masks, num_classes=2)  # doctest: +SKIP
    >>> res.predict(test_fs, out_size=(224, 224)).shape  # doctest: +SKIP
    (120, 224, 224)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._device import autocast_context, seeded
from ..errors import ConfigError, DataError
from ..features.featureset import FeatureSet
from ..heads.segmentation import SEGMENTATION_HEADS, create_segmentation_head
from ..tasks import get_task
from .probe import DEFAULT_LRS, _optimizer

__all__ = ["SegProbeResult", "train_seg_probe", "SEG_HEADS"]

log = logging.getLogger(__name__)

#: Heads a segmentation probe trains on one level of tokens (``multiscale`` needs several: not here yet).
SEG_HEADS = ("linear", "decoder")


@dataclass
class SegProbeResult:
    """The selected head (eval mode, on CPU) and what the sweep saw."""

    head: nn.Module
    head_name: str
    best: dict[str, Any]
    val_dice_by_setting: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, fs: FeatureSet, *, out_size: Sequence[int], batch_size: int = 32,
                device: str | torch.device = "cpu") -> np.ndarray:  # fmt: skip
        """Class maps ``[N, H, W]`` (uint8) of the selected head at ``out_size``."""
        head = self.head.to(device).eval()
        out = []
        try:
            for start in range(0, len(fs), batch_size):
                tokens = torch.from_numpy(np.array(fs.tokens[start : start + batch_size])).to(device)
                out.append(head(tokens, fs.grid, tuple(out_size)).argmax(1).to(torch.uint8).cpu())
        finally:
            self.head.to("cpu")
        return torch.cat(out).numpy()


def _check(train: FeatureSet, val: FeatureSet, train_masks: np.ndarray, val_masks: np.ndarray, head: str,
           num_classes: int, lrs: Sequence[float], epochs: int, batch_size: int) -> None:  # fmt: skip
    if head not in SEG_HEADS:
        valid = [h for h in SEG_HEADS if h in SEGMENTATION_HEADS]
        raise ConfigError(
            f"segmentation head {head!r} cannot train on one level of cached tokens; choose one of {valid}"
        )
    if num_classes < 2:
        raise ConfigError(f"segmentation needs >= 2 classes (background + foreground), got {num_classes}")
    if not lrs or len(set(lrs)) != len(lrs):
        raise ConfigError(f"the learning-rate grid must be non-empty without repeats, got {list(lrs)}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    for split, fs, masks in (("train", train, train_masks), ("val", val, val_masks)):
        if fs.tokens is None or fs.grid is None:
            raise DataError(
                f"{split} features hold no patch tokens: extract them with tokens for a segmentation probe"
            )
        if masks.ndim != 3 or len(masks) != len(fs):
            raise DataError(
                f"{split} masks must be [N, H, W] with N = {len(fs)} images, got shape {masks.shape}"
            )
        if masks.max(initial=0) >= num_classes:
            raise DataError(f"{split} masks hold class {int(masks.max())}, outside the {num_classes} classes")


def train_seg_probe(
    train: FeatureSet,
    val: FeatureSet,
    train_masks: np.ndarray,
    val_masks: np.ndarray,
    *,
    num_classes: int,
    head: str = "linear",
    lrs: Sequence[float] = DEFAULT_LRS,
    epochs: int = 30,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    autocast: bool = True,
    head_kwargs: dict[str, Any] | None = None,
    eval_every: int = 5,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> SegProbeResult:
    """Train one ``head`` per learning rate on ``train``'s tokens and masks; keep the best on ``val`` (Dice)."""
    train_masks, val_masks = np.asarray(train_masks), np.asarray(val_masks)
    _check(train, val, train_masks, val_masks, head, num_classes, lrs, epochs, batch_size)
    task = get_task("segmentation")
    dim = train.tokens.shape[-1]
    heads = nn.ModuleList()
    for _ in lrs:
        with seeded(seed):
            heads.append(create_segmentation_head(head, dim, num_classes, **(head_kwargs or {})))
    steps = math.ceil(len(train) / batch_size)
    opt, sched = _optimizer(heads.to(device), lrs, weight_decay, epochs * steps, 0)
    names = [f"lr={lr:g}" for lr in lrs]
    best: list[tuple[float, int, dict[str, torch.Tensor] | None]] = [(-math.inf, 0, None) for _ in heads]
    shuffle, history = torch.Generator().manual_seed(seed), []
    use_autocast = autocast and torch.device(device).type == "cuda"  # CPU: the casts cost more than they save
    with seeded(seed, device):
        for epoch in range(1, epochs + 1):
            losses = _train_epoch(
                heads, opt, sched, train, train_masks, task, batch_size, device, use_autocast, shuffle
            )
            record: dict[str, Any] = {"epoch": epoch, "train_loss": dict(zip(names, losses))}
            if epoch == epochs or epoch % max(1, eval_every) == 0:
                dice = _evaluate(heads, val, val_masks, num_classes, batch_size, device)
                for k, (h, d) in enumerate(zip(heads, dice)):
                    if best[k][2] is None or d > best[k][0]:
                        best[k] = (d, epoch, {n: t.detach().cpu().clone() for n, t in h.state_dict().items()})
                record["val_dice"] = dict(zip(names, dice))
            history.append(record)
            if progress is not None:
                progress(epoch, epochs, record)
    i = max(range(len(best)), key=lambda j: best[j][0])
    selected = heads[i].cpu()
    selected.load_state_dict(best[i][2])
    selected.eval()
    return SegProbeResult(head=selected, head_name=head, best={"lr": lrs[i], "epoch": best[i][1]},
                          val_dice_by_setting={n: b[0] for n, b in zip(names, best)}, history=history)  # fmt: skip


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield np.sort(order[start : start + batch_size])  # sorted rows: sequential memmap reads


def _train_epoch(heads, opt, sched, fs: FeatureSet, masks: np.ndarray, task, batch_size: int, device,
                 use_autocast: bool, generator: torch.Generator) -> list[float]:  # fmt: skip
    heads.train()
    totals, count = np.zeros(len(heads)), 0
    out_size = masks.shape[1:]
    for rows in _batches(len(fs), batch_size, generator):
        if len(rows) < 2:  # batch norm cannot train on one image
            continue
        tokens = torch.from_numpy(np.asarray(fs.tokens[rows])).to(device)
        target = torch.from_numpy(masks[rows].astype(np.int64)).to(device)
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, use_autocast):
            losses = [task.loss(h(tokens, fs.grid, out_size), target) for h in heads]
        torch.stack(losses).sum().backward()
        opt.step()
        sched.step()
        totals += [float(v.detach()) for v in losses]
        count += 1
    return (totals / max(count, 1)).tolist()


@torch.no_grad()
def _evaluate(
    heads, fs: FeatureSet, masks: np.ndarray, num_classes: int, batch_size: int, device
) -> list[float]:
    """Mean over images of the per-image foreground Dice of every head (empty on empty counts as 1)."""
    from ..evaluation.segmentation import dice_per_image  # evaluation is a later stage: imported lazily

    heads.eval()
    preds: list[list[np.ndarray]] = [[] for _ in heads]
    for rows in _batches(len(fs), batch_size, None):
        tokens = torch.from_numpy(np.asarray(fs.tokens[rows])).to(device)
        for k, h in enumerate(heads):
            preds[k].append(h(tokens, fs.grid, masks.shape[1:]).argmax(1).cpu().numpy())
    truth = masks.astype(np.int64)
    return [float(np.mean(dice_per_image(truth, np.concatenate(p), num_classes))) for p in preds]
