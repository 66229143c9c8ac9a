"""Segmentation probes on cached patch tokens: a grid of heads (one per learning rate) trained in one pass.

The frozen backbone's tokens ``[N, T, D]`` (float16, usually a memory-mapped cache entry) and the masks
``[N, H, W]`` are all a probe needs: each batch of tokens goes through every head of the LR grid, which
upsamples to the mask size (:mod:`medadapt.heads.segmentation`), and the task's loss (cross-entropy + soft
Dice) trains it. The head with the best validation Dice (mean over images of the foreground Dice) is kept,
at its best evaluated epoch, as the classification probes keep the best AUC.

The ``multiscale`` head trains on several levels of tokens instead (``FeatureSet.levels``: the last blocks of
a ViT, or the stages of a hierarchical backbone, from ``extract_features(..., levels=k)``), its ``dims``
taken from the levels' widths; batches read the same sorted rows of every level's memory map.

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
from ..tasks import class_map, get_task
from .probe import DEFAULT_LRS, head_optimizer, row_batches

__all__ = ["SegProbeResult", "train_seg_probe", "SEG_HEADS"]

log = logging.getLogger(__name__)

#: Heads a segmentation probe trains: ``linear`` and ``decoder`` on the last level of tokens, ``multiscale``
#: on several (``FeatureSet.levels``).
SEG_HEADS = tuple(SEGMENTATION_HEADS)


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
        multiscale = getattr(head, "multiscale", False)
        if multiscale:
            _check_levels(fs, "predict", head.dims)
        out = []
        try:
            for start in range(0, len(fs), batch_size):
                rows = slice(start, start + batch_size)
                logits = _apply(head, _inputs(fs, rows, device, multiscale), tuple(out_size))
                out.append(class_map(logits).to(torch.uint8).cpu())
        finally:
            self.head.to("cpu")
        return torch.cat(out).numpy()


def _check(train: FeatureSet, val: FeatureSet, train_masks: np.ndarray, val_masks: np.ndarray, head: str,
           num_classes: int, lrs: Sequence[float], epochs: int, batch_size: int) -> None:  # fmt: skip
    if head not in SEG_HEADS:
        valid = [h for h in SEG_HEADS if h in SEGMENTATION_HEADS]
        raise ConfigError(f"segmentation head {head!r} cannot train on cached tokens; choose one of {valid}")
    if num_classes < 2:
        raise ConfigError(f"segmentation needs >= 2 classes (background + foreground), got {num_classes}")
    if not lrs or len(set(lrs)) != len(lrs):
        raise ConfigError(f"the learning-rate grid must be non-empty without repeats, got {list(lrs)}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    for split, fs, masks in (("train", train, train_masks), ("val", val, val_masks)):
        if head == "multiscale":
            _check_levels(fs, split, None if split == "train" else [t.shape[-1] for t, _ in train.levels])
        elif fs.tokens is None or fs.grid is None:
            raise DataError(
                f"{split} features hold no patch tokens: extract them with tokens for a segmentation probe"
            )
        if masks.ndim != 3 or len(masks) != len(fs):
            raise DataError(
                f"{split} masks must be [N, H, W] with N = {len(fs)} images, got shape {masks.shape}"
            )
        if masks.max(initial=0) >= num_classes:
            raise DataError(f"{split} masks hold class {int(masks.max())}, outside the {num_classes} classes")


def _check_levels(fs: FeatureSet, split: str, dims: Sequence[int] | None) -> None:
    """``fs`` holds levels (of widths ``dims``, where given), else a DataError saying how to get them."""
    if not fs.levels:
        raise DataError(
            f"{split} features hold no multi-level tokens, which the multiscale head needs: extract them with "
            "extract_features(..., levels=k) (FeatureSet.levels; `medadapt probe --head multiscale` does, "
            "with head option levels, default 4), or use the linear or decoder head on the last level's tokens"
        )
    got = [int(t.shape[-1]) for t, _ in fs.levels]
    if dims is not None and got != [int(d) for d in dims]:
        raise DataError(
            f"{split} features hold {len(got)} levels of widths {got}, but the head is for {len(dims)} levels of "
            f"widths {list(dims)}: extract every split with the same backbone and levels"
        )


def _inputs(fs: FeatureSet, rows: np.ndarray | slice, device, multiscale: bool) -> tuple:
    """The head's inputs for ``rows`` (sorted, or a slice: sequential memmap reads) of ``fs``."""

    def read(tokens: np.ndarray) -> torch.Tensor:  # a slice of a memmap is a read-only view: copied
        block = tokens[rows]
        return torch.from_numpy(np.array(block) if isinstance(rows, slice) else np.asarray(block)).to(device)

    if multiscale:
        return ([(read(t), g) for t, g in fs.levels],)
    return read(fs.tokens), fs.grid


