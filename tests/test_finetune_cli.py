"""`medadapt finetune`: strategies side by side, presets, options, resume, outputs."""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic import write_fake_medmnist

from medadapt.cli import main
from medadapt.config import FinetuneConfig, load_preset, merge_config, preset_names
from medadapt.errors import ConfigError
from medadapt.reporting.results import load_predictions
from medadapt.training import TrainConfig

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


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_finished_run_without_its_checkpoint_is_not_trained_over(data, capsys, resume):
    out = data / "deleted"
    assert main(_finetune(data, "--strategy", "full", "--out", str(out))) == 0
    seed_dir = out / "full-linear" / "seed0"
    saved = (seed_dir / "model.safetensors").read_bytes()
    (seed_dir / "checkpoint.pt").unlink()  # e.g. to save disk space
    assert main(_finetune(data, "--strategy", "full", "--out", str(out), *resume)) == 2
    assert "holds a finished model" in capsys.readouterr().err
    assert (seed_dir / "model.safetensors").read_bytes() == saved


def test_a_seed_with_other_settings_is_refused_before_it_trains(data, capsys):
    """An arm's seeds are pooled by its name in results.csv: a seed trained otherwise would be averaged in."""
    out = data / "pooled"
    assert main(_finetune(data, "--strategy", "full", "--seeds", "0", "--out", str(out))) == 0
    before = (out / "results.csv").read_text()
    assert main(_finetune(data, "--strategy", "full", "--seeds", "1", "--lr", "0.01", "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert "arm 'full-linear'" in err and "train.lr" in err and "another --out" in err
    assert (out / "results.csv").read_text() == before and not (out / "full-linear" / "seed1").exists()
    # another seed with the same settings (--out spelled otherwise), and another arm, join the folder
    assert (
        main(_finetune(data, "--strategy", "full", "--seeds", "1", "--out", f"{out}/", "--num-workers", "0"))
        == 0
    )
    assert main(_finetune(data, "--strategy", "frozen", "--seeds", "0", "--out", str(out))) == 0
    table = pd.read_csv(out / "results.csv").query("split == 'test'")
    assert table.groupby("run")["seed"].nunique().to_dict() == {"full-linear": 2, "frozen-linear": 1}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strategy", "lora", "--option", "rank=4"], "no option(s) ['rank']"),
        (["--strategy", "lora", "--option", "r"], "KEY=VALUE"),
        (["--strategy", "nope"], "--strategy"),
        (["--optimizer", "lamb"], "--optimizer"),
        (["--preset", "nope"], "unknown preset"),
        (["--strategy", "lora", "--option", "target_modules=[qkv"], "not valid YAML"),
    ],
)
def test_bad_finetune_input_exits_2(data, capsys, flags, message):
    assert main(_finetune(data, "--out", str(data / "bad"), *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_probe_only_head_is_refused_before_any_work(data, capsys):
    # the trainable heads come from the head registry, so the config refuses it (not a list in the CLI)
    assert main(_finetune(data, "--head", "knn", "--out", str(data / "knn"))) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "medadapt: error: --head 'knn' is not valid; choose one of ['attention', 'linear', 'decoder', 'multiscale', 'native']"
    )
    assert not (data / "knn").exists()


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_a_valid_config(name):
    cfg = merge_config(
        FinetuneConfig, load_preset(name), {"dataset": "medmnist:breastmnist", "backbone": "timm:resnet18"}
    )
    assert cfg.train  # every preset states its training recipe


def _preset_config(preset: str, *flags: str, config: str | None = None) -> FinetuneConfig:
    from medadapt.cli import _training_config, build_parser

    extra = ["--config", config] if config else []
    args = build_parser().parse_args(["finetune", "--dataset", "medmnist:breastmnist", "--backbone", TINY_VIT,
                                      "--preset", preset, *extra, *flags])  # fmt: skip
    return _training_config(FinetuneConfig, args)


@pytest.mark.parametrize(
    ("preset", "flags", "message"),
    [
        ("natural_fm_finetune", ["--head", "linear"], "--head would not reach the arms"),
        ("medmnist_plus", ["--strategy", "lora"], "--strategy would not reach the arms"),
        ("natural_fm_finetune", ["--strategy", "lora", "--option", "r=4"], "--strategy would not reach"),
    ],
)
def test_flags_that_preset_arms_set_themselves_are_refused(preset, flags, message):
    """Before, each arm's strategy / head silently replaced the flag's (the run trained something else)."""
    with pytest.raises(ConfigError, match=message):
        _preset_config(preset, *flags)


def test_later_layers_reach_every_arm():
    cfg = _preset_config("cxr_fm", "--head", "attention", "--epochs", "3")  # no arm sets these
    arms = dict(cfg.arm_configs())
    assert [(a.head, a.train["epochs"]) for a in arms.values()] == [("attention", 3), ("attention", 3)]
    # an option the frozen arm does not take is refused now, not after the differential arm trained
    with pytest.raises(ConfigError, match="arm 'linear-probe'.*no option"):
        _preset_config("cxr_fm", "--option", "encoder_lr=1e-6")
    # cxr_fm's LRs follow --lr: the differential strategy's defaults (encoder lr x 1e-3, head at lr)
    from medadapt.strategies import create_strategy

    assert arms["differential"].train["lr"] == 1e-4 and arms["differential"].strategy_options == {}
    assert create_strategy("differential").encoder_lr_scale == 1e-3


def test_a_later_lr_replaces_an_earlier_lr_search(tmp_path):
    assert _preset_config("natural_fm_finetune").lrs == [1e-3, 1e-4, 1e-5]
    cfg = _preset_config("natural_fm_finetune", "--lr", "3e-4")
    assert cfg.lrs == [] and all(a.train["lr"] == 3e-4 and a.lrs == [] for _, a in cfg.arm_configs())
    assert _preset_config("natural_fm_finetune", "--lrs", "1e-4").lrs == [1e-4]
    # a config's arms with their own training settings: the flags still win
    arms = tmp_path / "arms.yaml"
    arms.write_text("arms:\n  - {name: a, strategy: full, train: {epochs: 7, lr: 0.1}, lrs: [1, 2]}\n"
                    "  - {name: b, strategy-options: {}, strategy: frozen}\n")  # fmt: skip
    cfg = _preset_config("medmnist_plus", "--epochs", "3", "--lr", "0.5", config=str(arms))
    got = {name: (a.strategy, a.train["epochs"], a.train["lr"], a.lrs) for name, a in cfg.arm_configs()}
    assert got == {"a": ("full", 3, 0.5, []), "b": ("frozen", 3, 0.5, [])}


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("seeds: 3", "seeds must be a list"),
        ("lrs: 0.001", "lrs must be a list"),
        ("train: 5", "train must be a mapping"),
        ("strategy_options: r", "strategy_options must be a mapping"),
        ("1: 2", r"unknown config key\(s\) \['1'\]"),
        ("seeds: [0, 0]", "--seeds repeats \\[0\\]"),
        ("lrs: [0.1, 0.1]", "--lrs repeats"),
        ("arms: [{name: a}, {name: a}]", "arms \\(names\\) repeats \\['a'\\]"),
        ("arms: [{name: a, img_size: 64}]", "arm 'a' sets \\['img_size'\\], which every arm shares"),
        ("arms: [{name: a, train: 5}]", "arm 'a': train must be a mapping"),
        ("arms: [{name: a, strategy: frozen, strategy_options: {r: 8}}]", "arm 'a'.*'frozen' has no option"),
        ("arms: [{name: a, train: {optimizer: lamb}}]", "arm 'a'.*optimizer"),
    ],
)
def test_bad_config_values_are_one_line_errors(data, capsys, yaml_text, message):
    config = data / "bad.yaml"
    config.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=message):
        _preset_config("medmnist_v2", config=str(config))
    assert main(_finetune(data, "--config", str(config), "--out", str(data / "bad"))) == 2
    assert "Traceback" not in capsys.readouterr().err and not (data / "bad").exists()


