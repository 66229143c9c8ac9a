"""The ``distill`` method: a student trained as a ``finetune`` cell, on labels and a saved teacher's soft targets."""

from __future__ import annotations

from typing import Any

from ..config import DistillConfig
from .base import METHODS, CellContext
from .finetune import run_finetune

__all__ = ["run_distill"]


@METHODS.register("distill")
def run_distill(cfg: DistillConfig, ctx: CellContext, *, name: str, seed: int) -> list[dict[str, Any]]:
    """Distil the saved models at ``cfg.teacher`` (one teacher, or an ensemble) into the student ``cfg.backbone``
    at ``cfg.alpha`` / ``cfg.temperature``; the cell's rows carry both. The teacher's logits of the training
    split are computed once (cached features); with augmentation the teacher runs on each augmented batch."""
    from ..distill.objective import DistillObjective
    from ..distill.teacher import Teacher

    teacher = Teacher.from_paths(cfg.teacher)
    train = ctx.splits["train"]
    teacher.check_dataset(train)
    if cfg.train.get("augment", "none") != "none":
        source: dict[str, Any] = {"teacher": teacher}
    else:
        logits, _ = teacher.dataset_logits(train, cache_dir=cfg.cache_dir, device=ctx.device, autocast=cfg.autocast,
                                           num_workers=cfg.num_workers)  # fmt: skip
        teacher.to("cpu")
        source = {"cached": logits}
    objective = DistillObjective(task=teacher.task, alpha=cfg.alpha, temperature=cfg.temperature,
                                 autocast=cfg.autocast, **source)  # fmt: skip
    rows = run_finetune(cfg, ctx, name=name, seed=seed, objective=objective)
    return [
        {**r, "temperature": cfg.temperature, "alpha": cfg.alpha, "teacher": teacher.describe()} for r in rows
    ]
