"""Probe training on cached features: the LR / k grid in one pass, selection, reproducibility, memmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medadapt.errors import ConfigError, DataError
from medadapt.features.featureset import FeatureSet
from medadapt.heads import HEADS
from medadapt.training import loss_fn, lr_factor, to_scores, train_probe
from medadapt.training import probe as probe_module

DIM, TOKENS = 16, 4
FAST = {"epochs": 15, "batch_size": 64, "lrs": (1e-2, 1e-3)}


def _labels(task: str, rng: np.random.Generator, n: int, num_outputs: int) -> np.ndarray:
    if task == "multilabel":
        return rng.integers(0, 2, (n, num_outputs))
    return rng.integers(0, num_outputs, (n, 1))


def _features(labels: np.ndarray, task: str, centers: np.ndarray, rng: np.random.Generator) -> FeatureSet:
    """Separable features: a class centre (or the sum of the positive labels' centres) plus noise."""
    onehot = labels if task == "multilabel" else np.eye(len(centers))[labels[:, 0]]
    emb = (onehot @ centers + 0.3 * rng.standard_normal((len(labels), DIM))).astype(np.float32)
    tokens = emb[:, None] + 0.3 * rng.standard_normal((len(labels), TOKENS, DIM))
    return FeatureSet(embeddings=emb, labels=labels, tokens=tokens.astype(np.float16))


def make_splits(task: str, num_outputs: int = 2, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.standard_normal((num_outputs, DIM))
    return tuple(_features(_labels(task, rng, n, num_outputs), task, centers, rng) for n in (192, 96))


def _num_outputs(task: str) -> int:
    return 2 if task == "binary" else 3


def _auc(task: str, labels: np.ndarray, scores: np.ndarray) -> float:
    from medadapt.evaluation.metrics import auc

    return auc(task, labels, scores)


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "multilabel"])
@pytest.mark.parametrize("head", HEADS.list())
def test_every_head_and_task_gives_probabilities(head: str, task: str) -> None:
    c = _num_outputs(task)
    train, val = make_splits(task, c)
    res = train_probe(train, val, head=head, task=task, num_outputs=c, epochs=2, batch_size=64, lrs=(1e-3,))
    scores = res.predict(val)
    assert scores.shape == (len(val), c)
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    if task != "multilabel":
        assert np.allclose(scores.sum(1), 1, atol=1e-5)
    assert not res.head.training and all(t.device.type == "cpu" for t in res.head.state_dict().values())


@pytest.mark.parametrize("head", ["linear", "attention", "knn"])
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_separable_problem_is_learned(head: str, task: str) -> None:
    c = _num_outputs(task)
    train, val = make_splits(task, c, seed=3)
    res = train_probe(train, val, head=head, task=task, num_outputs=c, **FAST)
    assert max(res.val_auc_by_setting.values()) > 0.95
    assert _auc(task, val.labels, res.predict(val)) > 0.95


@pytest.mark.parametrize("head", ["linear", "knn"])
def test_multilabel_path(head: str) -> None:
    train, val = make_splits("multilabel", 4, seed=4)
    res = train_probe(train, val, head=head, task="multilabel", num_outputs=4, **FAST)
    assert res.predict(val).shape == (len(val), 4)
    assert _auc("multilabel", val.labels, res.predict(val)) > 0.9


def test_multilabel_loss_ignores_unknown_labels() -> None:
    logits = torch.tensor([[2.0, -1.0]])
    known = loss_fn("multilabel")(logits, torch.tensor([[1.0, float("nan")]]))
    assert torch.isclose(known, loss_fn("multilabel")(logits[:, :1], torch.tensor([[1.0]])))


class _RecordingAdamW(torch.optim.AdamW):
    """AdamW that checks at every step which parameters received gradients."""

    instances: list[_RecordingAdamW] = []

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.all_had_grads = True
        _RecordingAdamW.instances.append(self)

    def step(self, closure=None):
        self.all_had_grads &= all(p.grad is not None for g in self.param_groups for p in g["params"])
        return super().step(closure)


@pytest.mark.parametrize("head", ["linear", "attention"])
def test_one_param_group_per_lr_with_only_head_parameters(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.optim, "AdamW", _RecordingAdamW)
    _RecordingAdamW.instances.clear()
    train, val = make_splits("binary")
    embeddings, tokens = train.embeddings.copy(), train.tokens.copy()
    lrs = (1e-2, 1e-3, 1e-4)
    res = train_probe(
        train, val, head=head, task="binary", num_outputs=2, lrs=lrs, epochs=2, weight_decay=0.05
    )
    (opt,) = _RecordingAdamW.instances
    assert [g["initial_lr"] for g in opt.param_groups] == list(lrs)
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups)
    assert opt.all_had_grads
    groups = [{id(p) for p in g["params"]} for g in opt.param_groups]
    assert all(a.isdisjoint(b) for i, a in enumerate(groups) for b in groups[i + 1 :])
    selected = lrs.index(res.best["lr"])
    assert groups[selected] == {id(p) for p in res.head.parameters()}  # the head's parameters, nothing else
    assert np.array_equal(train.embeddings, embeddings) and np.array_equal(train.tokens, tokens)


