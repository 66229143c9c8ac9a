"""End to end through the CLI and the API on a tiny fake MedMNIST file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic import write_fake_medmnist

from medadapt.cli import build_parser, main
from medadapt.evaluation.metrics import auc
from medadapt.reporting.results import load_predictions
from medadapt.saved import read_info

TINY_VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    return tmp_path


def _probe(env, *extra: str) -> list[str]:
    return ["probe", "--dataset", "medmnist:breastmnist", "--backbone", TINY_VIT, "--no-pretrained",
            "--data-root", str(env / "data"), "--epochs", "3", *extra]  # fmt: skip


def test_probe_writes_tidy_results_predictions_config_env(env, capsys):
    out = env / "run"
    assert main(_probe(env, "--out", str(out), "--lrs", "1e-3", "1e-4")) == 0
    table = pd.read_csv(out / "results.csv")
    for col in ("dataset", "backbone", "strategy", "head", "seed", "fold", "split", "metric", "value"):
        assert col in table.columns
    assert set(table["pretrained"]) == {"random-init"}
    for split in ("val", "test"):
        pred = load_predictions(out / "linear" / "seed0" / "predictions" / f"{split}.npz")
        assert pred["labels"].shape == (16, 1) and pred["scores"].shape == (16, 2)
        recorded = table.query("split == @split and metric == 'auc'")["value"].item()
        assert recorded == pytest.approx(auc("binary", pred["labels"], pred["scores"]), abs=1e-12)
    assert yaml.safe_load((out / "config.yaml").read_text())["backbone"] == TINY_VIT
    assert "git_sha" in (out / "env.json").read_text()
    assert "test" in capsys.readouterr().out


def test_config_records_the_address_an_alias_named(env):
    out = env / "alias"
    args = _probe(env, "--out", str(out), "--lrs", "1e-3")
    args[args.index("--backbone") + 1] = "resnet18_28"
    assert main(args) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    address = "timm:resnet18?stem=cifar&init=torch"
    assert written["backbone"] == "resnet18_28" and written["backbone_address"] == address
    assert read_info(out / "linear" / "seed0").backbone == address  # the saved model rebuilds what ran


def test_seeds_run_as_processes_into_one_out_keep_their_predictions_and_rows(env):
    out = env / "split"
    for seed in ("0", "1", "1"):  # seed 1 twice: a rerun replaces its rows
        assert main(_probe(env, "--out", str(out), "--lrs", "1e-3", "--seeds", seed)) == 0
    for seed in (0, 1):
        assert {p.name for p in (out / "linear" / f"seed{seed}" / "predictions").iterdir()} == {
            "val.npz",
            "test.npz",
        }
    table = pd.read_csv(out / "results.csv").query("split == 'test' and metric == 'auc'")
    assert sorted(table["seed"]) == [0, 1]


def test_heads_probed_into_one_out_keep_their_own_predictions(env):
    out = env / "heads"
    assert main(_probe(env, "--out", str(out), "--lrs", "1e-3")) == 0
    linear = load_predictions(out / "linear" / "seed0" / "predictions" / "test.npz")["scores"]
    assert main(_probe(env, "--out", str(out), "--head", "knn", "--ks", "3")) == 0
    np.testing.assert_array_equal(load_predictions(out / "linear" / "seed0" / "predictions" / "test.npz")["scores"],
                                  linear)  # fmt: skip
    knn = load_predictions(out / "knn" / "seed0" / "predictions" / "test.npz")["scores"]
    assert not np.array_equal(knn, linear)
    table = pd.read_csv(out / "results.csv").query("split == 'test' and metric == 'auc'")
    assert sorted(table["head"]) == ["knn", "linear"]


def test_a_probe_seed_with_other_settings_is_refused_before_it_runs(env, capsys):
    out = env / "record"
    assert main(_probe(env, "--out", str(out), "--lrs", "1e-3")) == 0
    assert main(_probe(env, "--out", str(out), "--lrs", "1e-2", "--seeds", "1")) == 2
    assert "arm 'linear'" in capsys.readouterr().err and not (out / "linear" / "seed1").exists()
    # another head is another arm; a kNN head has no LR grid, so --lrs does not count for it
    assert main(_probe(env, "--out", str(out), "--head", "knn", "--ks", "3", "--lrs", "1e-3")) == 0
    assert (
        main(_probe(env, "--out", str(out), "--head", "knn", "--ks", "3", "--lrs", "1e-2", "--seeds", "1"))
        == 0
    )
    assert yaml.safe_load((out / "knn" / "config.yaml").read_text())["seeds"] == [0, 1]


def test_second_identical_run_uses_the_feature_cache(env):
    assert main(_probe(env, "--out", str(env / "a"))) == 0
    entries = sorted(p.name for p in (env / "cache").iterdir() if not p.name.startswith("."))
    assert len(entries) == 3  # train, val, test (and the hidden .locks folder)
    assert main(_probe(env, "--out", str(env / "b"))) == 0
    assert sorted(p.name for p in (env / "cache").iterdir() if not p.name.startswith(".")) == entries
    a, b = (pd.read_csv(env / d / "results.csv").query("split == 'test'") for d in "ab")
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())  # seeded: same numbers


@pytest.mark.parametrize("head", ["attention", "knn"])
def test_other_heads(env, head):
    out = env / head
    assert main(_probe(env, "--head", head, "--out", str(out), "--ks", "3", "5")) == 0
    assert (out / head / "seed0" / "predictions" / "test.npz").exists()


def test_several_seeds_and_yaml_config_with_flag_override(env):
    cfg = env / "run.yaml"
    cfg.write_text(yaml.safe_dump({"head": "knn", "seeds": [0, 1], "size": 28, "epochs": 99}))
    out = env / "seeds"
    assert main(_probe(env, "--config", str(cfg), "--out", str(out))) == 0  # --epochs 3 overrides 99
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["seed"].unique()) == [0, 1] and set(table["head"]) == {"knn"}
    assert (out / "knn" / "seed1" / "predictions" / "test.npz").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backbone", "timm:not_a_model"], "timm has no model"),
        (["--backbone", "nosource:x"], "unknown backbone source"),
        (["--dataset", "medmnist:breastmnis"], "breastmnist"),
        (["--weights", "/nonexistent.safetensors"], "--weights"),
        (["--channel-mode", "avg"], "--channel-mode"),
        (["--epochs", "0"], "--epochs"),
        (["--backbone", "timm:resnet18?foo=1"], "unexpected keyword argument 'foo'"),  # timm: TypeError
        (["--backbone", "timm:vit_small_patch14_dinov2?embed_dim=30&num_heads=4"], "divisible"),  # Assert
        (["--backbone", "timm:resnet18?output_stride=7"], "assert output_stride"),  # a bare assert: its line
    ],
)
def test_bad_input_is_one_line_exit_2_and_keeps_outputs(env, capsys, flags, message):
    out = env / "keep"
    out.mkdir()
    (out / "results.csv").write_text("a,b\n1,2\n")
    assert main(_probe(env, "--out", str(out), *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadapt: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert (out / "results.csv").read_text() == "a,b\n1,2\n"


def test_an_error_during_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    from tqdm import tqdm

    import medadapt.cli as cli
    from medadapt.errors import DataError

    def fails(args):
        bar = tqdm(total=3, desc="epochs")
        bar.update(1)
        raise DataError("bad batch")

    monkeypatch.setattr(cli, "_run_list", fails)
    assert main(["list", "heads"]) == 2
    err = capsys.readouterr().err
    assert "\nmedadapt: error: bad batch" in err and not list(tqdm._instances)


def test_pretrained_offline_is_an_error_not_a_silent_random_init(env, capsys):
    args = [a for a in _probe(env, "--out", str(env / "x")) if a != "--no-pretrained"]
    args[args.index(TINY_VIT)] = "timm:vit_small_patch14_dinov2.lvd142m"
    assert main(args) == 2
    assert "--no-pretrained" in capsys.readouterr().err


def test_list_and_help(capsys):
    assert main(["list", "backbones", "*rad*"]) == 0
    assert "hf:microsoft/rad-dino" in capsys.readouterr().out
    assert main(["list", "strategies", "lora"]) == 0  # a line of description, then the options' defaults
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("lora  Low-rank adapters") and "r=8" in listed[1] and "scope=qkv" in listed[1]
    assert main(["list", "presets", "medmnist_plus"]) == 0  # each preset with its description
    listed = capsys.readouterr().out
    assert listed.startswith("medmnist_plus\n    MedMNIST+") and "Known differences" in listed
    assert main(["list", "datasets", "*pneumonia*"]) == 0
    assert "medmnist:pneumoniamnist" in capsys.readouterr().out
    parser = build_parser()
    for cmd in ("list", "probe", "finetune", "distill", "benchmark", "results"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0


def test_library_warnings_print_once():
    """huggingface_hub has a handler of its own; the CLI's logging must not print its messages again."""
    code = (
        "import logging, huggingface_hub.file_download\n"
        "from medadapt.cli import main\n"
        "main(['list', 'presets', 'cxr_fm'])\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Retrying in 1s") == 1, done.stderr


