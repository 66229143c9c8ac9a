"""Benchmark grids: validation, patient-level folds, one extraction per backbone, the store, resume, faults,
executors (in-process, worker processes, submitit's local executor) and the leaderboard."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medadapt.benchmark import Store, load_grid, parse_grid, plan, run_benchmark
from medadapt.cli import main
from medadapt.data.folds import check_no_leakage, fold_splits, kfold_parts
from medadapt.errors import ConfigError, DataError

TINY = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"
TINIER = "timm:vit_small_patch14_dinov2?embed_dim=16&depth=1&num_heads=2"


def write_csv_dataset(root: Path, *, n: int = 48, seed: int = 0) -> Path:
    """A learnable CSV dataset of 16 px gray PNGs (class b has a bright square), two images per patient."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = "b" if (i // 2) % 2 else "a"  # both images of a patient share its label
        img = rng.integers(0, 90, (16, 16), dtype=np.uint8)
        if label == "b":
            img[4:10, 4:10] = 255
        Image.fromarray(img).save(root / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "label": label, "patient_id": f"p{i // 2}"})
    path = root / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def grid_dict(csv: Path, **over) -> dict:
    grid = {
        "name": "t",
        "datasets": [{"address": f"csv:{csv}", "name": "toy"}],
        "backbones": [{"address": TINY, "name": "tiny"}, {"address": TINIER, "name": "tinier"}],
        "methods": [
            "linear",
            "knn",
            "attention",
            {"name": "full", "finetune": "full", "train": {"epochs": 1, "batch_size": 16}},
        ],
        "seeds": [0, 1],
        "folds": 2,
        "settings": {"pretrained": False, "img_size": 28, "epochs": 3, "lrs": [1e-3], "ks": [3, 5]},
    }
    grid.update(over)
    return grid


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    return write_csv_dataset(tmp_path / "data")


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "change, message",
    [
        ({"methodz": []}, "unknown key(s) ['methodz']"),
        ({"datasets": []}, "datasets: the grid needs at least one entry"),
        ({"methods": ["linaer"]}, "did you mean 'linear'"),
        (
            {"methods": [{"name": "x", "finetune": "lora", "probe": "linear"}]},
            "methods[0]: a method mapping needs exactly one",
        ),
        ({"methods": [{"finetune": "full", "trian": {}}]}, "methods[0] (finetune): unknown key(s) ['trian']"),
        (
            {"methods": [{"finetune": "full", "train": {"epochz": 1}}]},
            "unknown training setting(s) ['epochz']",
        ),
        ({"folds": 1}, "folds.k must be an integer >= 2"),
        ({"folds": "official-ish"}, "folds must be 'official'"),
        ({"seeds": [0, 0]}, "seeds repeats"),
        ({"settings": {"dataset": "x"}}, "settings: ['dataset'] are set by the grid's axes"),
        ({"settings": {"epocs": 3}}, "settings: unknown key(s) ['epocs']"),
        (
            {"backbones": [{"address": TINY, "name": "a"}, {"address": TINIER, "name": "a"}]},
            "the name 'a' is used twice",
        ),
        (
            {"backbones": [{"address": TINY, "weights": "/nope.safetensors"}]},
            "--weights '/nope.safetensors' does not exist",
        ),
        ({"include": [{"method": "lora"}]}, "include[0].method: 'lora' matches none"),
        (
            {"datasets": ["medmnist:breastmnis"]},
            "datasets[0]: unknown MedMNIST flag 'breastmnis'; did you mean 'breastmnist'",
        ),
        (
            {"datasets": ["medmnst:breastmnist"]},
            "datasets[0]: unknown dataset kind 'medmnst'; did you mean 'medmnist'",
        ),
        ({"backbones": ["tim:resnet18"]}, "backbones[0]: unknown backbone source 'tim'; did you mean 'timm'"),
        ({"exclude": [{"dataset": "*"}]}, "the grid has no cells"),
    ],
)
def test_a_bad_grid_is_one_line_naming_the_key_exit_2(tmp_path, data, capsys, change, message):
    grid = write_grid(tmp_path / "g.yaml", grid_dict(data, **change))
    assert main(["benchmark", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadapt: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cells_are_the_product_filtered_by_include_and_exclude(data):
    grid = parse_grid(grid_dict(data, include=[{"backbone": "tiny"}, {"method": "knn"}],
                                exclude=[{"fold": 1, "seed": 1}]))  # fmt: skip
    keys = {c.key for c in grid.cells}
    # tiny: 4 methods; tinier: knn only; folds x seeds = 4 combinations, less (fold 1, seed 1)
    assert len(keys) == (4 + 1) * 3
    assert "toy|tinier|knn|fold0|seed1" in keys and "toy|tinier|linear|fold0|seed0" not in keys
    assert not any(k.endswith("fold1|seed1") for k in keys)
    cell = next(c for c in grid.cells if c.method == "full")
    assert (
        cell.config["train"]["epochs"] == 1
        and cell.config["strategy"] == "full"
        and cell.config["pretrained"] is False
    )
    probe = next(c for c in grid.cells if c.method == "linear")
    assert (
        probe.config["epochs"] == 3
        and probe.config["backbone_seed"] == 0
        and probe.config["with_tokens"] is True
    )


def test_presets_with_arms_give_one_method_per_arm(data):
    grid = parse_grid(grid_dict(data, methods=[{"preset": "natural_fm_finetune", "train": {"epochs": 3}}]))
    methods = sorted({c.method for c in grid.cells})
    assert methods and all(m.startswith("natural_fm_finetune/") for m in methods) and len(methods) > 1
    assert all(c.config["train"]["epochs"] == 3 for c in grid.cells)


def test_dry_run_lists_cells_and_backbone_passes_and_writes_nothing(tmp_path, data, capsys):
    grid = write_grid(tmp_path / "g.yaml", grid_dict(data))
    assert main(["benchmark", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "toy|tiny|linear|fold0|seed0" in out and "32 cells (32 pending)" in out
    assert "2 feature extraction(s)" in out and "8 fine-tuning run(s)" in out
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ folds
def test_kfold_parts_are_patient_grouped_disjoint_and_cover_every_row():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(40)], 3)
    labels = np.repeat(rng.integers(0, 2, 40), 3)
    folds = kfold_parts(labels, groups, k=5, seed=0, val_folds=4)
    tests = np.concatenate([f["test"] for f in folds])
    assert sorted(tests.tolist()) == list(range(120))  # every row tested exactly once
    for f in folds:
        check_no_leakage(f, groups, where="fold")
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == 120
        assert 0.15 < len(f["val"]) / (len(f["train"]) + len(f["val"])) < 0.35
    again = kfold_parts(labels, groups, k=5, seed=0, val_folds=4)
    assert all(
        np.array_equal(a[s], b[s]) for a, b in zip(folds, again) for s in a
    )  # a pure function of the seed


def test_a_patient_in_two_parts_is_an_error():
    groups = np.array(["a", "a", "b", "c"])
    with pytest.raises(DataError, match=r"patient\(s\) \['a'\] are in both train and test"):
        check_no_leakage({"train": np.array([0, 2]), "test": np.array([1, 3])}, groups, where="x")


def test_fold_views_pool_the_official_splits(data):
    from medadapt.config import ProbeConfig
    from medadapt.driver import load_splits

    splits = load_splits(ProbeConfig(dataset=f"csv:{data}", backbone=TINY))
    views = [fold_splits(splits, k=3, fold=f, seed=0, val_folds=4) for f in range(3)]
    n = sum(len(s) for s in splits.values())
    assert sorted(len(v["test"]) for v in views) and sum(len(v["test"]) for v in views) == n
    for v in views:
        ids = {s: set(v[s].metadata["patient_id"]) for s in ("train", "val", "test")}
        assert (
            not (ids["train"] & ids["test"])
            and not (ids["val"] & ids["test"])
            and not (ids["train"] & ids["val"])
        )
        item = v["test"][0]
        assert item["image"].shape == (1, 16, 16) and int(item["label"][0]) == int(v["test"].labels[0, 0])


# ------------------------------------------------------------------------------------------- end to end
def _scores(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "results.csv")
    return table[table["split"].isin(["val", "test"])].reset_index(drop=True)


def test_a_grid_runs_every_cell_once_with_one_extraction_per_backbone(tmp_path, data, monkeypatch):
    import medadapt.features.cache as cache

    writes = []
    real = cache._write_entry
    monkeypatch.setattr(
        cache,
        "_write_entry",
        lambda root, key, bb, ds, *a, **k: (
            writes.append((bb.spec.address, ds.split)) or real(root, key, bb, ds, *a, **k)
        ),
    )
    grid = write_grid(tmp_path / "g.yaml", grid_dict(data))
    summary = run_benchmark(grid, tmp_path / "out", workers=0)
    assert summary.ok and summary.counts == {"done": 32}
    # one pass per backbone over the official splits serves 3 probe heads x 2 seeds x 2 folds
    assert len(writes) == 6 and len({a for a, _ in writes}) == 2
    assert sorted(s for _, s in writes) == ["test", "test", "train", "train", "val", "val"]
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    scores = _scores(tmp_path / "out")
    assert len(scores.groupby(["dataset", "backbone", "run", "seed", "fold"])) == 32
    assert set(scores["fold"]) == {0, 1} and set(table["dataset"]) == {"toy"}
    assert not scores.duplicated(["backbone", "run", "seed", "fold", "split", "metric"]).any()
    # the store holds the same rows
    with sqlite3.connect(tmp_path / "out" / "benchmark.sqlite") as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == len(table)
        assert (
            con.execute("SELECT count(*) FROM cells WHERE status = 'done' AND attempts = 1").fetchone()[0]
            == 32
        )
    # each cell keeps its files, history included
    cell = tmp_path / "out" / "cells" / "toy" / "tiny" / "full" / "fold1" / "seed0"
    history = pd.read_csv(cell / "history.csv")
    assert {"epoch", "lr.head", "lr.backbone", "train_loss", "val_auc", "val_loss", "seconds"} <= set(
        history.columns
    )
    probe_history = pd.read_csv(
        tmp_path / "out" / "cells" / "toy" / "tiny" / "linear" / "fold0" / "seed0" / "history.csv"
    )
    assert list(probe_history["epoch"]) == [1, 2, 3] and probe_history["seconds"].notna().all()
    assert (cell / "predictions" / "test.npz").is_file() and (cell / "model.json").is_file()
    # the same command again does nothing and changes nothing
    before = (tmp_path / "out" / "results.csv").read_bytes()
    writes.clear()
    assert run_benchmark(grid, tmp_path / "out", workers=0).counts == {"done": 32}
    assert not writes and (tmp_path / "out" / "results.csv").read_bytes() == before


def test_a_failed_cell_is_recorded_the_grid_goes_on_and_retry_failed_reruns_it(tmp_path, data, capsys):
    missing = tmp_path / "later" / "labels.csv"
    g = grid_dict(
        data,
        methods=["knn"],
        seeds=[0],
        folds="official",
        datasets=[{"address": f"csv:{data}", "name": "toy"}, {"address": f"csv:{missing}", "name": "late"}],
    )
    grid = write_grid(tmp_path / "g.yaml", g)
    out = tmp_path / "out"
    assert main(["benchmark", str(grid), "--out", str(out), "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "2 cell(s) failed" in err and "late|tiny|knn|official|seed0" in err and "does not exist" in err
    statuses = Store(out).statuses()
    assert statuses["late|tiny|knn|official|seed0"]["status"] == "failed"
    assert statuses["toy|tiny|knn|official|seed0"]["status"] == "done"
    assert json.loads((out / "cells/late/tiny/knn/official/seed0/error.json").read_text())["traceback"]
    assert main(["benchmark", "status", str(out)]) == 0
    assert "2 failed" in capsys.readouterr().out
    # without --retry-failed nothing reruns; with it, the cells run again
    write_csv_dataset(missing.parent)
    assert main(["benchmark", str(grid), "--out", str(out), "--workers", "0"]) == 1
    assert main(["benchmark", str(grid), "--out", str(out), "--workers", "0", "--retry-failed"]) == 0
    assert Store(out).statuses()["late|tiny|knn|official|seed0"]["attempts"] == 2


def test_a_cell_whose_settings_changed_is_refused_before_any_work(tmp_path, data, capsys):
    g = grid_dict(data, methods=["knn"], seeds=[0], folds="official")
    grid = write_grid(tmp_path / "g.yaml", g)
    assert main(["benchmark", str(grid), "--out", str(tmp_path / "out"), "--workers", "0"]) == 0
    g["settings"]["ks"] = [7]
    write_grid(tmp_path / "g.yaml", g)
    mtime = (tmp_path / "out" / "benchmark.sqlite").stat().st_mtime_ns
    assert main(["benchmark", str(grid), "--out", str(tmp_path / "out"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "ran before with other settings" in err and "ks: [3, 5] there, [7] now" in err
    assert (tmp_path / "out" / "benchmark.sqlite").stat().st_mtime_ns == mtime
    # a new seed or a new method is not a change: only those cells run
    g["settings"]["ks"] = [3, 5]
    g["seeds"] = [0, 1]
    write_grid(tmp_path / "g.yaml", g)
    assert run_benchmark(grid, tmp_path / "out", workers=0).counts == {"done": 4}


def test_a_killed_cell_folder_resumes_and_unfinished_cells_rerun(tmp_path, data):
    g = grid_dict(
        data,
        methods=[{"name": "full", "finetune": "full", "train": {"epochs": 3, "batch_size": 16}}],
        backbones=[{"address": TINY, "name": "tiny"}],
        seeds=[0],
        folds="official",
    )
    grid = write_grid(tmp_path / "g.yaml", g)
    ref = run_benchmark(grid, tmp_path / "ref", workers=0)
    assert ref.ok
    # as if killed after the last epoch's checkpoint, before the cell wrote its results
    cut = tmp_path / "cut"
    run_benchmark(grid, cut, workers=0)
    cell = cut / "cells" / "toy" / "tiny" / "full" / "official" / "seed0"
    for name in ("done.json", "results.csv", "model.json", "model.safetensors"):
        (cell / name).unlink()
    with sqlite3.connect(cut / "benchmark.sqlite") as con:
        con.execute("UPDATE cells SET status = 'running'")
        con.execute("DELETE FROM results")
    assert run_benchmark(grid, cut, workers=0).ok
    assert _scores(cut).equals(_scores(tmp_path / "ref"))


def test_two_worker_processes_give_the_in_process_results(tmp_path, data):
    g = grid_dict(data, methods=["linear", "knn"], backbones=[{"address": TINY, "name": "tiny"}])
    grid = write_grid(tmp_path / "g.yaml", g)
    inline = run_benchmark(grid, tmp_path / "inline", workers=0)
    pool = run_benchmark(grid, tmp_path / "pool", workers=2)
    assert inline.ok and pool.ok and pool.counts == {"done": 8}
    assert _scores(tmp_path / "pool").equals(
        _scores(tmp_path / "inline")
    )  # nothing lost or doubled, same order
    hosts = {r["host"] for r in Store(tmp_path / "pool").statuses().values()}
    assert len(hosts) == 1 and None not in hosts


def test_slurm_executor_runs_through_submitits_local_executor(tmp_path, data):
    pytest.importorskip("submitit")
    g = grid_dict(data, methods=["knn"], backbones=[{"address": TINY, "name": "tiny"}], seeds=[0, 1], folds="official",
                  executor={"kind": "slurm", "cluster": "local", "time": 5, "poll": 0.2})  # fmt: skip
    grid = write_grid(tmp_path / "g.yaml", g)
    summary = run_benchmark(grid, tmp_path / "out")
    assert summary.ok and summary.counts == {"done": 2}
    assert any((tmp_path / "out" / "slurm").rglob("*_submitted.pkl"))  # submitit's own job folder
    ref = run_benchmark(
        write_grid(tmp_path / "g2.yaml", {**g, "executor": {"kind": "local"}}), tmp_path / "ref", workers=0
    )
    assert ref.ok and _scores(tmp_path / "out").equals(_scores(tmp_path / "ref"))


def test_a_requeued_slurm_job_resubmits_the_same_cell():
    from medadapt.benchmark.executors import CellJob

    pytest.importorskip("submitit")
    job = CellJob("/some/grid")
    again = job.checkpoint({"key": "k", "folder": "f"})
    assert isinstance(again.function, CellJob) and again.function.out == "/some/grid"
    assert again.args == ({"key": "k", "folder": "f"},)


# ------------------------------------------------------------------------------------------- leaderboard
def test_leaderboard_means_over_seeds_and_folds_with_cost_and_escaped_latex(tmp_path):
    from medadapt.reporting.leaderboard import leaderboard, write_leaderboard
    from medadapt.reporting.results import results_rows

    rows = []
    for run, values in (("a_1", [0.8, 0.9, 0.7]), ("b&c", [0.6, 0.6, 0.9])):
        for i, v in enumerate(values):
            ids = dict(
                run=run, dataset="d", backbone="bb", strategy="frozen", head="linear", seed=i % 2, fold=i // 2
            )
            rows += results_rows(metrics={"auc": v, "acc": v / 2}, split="test", **ids)
            rows += results_rows(
                metrics={"trainable_params": 10 * (i + 1), "wall_seconds": 2.0}, split="cost", **ids
            )
    board = leaderboard(pd.DataFrame(rows), metrics=["auc", "acc"])
    assert list(board["method"]) == ["a_1", "b&c"] and list(board["n"]) == [3, 3]
    assert board.loc[0, "auc_mean"] == pytest.approx(0.8) and board.loc[0, "auc_std"] == pytest.approx(
        np.std([0.8, 0.9, 0.7], ddof=1)
    )
    assert board.loc[1, "trainable_params"] == pytest.approx(20)
    paths = write_leaderboard(board, tmp_path, metrics=["auc", "acc"])
    tex = paths["tex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "a\\_1" in tex and "b\\&c" in tex
    assert "\\textbf{0.800 ± 0.100}" in tex
    assert "**0.800 ± 0.100**" in paths["md"].read_text()
    with pytest.raises(DataError, match="no test rows for metric"):
        leaderboard(pd.DataFrame(rows), metrics=["f1"])


def test_results_command_reads_a_grid_store(tmp_path, data, capsys):
    grid = write_grid(tmp_path / "g.yaml", grid_dict(data, methods=["knn"], seeds=[0, 1], folds="official"))
    run_benchmark(grid, tmp_path / "out", workers=0)
    assert main(["results", str(tmp_path / "out"), "--metrics", "auc"]) == 0
    out = capsys.readouterr().out
    assert "| toy" in out and "knn" in out and (tmp_path / "out" / "leaderboard.tex").is_file()


def test_load_grid_reports_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_grid(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("datasets: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(tmp_path / "bad.yaml")


def test_shipped_grids_validate(monkeypatch):
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("grid_tiny.yaml", "grid_medmnist.yaml"):
        grid = load_grid(root / name)
        assert grid.cells
    assert plan(root / "grid_tiny.yaml", "/nonexistent/out").extractions == 2


# ------------------------------------------------------------------------------------------ distillation
def test_distill_cells_learn_from_their_teacher_cells_after_them(tmp_path, data):
    student = {"student": TINIER, "train": {"epochs": 2, "batch_size": 16}}
    g = grid_dict(data, backbones=[{"address": TINY, "name": "tiny"}], seeds=[0], folds=2,
                  methods=["linear", {"name": "full", "finetune": "full", "train": {"epochs": 1, "batch_size": 16}},
                           {"name": "kd-full", "distill": "full", "alpha": 0.5, **student},
                           {"distill": "linear", "temperature": 4.0, **student}])  # fmt: skip
    grid = parse_grid(g)
    kd = next(c for c in grid.cells if c.method == "kd-full" and c.fold == 1)
    assert kd.depends == "toy|tiny|full|fold1|seed0" and kd.config["backbone"] == TINIER
    assert kd.config["strategy"] == "scratch" and kd.config["alpha"] == 0.5
    summary = run_benchmark(write_grid(tmp_path / "g.yaml", g), tmp_path / "out", workers=0)
    assert summary.ok and summary.counts == {"done": 8}
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    rows = table[(table["run"] == "distill-linear") & (table["split"] == "test")]
    assert (
        len(rows.groupby("fold")) == 2 and set(rows["temperature"]) == {4.0} and set(rows["alpha"]) == {0.2}
    )
    assert rows["teacher"].str.contains("single model").all()
    history = pd.read_csv(
        tmp_path / "out" / "cells" / "toy" / "tiny" / "kd-full" / "fold0" / "seed0" / "history.csv"
    )
    assert {"train_kd_loss", "train_task_loss"} <= set(history.columns)


@pytest.mark.parametrize(
    "methods, extra, message",
    [
        (
            ["knn", {"distill": "knn"}],
            {},
            "distils 'knn', which is not a method of this grid with a saved model",
        ),
        (["linear", {"distill": "linaer"}], {}, "valid teachers: ['linear']"),
        (
            ["linear", {"distill": "linear"}],
            {"exclude": [{"method": "linear"}]},
            "which include / exclude removed",
        ),
    ],
)
def test_a_distill_method_needs_a_teacher_method_with_a_model(data, methods, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_grid(grid_dict(data, methods=methods, **extra))


def test_folds_without_patient_ids_are_said_once_per_dataset(tmp_path, data, caplog):
    no_ids = pd.read_csv(data).drop(columns="patient_id")
    no_ids.to_csv(data.parent / "no_ids.csv", index=False)
    g = grid_dict(data, methods=["knn"], seeds=[0, 1], folds=2, backbones=[{"address": TINY, "name": "tiny"}],
                  datasets=[{"address": f"csv:{data}", "name": "toy"}, {"address": f"csv:{data.parent / 'no_ids.csv'}", "name": "flat"}])  # fmt: skip
    with caplog.at_level("WARNING", logger="medadapt.benchmark"):
        assert run_benchmark(write_grid(tmp_path / "g.yaml", g), tmp_path / "out", workers=0).ok
    said = [r.getMessage() for r in caplog.records if "no patient_id column" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("dataset flat has no patient_id column")


def test_benchmark_status_needs_a_grid_folder(tmp_path, capsys):
    assert main(["benchmark", "status", str(tmp_path)]) == 2
    assert "holds no benchmark" in capsys.readouterr().err
    assert main(["benchmark", "status"]) == 2


def test_status_counts_the_cells_of_the_grid_as_last_run(tmp_path, data, capsys):
    g = grid_dict(
        data, methods=["knn"], seeds=[0, 1], folds="official", backbones=[{"address": TINY, "name": "tiny"}]
    )
    grid = write_grid(tmp_path / "g.yaml", g)
    assert run_benchmark(grid, tmp_path / "out", workers=0).counts == {"done": 2}
    write_grid(tmp_path / "g.yaml", {**g, "seeds": [0, 1, 2], "exclude": [{"seed": 1}]})
    assert run_benchmark(grid, tmp_path / "out", workers=0).counts == {"done": 2}
    assert main(["benchmark", "status", str(tmp_path / "out")]) == 0
    assert "2 cells: 2 done" in capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "out" / "results.csv")["seed"]) == {0, 2}
    assert (tmp_path / "out" / "grid.earlier").is_dir()  # the grid file as first run is kept