def test_selection_picks_best_auc_then_lowest_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    train, val = make_splits("binary")
    lrs = (1e-2, 1e-3, 1e-4, 1e-5)
    fake = iter([0.7, 0.9, 0.8, 0.6])
    res = train_probe(train, val, head="linear", task="binary", num_outputs=2, lrs=lrs, epochs=2,
                      metric=lambda *_: next(fake))  # fmt: skip
    assert res.best == {"lr": 1e-3, "epoch": 2}
    assert res.val_auc_by_setting == {"lr=0.01": 0.7, "lr=0.001": 0.9, "lr=0.0001": 0.8, "lr=1e-05": 0.6}

    res = train_probe(train, val, head="linear", task="binary", num_outputs=2, lrs=lrs, epochs=2,
                      metric=lambda *_: 0.9)  # fmt: skip
    losses = res.val_loss_by_setting
    assert f"lr={res.best['lr']:g}" == min(losses, key=losses.get)


def test_knn_selects_k_by_val_auc() -> None:
    train, val = make_splits("multiclass", 3, seed=5)
    res = train_probe(train, val, head="knn", task="multiclass", num_outputs=3, ks=(1, 5, 25))
    assert set(res.val_auc_by_setting) == {"k=1", "k=5", "k=25"}
    best = max(res.val_auc_by_setting, key=lambda s: (res.val_auc_by_setting[s], -res.val_loss_by_setting[s]))
    assert res.best == {"k": int(best[2:])} and res.head.k == res.best["k"]


def test_eval_every_keeps_the_best_epoch() -> None:
    train, val = make_splits("binary")
    fake = iter([0.5, 0.6, 0.9, 0.8, 0.7, 0.95])  # epochs 2, 4, 6 for two LRs
    res = train_probe(train, val, head="linear", task="binary", num_outputs=2, lrs=(1e-2, 1e-3), epochs=6,
                      eval_every=2, metric=lambda *_: next(fake))  # fmt: skip
    assert [r["epoch"] for r in res.history if "val_auc" in r] == [2, 4, 6]
    assert res.best == {"lr": 1e-3, "epoch": 6} and res.val_auc_by_setting == {
        "lr=0.01": 0.9,
        "lr=0.001": 0.95,
    }


@pytest.mark.parametrize("head", ["linear", "attention"])
def test_same_seed_reproduces_and_other_seed_differs(head: str) -> None:
    train, val = make_splits("binary")

    def scores(seed: int) -> np.ndarray:
        kw = {"epochs": 3, "lrs": (1e-3,), "seed": seed}
        return train_probe(train, val, head=head, task="binary", num_outputs=2, **kw).predict(val)

    assert np.array_equal(scores(0), scores(0))
    assert not np.array_equal(scores(0), scores(1))


def test_global_rng_state_is_untouched() -> None:
    train, val = make_splits("binary")
    before = torch.get_rng_state()
    train_probe(train, val, head="linear", task="binary", num_outputs=2, epochs=1, seed=123)
    assert torch.equal(before, torch.get_rng_state())


def test_tokens_from_a_memmap(tmp_path: Path) -> None:
    train, val = make_splits("binary", seed=6)
    for name, fs in (("train", train), ("val", val)):
        mm = np.memmap(tmp_path / f"{name}.npy", dtype=np.float16, mode="w+", shape=fs.tokens.shape)
        mm[:] = fs.tokens
        mm.flush()
        fs.tokens = np.memmap(tmp_path / f"{name}.npy", dtype=np.float16, mode="r", shape=fs.tokens.shape)
    res = train_probe(train, val, head="attention", task="binary", num_outputs=2, **FAST)
    assert _auc("binary", val.labels, res.predict(val)) > 0.95


def test_attention_head_without_tokens_is_a_clear_error() -> None:
    train, val = make_splits("binary")
    train.tokens = None
    with pytest.raises(ConfigError, match="tokens were not extracted"):
        train_probe(train, val, head="attention", task="binary", num_outputs=2)


def test_history_and_progress_callback() -> None:
    train, val = make_splits("binary")
    calls = []
    res = train_probe(train, val, head="linear", task="binary", num_outputs=2, lrs=(1e-2, 1e-3), epochs=3,
                      progress=lambda e, n, info: calls.append((e, n, info)))  # fmt: skip
    assert [(e, n) for e, n, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    assert set(res.history[0]["train_loss"]) == {"lr=0.01", "lr=0.001"}
    assert res.history[-1]["train_loss"]["lr=0.01"] < res.history[0]["train_loss"]["lr=0.01"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "regression"}, ConfigError, "unknown task"),
        ({"num_outputs": 3}, ConfigError, "binary tasks use 2 outputs"),
        ({"task": "multiclass", "num_outputs": 1}, DataError, "outside the 1 classes"),
        ({"lrs": (1e-3, 1e-3)}, ConfigError, "without repeats"),
        ({"head": "mlp"}, Exception, "unknown head 'mlp'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, error: type, match: str) -> None:
    train, val = make_splits("binary")
    args = {"head": "linear", "task": "binary", "num_outputs": 2, "epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        train_probe(train, val, **args)


def test_lr_factor_warmup_then_cosine() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100) == pytest.approx(0.0)


def test_to_scores_by_task() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    assert torch.allclose(to_scores("multiclass", logits).sum(1), torch.ones(1))
    assert torch.allclose(to_scores("multilabel", logits), torch.sigmoid(logits))
    assert torch.equal(to_scores("ordinal", logits), to_scores("multiclass", logits))


def test_autocast_context_is_a_noop_when_off() -> None:
    with probe_module.autocast_context("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")
