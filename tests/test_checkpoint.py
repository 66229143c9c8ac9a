"""Checkpoints: weights_only round trip, atomic replacement, refusal of another configuration."""

from __future__ import annotations

import pytest
import torch

from medadapt.errors import ConfigError
from medadapt.training import checkpoint as ckpt_mod
from medadapt.training.checkpoint import config_hash, cpu_state, load_checkpoint, save_checkpoint


def state(epoch: int = 1, h: str = "abc") -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    return {
        "config_hash": h,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "history": [{"epoch": 1, "lr": {"all": 1e-3}, "val_auc": float("nan")}],
        "best": {"epoch": 1, "state": None},
        "rng": torch.get_rng_state(),
    }


def test_round_trip_with_weights_only(tmp_path):
    s = state()
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pt", s)
    loaded = load_checkpoint(path, config_hash="abc")
    assert torch.load(path, weights_only=True)["format"] == ckpt_mod.FORMAT
    assert loaded["epoch"] == 1 and torch.equal(loaded["rng"], s["rng"])
    assert all(torch.equal(loaded["model"][k], v) for k, v in s["model"].items())
    assert loaded["optimizer"]["param_groups"] == s["optimizer"]["param_groups"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pt", state(epoch=1))
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.truncate(10)  # half written ...
        raise KeyboardInterrupt  # ... and killed

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, state(epoch=2))
    monkeypatch.undo()
    assert load_checkpoint(path, config_hash="abc")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_other_configuration_format_or_garbage_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", state(h="abc"))
    with pytest.raises(ConfigError, match="different configuration.*new --out.*remove"):
        load_checkpoint(path, config_hash="xyz")
    torch.save({"format": 999, "config_hash": "abc"}, path)
    with pytest.raises(ConfigError, match="format 999"):
        load_checkpoint(path, config_hash="abc")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(path, config_hash="abc")


def test_classes_are_not_unpickled(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": ckpt_mod.FORMAT, "config_hash": "abc", "obj": torch.nn.Linear(1, 1)}, path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(path, config_hash="abc")


def test_config_hash_is_stable_and_sensitive():
    a = config_hash({"lr": 1e-3, "epochs": 10, "names": ["a", "b"]})
    assert a == config_hash({"epochs": 10, "names": ["a", "b"], "lr": 1e-3})
    assert a != config_hash({"lr": 1e-4, "epochs": 10, "names": ["a", "b"]})
    assert len(a) == 16


def test_cpu_state_is_a_detached_copy():
    model = torch.nn.Linear(2, 2)
    copy = cpu_state(model)
    with torch.no_grad():
        model.weight.add_(1)
    assert not torch.equal(copy["weight"], model.weight) and not copy["weight"].requires_grad
