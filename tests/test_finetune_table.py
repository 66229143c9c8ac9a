"""scripts/finetune_table.py: accuracy and cost tables from a synthetic finetune results table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from script_loader import load_script

from medadapt.reporting import results_rows, write_results

ft = load_script("finetune_table")

# per arm: test AUC, test ACC, val AUC per seed, trainable params, selected epoch per seed
ARMS = {
    "full-linear": ("full", [0.90, 0.92, 0.94], [0.80, 0.85, 0.90], [0.95, 0.96, 0.97], 5_352_194, [3, 5, 4]),
    "frozen-linear": ("frozen", [0.86, 0.87, 0.88], [0.75, 0.76, 0.77], [0.80, 0.81, 0.82], 386, [2, 2, 2]),
}
TOTAL = 5_352_194


def _rows(arm: str, seed: int) -> list[dict]:
    strategy, auc, acc, val, trainable, epoch = ARMS[arm]
    ids = dict(run=arm, dataset="medmnist:breastmnist", backbone="timm:vit_tiny_patch16_224?patch_size=7",
               strategy=strategy, head="linear", seed=seed, fold=None, pretrained="random-init", img_size=28,
               selected=f"lr=0.001;epoch={epoch[seed]}")  # fmt: skip
    cost = {
        "total_params": TOTAL,
        "trainable_params": trainable,
        "peak_memory_bytes": (1.5 + seed) * 2**30,
        "wall_seconds": 70.0,
        "train_seconds": 65.0,
        "train_images_per_second": 84.0,
        "epochs": 20,
    }
    return [
        *results_rows(metrics={"auc": val[seed], "acc": 0.5}, split="val", **ids),
        *results_rows(metrics={"auc": auc[seed], "acc": acc[seed]}, split="test", **ids),
        *results_rows(metrics=cost, split="cost", **ids),
    ]


@pytest.fixture
def results() -> pd.DataFrame:
    return pd.DataFrame([row for arm in ARMS for seed in range(3) for row in _rows(arm, seed)])


@pytest.fixture
def reference() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["breastmnist"] * 4,
            "method": ["ResNet-18 (28)", "ResNet-18 (28)", "AutoKeras", "AutoKeras"],
            "metric": ["auc", "acc", "auc", "acc"],
            "value": [0.901, 0.863, 0.5, 0.5],
        }
    )


def test_mean_std_formatting() -> None:
    assert ft.mean_std([0.90, 0.92, 0.94]) == "0.920 ± 0.020"
    assert ft.mean_std([0.9]) == "0.900"  # one seed: no std
    assert ft.mean_std([]) == ""


def test_accuracy_table_without_reference(results: pd.DataFrame) -> None:
    table = ft.accuracy_table(results, None, None).set_index("arm")
    assert list(table.index) == ["full-linear", "frozen-linear"]  # order of first appearance
    assert table.loc["full-linear", "test AUC"] == "0.920 ± 0.020"
    assert table.loc["full-linear", "test ACC"] == "0.850 ± 0.050"
    assert table.loc["full-linear", "val AUC"] == "0.960 ± 0.010"
    assert table.loc["frozen-linear", "test AUC"] == "0.870 ± 0.010"
    assert table.loc["frozen-linear", "seeds"] == 3
    assert "published AUC" not in table


def test_accuracy_table_against_reference(results: pd.DataFrame, reference: pd.DataFrame) -> None:
    table = ft.accuracy_table(results, reference, "ResNet-18 (28)").set_index("arm")
    assert table.loc["full-linear", "published AUC"] == "0.901"
    assert table.loc["full-linear", "published ACC"] == "0.863"
    assert table.loc["full-linear", "AUC ≥ published?"] == "yes"
    assert table.loc["full-linear", "ACC ≥ published?"] == "no (within 1 std)"  # 0.850 + 0.050 >= 0.863
    assert table.loc["frozen-linear", "AUC ≥ published?"] == "no"  # 0.870 + 0.010 < 0.901
    markdown = ft.accuracy_table(results, reference, "ResNet-18 (28)").to_markdown(
        index=False, disable_numparse=True
    )
    assert "| 0.901 " in markdown and "0.920 ± 0.020" in markdown


def test_accuracy_table_unknown_method(results: pd.DataFrame, reference: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="AutoKeras"):
        ft.accuracy_table(results, reference, "ResNet-99")


@pytest.mark.parametrize(
    ("address", "name"),
    [("medmnist:breastmnist", "breastmnist"), ("medmnist:BreastMNIST?size=28", "breastmnist")],
)
def test_reference_dataset(address: str, name: str) -> None:
    assert ft.reference_dataset(address) == name


def test_cost_table(results: pd.DataFrame) -> None:
    table = ft.cost_table(results).set_index("arm")
    assert "dataset" not in table  # one dataset: no column
    full, frozen = table.loc["full-linear"], table.loc["frozen-linear"]
    assert (full["strategy"], full["head"]) == ("full", "linear")
    assert full["test AUC"] == "0.920 ± 0.020"
    assert full["trainable / total params"] == "5.4M / 5.4M (100%)"
    assert frozen["trainable / total params"] == "386 / 5.4M (0.0072%)"
    assert full["peak memory¹"] == "3.5 GiB"  # the largest over seeds
    assert full["train time / run"] == "1:05"
    assert full["train images/s"] == "84"
    assert full["epochs"] == "20"
    assert full["selected"] == "lr=0.001; epoch=3/5/4"
    assert frozen["selected"] == "lr=0.001; epoch=2"


def test_main_reads_run_dirs(tmp_path: Path, results: pd.DataFrame, capsys: pytest.CaptureFixture) -> None:
    write_results(results.to_dict("records"), tmp_path / "run" / "results.csv")
    assert ft.main([str(tmp_path / "run"), "--mode", "cost"]) == 0
    out = capsys.readouterr().out
    assert "| full-linear " in out and "peak RSS" in out


def test_main_names_the_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        ft.main([str(tmp_path / "nowhere")])
    assert info.value.code == 2
    assert str(tmp_path / "nowhere" / "results.csv") in capsys.readouterr().err


def test_one_arm_name_in_two_folders_stays_two_rows(tmp_path: Path, results: pd.DataFrame) -> None:
    """Before, rows of two folders with one arm name were deduplicated into one: an experiment vanished."""
    other = results.assign(value=results["value"].where(results["split"] != "test", 0.5))
    write_results(results.to_dict("records"), tmp_path / "a" / "results.csv")
    write_results(other.to_dict("records"), tmp_path / "b" / "results.csv")
    table = ft.accuracy_table(ft.load_runs([tmp_path / "a", tmp_path / "b"]))
    rows = table.set_index(["folder", "arm"])["test AUC"]
    assert rows[(str(tmp_path / "a"), "full-linear")] == "0.920 ± 0.020"
    assert rows[(str(tmp_path / "b"), "full-linear")] == "0.500 ± 0.000" and len(table) == 4
    assert "folder" not in ft.accuracy_table(ft.load_runs([tmp_path / "a"]))  # one folder: no column
    assert len(ft.cost_table(ft.load_runs([tmp_path / "a", tmp_path / "b"]))) == 4


def test_a_nan_seed_is_shown_not_averaged_away(results: pd.DataFrame, reference: pd.DataFrame) -> None:
    diverged = (results["run"] == "full-linear") & (results["seed"] == 2) & (results["split"] == "test")
    results.loc[diverged, "value"] = float("nan")
    table = ft.accuracy_table(results, reference, "ResNet-18 (28)").set_index("arm")
    assert table.loc["full-linear", "test AUC"] == "nan ± nan"
    assert table.loc["full-linear", "AUC ≥ published?"] == ""
    assert table.loc["frozen-linear", "test AUC"] == "0.870 ± 0.010"
