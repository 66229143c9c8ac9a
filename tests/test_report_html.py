"""The HTML report: self-contained, escaped, sections left out gracefully, the Pareto front, and a real
headless Chromium that renders the page (skipped where chromium is not installed).

:func:`make_report_data` builds a complete :class:`ReportData` by hand (two datasets, four methods, every
optional table) and may be reused by other tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
Image = pytest.importorskip("PIL.Image")

from matplotlib.figure import Figure  # noqa: E402

from medadapt.errors import MissingDependencyError  # noqa: E402
from medadapt.reporting import plots  # noqa: E402
from medadapt.reporting.html import (  # noqa: E402
    ReportData,
    fmt_duration,
    fmt_gb,
    fmt_p,
    fmt_params,
    render_report,
    report_html,
)

EVIL = "<script>alert(1)</script>"
QUOTED = 'a&b "q"'
#: A name that would change the page's title if it ever reached the DOM as markup.
EVIL_IMG = "<img src=x onerror=\"document.title='pwned'\">"
METHODS = ("linear probe", "lora r8", "full finetune")
DATASETS = ("breastmnist", QUOTED)
BROWSER_TIMEOUT_S = 30


# ------------------------------------------------------------------------------------------- fixture data
def _png(path: Path, text: str) -> Path:
    fig = Figure(figsize=(4, 2))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [1, 3, 2])
    ax.set_title(text)
    return plots.save_figure(fig, path)


def make_report_data(
    tmp_path: Path,
    name_of_method: str = EVIL,
    *,
    methods: Sequence[str] = METHODS,
    datasets: Sequence[str] = DATASETS,
    seed: int = 0,
) -> ReportData:
    """A complete ReportData: ``datasets`` × (``methods`` + ``name_of_method``), every optional table filled,
    a CD-diagram PNG and one extra figure PNG drawn in ``tmp_path``; names include markup to be escaped.
    """
    rng = np.random.default_rng(seed)
    names = [*methods, name_of_method]
    board = _leaderboard(rng, names, datasets)
    cost = board[["dataset", "method", "mean", "trainable_params", "peak_memory_bytes", "wall_seconds"]]
    return ReportData(
        title="medadapt report: grid_medmnist_cpu",
        metric="auc",
        higher_is_better=True,
        alpha=0.05,
        confidence=0.95,
        generated="2025-06-01 12:00:00",
        runs=_runs(datasets, names),
        leaderboard=board,
        sentences=[
            f"{names[0]} and {names[-1]} are indistinguishable at alpha 0.05 (p = 0.41).",
            f"{names[2]} ranks best on {len(datasets)} datasets.",
        ],
        friedman={
            "n_blocks": 12,
            "n_methods": len(names),
            "chi2": 9.3,
            "p_value": 0.0256,
            "iman_davenport_f": 3.9,
            "iman_davenport_p": 0.017,
            "blocks": "cells",
            "note": QUOTED,
        },
        cd_figure=_png(tmp_path / "cd.png", "critical difference"),
        ranks=pd.DataFrame({"method": names, "average_rank": np.arange(1, len(names) + 1) + 0.25}),
        pairwise=_pairwise(rng, names, datasets),
        cost=cost.reset_index(drop=True),
        histories=_histories(rng, names, datasets),
        calibration=pd.DataFrame(
            [
                {"dataset": d, "method": m, "ece": rng.uniform(0, 0.2), "brier": rng.uniform(0.05, 0.3)}
                for d in datasets
                for m in names
            ]
        ),
        reliability=_reliability(rng, names, datasets),
        subgroups=_subgroups(rng, names, datasets),
        subgroup_gaps=pd.DataFrame(
            [
                {
                    "dataset": d,
                    "method": m,
                    "column": "sex",
                    "gap": rng.uniform(0, 0.1),
                    "worst_group": EVIL_IMG,
                }
                for d in datasets
                for m in names
            ]
        ),
        confounder=_confounder(rng, names, datasets),
        figures=[("t-SNE of the distilled student " + EVIL, _png(tmp_path / "tsne.png", "t-SNE"))],
        warnings=[f"predictions missing for 3 cells: {QUOTED}"],
    )


def _runs(datasets: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
    common = {
        "datasets": list(datasets),
        "backbones": "timm:resnet18",
        "seeds": 3,
        "folds": 2,
        "machine": "cpu: 2 cores",
        "versions": "torch 2.4, timm 1.0, medadapt 0.1",
        "git": "9f7bf3f",
    }
    return pd.DataFrame(
        [
            {
                "source": "runs/grid",
                "kind": "grid",
                "methods": list(names[:2]),
                "cells": 24,
                "seconds": 3725.0,
                **common,
            },
            {
                "source": "runs/probe",
                "kind": "probe",
                "methods": list(names[2:]),
                "cells": 24,
                "seconds": 95.5,
                **common,
            },
        ]
    )


def _leaderboard(rng: np.random.Generator, names: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    rows = []
    for d in datasets:
        for k, m in enumerate(names):
            mean, std = 0.75 + 0.05 * k + rng.uniform(-0.01, 0.01), rng.uniform(0.005, 0.03)
            rows.append(
                {
                    "dataset": d,
                    "method": m,
                    "backbone": "timm:resnet18",
                    "strategy": m.split()[0],
                    "head": "linear",
                    "n": 6,
                    "mean": mean,
                    "std": std,
                    "t_low": mean - 2 * std,
                    "t_high": mean + 2 * std,
                    "boot_low": np.nan if k == 0 else mean - 0.03,
                    "boot_high": np.nan if k == 0 else mean + 0.03,
                    "trainable_params": 10 ** (3 + 2 * k),
                    "peak_memory_bytes": np.nan if k == 1 else 2.5e8 * (k + 1),
                    "wall_seconds": 30.0 * (k + 1),
                }
            )
    board = pd.DataFrame(rows).sample(frac=1.0, random_state=_seed_of(rng))  # shuffled: the page sorts
    return board.assign(best=board.groupby("dataset")["mean"].transform("max") == board["mean"])


def _seed_of(rng: np.random.Generator) -> int:
    return int(rng.integers(1 << 30))


def _pairwise(rng: np.random.Generator, names: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    rows = []
    for d in datasets:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                diff = rng.normal(0, 0.03)
                rows.append(
                    {
                        "dataset": d,
                        "method_a": a,
                        "method_b": b,
                        "n": 6,
                        "mean_diff": diff,
                        "boot_low": diff - 0.02,
                        "boot_high": diff + 0.02,
                        "wilcoxon_p": rng.uniform(0, 0.2),
                    }
                )
    return pd.DataFrame(rows)


def _histories(rng: np.random.Generator, names: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    rows = []
    for d in datasets:
        for k, m in enumerate(names):
            for seed in (0, 1):
                for epoch in range(5):
                    loss = 1.0 / (1 + epoch) + 0.1 * k + rng.uniform(0, 0.05)
                    auc = 0.6 + 0.06 * epoch + 0.01 * k + rng.uniform(0, 0.02)
                    for column, value in (("train_loss", loss), ("val_auc", auc), ("lr", 1e-3)):
                        rows.append(
                            {
                                "dataset": d,
                                "method": m,
                                "seed": seed,
                                "fold": 0,
                                "epoch": epoch,
                                "column": column,
                                "value": value,
                            }
                        )
    return pd.DataFrame(rows)


def _reliability(rng: np.random.Generator, names: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    edges = np.linspace(0, 1, 6)
    rows = []
    for d in datasets:
        for m in names:
            for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
                count = int(rng.integers(0, 40)) if b else 0  # an empty bin
                conf = (lo + hi) / 2
                rows.append(
                    {
                        "dataset": d,
                        "method": m,
                        "bin": b,
                        "lower": lo,
                        "upper": hi,
                        "count": count,
                        "confidence": conf,
                        "accuracy": float(np.clip(conf + rng.normal(0, 0.08), 0, 1)),
                    }
                )
    return pd.DataFrame(rows)


def _subgroups(rng: np.random.Generator, names: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    rows = []
    for d in datasets:
        for m in names:
            for group, n in (("female", 80), ("male", 75), (EVIL_IMG, 3)):
                small = n < 10
                value = np.nan if small else rng.uniform(0.7, 0.9)
                rows.append(
                    {
                        "dataset": d,
                        "method": m,
                        "column": "sex",
                        "group": group,
                        "n": n,
                        "value": value,
                        "low": value - 0.05,
                        "high": value + 0.05,
                        "note": f"too small: {n} images" if small else "",
                    }
                )
    return pd.DataFrame(rows)


def _confounder(rng: np.random.Generator, names: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    rows = []
    for d in datasets:
        for m in names:
            for level in ("site A", "site B", EVIL):
                sens, spec = rng.uniform(0.5, 0.95), rng.uniform(0.6, 0.95)
                rows.append(
                    {
                        "dataset": d,
                        "method": m,
                        "column": "site",
                        "level": level,
                        "n_pos": 20,
                        "sensitivity": sens,
                        "sens_low": sens - 0.1,
                        "sens_high": min(sens + 0.1, 1.0),
                        "n_neg": 30,
                        "specificity": spec,
                        "spec_low": spec - 0.1,
                        "spec_high": min(spec + 0.1, 1.0),
                        "flagged": bool(level == "site B" and m == names[0]),
                    }
                )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportData, Path, str]:
    """One full report rendered once (the figures take a few seconds) and shared by the tests below."""
    folder = tmp_path_factory.mktemp("report")
    data = make_report_data(folder)
    path = render_report(data, folder / "out" / "report.html")
    return data, path, path.read_text(encoding="utf-8")


def _slugs(html: str, prefix: str) -> list[str]:
    return re.findall(rf'id="({prefix}[^"]*)"', html)


def test_render_report_writes_the_page_atomically(full_report: tuple[ReportData, Path, str]) -> None:
    _, path, html = full_report
    assert path.name == "report.html" and html.startswith("<!DOCTYPE html>")
    assert not list(path.parent.glob(".report.html.*"))  # no temp file left behind
    assert "</html>" in html


def test_page_is_self_contained(full_report: tuple[ReportData, Path, str]) -> None:
    _, _, html = full_report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, flags=re.I)
    assert not re.search(r"<script|<link|@import|url\(", html, flags=re.I)
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", html)
    assert len(sources) >= 10 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(re.findall(r"<img", html)) == len(sources)  # every image was counted


def test_names_are_escaped(full_report: tuple[ReportData, Path, str]) -> None:
    _, _, html = full_report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "a&amp;b &#34;q&#34;" in html  # the dataset name, in its heading
    assert "&lt;img src=x onerror=" in html  # a subgroup name that would run a handler if it were markup


def test_leaderboard_per_dataset_best_first(full_report: tuple[ReportData, Path, str]) -> None:
    data, _, html = full_report
    tables = _slugs(html, "leaderboard-")
    assert sorted(tables) == ["leaderboard-a-b-q", "leaderboard-breastmnist"]
    for table_id in tables:
        body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
        rows = re.findall(r"<tr(?: class=\"(\w+)\")?>(.*?)</tr>", body.split("<tbody>")[1], flags=re.S)
        assert len(rows) == 4 and rows[0][0] == "best" and "★" in rows[0][1]
        assert [r[0] for r in rows[1:]] == ["", "", ""]
        means = [float(re.search(r"(\d\.\d{3}) ± ", r[1]).group(1)) for r in rows]
        assert means == sorted(means, reverse=True)
    assert all(f">{p}</td>" in html for p in ("1.0k", "100k", "10.0M", "1.0B"))  # params formatted
    assert "1 h 03 min" in html  # the runs' total wall time (3725 + 95.5 s)


def test_every_figure_is_present(full_report: tuple[ReportData, Path, str]) -> None:
    _, _, html = full_report
    ids = set(_slugs(html, "fig-"))
    expected = {
        "fig-cd",
        "fig-cost-trainable-params",
        "fig-cost-peak-memory-bytes",
        "fig-cost-wall-seconds",
        "fig-extra-1",
    }
    for kind in ("curves", "reliability", "shortcut"):
        expected |= {f"fig-{kind}-breastmnist", f"fig-{kind}-a-b-q"}
    assert expected == ids
    assert html.count('class="medadapt-figure"') == len(ids)
    assert 'class="flagged"' in html and "⚠ flagged" in html


def test_sections_in_order_and_warnings_shown(full_report: tuple[ReportData, Path, str]) -> None:
    _, _, html = full_report
    order = [
        "what-was-run",
        "leaderboard",
        "significance",
        "accuracy-vs-cost",
        "learning-curves",
        "calibration",
        "subgroups",
        "shortcut-check",
        "figures",
        "warnings",
    ]
    positions = [html.index(f'<section id="{s}">') for s in order]
    assert positions == sorted(positions)
    assert all(f'href="#{s}"' in html for s in order)  # the table of contents
    assert "predictions missing for 3 cells: a&amp;b" in html
    assert "Not available" not in html


def test_optional_sections_are_left_out(tmp_path: Path) -> None:
    full = make_report_data(tmp_path, "plain")
    empty = pd.DataFrame()
    data = ReportData(
        title=full.title,
        metric="loss",
        higher_is_better=False,
        alpha=0.05,
        confidence=0.9,
        generated=full.generated,
        runs=empty,
        leaderboard=full.leaderboard,
        ranks=empty,
        pairwise=None,
        cost=empty,
        histories=empty,
        calibration=None,
        reliability=empty,
        subgroups=None,
        subgroup_gaps=empty,
        confounder=None,
    )
    html = report_html(data)
    for section in (
        "significance",
        "accuracy-vs-cost",
        "learning-curves",
        "calibration",
        "subgroups",
        "shortcut-check",
        "figures",
        "warnings",
    ):
        assert f'id="{section}"' not in html and f'href="#{section}"' not in html
    assert "Not available:" in html and "<img" not in html
    assert len(_slugs(html, "leaderboard-")) == 2
    # lower is better: the smallest mean comes first and is the one starred
    body = html.split('id="leaderboard-breastmnist"', 1)[1].split("</table>", 1)[0]
    means = [float(m) for m in re.findall(r"(\d\.\d{3}) ± ", body)]
    assert means == sorted(means) and body.count("★") == 1
    assert re.search(r'<tr class="best"><td class="">★ linear probe</td>', body)


def test_tied_best_means_are_all_starred() -> None:
    board = pd.DataFrame({"dataset": "d", "method": ["a", "b", "c", "e"], "mean": [0.8, 0.9, np.nan, 0.9],
                          "std": np.nan, "n": 1})  # fmt: skip
    data = ReportData(title="t", metric="auc", higher_is_better=True, alpha=0.05, confidence=0.95,
                      generated="now", runs=pd.DataFrame(), leaderboard=board)  # fmt: skip
    body = report_html(data).split('id="leaderboard-d"', 1)[1].split("</table>", 1)[0]
    methods = re.findall(r'<tr(?: class="(\w+)")?><td class="">([^<]*)</td>', body)
    assert methods == [("best", "★ b"), ("best", "★ e"), ("", "a"), ("", "c")]  # NaN last, never best


def test_cost_without_values_and_missing_figures_become_warnings(tmp_path: Path) -> None:
    data = make_report_data(tmp_path, "plain")
    data.cost = data.cost.assign(trainable_params=np.nan, wall_seconds=np.nan)  # only memory is left
    data.figures = [("gone", tmp_path / "missing.png"), ("text", tmp_path / "notes.txt")]
    data.cd_figure = data.reliability = data.confounder = None  # (fewer figures: a faster test)
    data.histories = data.histories[data.histories["column"] == "lr"]  # nothing worth a learning curve
    html = report_html(data)
    assert 'id="fig-cost-peak-memory-bytes"' in html and 'id="fig-cost-trainable-params"' not in html
    assert "missing.png" in html and "not an image file" in html and 'id="fig-extra' not in html
    assert 'id="fig-cd"' not in html and 'id="significance"' in html  # the tables are still there
    assert 'id="learning-curves"' not in html


def test_without_matplotlib_the_page_has_no_drawn_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise MissingDependencyError("'matplotlib' is needed: pip install 'medadapt[plots]'")

    monkeypatch.setattr(plots, "method_colors", missing)
    html = report_html(make_report_data(tmp_path, "plain"))
    assert html.count("figures left out: ") == 1 and "medadapt[plots]" in html
    assert set(_slugs(html, "fig-")) == {"fig-cd", "fig-extra-1"}  # the PNG files are still shown
    assert 'id="leaderboard-breastmnist"' in html and 'id="confounder"' in html


def test_empty_leaderboard_still_renders(tmp_path: Path) -> None:
    data = make_report_data(tmp_path, "plain")
    data.leaderboard = data.cost = data.histories = pd.DataFrame()
    data.reliability = data.confounder = None
    html = report_html(data)
    assert "No finished cell was found." in html and "the leaderboard is empty" in html


# ------------------------------------------------------------------------------------------ Pareto front
@pytest.mark.parametrize(
    ("values", "costs", "higher", "expected"),
    [
        ([0.9, 0.8, 0.95], [10, 100, 1000], True, [True, False, True]),
        ([0.9, 0.8, 0.95], [10, 100, 1000], False, [True, True, False]),  # lower metric better
        ([0.9, 0.9, 0.8], [10, 10, 5], True, [True, True, True]),  # exact ties both stay
        ([0.9, 0.9], [10, 20], True, [True, False]),  # same value, dearer: dominated
        ([0.9, 0.95], [10, 10], True, [False, True]),  # same cost, worse: dominated
        ([0.9, np.nan, 0.99], [10, 1, np.nan], True, [True, False, False]),  # NaNs left out
        ([np.nan], [np.nan], True, [False]),
    ],
)
def test_pareto_front(values: list[float], costs: list[float], higher: bool, expected: list[bool]) -> None:
    df = pd.DataFrame({"v": values, "c": costs}, index=[f"r{i}" for i in range(len(values))])
    front = plots.pareto_front(df, "v", "c", higher_is_better=higher)
    assert front.tolist() == expected and list(front.index) == list(df.index) and front.dtype == bool


def test_pareto_front_of_an_empty_frame_and_a_missing_column() -> None:
    assert plots.pareto_front(pd.DataFrame({"v": [], "c": []}), "v", "c").tolist() == []
    with pytest.raises(ValueError, match="lacks column"):
        plots.pareto_front(pd.DataFrame({"v": [1.0]}), "v", "c")


# ------------------------------------------------------------------------------------- helpers and plots
def test_formatting() -> None:
    assert [fmt_params(v) for v in (950, 12_300, 1_234_567, 3.4e9, np.nan)] == [
        "950",
        "12.3k",
        "1.2M",
        "3.4B",
        "—",
    ]
    assert fmt_gb(2.5e9) == "2.50" and fmt_gb(None) == "—"
    assert [fmt_duration(v) for v in (42, 185, 7620)] == ["42 s", "3 min 05 s", "2 h 07 min"]
    assert fmt_p(0.0256) == "0.0256" and fmt_p(1e-5) == "1.0e-05"


def test_plots_return_figures_and_save(tmp_path: Path) -> None:
    data = make_report_data(tmp_path, "dollar $x^2$ name")  # mathtext must not parse method names
    colors = plots.method_colors(data.leaderboard["method"])
    figs = [
        plots.plot_cost(data.cost, cost_column="trainable_params", metric="auc", colors=colors),
        plots.plot_learning_curves(data.histories, dataset="breastmnist", columns=["val_auc", "train_loss"]),
        plots.plot_reliability(data.reliability, dataset="breastmnist"),
        plots.plot_sensitivity(data.confounder, dataset=QUOTED),
    ]
    for i, fig in enumerate(figs):
        png = plots.save_figure(fig, tmp_path / f"f{i}.png")
        with Image.open(png) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert plots.save_figure(figs[0], tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
    assert plots.curve_columns(data.histories, "auc") == ["val_auc", "train_loss"]
    with pytest.raises(ValueError, match="png"):
        plots.save_figure(figs[0], tmp_path / "f.jpg")


# --------------------------------------------------------------------------------------- a real browser
def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [
        shutil.which("chromium"),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=True)


def test_page_renders_in_headless_chromium(full_report: tuple[ReportData, Path, str], tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed: apt-get install -y chromium")
    _, path, html = full_report
    url = path.resolve().as_uri()
    shot = tmp_path / "shot.png"
    start = time.monotonic()
    _chromium(
        f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url, profile=tmp_path / "p1"
    )
    dom = _chromium("--dump-dom", url, profile=tmp_path / "p2").stdout
    assert time.monotonic() - start < 2 * BROWSER_TIMEOUT_S

    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint32)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert pixels.std() > 10 and len(colours) > 50  # text, tables, figures: not a blank page

    assert "<title>medadapt report: grid_medmnist_cpu</title>" in dom  # no injected script retitled it
    assert "<script" not in dom and '<img src="x"' not in dom  # the names stayed text: no element made
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the name is shown as text
    for element_id in _slugs(html, "fig-") + _slugs(html, "leaderboard-"):
        assert f'id="{element_id}"' in dom
