"""Task types, defined once for every stage: each owns its loss, scores, label checks and selection metric.

A task is a small object looked up by name (:func:`get_task`): ``binary`` (2 softmax scores, the MedMNIST
convention), ``multiclass``, ``ordinal`` (softmax over ordered classes; quadratic kappa), ``multilabel``
(L sigmoid scores; nan marks an unknown label, left out of the loss) and ``segmentation`` (a class per
pixel). Training loops, probes, distillation
and evaluation ask the task instead of comparing its name, so a new task (segmentation) is one class and one
registration here, not a branch in every module.

Example:
    >>> task = get_task("multilabel")
    >>> task.scores(torch.zeros(1, 3)).tolist()
    [[0.5, 0.5, 0.5]]
    >>> [name for name in TASKS]
    ['binary', 'multiclass', 'multilabel', 'ordinal', 'segmentation']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ._choices import CLASSIFICATION_TASKS as _CLASSIFICATION_NAMES
from ._choices import SEGMENTATION_LOSSES
from ._registry import Registry
from .errors import ConfigError, DataError

__all__ = [
    "TASKS",
    "CLASSIFICATION_TASKS",
    "Task",
    "SoftmaxTask",
    "MultilabelTask",
    "SegmentationTask",
    "segmentation_loss",
    "class_map",
    "get_task",
    "check_task",
]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Task:
    """What a task decides: how logits become scores and a loss, what labels look like, what selects a model."""

    name: ClassVar[str]
    #: ``classification`` (a label per image) or ``segmentation`` (a class per pixel).
    kind: ClassVar[str] = "classification"
    #: The validation metric that selects a checkpoint, a learning rate or a k.
    selection_metric: ClassVar[str] = "auc"
    #: The batch key a training step reads its targets from (``label``, or ``mask`` per pixel).
    target_key: ClassVar[str] = "label"

    def fit_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits brought to the targets' layout before the loss (classification: unchanged)."""
        return logits

    def scores(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Probabilities ``[B, C]`` from logits."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The training loss of logits ``[B, C]`` against labels in the dataset layout."""
        raise NotImplementedError

    def weighted_loss(self, weights: torch.Tensor) -> Loss:  # pragma: no cover - abstract
        """:meth:`loss` with per-class weights (:meth:`class_weights`)."""
        raise NotImplementedError

    def class_weights(self, labels: np.ndarray, num_outputs: int) -> torch.Tensor:  # pragma: no cover
        """Inverse-frequency weights from training labels."""
        raise NotImplementedError

    def score_loss(self, scores: torch.Tensor, labels: np.ndarray) -> float:  # pragma: no cover - abstract
        """The loss of probability scores (a kNN head has no logits)."""
        raise NotImplementedError

    def targets(self, labels: np.ndarray, num_outputs: int) -> np.ndarray:  # pragma: no cover - abstract
        """Float targets ``[N, C]`` (one-hot classes, or the 0/1 labels themselves)."""
        raise NotImplementedError

    def kd_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """``KL(teacher || student)`` of temperature-scaled logits, averaged over the batch."""
        raise NotImplementedError

    def mean_logits(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Logits whose scores are the mean of the scores of ``logits`` ``[M, B, C]`` (an ensemble)."""
        raise NotImplementedError

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Per row: the top-class probability and the entropy of the scores."""
        raise NotImplementedError

    def label_width(self, num_outputs: int) -> int:
        """Columns of the label array: 1 (a class index) or one per output."""
        return 1

    def check_outputs(self, num_outputs: int) -> None:
        """A clear error where ``num_outputs`` cannot serve this task (labels outside it are caught by
        :meth:`check_labels`)."""

    def check_labels(self, labels: np.ndarray, num_outputs: int, where: str) -> None:
        """A clear error for labels that do not fit ``[N, label_width]`` with values for ``num_outputs``."""
        width = self.label_width(num_outputs)
        if labels.ndim != 2 or labels.shape[1] != width or len(labels) == 0:
            raise DataError(
                f"{where} labels have shape {labels.shape}; a {self.name} task with {num_outputs} outputs needs "
                f"[N, {width}] labels with N > 0"
            )


class SoftmaxTask(Task):
    """One class per image, softmax over ``C`` logits, cross-entropy on the class index ``labels[:, 0]``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels[:, 0].long())

    def weighted_loss(self, weights: torch.Tensor) -> Loss:
        return lambda logits, labels: F.cross_entropy(
            logits, labels[:, 0].long(), weight=weights.to(logits.device)
        )

    def class_weights(self, labels: np.ndarray, num_outputs: int) -> torch.Tensor:
        """``n / (C * n_c)`` per class; a class without examples gets the weight of one."""
        y = np.asarray(labels, dtype=np.float64)
        counts = np.bincount(y[:, 0].astype(np.int64), minlength=num_outputs)
        return torch.tensor(len(y) / (num_outputs * np.maximum(counts, 1)), dtype=torch.float32)

    def score_loss(self, scores: torch.Tensor, labels: np.ndarray) -> float:
        p = scores.float().clamp(1e-7, 1 - 1e-7)
        return F.nll_loss(p.log(), torch.tensor(np.asarray(labels))[:, 0].long()).item()

    def targets(self, labels: np.ndarray, num_outputs: int) -> np.ndarray:
        return np.eye(num_outputs, dtype=np.float32)[np.asarray(labels)[:, 0].astype(np.int64)]

    def kd_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.kl_div(
            F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean"
        )

    def mean_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``log(mean_i softmax(z_i))``: a valid logit vector whose softmax is the mean."""
        return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(len(logits))

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(logits, dim=-1)
        return p.amax(-1), torch.special.entr(p).sum(-1)

    def check_labels(self, labels: np.ndarray, num_outputs: int, where: str) -> None:
        super().check_labels(labels, num_outputs, where)
        if labels.min() < 0 or labels.max() >= num_outputs:
            raise DataError(
                f"{where} labels range over [{labels.min()}, {labels.max()}], outside the {num_outputs} classes "
                f"[0, {num_outputs - 1}]; check num_outputs"
            )


class BinaryTask(SoftmaxTask):
    """Two classes as two softmax logits (the MedMNIST convention); class 1 is the positive class."""

    def check_outputs(self, num_outputs: int) -> None:
        if num_outputs != 2:
            raise ConfigError(
                f"binary tasks use 2 outputs (softmax, the MedMNIST convention), got {num_outputs}"
            )


class MultilabelTask(Task):
    """``L`` independent labels, a sigmoid each; ``nan`` labels (unknown) are left out of the loss."""

    name = "multilabel"

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _masked_bce(logits, labels)

    def weighted_loss(self, weights: torch.Tensor) -> Loss:
        return lambda logits, labels: _masked_bce(logits, labels, pos_weight=weights.to(logits.device))

    def class_weights(self, labels: np.ndarray, num_outputs: int) -> torch.Tensor:
        """``neg / pos`` per label (BCE's ``pos_weight``); unknown labels are ignored."""
        y = np.asarray(labels, dtype=np.float64)
        pos, known = np.nansum(y == 1, axis=0), (~np.isnan(y)).sum(axis=0)
        return torch.tensor((known - pos) / np.maximum(pos, 1), dtype=torch.float32)

    def score_loss(self, scores: torch.Tensor, labels: np.ndarray) -> float:
        """Binary cross-entropy over the known labels (nan ones are left out, as in the training loss)."""
        p = scores.float().clamp(1e-7, 1 - 1e-7)
        y = torch.tensor(np.asarray(labels, dtype=np.float32))
        known = ~torch.isnan(y)
        return F.binary_cross_entropy(p[known], y[known]).item() if known.any() else float("nan")

    def targets(self, labels: np.ndarray, num_outputs: int) -> np.ndarray:
        return np.asarray(labels, dtype=np.float32)

    def kd_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        # log-sigmoid forms are stable for large logits: log(1 - sigmoid(x)) = logsigmoid(-x)
        log_p, log_1p = F.logsigmoid(teacher), F.logsigmoid(-teacher)
        log_q, log_1q = F.logsigmoid(student), F.logsigmoid(-student)
        return (log_p.exp() * (log_p - log_q) + log_1p.exp() * (log_1p - log_1q)).mean()

    def mean_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logit(mean_i sigmoid(z_i))`` per label, in log space so confident members do not overflow."""
        log_n = math.log(len(logits))
        log_p = torch.logsumexp(F.logsigmoid(logits), dim=0) - log_n
        return log_p - (torch.logsumexp(F.logsigmoid(-logits), dim=0) - log_n)

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each label a Bernoulli (top class: the likelier of 0 and 1), averaged over labels."""
        p = torch.sigmoid(logits)
        return torch.maximum(p, 1 - p).mean(-1), (torch.special.entr(p) + torch.special.entr(1 - p)).mean(-1)

    def label_width(self, num_outputs: int) -> int:
        return num_outputs


class SegmentationTask(Task):
    """A class per pixel: logits ``[B, C, H, W]``, masks ``[B, H, W]`` of class indices (0 = background).

    The loss is cross-entropy plus soft Dice (their sum, the default of the segmentation studies we follow;
    :func:`segmentation_loss`). A dataset's ``labels`` are ``[N, 1]`` "has foreground" flags, so splitting
    and counting work as for classification; the masks come from ``dataset.mask(i)``.
    """

    name = "segmentation"
    kind = "segmentation"
    selection_metric = "dice"
    target_key = "mask"

    def __init__(self, loss: str = "ce+dice") -> None:
        if loss not in SEGMENTATION_LOSSES:
            raise ConfigError(f"unknown segmentation loss {loss!r}; valid: {', '.join(SEGMENTATION_LOSSES)}")
        self.loss_kind = loss

    def with_loss(self, loss: str | None) -> SegmentationTask:
        """This task with another loss kind (``None``: this one)."""
        return self if loss is None or loss == self.loss_kind else SegmentationTask(loss)

    def fit_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C, h, w]`` at the input's size resized (bilinear) to masks ``[B, H, W]`` stored at
        another size, so the loss and the metrics are taken at the masks' own resolution."""
        size = tuple(targets.shape[-2:])
        if logits.ndim != 4 or tuple(logits.shape[-2:]) == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def mask_class_weights(self, masks, num_outputs: int) -> torch.Tensor:
        """:meth:`class_weights` from an iterable of masks (one at a time: never all in memory)."""
        counts = np.zeros(num_outputs, dtype=np.int64)
        for m in masks:
            counts += np.bincount(np.asarray(m, dtype=np.int64).ravel(), minlength=num_outputs)[:num_outputs]
        return torch.tensor(counts.sum() / (num_outputs * np.maximum(counts, 1)), dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(logits, labels, kind=self.loss_kind)

    def weighted_loss(self, weights: torch.Tensor) -> Loss:
        return lambda logits, masks: segmentation_loss(
            logits, masks, kind=self.loss_kind, class_weights=weights
        )

    def class_weights(self, labels: np.ndarray, num_outputs: int) -> torch.Tensor:
        """``n / (C * n_c)`` over the pixels of ``labels`` (here: masks ``[N, H, W]``)."""
        return self.mask_class_weights([labels], num_outputs)

    def score_loss(self, scores: torch.Tensor, labels: np.ndarray) -> float:
        raise ConfigError("segmentation has no kNN head: use the linear, multiscale or decoder head")

    def targets(self, labels: np.ndarray, num_outputs: int) -> np.ndarray:
        raise ConfigError("segmentation has no kNN head: use the linear, multiscale or decoder head")

    def kd_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-pixel ``KL(teacher || student)`` over the classes, averaged over pixels and images."""
        kl = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="sum")
        return kl / (student.numel() / student.shape[1])

    def mean_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(F.log_softmax(logits, dim=2), dim=0) - math.log(len(logits))

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the mean over pixels of the top-class probability and of the entropy."""
        p = torch.softmax(logits, dim=1)
        return p.amax(1).flatten(1).mean(1), torch.special.entr(p).sum(1).flatten(1).mean(1)

    def check_labels(self, labels: np.ndarray, num_outputs: int, where: str) -> None:
        super().check_labels(labels, num_outputs, where)
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{where} labels of a segmentation dataset are 0/1 'has foreground' flags")


#: Loss kinds of :func:`segmentation_loss`.


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    *,
    kind: str = "ce+dice",
    class_weights: torch.Tensor | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """The loss of logits ``[B, C, H, W]`` (softmax over ``C >= 2`` classes, binary as 2 logits) against
    integer masks ``[B, H, W]`` (any integer dtype; two classes run on the logit difference, same values).

    * ``ce``: pixel-wise cross-entropy, ``F.cross_entropy(logits, masks, weight=class_weights)``;
    * ``dice``: ``1 - mean_c soft Dice_c``, ``Dice_c = (2 sum p_c t_c + smooth) / (sum p_c + sum t_c +
      smooth)`` with softmax probabilities ``p`` and one-hot masks ``t``, sums over the whole batch and all
      pixels (batch Dice, as nnU-Net: an image without a structure does not make its own 0/0 term).
      Background (class 0) is left out of the mean unless ``include_background`` (binary: the Dice of the
      foreground), as in :mod:`medadapt.evaluation.segmentation`. ``class_weights`` do not apply here;
    * ``ce+dice`` (default): their sum.

    Pixels equal to ``ignore_index`` count in neither part.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> round(segmentation_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), kind="ce").item(), 4)
        0.6931
    """
    if kind not in SEGMENTATION_LOSSES:
        raise ConfigError(f"unknown segmentation loss {kind!r}; valid: {', '.join(SEGMENTATION_LOSSES)}")
    if masks.is_floating_point() or masks.is_complex():
        masks = masks.long()
    valid = _check_masks(logits, masks, ignore_index)
    if class_weights is not None and class_weights.numel() != logits.shape[1]:
        raise ConfigError(
            f"class_weights hold {class_weights.numel()} values for {logits.shape[1]} classes; give one "
            "weight per class (background first)"
        )
    parts = kind.split("+")
    if logits.shape[1] == 2:
        return _binary_loss(logits, masks, valid, parts, class_weights, include_background, smooth)
    masks = masks.long()
    # One log-softmax serves both parts (cross-entropy is its NLL, the Dice its exp), not a softmax each.
    log_probs = F.log_softmax(logits.float(), dim=1)
    loss = logits.new_zeros((), dtype=torch.float32)
    if "ce" in parts:
        weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
        ignore = -100 if ignore_index is None else ignore_index
        loss = loss + F.nll_loss(log_probs, masks, weight=weight, ignore_index=ignore)
    if "dice" in parts:
        loss = loss + _dice_loss(
            log_probs, masks, valid, include_background=include_background, smooth=smooth
        )
    return loss


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class per pixel, ``[B, H, W]`` int64, of logits ``[B, C, H, W]``: ``logits.argmax(1)``.

    Computed as ``logits.max(1).indices``, the same indices (the first largest on ties; NaN counts as the
    largest): torch's CPU ``argmax`` over a dimension that is not the last ran ~10x slower, and was most of a
    segmentation probe's validation.

    Example:
        >>> class_map(torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])).tolist()
        [[[1, 0]]]
    """
    return logits.max(1).indices


def _binary_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor | None,
    parts: list[str],
    class_weights: torch.Tensor | None,
    include_background: bool,
    smooth: float,
) -> torch.Tensor:
    """:func:`segmentation_loss` of two classes, on the logit difference ``d = z_1 - z_0``.

    The softmax of ``(z_0, z_1)`` is ``(sigmoid(-d), sigmoid(d))``, so the cross-entropy is the binary
    cross-entropy with logits of ``d`` and the Dice takes ``sigmoid(d)``: the same values and gradients as the
    softmax path within float rounding (tested against ``F.cross_entropy`` and MONAI's ``DiceLoss``), on
    ``[B, H, W]`` tensors instead of ``[B, 2, H, W]`` ones, with fused kernels. Full-resolution passes are
    most of a cached segmentation-probe step on CPU; binary masks are the common case.
    """
    d = logits[:, 1].float() - logits[:, 0].float()  # in float32, as the softmax path (bf16 logits)
    fg = masks == 1
    target = fg.float()
    keep = None if valid is None else valid.float()
    loss = d.new_zeros(())
    if "ce" in parts:
        weight = keep
        if class_weights is not None:
            w = class_weights.to(d.device, torch.float32)
            weight = torch.where(fg, w[1], w[0]) * (1 if keep is None else keep)
        if weight is None:
            loss = loss + F.binary_cross_entropy_with_logits(d, target)
        else:  # nll_loss's weighted mean: divided by the summed weights of the pixels that count
            bce = F.binary_cross_entropy_with_logits(d, target, weight=weight, reduction="sum")
            loss = loss + bce / weight.sum()
    if "dice" in parts:
        pairs = [(torch.sigmoid(d), target)]
        if include_background:
            pairs.append((torch.sigmoid(-d), (masks == 0).float()))
        scores = []
        for p, t in pairs:
            if keep is not None:
                p, t = p * keep, t * keep
            scores.append((2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
        loss = loss + 1 - torch.stack(scores).mean()
    return loss


def _dice_loss(
    log_probs: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor | None,
    *,
    include_background: bool,
    smooth: float,
) -> torch.Tensor:
    first = 0 if include_background else 1
    classes = torch.arange(first, log_probs.shape[1], device=masks.device).view(1, -1, 1, 1)
    probs = log_probs[:, first:].exp()
    target = masks[:, None] == classes  # the one-hot of the counted classes, as a bool comparison
    if valid is not None:
        probs, target = probs * valid[:, None], target & valid[:, None]
    inter = (probs * target).sum((0, 2, 3))
    dice = (2 * inter + smooth) / (probs.sum((0, 2, 3)) + target.sum((0, 2, 3)) + smooth)
    return 1 - dice.mean()


def _check_masks(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """Shape and range checks; the mask of pixels that count (``None``: all of them)."""
    if logits.ndim != 4 or masks.shape != (logits.shape[0], *logits.shape[2:]):
        raise DataError(
            f"segmentation logits {tuple(logits.shape)} and masks {tuple(masks.shape)} do not match; expected "
            "logits [B, C, H, W] and masks [B, H, W] (heads upsample to out_size = the mask size)"
        )
    c = logits.shape[1]
    if c < 2:
        raise ConfigError(
            f"segmentation needs >= 2 softmax classes (binary: background + foreground), got {c}"
        )
    valid = None if ignore_index is None else masks != ignore_index
    if valid is None:  # one reduction pass, no [B, H, W] temporaries: this runs on every training step
        low, high = torch.aminmax(masks) if masks.numel() else (0, 0)
        outside = bool(low < 0) or bool(high >= c)
    else:
        outside = bool((((masks < 0) | (masks >= c)) & valid).any())
    if outside:
        raise DataError(
            f"mask values range over [{int(masks.min())}, {int(masks.max())}], outside the {c} classes "
            f"[0, {c - 1}]" + ("" if ignore_index is None else f" and ignore_index={ignore_index}")
        )
    return valid


def _masked_bce(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    y = labels.float()
    known = ~torch.isnan(y)
    loss = F.binary_cross_entropy_with_logits(
        logits, y.nan_to_num(0.0), pos_weight=pos_weight, reduction="none"
    )
    return (loss * known).sum() / known.sum().clamp_min(1)


#: Task types by name; iterating gives the names (``binary``, ``multiclass``, ``multilabel``, ``ordinal``).
TASKS: Registry[Task] = Registry("task")
TASKS.register("binary", BinaryTask("binary"))
TASKS.register("multiclass", SoftmaxTask("multiclass"))
TASKS.register("multilabel", MultilabelTask())
TASKS.register("ordinal", SoftmaxTask("ordinal"))
TASKS.register("segmentation", SegmentationTask())

#: The tasks with a label per image (the classification metrics serve these).
CLASSIFICATION_TASKS = tuple(n for n in TASKS if TASKS.get(n).kind == "classification")
assert CLASSIFICATION_TASKS == _CLASSIFICATION_NAMES, "medadapt._choices lists the classification tasks"


def get_task(task: str | Task) -> Task:
    """The task of that name (a :class:`Task` is returned as it is); an unknown name is a clear error."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS.get(task)


def check_task(task: str) -> str:
    """``task`` if it names a task, else a :class:`ConfigError` listing the valid ones."""
    return get_task(task).name
