"""The fine-tuning loop: learning, determinism, schedules, early stopping, selection, resume after a kill."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from medadapt.data.base import MedicalDataset
from medadapt.data.transforms import Preprocess
from medadapt.errors import ConfigError, DataError
from medadapt.strategies.base import Strategy
from medadapt.training import loop
from medadapt.training.checkpoint import CHECKPOINT_NAME
from medadapt.training.loop import (
    FitResult,
    Objective,
    TrainConfig,
    best_run,
    class_weights,
    fit,
    make_criterion,
    predict,
    should_stop,
)
from medadapt.training.probe import loss_fn
from medadapt.training.schedule import lr_at


# ----------------------------------------------------------------------------------------------- fixtures
class SquareDataset(MedicalDataset):
    """Noise images; class 1 has a bright 4x4 square somewhere: separable, learnable in a few epochs."""

    def __init__(self, n: int = 48, seed: int = 0, split: str = "train", size: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.labels = (np.arange(n) % 2).reshape(-1, 1).astype(np.int64)
        rng.shuffle(self.labels)
        self.images = rng.integers(0, 100, size=(n, 1, size, size), dtype=np.uint8)
        for i in np.flatnonzero(self.labels[:, 0]):
            top, left = rng.integers(0, size - 4, size=2)
            self.images[i, 0, top : top + 4, left : left + 4] = 255
        self.name, self.split, self.task = "squares", split, "binary"
        self.classes, self.n_channels = ["empty", "square"], 1
        self.metadata = pd.DataFrame({"index": range(n)})

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i])


class TinyNet(nn.Module):
    """Conv + batch norm + max pool + dropout + linear: buffers and model randomness, in milliseconds."""

    def __init__(self, num_outputs: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x).amax(dim=(2, 3))))


def make_model(seed: int = 0) -> TinyNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyNet()


@dataclass
class Full(Strategy):
    """Everything trains, one group."""

    name: ClassVar[str] = "test-full"

    def configure(self, model, *, lr, weight_decay):
        model.requires_grad_(True)
        return [{"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "all"}]


@dataclass
class Unfreeze(Strategy):
    """Head only, then the body joins in a new param group at ``at`` (LR x ``factor``); counts its calls."""

    name: ClassVar[str] = "test-unfreeze"
    at: int = 2
    factor: float = 0.5
    calls: int = 0

    def configure(self, model, *, lr, weight_decay):
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        return [
            {"params": list(model.head.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "head"}
        ]

    def on_epoch_start(self, epoch, model, optimizer, history):
        self.calls += 1
        if epoch == self.at:
            model.body.requires_grad_(True)
            lr = optimizer.param_groups[0]["initial_lr"] * self.factor
            optimizer.add_param_group({"params": list(model.body.parameters()), "lr": lr, "name": "body"})

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


PREP = Preprocess(size=(16, 16), mean=(0.5,), std=(0.25,))


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-2, epochs=3, batch_size=16, device="cpu", autocast=False, schedule="constant")
    return TrainConfig(**{**base, **kw})


def run(strategy=None, *, seed_model: int = 0, n: int = 48, **kw) -> FitResult:
    fit_kw = {k: kw.pop(k) for k in ("out_dir", "resume", "progress") if k in kw}
    train, val = SquareDataset(n), SquareDataset(32, seed=1, split="val")
    return fit(
        make_model(seed_model), strategy or Full(), train, val, cfg=cfg(**kw), preprocess=PREP, **fit_kw
    )


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(Exception):
    pass


def kill_after(k: int):
    def progress(epoch, epochs, record):
        if epoch == k:
            raise Killed

    return progress


# ------------------------------------------------------------------------------------------------- tests
def test_learns_a_separable_toy():
    res = run(epochs=8, lr=3e-2)
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < losses[0]
    assert res.best_val_auc > 0.9
    assert res.best_epoch == max(res.history, key=lambda r: (r["val_auc"], -r["val_loss"]))["epoch"]
    scores = predict(res.model, SquareDataset(32, seed=1, split="val"), preprocess=PREP, batch_size=7)
    assert scores.shape == (32, 2) and np.allclose(scores.sum(1), 1, atol=1e-5)


def test_same_seed_is_bitwise_identical_and_seed_matters():
    before = torch.get_rng_state()
    a, b = run(augment="natural"), run(augment="natural")
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never changed
    assert a.history == b.history and states_equal(a.state, b.state)
    c = run(augment="natural", seed=1)
    assert c.history != a.history and not states_equal(a.state, c.state)


def test_data_workers_do_not_change_the_result():
    a, b = run(epochs=2, n=32, augment="light"), run(epochs=2, n=32, augment="light", num_workers=1)
    assert a.history == b.history and states_equal(a.state, b.state)


def test_lr_schedules_pure():
    steps = (0, 49, 50, 74, 75, 99)
    multistep = [lr_at(s, total_steps=100, schedule="multistep", milestones_steps=(50, 75)) for s in steps]
    assert multistep == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = [lr_at(s, total_steps=10, schedule="cosine", warmup_steps=4) for s in range(10)]
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warm[4] == 1.0 and all(x > y for x, y in zip(warm[4:], warm[5:])) and warm[-1] > 0
    assert lr_at(5, total_steps=10, schedule="constant", warmup_steps=2) == 1.0
    with pytest.raises(ConfigError, match="--schedule"):
        lr_at(0, total_steps=1, schedule="step")


def test_lr_per_epoch_multistep_and_cosine_warmup():
    res = run(schedule="multistep", epochs=4, milestones=[2, 3], gamma=0.1, n=32)
    assert [r["lr"]["all"] for r in res.history] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])
    res = run(schedule="cosine", epochs=4, warmup_epochs=2, n=32)  # 2 steps per epoch
    assert [r["lr"]["all"] for r in res.history] == pytest.approx([2.5e-3, 7.5e-3, 1e-2, 5e-3])


def test_default_milestones_are_the_medmnist_protocol():
    assert TrainConfig(epochs=100, schedule="multistep").milestones == [50, 75]
    assert TrainConfig(epochs=1, schedule="multistep").milestones == []
    with pytest.raises(ConfigError, match="--milestones"):
        TrainConfig(epochs=10, schedule="multistep", milestones=[20])
    with pytest.raises(ConfigError, match="--optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="--warmup-epochs"):
        TrainConfig(epochs=2, warmup_epochs=2)
    with pytest.raises(ConfigError, match="--lr"):
        TrainConfig(lr=0)


def scripted(monkeypatch, aucs, losses=None):
    """Make validation return the given AUCs (and losses) epoch by epoch."""
    losses = losses or [1.0] * len(aucs)
    seen = iter(zip(aucs, losses))

    def fake_evaluate(model, loader, **kw):
        a, v = next(seen)
        return {"val_auc": a, "val_loss": v}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)


def test_should_stop_is_a_function_of_history():
    h = [{"val_auc": a} for a in (0.5, 0.7, 0.6, 0.7)]
    assert not should_stop(h, "val_auc", 3) and should_stop(h, "val_auc", 2)
    assert not should_stop(h, None, 1)
    h = [{"val_loss": v} for v in (1.0, 0.5, 0.6)]
    assert should_stop(h, "val_loss", 1) and not should_stop(h, "val_loss", 2)


def test_early_stopping_after_patience(monkeypatch):
    scripted(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    res = run(epochs=6, early_stop="val_auc", patience=2)
    assert len(res.history) == 4 and res.stopped_early and res.best_epoch == 2


def test_selection_restores_the_best_epoch_and_breaks_ties_on_loss(monkeypatch):
    scripted(monkeypatch, [0.6, 0.8, 0.8, 0.7], [1.0, 0.9, 0.8, 0.1])
    model, snapshots = make_model(), {}

    def progress(epoch, epochs, record):
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    res = fit(model, Full(), SquareDataset(), SquareDataset(32, 1, "val"), cfg=cfg(epochs=4), preprocess=PREP,
              progress=progress)  # fmt: skip
    assert res.best_epoch == 3 and res.best_val_auc == 0.8 and res.best_val_loss == 0.8
    assert states_equal(res.state, snapshots[3]) and states_equal(model.state_dict(), snapshots[3])
    assert not states_equal(snapshots[3], snapshots[4])


def test_official_medmnist_rule_keeps_the_first_epoch_of_the_highest_auc(monkeypatch):
    scripted(monkeypatch, [0.6, 0.8, 0.8, 0.7], [1.0, 0.9, 0.8, 0.1])
    res = fit(make_model(), Full(), SquareDataset(), SquareDataset(32, 1, "val"),
              cfg=cfg(epochs=4, select_on="val_auc_first"), preprocess=PREP)  # fmt: skip
    assert res.best_epoch == 2 and res.best_val_loss == 0.9  # val_auc would take epoch 3 (lower loss)


@pytest.mark.parametrize(
    ("select_on", "best"), [("val_loss", 1), ("val_auc", 0), ("val_auc_first", 0), ("last", 0)]
)
def test_lr_search_picks_by_the_runs_own_rule(select_on, best):
    runs = [
        {"val_auc": 0.9, "val_loss": 0.5},
        {"val_auc": 0.8, "val_loss": 0.3},
        {"val_auc": 0.9, "val_loss": 0.5},
    ]
    assert best_run(runs, select_on) == best  # and a tie (runs 0 and 2) goes to the first


class MixedSizes(SquareDataset):
    """Every other image stored at 24 px (CheXpert, ISIC and APTOS files come in many sizes)."""

    def image(self, i: int) -> torch.Tensor:
        im = super().image(i)
        return im.repeat_interleave(3, -1).repeat_interleave(3, -2)[..., :24, :24] if i % 2 else im


def test_fit_and_predict_take_images_of_mixed_sizes():
    train, val = MixedSizes(), MixedSizes(32, 1, "val")
    res = fit(make_model(), Full(), train, val, cfg=cfg(epochs=1, augment="light"), preprocess=PREP)
    scores = predict(res.model, val, preprocess=PREP, batch_size=8, autocast=False)
    assert scores.shape == (32, 2) and np.isfinite(scores).all()
    one_by_one = np.concatenate([predict(res.model, _Subset(val, i), preprocess=PREP, autocast=False)
                                 for i in range(4)])  # fmt: skip
    np.testing.assert_allclose(scores[:4], one_by_one, atol=1e-6)  # a score does not depend on its batch


def test_an_objective_that_needs_stored_images_refuses_mixed_sizes():
    class SeesStoredImages(Objective):
        stored_images = "the teacher sees stored images"

    with pytest.raises(DataError, match="mixes image sizes, but the teacher sees stored images"):
        fit(make_model(), Full(), MixedSizes(), MixedSizes(32, 1, "val"), cfg=cfg(epochs=1), preprocess=PREP,
            objective=SeesStoredImages())  # fmt: skip


class _Subset(MixedSizes):
    def __init__(self, parent: MixedSizes, i: int) -> None:
        self.__dict__.update(parent.__dict__)
        self.labels, self._i = parent.labels[i : i + 1], i

    def image(self, i: int) -> torch.Tensor:
        return super().image(self._i)


def test_class_weights():
    w = class_weights("binary", np.array([[0], [0], [0], [1]]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    y = np.array([[1, 0], [0, np.nan], [0, 0], [0, 1]], dtype=np.float32)
    assert class_weights("multilabel", y, 2).tolist() == pytest.approx([3.0, 2.0])
    logits, labels = torch.randn(6, 2), torch.tensor([[0], [0], [0], [0], [1], [1]])
    assert torch.equal(make_criterion("binary")(logits, labels), loss_fn("binary")(logits, labels))
    weighted = make_criterion("binary", torch.tensor([1.0, 3.0]))(logits, labels)
    per = torch.nn.functional.cross_entropy(logits, labels[:, 0], reduction="none")
    assert weighted.item() == pytest.approx(((per[:4].sum() + 3 * per[4:].sum()) / (4 + 3 * 2)).item())
    ml_labels = torch.tensor(y)
    ml_logits = torch.randn(4, 2)
    plain = make_criterion("multilabel")(ml_logits, ml_labels)
    assert plain.item() == pytest.approx(
        make_criterion("multilabel", torch.ones(2))(ml_logits, ml_labels).item()
    )
    heavier = make_criterion("multilabel", torch.tensor([5.0, 5.0]))(ml_logits, ml_labels)
    assert heavier > plain  # up-weighting the positives only adds loss


def test_class_weights_change_training():
    a, b = run(epochs=1, n=33), run(epochs=1, n=33, class_weights=True)  # 17 vs 16: mildly unbalanced
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]


def test_grad_clipping_bounds_the_grad_norm():
    def norms_during(**kw) -> list[float]:
        seen = []

        def hook(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            seen.append(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
            )

        handle = register_optimizer_step_pre_hook(hook)
        try:
            run(epochs=1, **kw)
        finally:
            handle.remove()
        return seen

    assert max(norms_during()) > 0.05
    assert max(norms_during(grad_clip=0.05)) <= 0.05 * (1 + 1e-4)


def test_checkpoint_every_epoch(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    seen = []

    def progress(epoch, epochs, record):
        state = torch.load(path, weights_only=True)
        seen.append((state["epoch"], state["history"][-1] == record))

    run(out_dir=tmp_path, progress=progress, epochs=3, n=32)
    assert seen == [(1, True), (2, True), (3, True)]
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temp files left behind


def test_checkpoint_every_n_epochs_and_the_last_resumes_bitwise(tmp_path):
    kw = dict(epochs=5, schedule="multistep", milestones=[2, 4], n=32)
    path, seen = tmp_path / "cut" / CHECKPOINT_NAME, []

    def progress(epoch, epochs, record):
        seen.append(torch.load(path, weights_only=True)["epoch"] if path.exists() else None)
        if len(seen) == 3:  # killed after epoch 3 of the first run
            raise Killed

    ref = run(out_dir=tmp_path / "ref", **kw)
    with pytest.raises(Killed):
        run(out_dir=tmp_path / "cut", progress=progress, checkpoint_every=2, **kw)
    assert seen == [None, 2, 2]  # written after epoch 2, not after 1 or 3
    # checkpoint_every does not change the result, so the run resumes with another value
    res = run(out_dir=tmp_path / "cut", resume=True, checkpoint_every=4, progress=progress, **kw)
    assert res.resumed_from == 2 and seen[3:] == [2, 4, 5]  # epoch 3 replayed; the last always written
    assert res.history == ref.history and states_equal(res.state, ref.state)
    assert states_equal(res.model.state_dict(), ref.model.state_dict())


@pytest.mark.parametrize("strategy", [Full, Unfreeze])
def test_resume_after_kill_is_bitwise_identical(tmp_path, strategy):
    kw = dict(epochs=4, schedule="multistep", milestones=[2, 3], augment="natural", n=40)
    ref = run(strategy(), out_dir=tmp_path / "ref", **kw)
    with pytest.raises(Killed):
        run(strategy(), out_dir=tmp_path / "cut", progress=kill_after(2), **kw)
    resumed_strategy = strategy()
    res = run(resumed_strategy, out_dir=tmp_path / "cut", resume=True, **kw)
    assert res.resumed_from == 2 and res.history == ref.history
    assert states_equal(res.state, ref.state) and res.best_epoch == ref.best_epoch
    assert states_equal(res.model.state_dict(), ref.model.state_dict())
    if strategy is Unfreeze:
        assert (
            resumed_strategy.calls == 4
        )  # replayed hooks are overwritten by the saved state (2), then 2 more
        assert list(res.history[-1]["lr"]) == ["head", "body"]
        assert res.cost["trainable_params"] == sum(p.numel() for p in res.model.parameters())
        assert res.history[0]["trainable_params"] < res.cost["trainable_params"]


def test_resume_a_finished_run_does_not_train(tmp_path, monkeypatch):
    ref = run(out_dir=tmp_path, epochs=2, n=32)
    monkeypatch.setattr(loop._Step, "epoch", lambda *a: pytest.fail("trained again"))
    res = run(out_dir=tmp_path, resume=True, epochs=2, n=32)
    assert res.history == ref.history and states_equal(res.state, ref.state) and res.resumed_from == 2


def test_resumed_run_reports_the_peak_memory_of_its_earlier_sessions(tmp_path, monkeypatch):
    """The peak is carried through the checkpoint: asking a finished run again does not report the peak of
    a process that only loaded it."""
    monkeypatch.setattr(loop, "_peak_memory", lambda device: 5e9)
    assert run(out_dir=tmp_path, epochs=2, n=32).cost["peak_memory_bytes"] == 5e9
    monkeypatch.setattr(loop, "_peak_memory", lambda device: 1e9)
    assert run(out_dir=tmp_path, resume=True, epochs=2, n=32).cost["peak_memory_bytes"] == 5e9
    monkeypatch.setattr(loop, "_peak_memory", lambda device: 7e9)  # a later session that peaks higher
    assert run(out_dir=tmp_path, resume=True, epochs=2, n=32).cost["peak_memory_bytes"] == 7e9


def test_resume_with_other_settings_is_refused(tmp_path):
    with pytest.raises(Killed):
        run(out_dir=tmp_path, progress=kill_after(1), epochs=2, n=32)
    with pytest.raises(ConfigError, match="different configuration.*--out"):
        run(out_dir=tmp_path, resume=True, epochs=2, n=32, lr=1e-3)
    with pytest.raises(ConfigError, match="--resume"):
        run(out_dir=tmp_path, epochs=2, n=32)
    run(out_dir=tmp_path, resume=True, epochs=2, n=32, device="cpu", num_workers=0)  # same settings: fine


def test_resume_with_optimizer_groups_of_another_version_is_a_clear_error(tmp_path):
    """A checkpoint whose optimizer trained other parameters (an older medadapt) is refused with a message."""
    with pytest.raises(Killed):
        run(out_dir=tmp_path, progress=kill_after(1), epochs=2, n=32)
    path = tmp_path / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"][0]["params"].pop()
    torch.save(state, path)
    with pytest.raises(ConfigError, match="does not fit this run's parameter groups.*afresh"):
        run(out_dir=tmp_path, resume=True, epochs=2, n=32)


def test_cost_and_history_keys():
    res = run(epochs=2, n=32, eval_every=2)
    assert set(res.cost) == {"total_params", "trainable_params", "peak_memory_bytes", "wall_seconds",
                             "train_seconds", "train_images_per_second", "epochs"}  # fmt: skip
    assert (
        res.cost["total_params"]
        == res.cost["trainable_params"]
        == sum(p.numel() for p in res.model.parameters())
    )
    assert res.cost["peak_memory_bytes"] > 0 and res.cost["train_images_per_second"] > 0
    assert "val_auc" not in res.history[0] and math.isfinite(res.history[1]["val_auc"])
    assert set(res.history[1]) == {"epoch", "lr", "trainable_params", "train_loss", "val_auc", "val_loss"}


def _writable(path: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _writable("/proc/self/clear_refs"), reason="needs Linux's resettable RSS peak")
def test_cpu_peak_memory_is_this_fits_not_the_process_all_time_peak():
    import resource

    spike = np.ones(2**30 // 8)  # 1 GiB resident, freed before the fit
    spike[:: 4096 // 8] = 2.0
    del spike
    all_time = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = run(epochs=1, n=32).cost["peak_memory_bytes"]
    assert 0 < peak < all_time - 2**29  # the earlier 1 GiB spike is not this fit's peak


# ------------------------------------------------------------------------- with the registered strategies
def vit_classifier(seed: int = 0):
    from medadapt.backbones import create_backbone
    from medadapt.strategies import build_classifier

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        bb = create_backbone("timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2",
                             pretrained=False, img_size=28, data_chans=1)  # fmt: skip
        return build_classifier(bb, "linear", 2), Preprocess(
            size=(28, 28), mean=bb.spec.mean, std=bb.spec.std
        )


@pytest.mark.parametrize(
    "name, options",
    [("full", {}), ("unfreeze", {"every": 1}), pytest.param("lora", {"r": 2}, id="lora")],
)
def test_registered_strategies_resume_bitwise(tmp_path, name, options):
    from medadapt.strategies import create_strategy

    if name == "lora":
        pytest.importorskip("peft")
    kw = dict(epochs=3, batch_size=8, lr=1e-3, augment="light", device="cpu", autocast=False)
    train, val = SquareDataset(24, size=28), SquareDataset(16, seed=1, split="val", size=28)

    def go(out, **extra):
        model, prep = vit_classifier()
        strategy = create_strategy(name, **options)
        return fit(
            model,
            strategy,
            train,
            val,
            cfg=TrainConfig(**kw),
            preprocess=prep,
            out_dir=tmp_path / out,
            **extra,
        )

    ref = go("ref")
    with pytest.raises(Killed):
        go("cut", progress=kill_after(1))
    res = go("cut", resume=True)
    assert res.history == ref.history and states_equal(res.state, ref.state)
    assert res.cost["trainable_params"] <= res.cost["total_params"]
    if name == "unfreeze":
        assert res.history[0]["trainable_params"] < res.history[-1]["trainable_params"]


def test_bf16_counts_as_native_only_in_hardware(monkeypatch):
    """An AVX-512 CPU without BF16 (oneDNN emulates it) or a pre-Ampere GPU (V100, T4) gets float32."""
    from medadapt import _device

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for avx512_bf16, amx, native in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert _device.runs_bf16("cpu") is native and _device.runs_bf16("cpu", enabled=False) is False
    monkeypatch.setattr(torch.version, "hip", None)
    for capability, native in (((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None, c=capability: c)
        assert _device._native_bf16(torch.device("cuda")) is native


def test_a_float32_run_does_not_resume_in_bf16(tmp_path, monkeypatch):
    """The device is not hashed, but the precision it computes in is (a GPU run resumed on a CPU, say)."""
    monkeypatch.setattr(loop, "runs_bf16", lambda device, enabled=True: False)  # as on a CPU without bf16
    with pytest.raises(Killed):
        run(out_dir=tmp_path, progress=kill_after(1), epochs=2, n=32, autocast=True)
    monkeypatch.setattr(loop, "runs_bf16", lambda device, enabled=True: enabled)  # as on an AMX CPU / a GPU
    with pytest.raises(ConfigError, match="different configuration"):
        run(out_dir=tmp_path, resume=True, epochs=2, n=32, autocast=True)


def test_resume_before_the_first_evaluation_selects_as_without_a_kill(tmp_path, monkeypatch):
    """A checkpoint written before any evaluation holds no best weights; a NaN first evaluation must still
    be selected, as in the uninterrupted run (not the weights of the epoch the run was killed at)."""
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"val_auc": math.nan, "val_loss": math.nan})
    ref = run(epochs=4, n=32, eval_every=2)
    with pytest.raises(Killed):
        run(out_dir=tmp_path, progress=kill_after(1), epochs=4, n=32, eval_every=2)
    res = run(out_dir=tmp_path, resume=True, epochs=4, n=32, eval_every=2)
    assert res.best_epoch == ref.best_epoch == 2 and states_equal(res.state, ref.state)


def test_milestones_matter_only_to_multistep():
    """--preset medmnist_v2 --schedule cosine --epochs 20 was refused for the preset's milestones 50, 75."""
    with pytest.warns(UserWarning, match="ignored"):
        assert TrainConfig(epochs=20, schedule="cosine", milestones=[50, 75]).milestones == []
    assert TrainConfig(epochs=20, schedule="multistep").milestones == [10, 15]
    with pytest.raises(ConfigError, match="--milestones"):
        TrainConfig(epochs=20, schedule="multistep", milestones=[50, 75])
