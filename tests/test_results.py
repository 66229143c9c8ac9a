"""The results table, saved predictions, environment records and atomic writers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from medadapt.errors import ConfigError, DataError
from medadapt.reporting import (
    RESULT_COLUMNS,
    atomic_write,
    environment_info,
    load_predictions,
    read_results,
    results_rows,
    save_predictions,
    write_environment,
    write_json,
    write_results,
    write_run_config,
    write_yaml,
)
from medadapt.reporting import results as R

IDS = {
    "run": "007",
    "dataset": "medmnist:breastmnist?size=64",
    "backbone": "timm:vit_small_patch14_dinov2.lvd142m",
    "strategy": "probe",
    "head": "linear",
    "seed": 0,
    "fold": 1,
}


def _rows(**overrides) -> list[dict]:
    return results_rows(metrics={"auc": 0.9, "acc": 0.8}, split="test", **{**IDS, **overrides})


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------------- rows
def test_results_rows_are_tidy_with_extra_columns_last() -> None:
    rows = _rows(lr=1e-3, pretrained=True)
    assert [r["metric"] for r in rows] == ["auc", "acc"]
    assert list(rows[0]) == [*RESULT_COLUMNS, "lr", "pretrained"]
    assert rows[1]["value"] == 0.8 and rows[1]["split"] == "test" and rows[1]["lr"] == 1e-3


def test_results_rows_fill_missing_ids_and_convert_numpy() -> None:
    (row,) = results_rows(metrics={"auc": np.float32(0.5)}, split="val", run="r", seed=np.int64(3))
    assert row["head"] is None and row["fold"] is None
    assert type(row["seed"]) is int and type(row["value"]) is float


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "auc"}, "may not be named"),
        ({"lr": [1e-3, 1e-4]}, "must be a str"),
    ],
)
def test_results_rows_reject_bad_ids(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        results_rows(metrics={"auc": 0.9}, split="test", **kwargs)


def test_results_rows_reject_non_numeric_values() -> None:
    with pytest.raises(ConfigError, match="metric 'auc'"):
        results_rows(metrics={"auc": "high"}, split="test")


# --------------------------------------------------------------------------------------------------- table
def test_results_round_trip(tmp_path: Path) -> None:
    path = write_results(_rows(), tmp_path / "out" / "results.csv")
    table = read_results(path)
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert table["run"].tolist() == ["007", "007"]  # id columns stay text
    assert table["value"].tolist() == [0.9, 0.8] and table["seed"].tolist() == [0, 0]
    assert table["dataset"].iloc[0] == IDS["dataset"]


def test_appending_keeps_rows_and_unions_columns(tmp_path: Path) -> None:
    write_results(_rows(), tmp_path)
    write_results(_rows(seed=1, lr=0.01), tmp_path)
    write_results([], tmp_path)
    table = read_results(tmp_path / "results.csv")
    assert len(table) == 4 and list(table.columns) == [*RESULT_COLUMNS, "lr"]
    assert table["seed"].tolist() == [0, 0, 1, 1]
    assert table["lr"].isna().tolist() == [True, True, False, False]


def test_missing_ids_round_trip_as_empty(tmp_path: Path) -> None:
    write_results(results_rows(metrics={"auc": float("nan")}, split="test", run="r"), tmp_path)
    table = read_results(tmp_path)
    assert table["head"].isna().all() and math.isnan(table["value"].iloc[0])


def test_concurrent_appends_lose_no_rows(tmp_path: Path) -> None:
    def worker(seed: int) -> None:
        for fold in range(5):
            write_results(_rows(seed=seed, fold=fold), tmp_path)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_results(tmp_path)) == 4 * 5 * 2 and not _leftovers(tmp_path)


def test_read_results_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no results table"):
        read_results(tmp_path / "nothing.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks the columns"):
        read_results(tmp_path / "other.csv")


def test_write_results_rejects_rows_without_metric(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="results_rows"):
        write_results([{"run": "r"}], tmp_path)


# ------------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "a" / "b.txt", "héllo")
    atomic_write(target, b"bytes")
    assert target.read_bytes() == b"bytes"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = atomic_write(tmp_path / "results.csv", "old")
    monkeypatch.setattr(R.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_atomic_write_keeps_file_mode(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "x.txt", "a")
    assert target.stat().st_mode & 0o777 == 0o644
    os.chmod(target, 0o600)
    atomic_write(target, "b")
    assert target.stat().st_mode & 0o777 == 0o600


def test_write_json_and_yaml_convert_numpy_paths_and_tuples(tmp_path: Path) -> None:
    obj = {"auc": np.float64(0.5), "n": np.int32(3), "shape": (1, 2), "dir": tmp_path, "arr": np.arange(2)}
    expected = {"auc": 0.5, "n": 3, "shape": [1, 2], "dir": str(tmp_path), "arr": [0, 1]}
    assert json.loads(write_json(obj, tmp_path / "a.json").read_text()) == expected
    assert yaml.safe_load(write_yaml(obj, tmp_path / "a.yaml").read_text()) == expected
    assert not _leftovers(tmp_path)


# --------------------------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("with_index", [False, True])
def test_predictions_round_trip(tmp_path: Path, with_index: bool) -> None:
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, (10, 1)), rng.random((10, 2)).astype(np.float32)
    index = np.arange(100, 110) if with_index else None
    path = save_predictions(tmp_path, "test", labels=labels, scores=scores, index=index)
    assert path == tmp_path / "predictions" / "test.npz"
    got = load_predictions(path)
    assert sorted(got) == (["index", "labels", "scores"] if with_index else ["labels", "scores"])
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_array_equal(got["scores"], scores)
    assert got["scores"].dtype == np.float32 and not _leftovers(tmp_path)
    if with_index:
        np.testing.assert_array_equal(got["index"], index)


def test_predictions_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="row-aligned"):
        save_predictions(tmp_path, "test", labels=np.zeros((3, 1)), scores=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="plain file name"):
        save_predictions(tmp_path, "../test", labels=np.zeros((3, 1)), scores=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no predictions file"):
        load_predictions(tmp_path / "predictions" / "val.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(DataError, match="expected labels and scores"):
        load_predictions(tmp_path / "other.npz")


# --------------------------------------------------------------------------------------------- environment
def test_environment_info_keys(tmp_path: Path) -> None:
    info = environment_info(seed=3, device="cpu", repo_dir=tmp_path)
    assert {"python", "platform", "packages", "git_sha", "git_dirty", "seed", "device", "cpu", "gpu"} <= set(
        info
    )
    assert info["seed"] == 3 and info["device"] == "cpu" and info["gpu"] is None
    assert info["git_sha"] is None and info["git_dirty"] is None  # tmp_path is not a repository
    assert info["packages"]["numpy"] == np.__version__ and info["packages"]["medadapt"]
    assert "timestamp" in info and json.loads(write_json(info, tmp_path / "env.json").read_text()) == info


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_environment_info_reads_git_state(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
        return subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "first")
    info = environment_info(seed=0, device="cpu", repo_dir=tmp_path)
    assert info["git_sha"] == git("rev-parse", "HEAD") and info["git_dirty"] is False
    (tmp_path / "f.txt").write_text("b")
    assert environment_info(seed=0, device="cpu", repo_dir=tmp_path)["git_dirty"] is True


def test_write_environment_keeps_each_invocations_environment(tmp_path: Path) -> None:
    info = environment_info(seed=[0], device="cpu", repo_dir=tmp_path)
    write_environment(info, tmp_path)
    # another seed, same environment (a parallel process): one record, the seeds gathered
    got = write_environment({**info, "seed": [2], "timestamp": "later"}, tmp_path)
    assert got["seed"] == [0, 2] and "earlier" not in got
    # a resume after a commit: the record keeps what made the earlier epochs
    got = write_environment({**info, "seed": [1], "git_sha": "abc"}, tmp_path)
    assert got["git_sha"] == "abc" and got["seed"] == [1]
    assert [e["seed"] for e in got["earlier"]] == [[0, 2]] and got["earlier"][0]["git_sha"] is None
    got = write_environment({**info, "seed": [1], "device": "cuda:0"}, tmp_path)
    assert [e.get("git_sha") for e in got["earlier"]] == [None, "abc"]
    assert json.loads((tmp_path / "env.json").read_text()) == got


def test_records_go_into_a_folder_not_made_yet(tmp_path: Path) -> None:
    """The folder lock is taken on the folder: it is made first, not left as a lock file in its place."""
    write_environment(environment_info(seed=[0], device="cpu", repo_dir=tmp_path), tmp_path / "a" / "b")
    write_run_config({"seeds": [0]}, tmp_path / "c")
    assert (tmp_path / "a" / "b" / "env.json").is_file() and (tmp_path / "c" / "config.yaml").is_file()


def test_environment_info_imports_no_heavy_packages() -> None:
    code = (
        "import sys; from medadapt.reporting import environment_info; environment_info(seed=0, device='cpu'); "
        "print(sorted({'torch', 'timm', 'transformers', 'open_clip', 'peft'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_write_results_replace_drops_the_rows_a_resumed_run_repeats(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_results(results_rows(metrics={"auc": 0.5}, split="test", run="a", seed=0), path)
    write_results(results_rows(metrics={"auc": 0.6}, split="test", run="a", seed=1), path)
    write_results(
        results_rows(metrics={"auc": 0.7}, split="test", run="a", seed=0), path, replace=("run", "seed")
    )
    table = read_results(path).sort_values("seed")
    assert list(table["seed"]) == [0, 1] and list(table["value"]) == [0.7, 0.6]


def test_run_config_gathers_the_seeds_of_parallel_invocations(tmp_path: Path, caplog) -> None:
    base = {"dataset": "d", "seeds": [1], "resume": True, "train": {"lr": 0.001}}
    write_run_config(base, tmp_path)
    written = write_run_config({**base, "seeds": [0], "resume": False}, tmp_path)
    assert written["seeds"] == [0, 1]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seeds"] == [0, 1]
    # settings that do not change results may differ too (another machine's data path, checkpoint interval)
    other_machine = {
        "data_root": "/elsewhere",
        "num_workers": 4,
        "train": {"lr": 0.001, "checkpoint_every": 25},
    }
    with caplog.at_level("WARNING"):
        written = write_run_config({**base, "seeds": [3], **other_machine}, tmp_path)
    assert written["seeds"] == [0, 1, 3] and written["data_root"] == "/elsewhere" and not caplog.text
    # another config in the same folder replaces it, with a warning naming what differs
    with caplog.at_level("WARNING"):
        write_run_config({**base, "seeds": [2], "train": {"lr": 0.01}}, tmp_path)
    assert "['train.lr']" in caplog.text and "config.earlier.yaml" in caplog.text
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seeds"] == [2]
    # ... and the replaced config is kept, oldest first
    write_run_config({**base, "seeds": [4], "train": {"lr": 0.1}}, tmp_path)
    earlier = yaml.safe_load((tmp_path / "config.earlier.yaml").read_text())
    assert [(c["seeds"], c["train"]["lr"]) for c in earlier] == [([0, 1, 3], 0.001), ([2], 0.01)]


def test_run_config_tells_an_old_alias_from_the_address_it_names_now(tmp_path: Path, caplog) -> None:
    """config.yaml written before it recorded ``backbone_address``: an address is its own, an alias is not."""
    base = {"dataset": "d", "seeds": [0], "train": {"lr": 0.001}}
    address = "timm:resnet18?stem=cifar&init=torch"
    write_yaml({**base, "backbone": address}, tmp_path / "a" / "config.yaml")
    with caplog.at_level("WARNING"):
        written = write_run_config({**base, "seeds": [1], "backbone": address, "backbone_address": address},
                                   tmp_path / "a")  # fmt: skip
    assert written["seeds"] == [0, 1] and not caplog.text
    # the alias may have named another model when the old seeds ran: not gathered, and the warning says why
    write_yaml({**base, "backbone": "resnet18_28"}, tmp_path / "b" / "config.yaml")
    with caplog.at_level("WARNING"):
        written = write_run_config({**base, "seeds": [1], "backbone": "resnet18_28", "backbone_address": address},
                                   tmp_path / "b")  # fmt: skip
    assert written["seeds"] == [1] and "['backbone_address']" in caplog.text


def test_folder_lock_is_a_writable_file_and_a_refused_lock_warns(tmp_path: Path, monkeypatch, caplog) -> None:
    """NFS emulates flock with fcntl locks, which need a file open for writing; a refusal is not silent."""
    import fcntl

    from medadapt._io import LOCK_FILE, exclusive_lock

    with exclusive_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()

    def refuse(fd, op):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", refuse)
    ran = []
    with caplog.at_level("WARNING"), exclusive_lock(tmp_path):
        ran.append(True)
    assert ran and "could not lock" in caplog.text