def _apply(head: nn.Module, inputs: tuple, out_size: Sequence[int]) -> torch.Tensor:
    return head(*inputs, out_size)


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
    """Train one ``head`` per learning rate on ``train``'s tokens and masks; keep the best on ``val`` (Dice).

    ``head="multiscale"`` trains on ``train.levels`` (``dims``: their widths); ``head_kwargs`` go to the head
    (e.g. ``stride_out``, ``width``)."""
    train_masks, val_masks = np.asarray(train_masks), np.asarray(val_masks)
    _check(train, val, train_masks, val_masks, head, num_classes, lrs, epochs, batch_size)
    task = get_task("segmentation")
    multiscale = head == "multiscale"
    dim: Any = [int(t.shape[-1]) for t, _ in train.levels] if multiscale else train.tokens.shape[-1]
    head_kwargs = dict(head_kwargs or {})
    if multiscale and "levels" in head_kwargs:  # how many levels were extracted: the features tell the head
        levels = head_kwargs.pop("levels")
        if str(levels) != str(len(dim)):
            raise DataError(f"head option levels={levels!r}, but the features hold {len(dim)} levels")
    heads = nn.ModuleList()
    for _ in lrs:
        with seeded(seed):
            heads.append(create_segmentation_head(head, dim, num_classes, **head_kwargs))
    steps = math.ceil(len(train) / batch_size)
    opt, sched = head_optimizer(heads.to(device), lrs, weight_decay, epochs * steps, 0)
    names = [f"lr={lr:g}" for lr in lrs]
    best: list[tuple[float, int, dict[str, torch.Tensor] | None]] = [(-math.inf, 0, None) for _ in heads]
    shuffle, history = torch.Generator().manual_seed(seed), []
    use_autocast = autocast and torch.device(device).type == "cuda"  # CPU: the casts cost more than they save
    with seeded(seed, device):
        for epoch in range(1, epochs + 1):
            losses = _train_epoch(heads, opt, sched, train, train_masks, task, batch_size, device, use_autocast,
                                  shuffle, multiscale)  # fmt: skip
            record: dict[str, Any] = {"epoch": epoch, "train_loss": dict(zip(names, losses))}
            if epoch == epochs or epoch % max(1, eval_every) == 0:
                dice = _evaluate(heads, val, val_masks, num_classes, batch_size, device, multiscale)
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


def _train_epoch(heads, opt, sched, fs: FeatureSet, masks: np.ndarray, task, batch_size: int, device,
                 use_autocast: bool, generator: torch.Generator, multiscale: bool = False) -> list[float]:  # fmt: skip
    heads.train()
    totals, count = np.zeros(len(heads)), 0
    out_size = masks.shape[1:]
    for rows in row_batches(len(fs), batch_size, generator):
        if len(rows) < 2:  # batch norm cannot train on one image
            continue
        inputs = _inputs(fs, rows, device, multiscale)
        target = torch.from_numpy(masks[rows]).to(device)  # the loss takes any integer dtype
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, use_autocast):
            losses = [task.loss(_apply(h, inputs, out_size), target) for h in heads]
        torch.stack(losses).sum().backward()
        opt.step()
        sched.step()
        totals += [float(v.detach()) for v in losses]
        count += 1
    return (totals / max(count, 1)).tolist()


@torch.no_grad()
def _evaluate(heads, fs: FeatureSet, masks: np.ndarray, num_classes: int, batch_size: int, device,
              multiscale: bool = False) -> list[float]:  # fmt: skip
    """Mean over images of the per-image foreground Dice of every head (empty on empty counts as 1)."""
    from ..evaluation.segmentation import dice_per_image  # evaluation is a later stage: imported lazily

    heads.eval()
    dice: list[list[np.ndarray]] = [[] for _ in heads]
    for rows in row_batches(len(fs), batch_size, None):  # per batch: memory does not grow with the split
        inputs = _inputs(fs, rows, device, multiscale)
        truth = masks[rows].astype(np.int64)
        for k, h in enumerate(heads):
            pred = class_map(_apply(h, inputs, masks.shape[1:])).cpu().numpy()
            dice[k].append(dice_per_image(truth, pred, num_classes))
    return [float(np.mean(np.concatenate(d))) for d in dice]
