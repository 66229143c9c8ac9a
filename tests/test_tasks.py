"""Task types: every registered task keeps its contract (scores, loss, ensembles, distillation, label checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medadapt.errors import ConfigError, DataError
from medadapt.tasks import CLASSIFICATION_TASKS, TASKS, Task, get_task, segmentation_loss


def _labels(task: str, n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    if task == "multilabel":
        y = torch.randint(0, 2, (n, c), generator=gen).float()
        y[0, 0] = float("nan")  # an unknown label
        return y
    return torch.randint(0, c, (n, 1), generator=gen)


@pytest.mark.parametrize("name", CLASSIFICATION_TASKS)
def test_every_task_keeps_its_contract(name):
    task, gen = get_task(name), torch.Generator().manual_seed(0)
    c = 2 if name == "binary" else 3
    logits, y = torch.randn(8, c, generator=gen), _labels(name, 8, c, gen)
    p = task.scores(logits)
    assert p.shape == (8, c) and ((p >= 0) & (p <= 1)).all()
    assert torch.isfinite(task.loss(logits, y)) and task.loss(logits, y) > 0
    # the ensemble's logits score as the mean of its members' scores
    members = torch.randn(3, 8, c, generator=gen)
    mean = task.mean_logits(members)
    assert torch.allclose(task.scores(mean), task.scores(members).mean(0), atol=1e-6)
    # distillation: no loss when the student is the teacher, some when it is not
    assert float(task.kd_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.kd_loss(logits, members[0])) > 0
    top, entropy = task.confidence(logits)
    assert top.shape == entropy.shape == (8,) and (top >= 1 / c - 1e-6).all() and (entropy >= 0).all()
    # weights of 1 change nothing
    ones = torch.ones(c)
    assert torch.allclose(task.weighted_loss(ones)(logits, y), task.loss(logits, y))
    task.check_labels(y.numpy(), c, "train")
    assert isinstance(task, Task) and task.selection_metric == "auc"


def test_softmax_tasks_are_cross_entropy_and_multilabel_skips_unknown_labels():
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([[0], [2]])
    assert torch.allclose(get_task("multiclass").loss(logits, y), F.cross_entropy(logits, y[:, 0]))
    ml = get_task("multilabel")
    y_ml = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    known = ~torch.isnan(y_ml)
    expected = F.binary_cross_entropy_with_logits(logits[known], y_ml[known])
    assert torch.allclose(ml.loss(logits, y_ml), expected)


def test_class_weights_are_inverse_frequencies():
    w = get_task("multiclass").class_weights(np.array([[0], [0], [0], [1]]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 4 / 3])
    w = get_task("multilabel").class_weights(np.array([[1, 0], [0, 0], [np.nan, 1]]), 2)
    assert w.tolist() == pytest.approx([1.0, 2.0])


def test_bad_names_outputs_and_labels_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown task 'regression'; valid tasks: binary, multiclass"):
        get_task("regression")
    with pytest.raises(ConfigError, match="binary tasks use 2 outputs"):
        get_task("binary").check_outputs(3)
    with pytest.raises(DataError, match="outside the 2 classes"):
        get_task("binary").check_labels(np.array([[0], [2]]), 2, "val")
    with pytest.raises(DataError, match=r"needs \[N, 3\] labels"):
        get_task("multilabel").check_labels(np.zeros((4, 1)), 3, "train")


def test_the_segmentation_task_is_per_pixel():
    task, gen = get_task("segmentation"), torch.Generator().manual_seed(0)
    assert "segmentation" in TASKS and "segmentation" not in CLASSIFICATION_TASKS
    assert task.kind == "segmentation" and task.selection_metric == "dice"
    logits, masks = torch.randn(2, 3, 5, 4, generator=gen), torch.randint(0, 3, (2, 5, 4), generator=gen)
    p = task.scores(logits)
    assert torch.allclose(p.sum(1), torch.ones(2, 5, 4))
    # cross-entropy is torch's, the Dice part is 0 for perfect logits and the default is their sum
    assert torch.allclose(segmentation_loss(logits, masks, kind="ce"), F.cross_entropy(logits, masks))
    perfect = F.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 40
    assert float(segmentation_loss(perfect, masks, kind="dice")) == pytest.approx(0.0, abs=1e-4)
    both = segmentation_loss(logits, masks, kind="ce") + segmentation_loss(logits, masks, kind="dice")
    assert torch.allclose(task.loss(logits, masks), both)
    members = torch.randn(3, 2, 3, 5, 4, generator=gen)
    mean = torch.stack([task.scores(m) for m in members]).mean(0)
    assert torch.allclose(task.scores(task.mean_logits(members)), mean, atol=1e-6)
    assert float(task.kd_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    w = task.class_weights(masks.numpy(), 3)
    assert torch.allclose(task.weighted_loss(torch.ones(3))(logits, masks), task.loss(logits, masks))
    assert w.shape == (3,)
    with pytest.raises(ConfigError, match="no kNN head"):
        task.targets(np.zeros((2, 1)), 2)
    with pytest.raises(ConfigError, match="the classification metrics serve the tasks"):
        from medadapt.evaluation.metrics import auc

        auc("segmentation", np.zeros((2, 1)), np.full((2, 2), 0.5))
