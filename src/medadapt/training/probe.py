"""Train probe heads on cached frozen features: a whole hyper-parameter grid in one pass.

As in DINOv2's linear evaluation, one forward over a shared batch feeds one head per learning rate, each
head in its own AdamW param group, so an LR sweep costs one pass over the features. Every head starts from
the same seeded init and sees the same seeded batch order, so the result for one LR does not depend on
which other LRs are in the grid. The kNN head has no training: its grid is over ``k``, from one neighbour
search.

Model selection uses the validation AUC of each setting, ties broken by the lower validation loss. By
default each head is evaluated once, after the last epoch; with ``eval_every=n`` it is also evaluated
every ``n`` epochs and the best epoch's weights are kept (early stopping on validation AUC).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._device import autocast_context, seeded
from ..errors import ConfigError
from ..features.featureset import FeatureSet
from ..heads import HEADS, KNNHead, create_head, knn_scores
from ..tasks import TASKS, get_task

__all__ = [
    "TASKS",
    "DEFAULT_LRS",
    "DEFAULT_KS",
    "ProbeResult",
    "train_probe",
    "loss_fn",
    "to_scores",
    "lr_factor",
    "head_optimizer",
    "row_batches",
]

log = logging.getLogger(__name__)

DEFAULT_LRS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
DEFAULT_KS = (5, 10, 20, 50)

Metric = Callable[[str, np.ndarray, np.ndarray], float]
Progress = Callable[[int, int, dict[str, Any]], None]


# ----------------------------------------------------------------------------------------------- helpers
def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's loss on logits ``[B, C]`` (:meth:`medadapt.tasks.Task.loss`): softmax cross-entropy on
    ``labels[:, 0]``, or BCE for multi-label with unknown (NaN) entries left out."""
    return get_task(task).loss