def test_medmnist_v2_preset_is_the_official_protocol():
    p = load_preset("medmnist_v2")
    assert p["backbone"] == "resnet18_28" and p["strategy"] == "scratch" and p["channel_mode"] == "repeat"
    assert p["train"] == {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "batch_size": 128, "epochs": 100,
                          "schedule": "multistep", "gamma": 0.1, "augment": "none",
                          "select_on": "val_auc_first"}  # fmt: skip
    # no milestones in the preset: 50% and 75% of the epochs, as the official code computes them
    assert TrainConfig(**p["train"]).milestones == [50, 75]


def test_medmnist_v2_milestones_follow_epochs():
    """The official code puts its LR drops at 50% and 75% of the epochs, so a shorter preset run keeps them."""
    assert TrainConfig(**_preset_config("medmnist_v2", "--epochs", "20").train).milestones == [10, 15]


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
                                      "--option", "encoder_lr=1e-7", "--option", "head_lr=2E+3"])  # fmt: skip
    cfg = _training_config(FinetuneConfig, args)
    assert cfg.strategy_options == {"encoder_lr": 1e-7, "head_lr": 2000.0}
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


def test_printed_table_shows_a_nan_seed():
    from medadapt.cli import side_by_side

    rows = [{"run": "a", "split": "test", "metric": m, "seed": s, "value": v}
            for m in ("auc", "acc") for s, v in ((0, 0.9), (1, float("nan")))]  # fmt: skip
    rows += [{"run": "a", "split": "cost", "metric": "wall_seconds", "seed": 0, "value": 3.0}]
    printed = side_by_side(pd.DataFrame(rows))
    assert "nan ± nan" in printed and "0.900" not in printed


def test_lr_search_keeps_the_best_lr_by_the_runs_rule(data):
    import torch

    from medadapt.training.loop import best_run

    out = data / "search"
    assert main(_finetune(data, "--strategy", "full", "--lrs", "0.03", "0.0001", "--out", str(out))) == 0
    bests = []
    for lr in ("0.03", "0.0001"):
        state = torch.load(out / "full-linear" / "seed0" / f"lr{lr}" / "checkpoint.pt", weights_only=True)
        bests.append(state["best"])
    chosen = ("0.03", "0.0001")[best_run(bests, "val_auc")]
    selected = pd.read_csv(out / "results.csv").query("split == 'test'")["selected"].iloc[0]
    assert selected.startswith(f"lr={chosen};epoch=")


def test_pretrained_flag_undoes_a_presets_random_init():
    assert _preset_config("medmnist_v2").pretrained is False
    assert _preset_config("medmnist_v2", "--strategy", "full", "--pretrained").pretrained is True


def test_help_names_values_without_the_config_prefix(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "--lr LR" in text and "--epochs EPOCHS" in text and "TRAIN." not in text
