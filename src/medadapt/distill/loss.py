"""The distillation loss: ``alpha * task_loss + (1 - alpha) * t^2 * KL(teacher_t || student_t)``.

Multi-class, binary and ordinal tasks (medadapt's binary tasks have two logits, the MedMNIST convention):
``p_t = softmax(teacher / t)``, ``q_t = softmax(student / t)``, ``KL(p_t || q_t) = sum p_t (log p_t - log
q_t)``, averaged over the batch (Hinton et al. 2015). With two logits this is exactly the Bernoulli KL of
``sigmoid((z_1 - z_0) / t)``: the sigmoid analogue the binary case needs comes for free.

Multi-label tasks: each label is its own Bernoulli, ``p_t = sigmoid(teacher / t)``, ``q_t = sigmoid(student /
t)``, ``KL = p_t log(p_t / q_t) + (1 - p_t) log((1 - p_t) / (1 - q_t))``, averaged over labels and images. The
task loss there is the BCE of the known labels; the KL covers unknown (NaN) labels too, where the teacher is
the only signal.

The ``t^2`` factor keeps the gradient scale of the soft term independent of ``t``. MedAlmighty's paper writes
the KL with its arguments swapped and a minus sign; medadapt implements the standard form above, which is
non-negative and zero only when the student matches the teacher (PyTorch's ``kl_div(log q, log p)``).
"""

from __future__ import annotations

import torch

from .._validate import check_alpha_temperature
from ..errors import ConfigError
from ..tasks import get_task

__all__ = ["kd_loss", "distillation_loss", "check_alpha_temperature"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, *, task: str, temperature: float) -> torch.Tensor:
    """``t^2 * KL(teacher_t || student_t)`` on logits ``[B, C]``, averaged over the batch (and labels).

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])
        >>> float(kd_loss(s, t, task="binary", temperature=2.0))
        0.0
    """
    spec = get_task(task)
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ: the "
            "teacher must be trained on the same classes as the student"
        )
    t = float(temperature)
    return spec.kd_loss(student.float() / t, teacher.float().detach() / t) * t * t


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    task_loss: torch.Tensor,
    *,
    task: str,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``alpha * task_loss + (1 - alpha) * kd_loss``; returns the total and ``{"task_loss", "kd_loss"}``."""
    kd = kd_loss(student, teacher, task=task, temperature=temperature)
    return alpha * task_loss + (1.0 - alpha) * kd, {"task_loss": task_loss.detach(), "kd_loss": kd.detach()}