def test_python_api_mirrors_the_cli(env):
    import medadapt

    table = medadapt.probe(dataset="medmnist:breastmnist", backbone=TINY_VIT, pretrained=False,
                           data_root=str(env / "data"), epochs=2, head="linear", out=str(env / "api"))  # fmt: skip
    assert set(table["split"]) == {"val", "test", "cost"}
    assert {"auc", "acc", "balanced_accuracy", "cohen_kappa"} <= set(table["metric"])
    with pytest.raises(AttributeError):
        medadapt.not_an_api  # noqa: B018


def test_other_libraries_log_no_tracebacks_through_the_cli(env, capsys, monkeypatch):
    """pydicom logs a failed decode with ``logger.exception``: the CLI keeps one line of it, no traceback."""
    import logging

    import medadapt.cli as cli

    def noisy(args):
        try:
            raise ValueError("JPEG 2000 decode failed")
        except ValueError:
            logging.getLogger("pydicom").exception("An error occurred while decoding")
        logging.getLogger("medadapt.x").warning("ours")
        return 0

    monkeypatch.setattr(cli, "_run_list", noisy)
    root = logging.getLogger()
    handler = logging.StreamHandler()  # what basicConfig installs outside pytest (pytest's own is there now)
    root.addHandler(handler)
    try:
        assert main(["list", "strategies"]) == 0
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "An error occurred while decoding (ValueError: JPEG 2000 decode failed)" in err
    assert "Traceback" not in err and "ours" in err