def to_scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits: sigmoid per label for multi-label, softmax over classes otherwise."""
    return get_task(task).scores(logits)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up, then cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------------ result
@dataclass
class ProbeResult:
    """The selected head (eval mode, on CPU) and what the sweep saw.

    ``best`` holds the selected setting (``{"lr": ..., "epoch": ...}`` or ``{"k": ...}``);
    ``val_auc_by_setting`` / ``val_loss_by_setting`` are keyed ``"lr=0.001"`` / ``"k=20"`` (best epoch of
    each setting); ``history`` has one dict per epoch: ``epoch``, ``train_loss`` per setting, and
    ``val_auc`` / ``val_loss`` per setting on evaluated epochs (empty for kNN).
    """

    head: nn.Module
    head_name: str
    task: str
    best: dict[str, Any]
    val_auc_by_setting: dict[str, float]
    val_loss_by_setting: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)

    def predict(
        self,
        fs: FeatureSet,
        *,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
        autocast: bool = True,
    ) -> np.ndarray:
        """Scores ``[N, C]`` (probabilities) of the selected head on ``fs``."""
        x = _head_input(fs, self.head_name, self.head.input_key, "given")
        try:
            out = _predict(nn.ModuleList([self.head.to(device)]), x, batch_size, device,
                           autocast and _head_autocast(device))[0]  # fmt: skip
        finally:
            self.head.to("cpu")
        return (out if self.head.outputs == "scores" else to_scores(self.task, out)).numpy()


# ----------------------------------------------------------------------------------------------- public
def train_probe(
    train: FeatureSet,
    val: FeatureSet,
    *,
    head: str,
    task: str,
    num_outputs: int,
    lrs: Sequence[float] = DEFAULT_LRS,
    ks: Sequence[int] = DEFAULT_KS,
    epochs: int = 30,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    warmup_epochs: int = 0,
    eval_every: int | None = None,
    standardize: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    autocast: bool = True,
    head_kwargs: dict[str, Any] | None = None,
    metric: Metric | None = None,
    progress: Progress | None = None,
) -> ProbeResult:
    """Train one ``head`` per LR in ``lrs`` (or fit kNN for every ``k`` in ``ks``) and keep the best on ``val``.

    ``standardize`` fixes the linear head's input standardization to the train statistics. ``metric``
    defaults to :func:`medadapt.evaluation.metrics.auc`; ``progress(epoch, epochs, record)`` is called after
    every epoch (the CLI draws a bar with it; the library only logs).

    Example:
        >>> res = train_probe(train_fs, val_fs, head="linear", task="binary", num_outputs=2)  # doctest: +SKIP
        >>> res.best, res.predict(test_fs).shape  # doctest: +SKIP
        ({'lr': 0.001, 'epoch': 30}, (624, 2))
    """
    cls = HEADS.get(head)
    _check_args(task, num_outputs, train, val, lrs if cls.trainable else ks, epochs, batch_size)
    head_kwargs = dict(head_kwargs or {})
    run = _Run(task, batch_size, device, autocast and _head_autocast(device), metric or _default_metric())
    if not cls.trainable:
        return _fit_knn(train, val, ks=ks, num_outputs=num_outputs, head_kwargs=head_kwargs, run=run)
    x_train = _head_input(train, head, cls.input_key, "train")
    x_val = _head_input(val, head, cls.input_key, "val")
    heads = _build_heads(head, x_train.shape[-1], num_outputs, len(lrs), head_kwargs, seed)
    if standardize and hasattr(heads[0], "standardize_with"):
        for h in heads:
            h.standardize_with(train.embeddings)
    steps = math.ceil(len(x_train) / batch_size)
    opt, sched = head_optimizer(heads.to(device), lrs, weight_decay, epochs * steps, warmup_epochs * steps)
    names = [f"lr={lr:g}" for lr in lrs]
    shuffle = torch.Generator().manual_seed(seed)
    best = [_Best() for _ in heads]
    history: list[dict[str, Any]] = []
    with seeded(seed, device):
        for epoch in range(1, epochs + 1):
            losses = _train_epoch(heads, opt, sched, x_train, train.labels, run=run, generator=shuffle)
            record: dict[str, Any] = {"epoch": epoch, "train_loss": dict(zip(names, losses))}
            if epoch == epochs or (eval_every and epoch % eval_every == 0):
                aucs, val_losses = _evaluate(heads, x_val, val.labels, run=run)
                for h, b, a, v in zip(heads, best, aucs, val_losses):
                    b.update(epoch, a, v, h)
                record.update(val_auc=dict(zip(names, aucs)), val_loss=dict(zip(names, val_losses)))
            history.append(record)
            log.debug("probe %s epoch %d/%d: %s", head, epoch, epochs, record)
            if progress is not None:
                progress(epoch, epochs, record)
    return _select(heads, best, lrs, names, head_name=head, task=task, history=history)


# -------------------------------------------------------------------------------------------- training
def _head_autocast(device: str | torch.device) -> bool:
    """Heads on cached features train in bf16 autocast on GPUs only: on CPUs their small matmuls lose more to
    the casts than they gain (an attention head over 16 ViT tokens: 19.0 s in bf16, 9.8 s in fp32 on a
    2-core Xeon with AMX), while extraction, the big matmuls, keeps autocast."""
    return torch.device(device).type == "cuda"


@dataclass(frozen=True)
class _Run:
    """Settings shared by every training and evaluation step."""

    task: str
    batch_size: int
    device: str | torch.device
    autocast: bool
    metric: Metric


@dataclass
class _Best:
    """Best evaluation of one head so far, with a CPU copy of its weights."""

    auc: float = float("nan")
    loss: float = float("nan")
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None

    def key(self) -> tuple[float, float]:
        return _selection_key(self.auc, self.loss)

    def update(self, epoch: int, auc: float, loss: float, head: nn.Module) -> None:
        if self.state is None or _selection_key(auc, loss) > self.key():
            self.auc, self.loss, self.epoch = auc, loss, epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()}


def _select(
    heads: nn.ModuleList,
    best: list[_Best],
    lrs: Sequence[float],
    names: list[str],
    *,
    head_name: str,
    task: str,
    history: list[dict[str, Any]],
) -> ProbeResult:
    """Keep the head with the best validation AUC (then lowest loss), restored to its best epoch, on CPU."""
    i = max(range(len(best)), key=lambda j: best[j].key())
    selected = heads[i].cpu()
    selected.load_state_dict(best[i].state)
    log.info(
        "probe %s: selected %s (epoch %d, val AUC %.4f)", head_name, names[i], best[i].epoch, best[i].auc
    )
    return ProbeResult(
        head=selected.eval(),
        head_name=head_name,
        task=task,
        best={"lr": float(lrs[i]), "epoch": best[i].epoch},
        val_auc_by_setting={n: b.auc for n, b in zip(names, best)},
        val_loss_by_setting={n: b.loss for n, b in zip(names, best)},
        history=history,
    )


def _selection_key(auc: float, loss: float) -> tuple[float, float]:
    """Higher is better: AUC first (undefined counts as worst), then lower loss."""
    return (auc if math.isfinite(auc) else -math.inf, -loss if math.isfinite(loss) else -math.inf)


def _build_heads(
    name: str, dim: int, num_outputs: int, n: int, kwargs: dict[str, Any], seed: int
) -> nn.ModuleList:
    """``n`` identical heads, each initialized from ``seed`` (built on CPU so init never depends on device)."""
    heads = []
    for _ in range(n):
        with seeded(seed):
            heads.append(create_head(name, dim, num_outputs, **kwargs))
    return nn.ModuleList(heads)


def head_optimizer(
    heads: nn.ModuleList, lrs: Sequence[float], weight_decay: float, total_steps: int, warmup_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with one param group per head (its own LR) and a per-step warm-up + cosine schedule."""
    groups = [{"params": list(h.parameters()), "lr": lr} for h, lr in zip(heads, lrs)]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup_steps))
    return opt, sched


