"""Knowledge distillation of a frozen teacher (a foundation model + head, or an ensemble) into a student.

``alpha * CE(student, labels) + (1 - alpha) * t^2 * KL(teacher_t || student_t)`` (see :mod:`.loss` for the
binary and multi-label forms); :class:`Teacher` loads saved probe / fine-tune models; :class:`DistillObjective`
plugs the loss into :func:`medadapt.training.fit`, with teacher logits cached when inputs are not augmented.
"""

from .loss import check_alpha_temperature, distillation_loss, kd_loss
from .objective import DistillObjective
from .teacher import Teacher, TeacherMember, combine_logits

__all__ = [
    "kd_loss",
    "distillation_loss",
    "check_alpha_temperature",
    "DistillObjective",
    "Teacher",
    "TeacherMember",
    "combine_logits",
]
