"""Train a classifier or a segmenter with a strategy: one readable loop, checkpointed every epoch, resumable
bit for bit.

:func:`fit` runs, per epoch: ``strategy.on_epoch_start`` → one pass over the shuffled training set (batches
preprocessed and augmented on the device, bf16 autocast where native, optional class weights and gradient
clipping, the LR scheduler stepped after every optimizer step) → one evaluation on the validation set
(the task's metric and loss: AUC, or Dice for segmentation; never on train or test) → a history record →
an atomic checkpoint → the early-stopping check. The weights with the best validation metric (ties: lower
validation loss) are restored at the end; the caller evaluates the test set once, with :func:`predict`.

The task (:mod:`medadapt.tasks`) says what a batch's targets are (``label``, or a segmentation ``mask``,
which the augmentation moves with its image), how logits meet them (segmentation logits are resized to the
masks' size) and which metric selects.

Reproducibility: every random draw of epoch ``e`` (batch order, augmentation, dropout and other model
randomness, anything the strategy hook draws) comes from seeds derived from ``(cfg.seed, e)``, inside a
fork of torch's RNG that is restored afterwards. So an epoch depends only on the state at its start, and
a run killed after epoch ``k`` and resumed from its checkpoint continues exactly as if never stopped
(bitwise on the CPU): the checkpoint needs no RNG state, and the global RNG is never changed.

Example:
    >>> cfg = TrainConfig(lr=1e-4, epochs=30, batch_size=64, augment="light", seed=0)
    >>> res = fit(model, create_strategy("full"), train_ds, val_ds, cfg=cfg, preprocess=prep,
    ...           out_dir="runs/ft")  # doctest: +SKIP
    >>> scores = predict(res.model, test_ds, preprocess=prep, device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from .._device import autocast_context, resolve_device, runs_bf16, seeded
from ..data.base import MedicalDataset
from ..data.transforms import Preprocess, collate, make_loader
from ..errors import ConfigError, DataError
from ..strategies.base import Strategy
from ..tasks import SegmentationTask, Task, class_map, get_task
from .augment import Augment, make_augment
from .checkpoint import checkpoint_path, cpu_state, load_checkpoint, run_fingerprint, save_checkpoint
from .config import TrainConfig
from .probe import loss_fn, to_scores
from .schedule import make_scheduler, sync_scheduler

__all__ = [
    "TrainConfig",
    "FitResult",
    "Objective",
    "fit",
    "predict",
    "evaluate",
    "class_weights",
    "make_criterion",
    "build_optimizer",
    "count_trainable",
    "selection_key",
    "best_run",
    "should_stop",
    "reset_peak_memory",
    "peak_memory",
]

log = logging.getLogger(__name__)

#: TrainConfig fields that do not change the result, so a run may be resumed with other values.
_NOT_HASHED = ("device", "num_workers", "checkpoint_every")
#: Independent seed streams of one epoch.
_MODEL_RNG, _SHUFFLE, _AUGMENT = 0, 1, 2

Progress = Callable[[int, int, dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------ result
@dataclass
class FitResult:
    """The trained model (selected weights loaded, eval mode, on the training device) and what training saw.

    ``state`` is a CPU copy of the selected weights; ``history`` has one dict per epoch (``epoch``, ``lr``
    per param group, ``trainable_params``, ``train_loss`` and, on evaluated epochs, ``metric`` (``val_auc``,
    or ``val_dice``) and ``val_loss``); ``cost`` has ``total_params``, ``trainable_params`` (the most during training, e.g.
    after the last unfreezing), ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated`` on a GPU, else
    the process's peak resident memory during this fit on Linux, including what the process already held
    (data, models), and the process's all-time peak elsewhere; a resumed run reports the largest peak of
    its sessions that the checkpoints saw), ``wall_seconds`` and ``train_seconds`` (summed over resumed
    sessions), ``train_images_per_second`` and ``epochs``.
    """

    model: nn.Module
    state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_score: float  # the selected epoch's ``metric``
    best_val_loss: float
    history: list[dict[str, Any]]
    cost: dict[str, float]
    metric: str = "val_auc"  # the task's validation metric: val_auc, or val_dice for segmentation
    stopped_early: bool = False
    resumed_from: int = 0  # the epoch of the checkpoint resumed from (0: a fresh run)
    #: seconds of each epoch of ``history`` (training and its evaluation); an epoch replayed after a resume
    #: counts its last run
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def best_val_auc(self) -> float:
        """The selected epoch's validation AUC (NaN for a task selected on another metric)."""
        return self.best_val_score if self.metric == "val_auc" else float("nan")

    @property
    def best_record(self) -> dict[str, float]:
        """``{metric: score, "val_loss": loss}`` of the selected epoch (what :func:`best_run` compares)."""
        return {self.metric: self.best_val_score, "val_loss": self.best_val_loss}


