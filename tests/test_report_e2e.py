"""A real (tiny) grid ends in ``medadapt report``: predictions carry the metadata, the page shows every part."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from medadapt.cli import main
from medadapt.reporting.results import load_predictions

TINY = "timm:vit_small_patch14_dinov2?embed_dim=16&depth=1&num_heads=2"


def _dataset(root, n: int = 64):
    """16 px PNGs, two images per patient, a ``site`` column and a ``marker`` that most class-b images carry."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        label = "b" if (i // 2) % 2 else "a"
        img = rng.integers(0, 90, (16, 16), dtype=np.uint8)
        marker = (label == "b") == (i % 8 != 3)
        if marker:
            img[1:4, 1:4] = 255
        Image.fromarray(img).save(root / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "label": label, "patient_id": f"p{i // 2}",
                     "site": "north" if i < n // 2 else "south", "marker": "yes" if marker else "no"})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_a_grid_with_report_writes_one_page_from_its_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    csv = _dataset(tmp_path / "data")
    grid = {
        "name": "e2e",
        "datasets": [{"address": f"csv:{csv}", "name": "toy"}],
        "backbones": [{"address": TINY, "name": "tiny"}],
        "methods": ["linear", "knn", "attention"],
        "seeds": [0, 1],
        "folds": 2,
        "settings": {"pretrained": False, "img_size": 16, "epochs": 2, "lrs": [1e-3], "ks": [3]},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    assert main(["benchmark", str(path), "--out", str(out), "--workers", "0", "--report"]) == 0
    cell = out / "cells" / "toy" / "tiny" / "linear" / "fold0" / "seed0" / "predictions" / "test.npz"
    saved = load_predictions(cell)
    assert saved["task"] == "binary" and set(saved["metadata"].columns) >= {"site", "marker", "patient_id"}
    assert len(saved["groups"]) == len(saved["labels"]) and saved["groups"][0].startswith("p")
    table = pd.read_csv(out / "results.csv")
    assert table["run_dir"].str.startswith("cells/toy/tiny/").all()
    page = (out / "report.html").read_text()
    assert re.search(r'<table[^>]*id="leaderboard-toy"', page) and 'id="fig-cd"' in page
    assert "tiny · attention" in page and "Friedman" in page
    capsys.readouterr()
    # subgroups and the shortcut check from the saved metadata, into another page
    args = ["report", str(out), "-o", str(tmp_path / "r.html"), "--subgroup", "site", "--confounder", "marker",
            "--resamples", "200", "--min-group", "4"]  # fmt: skip
    assert main(args) == 0
    page = (tmp_path / "r.html").read_text()
    assert "north" in page and "south" in page and 'id="fig-shortcut-toy"' in page
    confounder = pd.read_csv(tmp_path / "r_files" / "confounder.csv")
    assert set(confounder["level"]) == {"yes", "no"} and {"sensitivity", "specificity"} <= set(
        confounder.columns
    )


def test_a_distillation_runs_figures_reach_the_page(tmp_path):
    """Figures a run lists in its outputs.json (t-SNE, Grad-CAM) are inlined, with the source in the caption."""
    import json

    from test_compare import write_run

    from medadapt.reporting.report import write_report

    run = write_run(tmp_path / "distill_run", datasets=("d1",))
    (run / "figures").mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(run / "figures" / "tsne.png")
    (run / "outputs.json").write_text(
        json.dumps({"tables": ["results.csv"], "figures": ["figures/tsne.png"]})
    )
    page, result = write_report([run], tmp_path / "r.html")
    html = page.read_text()
    assert 'id="fig-extra-1"' in html and "distill_run: tsne" in html
    assert result.friedman is not None and 'id="fig-cd"' in html
