"""Smoke tests of the segmentation-probe benches (bench/seg_probe_speed.py, bench/seg_probe_memory.py) on a tiny
synthetic setting: they run end to end and print their table and verdict; no timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY_VIT = "timm:vit_small_patch14_dinov2?depth=1&embed_dim=32&num_heads=2"


def load_bench(name: str) -> ModuleType:
    """``bench/NAME.py`` as a module (bench/ on the path while it loads: it imports ``_common`` and its
    siblings)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_synthetic_masks_match_images():
    bench = load_bench("seg_probe_speed")
    ds = bench.SyntheticSegDataset(3, size=28, seed=1)
    image, mask = ds.image(2), ds.mask(2)
    assert image.shape == (3, 28, 28) and mask.shape == (28, 28) and mask.dtype.is_floating_point is False
    assert 0 < int(mask.sum()) < 28 * 28  # an ellipse inside the image
    assert np.array_equal(ds.mask(2).numpy(), mask.numpy())  # made per (seed, index)
    inside, outside = image[:, mask.bool()].float().mean(), image[:, ~mask.bool()].float().mean()
    assert inside > outside


def test_seg_probe_speed_runs(tmp_path, capsys):
    bench = load_bench("seg_probe_speed")
    out = tmp_path / "speed.md"
    argv = ["--backbone", TINY_VIT, "--img-size", "28", "--n-train", "8", "--n-eval", "4", "--epochs", "2"]
    assert bench.main([*argv, "--eval-every", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "| side |",
        "cached tokens",
        "reference (backbone in every step)",
        "test Dice",
        "RANDOM INIT",
    ):
        assert expected in text
    assert "PASS:" in text or "FAIL:" in text
    assert out.read_text().startswith("Command: `")


def test_seg_probe_memory_runs(tmp_path, capsys):
    bench = load_bench("seg_probe_memory")
    out = tmp_path / "memory.md"
    argv = ["--sizes", "4", "--backbone", TINY_VIT, "--img-size", "28", "--epochs", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    for expected in ("train peak MB", "peak / smallest", "4 / 2 / 2", "RANDOM INIT"):
        assert expected in text
    assert "PASS:" in text  # one size: a ratio of 1
    assert "peak / smallest" in out.read_text()
