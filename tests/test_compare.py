"""``medadapt compare``: statistics over saved results and predictions, checked against scipy on fixed data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medadapt.cli import main
from medadapt.evaluation.bootstrap import bootstrap_ci
from medadapt.evaluation.calibration import expected_calibration_error
from medadapt.evaluation.metrics import compute_metrics
from medadapt.reporting.compare import CompareOptions, compare
from medadapt.reporting.results import RUN_DIR, results_rows, save_predictions, write_results
from medadapt.reporting.sources import load_sources

N_TEST = 120


def _labels(rng: np.random.Generator, n: int = N_TEST) -> np.ndarray:
    y = np.zeros(n, dtype=np.int64)
    y[rng.permutation(n)[: n // 3]] = 1
    return y


def _scores(y: np.ndarray, strength: float, rng: np.random.Generator, shortcut: np.ndarray | None = None):
    logit = strength * (y - 0.5) * 2 + rng.normal(0, 1, len(y))
    if shortcut is not None:  # positives are only found where the marker is
        logit = np.where(y == 1, np.where(shortcut, 3.0, -1.0), logit) + rng.normal(0, 0.3, len(y))
    p = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p, p], axis=1)


def write_run(root: Path, *, datasets=("d1", "d2"), methods=None, seeds=(0, 1, 2), metadata: bool = False,
              shortcut: str | None = None) -> Path:  # fmt: skip
    """A results folder in the finetune layout (``ARM/seedS``) with predictions, made without training."""
    methods = methods or {"strong": 1.2, "mid": 0.8, "weak": 0.3}
    rows = []
    for d, dataset in enumerate(datasets):
        rng = np.random.default_rng(100 + d)
        y = _labels(rng)
        marker = rng.random(len(y)) < np.where(y == 1, 0.7, 0.1)
        meta = pd.DataFrame(
            {"marker": np.where(marker, "yes", "no"), "site": np.where(np.arange(len(y)) < 6, "tiny", "big")}
        )
        for m, (method, strength) in enumerate(methods.items()):
            for seed in seeds:
                srng = np.random.default_rng(1000 * d + 10 * m + seed)
                scores = _scores(y, strength, srng, marker if method == shortcut else None)
                run_dir = f"{dataset}/{method}/seed{seed}"
                save_predictions(root / run_dir, "test", labels=y[:, None], scores=scores, task="binary",
                                 metadata=meta if metadata else None)  # fmt: skip
                ids = dict(run=method, dataset=dataset, backbone="bb", strategy="full", head="linear", seed=seed,
                           fold=None, **{RUN_DIR: run_dir})  # fmt: skip
                rows += results_rows(metrics=compute_metrics("binary", y[:, None], scores, ["auc", "acc"]),
                                     split="test", **ids)  # fmt: skip
                rows += results_rows(metrics={"trainable_params": 1000 * (m + 1), "wall_seconds": 2.0 + m},
                                     split="cost", **ids)  # fmt: skip
    write_results(rows, root / "results.csv")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), metadata=True, shortcut="mid")


@pytest.fixture(scope="module")
def result(run):
    return compare(load_sources([run]), CompareOptions(n_resamples=500, subgroup="site", confounder="marker"))


def _cells(run: Path, dataset: str, method: str) -> pd.Series:
    t = pd.read_csv(run / "results.csv")
    t = t[(t.dataset == dataset) & (t.run == method) & (t.split == "test") & (t.metric == "auc")]
    return t.set_index("seed")["value"]


def test_summary_is_mean_std_and_t_interval_over_cells(run, result):
    row = result.summary.set_index(["dataset", "method"]).loc[("d1", "bb · mid")]
    v = _cells(run, "d1", "mid").to_numpy()
    low, high = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert row["n"] == 3 and row["mean"] == pytest.approx(v.mean(), abs=1e-12)
    assert row["std"] == pytest.approx(v.std(ddof=1)) and (row["t_low"], row["t_high"]) == pytest.approx(
        (low, high)
    )
    assert row["boot_low"] < row["mean"] < row["boot_high"]
    assert row["trainable_params"] == 2000 and row["wall_seconds"] == 3.0
    best = result.summary[result.summary["best"]]
    assert list(best["method"]) == ["bb · strong", "bb · strong"]


def test_a_one_cell_bootstrap_is_the_plain_bootstrap_of_its_predictions(tmp_path):
    run = write_run(tmp_path, datasets=("d1",), seeds=(0,))
    got = compare(load_sources([run]), n_resamples=300, seed=7).summary.set_index("method")
    p = np.load(run / "d1" / "weak" / "seed0" / "predictions" / "test.npz")
    ref = bootstrap_ci("binary", p["labels"], p["scores"], metric="auc", n_resamples=300, seed=7)
    assert (got.loc["bb · weak", "boot_low"], got.loc["bb · weak", "boot_high"]) == pytest.approx(
        (ref.low, ref.high), abs=1e-12
    )


def test_pairs_are_paired_over_cells_and_over_resampled_images(run, result):
    pairs = result.pairwise.set_index(["dataset", "method_a", "method_b"])
    row = pairs.loc[("d1", "bb · strong", "bb · weak")]
    diff = (_cells(run, "d1", "strong") - _cells(run, "d1", "weak")).to_numpy()
    assert row["n"] == 3 and row["mean_diff"] == pytest.approx(diff.mean())
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diff, zero_method="zsplit").pvalue)
    assert row["boot_low"] > 0 and row["boot_p"] < 0.05  # a clearly better method, on the same images


def test_a_method_against_its_copy_differs_by_exactly_zero(tmp_path):
    run = write_run(tmp_path, datasets=("d1",), methods={"a": 1.0, "b": 1.0, "c": 0.2})
    # b is a with other seeds' noise: copy a's predictions over b's to make them identical
    for seed in (0, 1, 2):
        src = run / "d1" / "a" / f"seed{seed}" / "predictions" / "test.npz"
        (run / "d1" / "b" / f"seed{seed}" / "predictions" / "test.npz").write_bytes(src.read_bytes())
    t = pd.read_csv(run / "results.csv")
    for seed in (0, 1, 2):
        a = (t.run == "a") & (t.seed == seed)
        for metric in ("auc", "acc"):
            t.loc[(t.run == "b") & (t.seed == seed) & (t.metric == metric) & (t.split == "test"), "value"] = (
                t.loc[a & (t.metric == metric) & (t.split == "test"), "value"].to_numpy()
            )
    t.to_csv(run / "results.csv", index=False)
    pairs = compare(load_sources([run]), n_resamples=200).pairwise.set_index(["method_a", "method_b"])
    row = pairs.loc[("bb · a", "bb · b")]
    assert row["mean_diff"] == 0 and row["boot_low"] == 0 and row["boot_high"] == 0 and row["wilcoxon_p"] == 1


def test_friedman_over_datasets_matches_scipy_and_cells_with_one_dataset(run, result):
    t = pd.read_csv(run / "results.csv")
    t = t[(t.split == "test") & (t.metric == "auc")]
    matrix = t.pivot_table(index="dataset", columns="run", values="value", aggfunc="mean")
    assert result.blocks == "datasets" and result.friedman["n_blocks"] == 2
    chi2 = stats.friedmanchisquare(*[matrix[c] for c in matrix.columns]).statistic
    assert result.friedman["chi2"] == pytest.approx(chi2)
    assert result.ranks.iloc[0]["method"] == "bb · strong"
    one = compare(load_sources([run]), n_resamples=100, blocks="cells")
    assert one.friedman["n_blocks"] == 6 and one.blocks == "cells"
    assert any("Blocks: 6 cells" in s for s in one.sentences)


def test_calibration_is_the_mean_over_cells(run, result):
    cal = result.calibration.set_index(["dataset", "method"]).loc[("d2", "bb · weak")]
    eces = []
    for seed in (0, 1, 2):
        p = np.load(run / "d2" / "weak" / f"seed{seed}" / "predictions" / "test.npz")
        eces.append(expected_calibration_error("binary", p["labels"], p["scores"]))
    assert cal["ece"] == pytest.approx(np.mean(eces)) and cal["cells"] == 3
    assert set(result.reliability["method"]) == {"bb · strong", "bb · mid", "bb · weak"}


def test_the_shortcut_check_flags_the_method_that_reads_the_marker(result):
    conf = result.confounder.set_index(["dataset", "method", "level"])
    marked, plain = conf.loc[("d1", "bb · mid", "yes")], conf.loc[("d1", "bb · mid", "no")]
    assert marked["sensitivity"] > 0.9 and plain["sensitivity"] < 0.3 and marked["flagged"]
    assert marked["sens_low"] > plain["sens_high"]
    assert not conf.loc[("d1", "bb · strong", "yes")]["flagged"]
    gaps = result.confounder_gaps.set_index(["dataset", "method"])
    mid = gaps.loc[("d1", "bb · mid")]
    assert mid["sensitivity_gap"] == pytest.approx(marked["sensitivity"] - plain["sensitivity"])
    assert (
        0 < mid["sensitivity_gap_low"] <= mid["sensitivity_gap"] <= mid["sensitivity_gap_high"]
        and mid["flagged"]
    )


def test_groups_too_small_say_so_instead_of_a_number(result):
    sub = result.subgroups
    tiny = sub[(sub["group"] == "tiny") & (sub["metric"] == "auc")]
    assert tiny["value"].isna().all() and tiny["note"].str.startswith("too small: 6 images").all()
    big = sub[(sub["group"] == "big") & (sub["metric"] == "auc")]
    assert big["value"].notna().all() and (big["low"] <= big["value"]).all()
    gaps = result.subgroup_gaps
    assert set(gaps["column"]) == {"site"} and gaps[gaps["metric"] == "auc"]["gap"].isna().all()


def test_missing_predictions_are_named_and_scores_alone_still_compare(tmp_path):
    run = write_run(tmp_path, datasets=("d1",))
    (run / "d1" / "weak" / "seed1" / "predictions" / "test.npz").unlink()
    result = compare(load_sources([run]), n_resamples=100)
    assert result.missing == ["d1 / bb · weak / seed 1 / official split"]
    weak = result.summary.set_index("method").loc["bb · weak"]
    assert np.isnan(weak["boot_low"]) and weak["n"] == 3 and result.friedman is not None
    # a results CSV alone (no predictions beside it): scores-only statistics
    csv = tmp_path / "copy.csv"
    pd.read_csv(run / "results.csv").drop(columns=[RUN_DIR]).to_csv(csv, index=False)
    alone = compare(load_sources([csv]), n_resamples=100)
    assert len(alone.missing) == 9 and alone.summary["boot_low"].isna().all()
    assert alone.friedman["chi2"] == pytest.approx(result.friedman["chi2"])


def test_compare_cli_writes_tables_json_and_figures(run, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(run), "--out", str(out), "--resamples", "200", "--confounder", "marker"])
    assert code == 0
    for name in ("summary.csv", "cells.csv", "ranks.csv", "pairwise.csv", "holm.csv", "calibration.csv",
                 "pairwise_nemenyi.csv", "confounder.csv", "comparison.json"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["friedman"]["test"] == "Friedman" and summary["nemenyi"]["critical_difference"] > 0
    assert summary["blocks"] == "datasets" and summary["options"]["alpha"] == 0.05
    assert (out / "figures" / "cd_diagram.png").stat().st_size > 1000
    assert (out / "figures" / "cd_diagram.svg").is_file()
    printed = capsys.readouterr().out
    assert "is flagged" in printed and "bb · strong" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "aucc"], "no test 'aucc' values"),
        (["--subgroup", "sex"], "no saved predictions carry the metadata column 'sex'"),
        (["--control", "nope"], "--control 'nope' is not a method here"),
        (["--alpha", "2"], "alpha must be between 0 and 1"),
    ],
)
def test_bad_compare_input_is_one_line_exit_2(run, tmp_path, capsys, args, message):
    assert main(["compare", str(run), "--out", str(tmp_path / "x"), "--resamples", "100", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_folder_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "no results table at" in capsys.readouterr().err


def test_each_cell_gets_the_bootstrap_interval_of_its_own_predictions(run, result):
    cells = result.cells.set_index(["dataset", "method", "seed"])
    row = cells.loc[("d2", "bb · mid", 1)]
    p = np.load(run / "d2" / "mid" / "seed1" / "predictions" / "test.npz")
    ref = bootstrap_ci("binary", p["labels"], p["scores"], metric="auc", n_resamples=500, seed=0)
    assert (row["boot_low"], row["boot_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert row["boot_low"] < row["value"] < row["boot_high"]
