"""Segmentation overlays: which images are shown, and that the figure is drawn and written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt.errors import DataError
from medadapt.reporting.overlays import pick_examples, plot_overlays, write_overlays

pytest.importorskip("matplotlib")
NAN = float("nan")


@pytest.mark.parametrize(
    "dice, expected",
    [
        ([0.2, 0.9, 0.5], {"best": 1, "median": 2, "worst": 0}),
        ([0.9, 0.1, 0.9, 0.1], {"best": 0, "median": 1, "worst": 1}),  # ties: lowest index; lower median
        ([0.5, 0.5, 0.5], {"best": 0, "median": 0, "worst": 0}),
        ([NAN, 0.3, NAN, 0.7, 0.5, NAN], {"best": 3, "median": 4, "worst": 1}),  # nan is never picked
        ([NAN, 0.4], {"best": 1, "median": 1, "worst": 1}),
    ],
)
def test_pick_examples(dice, expected):
    assert pick_examples(np.array(dice)) == expected


def test_pick_examples_needs_a_dice_value():
    with pytest.raises(DataError, match="no image has a Dice value"):
        pick_examples([NAN, NAN])


def _masks(k: int = 2, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((k, size, size), np.uint8)
    truth[:, 2:7, 2:7] = 1
    truth[:, 8:, 8:] = 2  # touches the border
    pred = np.roll(truth, 1, axis=2)
    return truth, pred


def _blank(png) -> bool:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"))
    return pixels.min() == pixels.max()


def test_plot_overlays_draws_three_panels_per_example(tmp_path):
    from medadapt.reporting.plots import save_figure

    truth, pred = _masks()
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (1, 12, 12), dtype=np.uint8),
        rng.integers(0, 255, (12, 12), dtype=np.uint8),
    ]
    fig = plot_overlays(images, truth, pred, titles=["best: Dice 0.9 (image 0)", "cost $5"],
                        class_names=["bg", "a", "b"])  # fmt: skip
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title() == "best: Dice 0.9 (image 0)" and fig.axes[3].get_title() == r"cost \$5"
    png = save_figure(fig, tmp_path / "o.png")
    assert png.stat().st_size > 0 and not _blank(png)


class _Dataset:
    """Two RGB images at twice the masks' size: they are resized to the masks."""

    classes = ["background", "object"]

    def __len__(self) -> int:
        return 4

    def image(self, i: int) -> torch.Tensor:
        return torch.full((3, 16, 16), 40 * i, dtype=torch.uint8)


def test_write_overlays_writes_the_figure(tmp_path):
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[:, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[1] = 0  # Dice 0: worst
    pred[2, 2:6, 2:4] = 0  # Dice 2/3: median
    paths = write_overlays(_Dataset(), truth, pred, tmp_path / "figures" / "overlays_test", n_classes=2)
    assert paths == [tmp_path / "figures" / "overlays_test.png"]
    assert paths[0].is_file() and not _blank(paths[0])
    with pytest.raises(DataError, match="for the 4 images"):
        write_overlays(_Dataset(), truth[:3], pred[:3], tmp_path / "x", n_classes=2)


def test_the_report_finds_the_figures_a_cell_lists(tmp_path):
    from PIL import Image
    from test_compare import write_run

    from medadapt.reporting.report import _figures
    from medadapt.reporting.results import write_json
    from medadapt.reporting.sources import load_sources

    run = write_run(tmp_path / "segrun", datasets=("d1",), seeds=(0,))
    cell = run / "d1" / "strong" / "seed0"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(cell / "overlays_test.png")
    write_json({"figures": ["overlays_test.png", "missing.png"]}, cell / "outputs.json")
    assert _figures(load_sources([run])) == [
        ("segrun: d1 / bb · strong (seed 0): overlays test", cell / "overlays_test.png")
    ]
