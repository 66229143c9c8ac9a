"""`medadapt finetune`: strategies side by side, presets, options, resume, outputs."""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic import write_fake_medmnist

from medadapt.cli import main
from medadapt.config import FinetuneConfig, load_preset, merge_config, preset_names
from medadapt.reporting.results import load_predictions

TINY_VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"


@pytest.fixture()
def data(tmp_path, monkeypatch):
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    return tmp_path


def _finetune(root, *extra: str) -> list[str]:
    return ["finetune", "--dataset", "medmnist:breastmnist", "--backbone", TINY_VIT, "--no-pretrained",
            "--data-root", str(root / "data"), "--epochs", "2", *extra]  # fmt: skip


def test_lora_run_writes_results_cost_and_predictions_per_seed(data):
    out = data / "lora"
    assert (
        main(_finetune(data, "--strategy", "lora", "--option", "r=4", "--seeds", "0", "1", "--out", str(out)))
        == 0
    )
    table = pd.read_csv(out / "results.csv")
    assert set(table["strategy"]) == {"lora"} and sorted(table["seed"].unique()) == [0, 1]
    cost = table[table["split"] == "cost"].set_index(["seed", "metric"])["value"]
    assert cost[(0, "trainable_params")] < cost[(0, "total_params")]
    for key in ("peak_memory_bytes", "wall_seconds", "train_images_per_second"):
        assert cost[(0, key)] > 0
    for seed in (0, 1):
        pred = load_predictions(out / "lora-linear" / f"seed{seed}" / "predictions" / "test.npz")
        assert pred["scores"].shape == (16, 2)
        assert (out / "lora-linear" / f"seed{seed}" / "checkpoint.pt").exists()


def test_preset_arms_run_side_by_side(data, capsys):
    out = data / "plus"
    # 28-px images padded to 42 on the mean colour, as the preset does to 224
    args = _finetune(data, "--preset", "medmnist_plus", "--img-size", "42", "--out", str(out))
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    assert set(table["run"]) == {"end-to-end", "linear-probe"}
    assert set(table["strategy"]) == {"full", "frozen"}
    printed = capsys.readouterr().out
    assert "end-to-end" in printed and "trainable_params" in printed


def test_resume_of_a_finished_run_reports_the_same_numbers(data):
    out = data / "full"
    assert main(_finetune(data, "--strategy", "full", "--out", str(out))) == 0
    first = pd.read_csv(out / "results.csv").query("split == 'test'")["value"].to_numpy()
    assert main(_finetune(data, "--strategy", "full", "--out", str(out), "--resume")) == 0
    again = pd.read_csv(out / "results.csv").query("split == 'test'")["value"].to_numpy()
    assert (again == first).all()  # the resumed run's rows replace the first run's, with the same values


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strategy", "lora", "--option", "rank=4"], "no option(s) ['rank']"),
        (["--strategy", "lora", "--option", "r"], "KEY=VALUE"),
        (["--strategy", "nope"], "--strategy"),
        (["--optimizer", "lamb"], "--optimizer"),
        (["--preset", "nope"], "unknown preset"),
    ],
)
def test_bad_finetune_input_exits_2(data, capsys, flags, message):
    assert main(_finetune(data, "--out", str(data / "bad"), *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_probe_only_head_is_refused_by_argparse(data):
    with pytest.raises(SystemExit) as e:
        main(_finetune(data, "--head", "knn"))
    assert e.value.code == 2


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_a_valid_config(name):
    cfg = merge_config(
        FinetuneConfig, load_preset(name), {"dataset": "medmnist:breastmnist", "backbone": "timm:resnet18"}
    )
    assert cfg.train  # every preset states its training recipe


def test_medmnist_v2_preset_is_the_official_protocol():
    p = load_preset("medmnist_v2")
    assert p["backbone"] == "resnet18_28" and p["strategy"] == "scratch" and p["channel_mode"] == "repeat"
    assert p["train"] == {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "batch_size": 128, "epochs": 100,
                          "schedule": "multistep", "milestones": [50, 75], "gamma": 0.1, "augment": "none",
                          "select_on": "val_auc_first"}  # fmt: skip


def test_medmnist_plus_preset_follows_the_reference_code():
    """sdoerrich97/rethinking-model-prototyping-MedMNISTPlus train.py: as_rgb, Normalize then Pad, timm AdamW (wd 0.01), best val loss."""
    p = load_preset("medmnist_plus")
    assert p["resize_mode"] == "pad_mean" and p["img_size"] == 224 and p["channel_mode"] == "repeat"
    assert {k: p["train"][k] for k in ("optimizer", "lr", "weight_decay", "batch_size", "early_stop", "patience",
                                       "select_on")} == {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01,
            "batch_size": 64, "early_stop": "val_loss", "patience": 5, "select_on": "val_loss"}  # fmt: skip


def test_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads ``1e-7`` as a string (YAML 1.1); options, config files and addresses take it as a float."""
    from medadapt._address import split_address
    from medadapt.backbones._factory import SOURCES
    from medadapt.cli import _training_config, build_parser

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train: {lr: 1e-4, weight_decay: 5e-2}\nlrs: [1e-3, 1e-4]\n")
    args = build_parser().parse_args(["finetune", "--dataset", "medmnist:breastmnist", "--backbone", TINY_VIT,
                                      "--config", str(cfg_file), "--strategy", "differential",
                                      "--option", "encoder_lr=1e-7", "--option", "head_lr=-2E+3"])  # fmt: skip
    cfg = _training_config(FinetuneConfig, args)
    assert cfg.strategy_options == {"encoder_lr": 1e-7, "head_lr": -2000.0}
    assert cfg.train == {"lr": 1e-4, "weight_decay": 0.05} and cfg.lrs == [1e-3, 1e-4]
    assert split_address("timm:resnet18?drop_rate=1e-1&name=a1e", SOURCES, what="backbone", example="")[2] == {
        "drop_rate": 0.1, "name": "a1e"}  # fmt: skip


def test_distill_refuses_a_preset_with_arms(data, capsys):
    args = ["distill", "--dataset", "medmnist:breastmnist", "--student", "timm:resnet18", "--teacher", TINY_VIT,
            "--data-root", str(data / "data"), "--preset", "cxr_fm", "--out", str(data / "d")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "arms ['differential', 'linear-probe']" in err and "medmnist_v2" in err
    assert not (data / "d").exists()  # refused before any work