@dataclass
class _Best:
    """The selected epoch so far and a CPU copy of its weights; ``score`` is its ``metric``."""

    epoch: int = 0
    score: float = float("nan")
    val_loss: float = float("nan")
    state: dict[str, torch.Tensor] | None = None
    metric: str = "val_auc"

    def record(self) -> dict[str, Any]:
        return {"epoch": self.epoch, self.metric: self.score, "val_loss": self.val_loss}

    def update(self, record: dict[str, Any], model: nn.Module, select_on: str) -> None:
        if self.state is None or selection_key(record, select_on) > selection_key(self.record(), select_on):
            self.epoch, self.score, self.val_loss = record["epoch"], record[self.metric], record["val_loss"]
            self.state = cpu_state(model)


@dataclass
class _Run:
    """Everything :func:`fit` carries from epoch to epoch (and through a checkpoint)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)
    clock: dict[str, float] = field(default_factory=lambda: {"wall": 0.0, "train": 0.0, "images": 0})
    resumed_from: int = 0
    seconds: list[float] = field(default_factory=list)  # per epoch of history


# ------------------------------------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    strategy: Strategy,
    train_ds: MedicalDataset,
    val_ds: MedicalDataset,
    *,
    cfg: TrainConfig,
    preprocess: Preprocess,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    objective: Objective | None = None,
) -> FitResult:
    """Train ``model`` as ``strategy`` configures it; checkpoint to ``out_dir/checkpoint.pt`` every epoch
    (every ``cfg.checkpoint_every`` epochs, and after the last).

    ``resume=True`` continues from that checkpoint (which must come from the same configuration, model,
    strategy, preprocessing and data; else :class:`~medadapt.errors.ConfigError`), or starts afresh if there
    is none. ``progress(epoch, epochs, record)`` is called after each epoch (and its checkpoint, when one
    is due). ``objective`` replaces the task loss as what is minimised (e.g.
    :class:`~medadapt.distill.DistillObjective`); its loss parts are logged per epoch as ``train_{part}``.
    """
    device = resolve_device(cfg.device)
    task = task_of(_check_data(train_ds, val_ds), cfg.loss)
    metric = f"val_{task.selection_metric}"
    select_on, early_stop = _for_task(cfg.select_on, metric), _for_task(cfg.early_stop, metric)
    ckpt = checkpoint_path(out_dir, resume=resume)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_HASHED}
    if cfg.loss is None:  # absent, so checkpoints of versions before the option still resume
        del settings["loss"]
    if runs_bf16(device, cfg.autocast):  # the device is not hashed, but the precision it runs is: a run
        settings["precision"] = "bf16"  # begun in bf16 does not resume in float32, nor the reverse (the key
        # is absent under float32, so float32 checkpoints of earlier versions still resume)
    if objective is not None:
        settings["objective"] = objective.fingerprint()
    run_hash = run_fingerprint(settings, strategy, model, preprocess, [train_ds, val_ds]) if ckpt else ""
    saved = load_checkpoint(ckpt, config_hash=run_hash) if ckpt is not None and ckpt.exists() else None
    if saved is not None:  # strategies that rebuild their groups in configure need their state first
        strategy.load_state_dict(saved["strategy"])
    _place(model, device)  # configure's forward pass (which parameters reach the output) runs on the device
    with seeded(_seed(cfg.seed, 0, _MODEL_RNG), device):  # adapters drawn at configure (LoRA) are seeded too
        groups = strategy.configure(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    optimizer = build_optimizer(cfg, groups)
    _place(model, device)  # and the adapters configure added
    train_loader, order, val_loader = _loaders(train_ds, val_ds, cfg, preprocess, objective)
    scheduler = _scheduler(optimizer, cfg, steps_per_epoch=len(train_loader))
    weights = _train_class_weights(task, train_ds) if cfg.class_weights else None
    step = _Step(
        task, make_criterion(task, weights), preprocess, make_augment(cfg.augment), cfg, device, objective
    )
    if objective is not None:
        objective.prepare(device)
    run = _Run(best=_Best(metric=metric))
    if saved is not None:
        run = _restore(saved, model, optimizer, scheduler, strategy, cfg=cfg, device=device, metric=metric)
    _reset_peak_memory(device)
    start, wall0 = time.perf_counter(), run.clock["wall"]
    for epoch in range(len(run.history) + 1, cfg.epochs + 1):
        if should_stop(run.history, early_stop, cfg.patience):
            break
        order.manual_seed(_seed(cfg.seed, epoch, _SHUFFLE))
        augment_rng = torch.Generator().manual_seed(_seed(cfg.seed, epoch, _AUGMENT))
        t0 = time.perf_counter()
        with seeded(_seed(cfg.seed, epoch, _MODEL_RNG), device):
            record = _start_epoch(epoch, model, optimizer, scheduler, strategy, run.history)
            losses, n_images = step.epoch(model, train_loader, optimizer, scheduler, augment_rng)
            record.update({f"train_{k}": v for k, v in losses.items()})
        run.clock["train"] += time.perf_counter() - t0
        run.clock["images"] += n_images
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            kw = {"task": task, "preprocess": preprocess, "device": device, "autocast": cfg.autocast}
            record.update(evaluate(model, val_loader, **kw))
            run.best.update(record, model, select_on)
        run.history.append(record)
        run.seconds.append(time.perf_counter() - t0)
        run.clock["wall"] = wall0 + time.perf_counter() - start
        log.info("epoch %d/%d: %s", epoch, cfg.epochs, record)
        last = epoch == cfg.epochs or should_stop(run.history, early_stop, cfg.patience)
        if ckpt is not None and (epoch % cfg.checkpoint_every == 0 or last):
            run.clock["peak_memory"] = _run_peak(run, device)
            save_checkpoint(ckpt, _checkpoint(run, run_hash, model, optimizer, scheduler, strategy))
        if progress is not None:
            progress(epoch, cfg.epochs, record)
    run.clock["wall"] = wall0 + time.perf_counter() - start
    optimizer.zero_grad(set_to_none=True)  # the last step's gradients would outlive the fit with the model
    model.load_state_dict(run.best.state)
    return FitResult(
        model=model.eval(),
        state=run.best.state,
        best_epoch=run.best.epoch,
        best_val_score=run.best.score,
        best_val_loss=run.best.val_loss,
        metric=metric,
        history=run.history,
        cost=_cost(model, run, device),
        stopped_early=len(run.history) < cfg.epochs,
        resumed_from=run.resumed_from,
        epoch_seconds=list(run.seconds),
    )


def _start_epoch(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    strategy: Strategy,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Train mode, then the strategy hook (which may put frozen parts back in eval mode or add groups)."""
    model.train()
    strategy.on_epoch_start(epoch, model, optimizer, history)
    sync_scheduler(scheduler)
    lrs = {g.get("name", f"group{i}"): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
    return {"epoch": epoch, "lr": lrs, "trainable_params": count_trainable(model)}


class Objective:
    """What a training step minimises besides (or instead of) the task loss; the default is the task loss.

    :meth:`__call__` gets the step's float32 logits, the task loss already computed on them (class weights
    applied), the batch (``index`` locates cached per-image targets) and the batch's images after
    augmentation and before preprocessing (what another model, such as a teacher, should see). It returns
    the loss to minimise and its named parts, which :func:`fit` logs as epoch means ``train_{name}``.
    :meth:`fingerprint` enters the checkpoint's run hash, so a run resumes only with the same objective.
    ``stored_images`` (a reason, or ``None``): the images must reach it at their stored size, so a train batch
    of mixed sizes is an error rather than fitted to the student's input size.
    """

    stored_images: str | None = None

    def prepare(self, device: torch.device) -> None:
        """Called once before training, with the training device."""

    def __call__(
        self, logits: torch.Tensor, task_loss: torch.Tensor, *, batch: dict[str, Any], images: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return task_loss, {}

    def fingerprint(self) -> dict[str, Any]:
        return {"name": type(self).__name__}


@dataclass
class _Step:
    """One optimisation step and one training epoch, with everything that stays fixed during a run."""

    task: Task
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    preprocess: Preprocess
    augment: Augment
    cfg: TrainConfig
    device: torch.device
    objective: Objective | None = None

    def epoch(
        self, model, loader, optimizer, scheduler, rng: torch.Generator
    ) -> tuple[dict[str, float], int]:
        """Train one pass over ``loader``; returns the mean loss (and its parts) and the number of images."""
        totals: dict[str, torch.Tensor] = {}
        n = 0
        for batch in loader:
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch[self.task.target_key].to(self.device, non_blocking=True)
            if self.task.target_key == "mask":  # masks follow the images' crop and flip
                images, labels = self.augment.pair(images, labels, rng)
            else:
                images = self.augment(images, rng)
            loss, parts = self(model, images, labels, optimizer, batch)
            scheduler.step()
            for name, value in {"loss": loss, **parts}.items():
                totals[name] = totals.get(name, 0.0) + value.detach() * len(labels)
            n += len(labels)
        return {name: float(total / max(n, 1)) for name, total in totals.items()}, n

    def __call__(
        self, model, images, labels, optimizer, batch=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step on raw (augmented) ``images``; returns the detached loss and its parts."""
        with autocast_context(self.device, self.cfg.autocast):
            logits = model(self.preprocess(images))
        logits = self.task.fit_logits(logits.float(), labels)
        loss = self.criterion(logits, labels)
        parts: dict[str, torch.Tensor] = {}
        if self.objective is not None:
            loss, parts = self.objective(logits, loss, batch=batch or {}, images=images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()
        return loss.detach(), {k: v.detach() for k, v in parts.items()}


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def _outputs(
    model: nn.Module, loader, preprocess: Preprocess, device: torch.device, autocast: bool, task: Task
):
    """Per batch, in order: float32 logits fitted to the targets (:meth:`Task.fit_logits`) and the targets,
    on the CPU."""
    model.eval()
    for batch in loader:
        x = preprocess(batch["image"].to(device, non_blocking=True))
        targets = batch[task.target_key]
        with autocast_context(device, autocast):
            logits = model(x).float()
        yield task.fit_logits(logits, targets).cpu(), targets


def evaluate(
    model: nn.Module,
    loader,
    *,
    task: str | Task,
    preprocess: Preprocess,
    device: torch.device,
    autocast: bool,
) -> dict[str, float]:
    """The task's validation metric and loss (unweighted) of ``model`` on ``loader``: ``{"val_auc",
    "val_loss"}`` (MedMNIST AUC), or for segmentation ``{"val_dice", "val_loss"}`` (the mean over images of
    the foreground Dice, :func:`~medadapt.evaluation.segmentation.dice_per_image`; the loss is the mean of
    the batches' losses weighted by their sizes). Segmentation logits are reduced batch by batch, never
    held for the whole set."""
    # pure functions; imported lazily (evaluation is a later stage)
    from ..evaluation.metrics import auc
    from ..evaluation.segmentation import dice_per_image

    spec = get_task(task)
    if spec.kind == "segmentation":
        dice, loss, n = [], 0.0, 0
        for logits, masks in _outputs(model, loader, preprocess, device, autocast, spec):
            loss += float(spec.loss(logits, masks)) * len(masks)
            n += len(masks)
            dice.append(dice_per_image(masks.numpy(), class_map(logits).numpy(), logits.shape[1]))
        return {"val_dice": float(np.mean(np.concatenate(dice))), "val_loss": loss / max(n, 1)}
    logits, labels = (torch.cat(t) for t in zip(*_outputs(model, loader, preprocess, device, autocast, spec)))
    loss = float(loss_fn(spec.name)(logits, labels))
    return {
        "val_auc": float(auc(spec.name, labels.numpy(), to_scores(spec.name, logits).numpy())),
        "val_loss": loss,
    }


def predict(
    model: nn.Module,
    ds: MedicalDataset,
    *,
    preprocess: Preprocess,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    autocast: bool = True,
    num_workers: int = 0,
) -> np.ndarray:
    """Scores ``[N, C]`` (probabilities, row-aligned with ``ds``) of ``model`` on ``ds``; for a segmentation
    dataset, class maps ``[N, H, W]`` (uint8, the argmax at the masks' size).

    Like ``nn.Module.to``, this moves ``model`` itself to ``device`` (a CNN on the CPU goes channels-last) and
    leaves it in eval mode; copying it first would double the memory of a large model.

    Example:
        >>> scores = predict(res.model, test_ds, preprocess=prep, device="cuda")  # doctest: +SKIP
    """
    device = resolve_device(str(device))
    loader = make_loader(ds, batch_size=batch_size, num_workers=num_workers, fit=preprocess.fit_one)
    task = get_task(ds.task)
    outputs = _outputs(_place(model, device), loader, preprocess, device, autocast, task)
    if task.kind == "segmentation":
        return torch.cat([class_map(logits).to(torch.uint8) for logits, _ in outputs]).numpy()
    return to_scores(ds.task, torch.cat([logits for logits, _ in outputs])).numpy()


def selection_key(record: dict[str, Any], select_on: str) -> tuple[float, ...]:
    """Higher is better: the metric then lower loss (``val_auc``, ``val_dice``), the metric alone
    (``val_auc_first``: with the strict ``>`` of the caller, the first epoch of the highest AUC wins, as in
    the official MedMNIST code), lower loss (``val_loss``) or later (``last``)."""
    loss = record["val_loss"]
    neg_loss = -loss if math.isfinite(loss) else -math.inf
    if select_on in ("val_loss", "last"):
        return (neg_loss,) if select_on == "val_loss" else (record["epoch"],)
    score = record[select_on.removesuffix("_first")]
    score = score if math.isfinite(score) else -math.inf
    return (score,) if select_on.endswith("_first") else (score, neg_loss)


def best_run(records: Sequence[dict[str, Any]], select_on: str) -> int:
    """Index of the best of several runs (an LR search) from their selected epochs' metric and ``val_loss``
    (:attr:`FitResult.best_record`).

    The runs' own rule decides: lower val loss when epochs are chosen on it, else the higher metric (AUC,
    or Dice for segmentation) then lower loss (``last`` has no rule across runs, so the metric too); a tie
    goes to the first run.
    """
    metric = next((k for k in records[0] if k.startswith("val_") and k != "val_loss"), "val_auc")
    rule = "val_loss" if select_on == "val_loss" else metric
    keys = [selection_key(r, rule) for r in records]
    return keys.index(max(keys))


def should_stop(history: list[dict[str, Any]], monitor: str | None, patience: int) -> bool:
    """True once ``patience`` evaluations in a row have not improved ``monitor`` on the best before them."""
    if monitor is None:
        return False
    sign = -1.0 if monitor == "val_loss" else 1.0
    values = [sign * r[monitor] for r in history if monitor in r]
    values = [v if math.isfinite(v) else -math.inf for v in values]
    if not values:
        return False
    best = int(np.argmax(values))  # the first best: later ties do not count as improvement
    return len(values) - 1 - best >= patience


# ------------------------------------------------------------------------------ optimizer, loss, data
def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer over the strategy's param groups (``sgd`` with momentum 0.9)."""
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ConfigError(
            "the strategy's param groups hold no trainable parameter: there is nothing to train"
        )
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, **kwargs)
    return (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW)(groups, **kwargs)


def class_weights(task: str, labels: np.ndarray, num_outputs: int) -> torch.Tensor:
    """Inverse-frequency weights from train labels (:meth:`medadapt.tasks.Task.class_weights`): ``n / (C * n_c)``
    per class, or ``neg / pos`` per label. Classes without examples get the weight of one; NaN labels are
    ignored."""
    return get_task(task).class_weights(labels, num_outputs)


def make_criterion(
    task: str | Task, weights: torch.Tensor | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's loss, optionally class-weighted (multi-label: ``pos_weight``)."""
    spec = get_task(task)
    return spec.loss if weights is None else spec.weighted_loss(weights)


def task_of(task: str | Task, loss: str | None = None) -> Task:
    """The task, with the segmentation loss ``loss`` (``ce``, ``dice``, ``ce+dice``) where one is given;
    a loss for a classification task is a :class:`ConfigError`."""
    spec = get_task(task)
    if loss is None:
        return spec
    if not isinstance(spec, SegmentationTask):
        raise ConfigError(
            f"--loss {loss!r} applies to segmentation; a {spec.name} task trains on its own loss (leave --loss out)"
        )
    return spec.with_loss(loss)


def _for_task(select_on: str | None, metric: str) -> str | None:
    """A ``--select-on`` / ``--early-stop`` quantity for a task whose validation metric is ``metric``: the
    default ``val_auc`` means the task's metric (``val_dice`` on segmentation); a metric the task does not
    have is a :class:`ConfigError`."""
    if select_on is None or select_on in ("val_loss", "last"):
        return select_on
    name, first = select_on.removesuffix("_first"), select_on.endswith("_first")
    if name == "val_auc" and metric != "val_auc":
        return metric + ("_first" if first else "")
    if name != metric:
        raise ConfigError(f"{select_on} is not measured on this task, whose validation metric is {metric}")
    return select_on


def _train_class_weights(task: Task, train_ds: MedicalDataset) -> torch.Tensor:
    """Inverse-frequency class weights of the training set: of its labels, or of its masks' pixels."""
    if task.kind == "segmentation":
        return task.mask_class_weights((train_ds.mask(i) for i in range(len(train_ds))), train_ds.num_outputs)
    return class_weights(task.name, train_ds.labels, train_ds.num_outputs)


def _loaders(train_ds: MedicalDataset, val_ds: MedicalDataset, cfg: TrainConfig, preprocess: Preprocess,
             objective: Objective | None = None):  # fmt: skip
    """Train batches in a shuffled order, its generator, and val batches in order.

    The order comes from a generator of its own (reseeded every epoch), so it does not depend on how the
    ``DataLoader`` draws worker seeds: the same with or without (persistent) workers. A last train batch
    of one image is dropped (batch norm cannot train on it).
    """
    n, order = len(train_ds), torch.Generator()
    train = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_ds, generator=order),
        num_workers=cfg.num_workers,
        collate_fn=functools.partial(collate, fit=_train_fit(preprocess, objective)),
        drop_last=n > 1 and n % cfg.batch_size == 1,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # worker seeds only
    )
    val = make_loader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers, fit=preprocess.fit_one)
    return train, order, val


