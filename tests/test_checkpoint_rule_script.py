"""scripts/checkpoint_rule.py: the selected epoch's and the last epoch's scores from finetune run folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from script_loader import load_script
from synthetic import write_fake_medmnist

from medadapt.cli import main as medadapt

VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"


@pytest.fixture(scope="module")
def script():
    return load_script("checkpoint_rule")


def _finetune(data: Path, out: Path, select_on: str) -> pd.DataFrame:
    args = ["finetune", "--dataset", "medmnist:breastmnist", "--backbone", VIT, "--no-pretrained",
            "--data-root", str(data), "--epochs", "3", "--lr", "0.1", "--select-on", select_on,
            "--out", str(out)]  # fmt: skip
    assert medadapt(args) == 0
    table = pd.read_csv(out / "results.csv")
    return table[table["split"] == "test"].set_index("metric")["value"]


def test_last_epoch_scores_equal_a_run_that_keeps_the_last_epoch(script, tmp_path, monkeypatch):
    """The same seed trains the same weights whatever the rule; only which epoch is kept differs."""
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    best = _finetune(tmp_path / "data", tmp_path / "best", "val_loss")
    last = _finetune(tmp_path / "data", tmp_path / "last", "last")
    rows = pd.DataFrame(script.run_rows(tmp_path / "best", None, ["test"])).set_index("weights")
    assert rows.loc["last", "epoch"] == 3 and rows.loc["selected", "epoch"] < 3  # two different weights
    assert tuple(best[["auc", "acc"]]) != tuple(last[["auc", "acc"]])  # the two rules score differently here
    for metric in ("auc", "acc"):
        assert rows.loc["selected", metric] == pytest.approx(best[metric], abs=1e-9)  # the saved model
        assert rows.loc["last", metric] == pytest.approx(last[metric], abs=1e-9)
    out = tmp_path / "rule.md"
    assert script.main([str(tmp_path / "best"), "--out", str(out)]) == 0
    assert "| last " in out.read_text() and "| selected " in out.read_text()


def test_an_lr_search_is_scored_from_its_selected_lrs_checkpoint(script, tmp_path, monkeypatch):
    """Under --lrs the checkpoints lie in ARM/seedS/lrX/; the selected LR's last epoch is the one scored."""
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    args = ["finetune", "--dataset", "medmnist:breastmnist", "--backbone", VIT, "--no-pretrained",
            "--data-root", str(tmp_path / "data"), "--epochs", "2", "--lrs", "0.1", "0.0001",
            "--select-on", "last", "--out", str(tmp_path / "search")]  # fmt: skip
    assert medadapt(args) == 0
    test = pd.read_csv(tmp_path / "search" / "results.csv").query("split == 'test'").set_index("metric")
    rows = pd.DataFrame(script.run_rows(tmp_path / "search", None, ["test"])).set_index("weights")
    for metric in ("auc", "acc"):  # kept last: the selected weights are the last epoch's, scored alike
        assert rows.loc["last", metric] == pytest.approx(test.loc[metric, "value"], abs=1e-9)
        assert rows.loc["selected", metric] == pytest.approx(test.loc[metric, "value"], abs=1e-9)
