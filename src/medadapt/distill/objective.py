"""The training objective of a distilled student: labels and the teacher's soft targets."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ..training.loop import Objective
from .loss import check_alpha_temperature, distillation_loss
from .teacher import Teacher

__all__ = ["DistillObjective"]


class DistillObjective(Objective):
    """``alpha * task_loss + (1 - alpha) * t^2 * KL(teacher_t || student_t)`` inside :func:`~medadapt.training.fit`.

    Give ``cached`` (teacher logits ``[N, C]`` of the training set, row-aligned with it) when the student sees
    un-augmented images: the teacher then never runs during training, each batch looks its rows up by the
    dataset ``index``. With augmentation, give ``teacher``: it runs on the same augmented batch as the
    student, each member with its own preprocessing.

    Example:
        >>> logits, _ = teacher.dataset_logits(train_ds)  # doctest: +SKIP
        >>> fit(model, strategy, train_ds, val_ds, cfg=cfg, preprocess=prep,
        ...     objective=DistillObjective(task="binary", alpha=0.2, temperature=2.0, cached=logits))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        task: str,
        alpha: float = 0.2,
        temperature: float = 2.0,
        teacher: Teacher | None = None,
        cached: torch.Tensor | None = None,
        autocast: bool = True,
    ) -> None:
        check_alpha_temperature(alpha, temperature)
        if (teacher is None) == (cached is None):
            raise ValueError(
                "give exactly one of teacher (run it per batch) or cached (its logits of the train set)"
            )
        self.task, self.alpha, self.temperature = task, float(alpha), float(temperature)
        self.teacher, self.cached, self.autocast = teacher, cached, autocast
        self._digest = (
            hashlib.sha256(np.ascontiguousarray(cached.float().numpy()).tobytes()).hexdigest()
            if cached is not None
            else teacher.digest()
        )

    @property
    def stored_images(self) -> str | None:
        if self.cached is not None:
            return None
        return ("with --augment the teacher sees each augmented batch at the images' stored size, so they must "
                "share one size: resize the files to one size, or drop --augment (the teacher's logits are then "
                "computed once per image at its own input size)")  # fmt: skip

    def prepare(self, device: torch.device) -> None:
        if self.cached is not None:
            self.cached = self.cached.float().to(device)
        else:
            self.teacher.to(device)

    def teacher_logits(self, batch: dict[str, Any], images: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[batch["index"].to(self.cached.device)]
        return self.teacher.logits(images, autocast=self.autocast)

    def __call__(self, logits, task_loss, *, batch, images):
        return distillation_loss(logits, self.teacher_logits(batch, images), task_loss, task=self.task,
                                 alpha=self.alpha, temperature=self.temperature)  # fmt: skip

    def fingerprint(self) -> dict[str, Any]:
        mode = "cached" if self.cached is not None else "live"
        return {"name": "distill", "alpha": self.alpha, "temperature": self.temperature, "teacher": self._digest,
                "mode": mode}  # fmt: skip