def _train_fit(preprocess: Preprocess, objective: Objective | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """How a train batch of mixed image sizes is unified: each image fitted to the model's input, unless the
    objective needs the stored images (then such a batch is an error naming why)."""
    reason = getattr(objective, "stored_images", None)
    if reason is None:
        return preprocess.fit_one
    return functools.partial(_refuse_mixed_sizes, reason)


def _refuse_mixed_sizes(reason: str, image: torch.Tensor) -> torch.Tensor:
    raise DataError(f"a training batch mixes image sizes, but {reason}")


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, *, steps_per_epoch: int):
    """The per-step LR schedule of ``cfg`` (epochs converted to optimizer steps)."""
    return make_scheduler(
        optimizer,
        schedule=cfg.schedule,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch,
        milestones_steps=[m * steps_per_epoch for m in cfg.milestones],
        gamma=cfg.gamma,
    )


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _place(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in place; a convolutional network on the CPU also goes channels-last.

    oneDNN's CPU convolutions are faster on channels-last (NHWC) tensors, and a channels-last weight makes
    the activations channels-last too, so inputs need no conversion. Measured with
    ``bench/medmnist_v2_speed.py --explore`` (ResNet-18, 28 px, batch 128, one AVX2 thread): training steps
    ~12% and evaluation ~18% faster. Only the float rounding differs from NCHW; a run stays deterministic and
    resumes bit for bit. Parameters keep their identity (an optimizer built before still holds them).
    """
    if device.type == "cpu" and _mostly_convolutions(model):
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def _mostly_convolutions(model: nn.Module) -> bool:
    """True when 2D convolution weights hold most parameters (CNNs; not a ViT with a conv patch embedding)."""
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    return 2 * conv > sum(p.numel() for p in model.parameters())


def _check_data(train_ds: MedicalDataset, val_ds: MedicalDataset) -> str:
    if train_ds.task != val_ds.task or train_ds.num_outputs != val_ds.num_outputs:
        raise DataError(
            f"train ({train_ds.task}, {train_ds.num_outputs} outputs) and val ({val_ds.task}, "
            f"{val_ds.num_outputs} outputs) are not the same task"
        )
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise DataError(f"train and val must not be empty (got {len(train_ds)} and {len(val_ds)} images)")
    return train_ds.task


def _seed(seed: int, epoch: int, stream: int) -> int:
    """Independent seed of one random stream of one epoch: a pure function of (seed, epoch, stream)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoint(run: _Run, run_hash: str, model, optimizer, scheduler, strategy) -> dict[str, Any]:
    """Everything needed to continue after the last epoch of ``run.history``: weights_only-loadable values."""
    epoch = run.history[-1]["epoch"]
    best = run.best.record()
    return {
        "config_hash": run_hash,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "strategy": strategy.state_dict(),
        "history": run.history,
        # the best weights are stored only when they are not this epoch's (then they are "model")
        "best": {**best, "state": None if run.best.epoch == epoch else run.best.state},
        "clock": dict(run.clock),
        "seconds": list(run.seconds),
    }


def _restore(
    state: dict[str, Any], model, optimizer, scheduler, strategy, *, cfg, device, metric: str
) -> _Run:
    """Load a checkpoint into the run's objects; hooks of finished epochs are replayed first.

    Replaying ``on_epoch_start`` (with the history each call saw) rebuilds what the hooks changed that a
    state dict does not hold, such as parameters unfrozen into new optimizer groups, so the optimizer's
    saved state then fits. (A strategy may instead rebuild those groups in ``configure`` from its loaded
    state; its replayed hooks then have nothing left to add.) The strategy's state is loaded again after
    the replay, so what the replayed hooks changed in it does not count.
    """
    history = state["history"]
    for epoch in range(1, state["epoch"] + 1):
        with seeded(_seed(cfg.seed, epoch, _MODEL_RNG), device):
            _start_epoch(epoch, model, optimizer, scheduler, strategy, history[: epoch - 1])
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:  # other parameter groups: the checkpoint is from a version that trained others
        raise ConfigError(
            f"the checkpoint's optimizer state does not fit this run's parameter groups ({e}); it was "
            "written by a medadapt version that trained other parameters: start the run afresh (a new --out, "
            "or remove the seed's checkpoint.pt)"
        ) from e
    scheduler.load_state_dict(state["scheduler"])
    strategy.load_state_dict(state["strategy"])
    best = dict(state["best"])
    best_state = best.pop("state")
    if best_state is None and best["epoch"] == state["epoch"]:  # the best is this epoch's, stored as "model"
        best_state = {k: v.clone() for k, v in state["model"].items()}
    # (else None: no epoch evaluated yet, so the first evaluation is taken whatever its score, as without a kill)
    log.info("resumed at epoch %d", state["epoch"])
    seconds = list(state.get("seconds", []))[: len(history)]  # absent in checkpoints of earlier versions
    seconds += [math.nan] * (len(history) - len(seconds))
    chosen = _Best(best["epoch"], best[metric], best["val_loss"], best_state, metric)
    return _Run(history, chosen, state["clock"], resumed_from=state["epoch"], seconds=seconds)


# ------------------------------------------------------------------------------------------------- cost
_CLEAR_REFS, _STATUS = "/proc/self/clear_refs", "/proc/self/status"


def _reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for this fit: CUDA's allocator stats, or on Linux the process's RSS high-water mark.

    Written by hand because no library resets it: ``getrusage`` only ever reports the process's all-time
    peak, which would give every later arm of one ``medadapt finetune`` call the peak of the largest earlier
    one. Linux (since 4.0) resets ``VmHWM`` when "5" is written to ``/proc/self/clear_refs``.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:  # not Linux, or /proc not writable: the peak stays process-wide (see _peak_memory)
        pass


def _peak_memory(device: torch.device) -> float:
    """Peak allocated GPU memory since the reset, else peak RSS in bytes since the reset (nan if unknown).

    On Linux the RSS peak is ``VmHWM``, which :func:`_reset_peak_memory` resets; elsewhere it is
    ``ru_maxrss``, the process's peak since it started.
    """
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


#: Public names for the run driver, which measures a probe cell's peak the same way.
reset_peak_memory, peak_memory = _reset_peak_memory, _peak_memory


def _run_peak(run: _Run, device: torch.device) -> float:
    """The run's peak over all its processes: this one's since the reset, and what the checkpoint carried.

    A resumed run (or a finished one asked again) would otherwise report only the peak of its last
    process, which may not have trained at all.
    """
    peaks = [p for p in (run.clock.get("peak_memory", math.nan), _peak_memory(device)) if not math.isnan(p)]
    return max(peaks, default=math.nan)


def _cost(model: nn.Module, run: _Run, device: torch.device) -> dict[str, float]:
    clock = run.clock
    trainable = max((r["trainable_params"] for r in run.history), default=count_trainable(model))
    return {
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": trainable,
        "peak_memory_bytes": _run_peak(run, device),
        "wall_seconds": clock["wall"],
        "train_seconds": clock["train"],
        "train_images_per_second": clock["images"] / clock["train"] if clock["train"] > 0 else float("nan"),
        "epochs": len(run.history),
    }