def _train_epoch(
    heads: nn.ModuleList,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    run: _Run,
    generator: torch.Generator,
) -> list[float]:
    """One epoch over shuffled batches; every head sees the same batch. Returns the mean loss per head."""
    heads.train()
    criterion = loss_fn(run.task)
    total = torch.zeros(len(heads), device=run.device)
    for idx in row_batches(len(x), run.batch_size, generator):
        xb, yb = _rows(x, idx, run.device), _rows(labels, idx, run.device)
        with autocast_context(run.device, run.autocast):
            logits = [h(xb) for h in heads]
        losses = torch.stack([criterion(out.float(), yb) for out in logits])
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # heads share no parameters: each gets the gradient of its own loss
        opt.step()
        sched.step()
        total += losses.detach() * len(idx)
    return (total / len(x)).tolist()


def _evaluate(
    heads: nn.ModuleList, x: np.ndarray, labels: np.ndarray, *, run: _Run
) -> tuple[list[float], list[float]]:
    """Validation AUC and loss of every head."""
    logits = _predict(heads, x, run.batch_size, run.device, run.autocast)
    y = torch.tensor(np.asarray(labels))
    losses = [loss_fn(run.task)(out, y).item() for out in logits]
    aucs = [float(run.metric(run.task, labels, to_scores(run.task, out).numpy())) for out in logits]
    return aucs, losses


@torch.no_grad()
def _predict(
    heads: nn.ModuleList, x: np.ndarray, batch_size: int, device: str | torch.device, autocast: bool
) -> torch.Tensor:
    """Outputs ``[H, N, C]`` (float32, CPU) of every head, in row order."""
    heads.eval()
    outs = []
    for idx in row_batches(len(x), batch_size):
        xb = _rows(x, idx, device)
        with autocast_context(device, autocast):
            outs.append(torch.stack([h(xb).float() for h in heads]).cpu())
    return torch.cat(outs, dim=1)


def row_batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches (shuffled when ``generator`` is given), each sorted so memmap reads stay local."""
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield np.sort(order[start : start + batch_size])


def _rows(array: np.ndarray, idx: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """Copy only rows ``idx`` of ``array`` (possibly a read-only memmap) to ``device``, dtype unchanged."""
    return torch.from_numpy(np.ascontiguousarray(array[idx])).to(device, non_blocking=True)


# ------------------------------------------------------------------------------------------------- kNN
def _fit_knn(
    train: FeatureSet,
    val: FeatureSet,
    *,
    ks: Sequence[int],
    num_outputs: int,
    head_kwargs: dict[str, Any],
    run: _Run,
) -> ProbeResult:
    """Fit the kNN bank on train, score val for every ``k`` from one neighbour search, keep the best ``k``.

    A ``k`` in ``head_kwargs`` replaces the grid by that single value.
    """
    task = run.task
    ks = [head_kwargs.pop("k")] if "k" in head_kwargs else list(ks)
    targets = get_task(task).targets(train.labels, num_outputs)
    head = KNNHead(train.embeddings.shape[1], num_outputs, k=max(ks), **head_kwargs)
    head.fit(train.embeddings, targets).to(run.device)
    queries = torch.tensor(np.asarray(val.embeddings, dtype=np.float32))
    scores = knn_scores(queries, head.bank, head.targets, ks=ks, temperature=head.temperature)
    aucs = {k: float(run.metric(task, val.labels, s.cpu().numpy())) for k, s in scores.items()}
    losses = {k: get_task(task).score_loss(s.cpu(), val.labels) for k, s in scores.items()}
    head.k = max(ks, key=lambda k: _selection_key(aucs[k], losses[k]))
    log.info("probe knn: selected k=%d (val AUC %.4f)", head.k, aucs[head.k])
    return ProbeResult(
        head=head.cpu().eval(),
        head_name="knn",
        task=task,
        best={"k": head.k},
        val_auc_by_setting={f"k={k}": a for k, a in aucs.items()},
        val_loss_by_setting={f"k={k}": v for k, v in losses.items()},
    )


# ------------------------------------------------------------------------------------------ validation
def _default_metric() -> Metric:
    from ..evaluation.metrics import auc  # pure function; imported lazily (evaluation is a later stage)

    return auc


def _head_input(fs: FeatureSet, head: str, key: str, split: str) -> np.ndarray:
    array = getattr(fs, key)
    if array is None:
        raise ConfigError(
            f"head {head!r} needs patch tokens, but the {split} features have none: tokens were not "
            "extracted. Re-extract the features with tokens enabled, or use head 'linear' or 'knn'."
        )
    return array


def _check_args(
    task: str,
    num_outputs: int,
    train: FeatureSet,
    val: FeatureSet,
    grid: Sequence[float],
    epochs: int,
    batch_size: int,
) -> None:
    spec = get_task(task)
    spec.check_outputs(num_outputs)
    if not grid or len(set(grid)) != len(grid):
        raise ConfigError(f"the hyper-parameter grid must be non-empty without repeats, got {list(grid)}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    for split, fs in (("train", train), ("val", val)):
        spec.check_labels(np.asarray(fs.labels), num_outputs, split)
