"""Segmentation probes on cached tokens: they learn, select on validation Dice, and check their inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import write_square_masks

from medadapt.errors import ConfigError, DataError
from medadapt.features.featureset import FeatureSet
from medadapt.training.seg_probe import train_seg_probe

GRID, SIZE, DIM = (4, 4), (16, 16), 8


def _data(n: int, seed: int) -> tuple[FeatureSet, np.ndarray]:
    """Tokens whose first channel, upsampled, decides the mask: a linear head can represent it exactly."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, GRID[0] * GRID[1], DIM, generator=gen)
    score = tokens[..., 0].reshape(n, 1, *GRID)
    masks = (F.interpolate(score, size=SIZE, mode="bilinear", align_corners=False)[:, 0] > 0.3).to(
        torch.uint8
    )
    fs = FeatureSet(embeddings=np.zeros((n, DIM), np.float32), labels=(masks.flatten(1).amax(1, keepdim=True)).numpy(),
                    tokens=tokens.half().numpy(), grid=GRID)  # fmt: skip
    return fs, masks.numpy()


def test_a_linear_probe_learns_the_masks_and_keeps_the_best_lr():
    (train, tm), (val, vm), (test, sm) = _data(64, 0), _data(16, 1), _data(16, 2)
    res = train_seg_probe(
        train, val, tm, vm, num_classes=2, lrs=[3e-2, 1e-6], epochs=15, batch_size=16, eval_every=5
    )
    assert (
        res.best["lr"] == 3e-2
        and res.val_dice_by_setting["lr=0.03"] > 0.9 > res.val_dice_by_setting["lr=1e-06"]
    )
    pred = res.predict(test, out_size=SIZE)
    assert pred.shape == (16, *SIZE) and pred.dtype == np.uint8
    dice = 2 * (pred & sm).sum() / (pred.sum() + sm.sum())
    assert dice > 0.8
    assert [r["epoch"] for r in res.history] == list(range(1, 16)) and "val_dice" in res.history[4]
    assert not any(p.requires_grad and p.grad is None for p in res.head.parameters())


def test_the_same_seed_trains_the_same_head():
    (train, tm), (val, vm) = _data(32, 0), _data(8, 1)
    a = train_seg_probe(train, val, tm, vm, num_classes=2, lrs=[1e-2], epochs=3, batch_size=8)
    b = train_seg_probe(train, val, tm, vm, num_classes=2, lrs=[1e-2], epochs=3, batch_size=8)
    for (name, x), (_, y) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        assert torch.equal(x, y), name


def test_bad_inputs_are_clear_errors():
    (train, tm), (val, vm) = _data(8, 0), _data(4, 1)
    with pytest.raises(ConfigError, match="cannot train on cached tokens; choose one of"):
        train_seg_probe(train, val, tm, vm, num_classes=2, head="unet")
    with pytest.raises(DataError, match="no multi-level tokens.*extract_features\\(..., levels=k\\)"):
        train_seg_probe(train, val, tm, vm, num_classes=2, head="multiscale")
    with pytest.raises(DataError, match="outside the 2 classes"):
        train_seg_probe(train, val, tm + 2, vm, num_classes=2)
    no_tokens = FeatureSet(embeddings=train.embeddings, labels=train.labels)
    with pytest.raises(DataError, match="hold no patch tokens"):
        train_seg_probe(no_tokens, val, tm, vm, num_classes=2)


def test_medadapt_probe_on_a_mask_dataset_scores_dice_and_keeps_the_masks(tmp_path, monkeypatch):
    from medadapt.cli import main
    from medadapt.evaluation.segmentation import segmentation_metrics
    from medadapt.reporting.results import load_predictions

    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    root = write_square_masks(tmp_path / "seg")
    out = tmp_path / "out"
    args = ["probe", "--dataset", f"segfolder:{root}?val_fraction=0.2", "--backbone",
            "timm:vit_small_patch14_dinov2?embed_dim=32&depth=1&num_heads=2&patch_size=8", "--no-pretrained",
            "--head", "linear", "--img-size", "32", "--lrs", "0.03", "--epochs", "20", "--batch-size", "8",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = __import__("pandas").read_csv(out / "results.csv")
    test = table[table["split"] == "test"].set_index("metric")["value"]
    assert {"dice", "iou", "dice_pooled", "iou_pooled", "hd95"} <= set(test.index)
    saved = load_predictions(out / "linear" / "seed0" / "predictions" / "test.npz")
    assert saved["task"] == "segmentation" and saved["labels"].shape == saved["scores"].shape == (6, 32, 32)
    again = segmentation_metrics(saved["labels"].astype(int), saved["scores"].astype(int), 2)
    assert test["dice"] == pytest.approx(again["dice"]) and test["dice"] > 0.5  # it learnt the squares
    history = __import__("pandas").read_csv(out / "linear" / "seed0" / "history.csv")
    assert {"epoch", "setting", "train_loss", "val_dice"} <= set(history.columns)

    # compare and report read the cell: Dice by default (the table has no AUC), intervals over test images
    from medadapt.reporting.compare import compare
    from medadapt.reporting.report import write_report
    from medadapt.reporting.sources import load_sources

    result = compare(load_sources([out]), n_resamples=200)
    row = result.summary.iloc[0]
    assert result.options.metric == "dice" and row["mean"] == pytest.approx(test["dice"])
    assert row["boot_low"] <= row["mean"] <= row["boot_high"] and result.calibration is None
    assert result.cells["boot_low"].notna().all()
    page, _ = write_report([out], tmp_path / "r.html")
    assert "dice" in page.read_text()


# ------------------------------------------------------------------------------------------- multiscale
def _ms_data(n: int, seed: int, size=SIZE) -> tuple[FeatureSet, np.ndarray]:
    """Two levels (a fine 4x4 grid of width 8, a coarse 2x2 one of width 16); the fine level's first
    channel decides the mask, so a multiscale head can learn it and a head on the last level cannot."""
    gen = torch.Generator().manual_seed(seed)
    fine, coarse = torch.randn(n, 16, DIM, generator=gen), torch.randn(n, 4, 2 * DIM, generator=gen)
    score = fine[..., 0].reshape(n, 1, *GRID)
    masks = (F.interpolate(score, size=size, mode="bilinear", align_corners=False)[:, 0] > 0.3).to(
        torch.uint8
    )
    coarse16 = coarse.half().numpy()
    fs = FeatureSet(embeddings=np.zeros((n, 2 * DIM), np.float32), labels=masks.flatten(1).amax(1, keepdim=True).numpy(),
                    tokens=coarse16, grid=(2, 2), levels=[(fine.half().numpy(), GRID), (coarse16, (2, 2))])  # fmt: skip
    return fs, masks.numpy()


def test_a_multiscale_probe_learns_from_the_fine_level():
    (train, tm), (val, vm), (test, sm) = _ms_data(64, 0), _ms_data(16, 1), _ms_data(16, 2)
    res = train_seg_probe(train, val, tm, vm, num_classes=2, head="multiscale", lrs=[3e-2, 1e-6], epochs=15,
                          batch_size=16, eval_every=5, head_kwargs={"width": 16})  # fmt: skip
    assert res.head_name == "multiscale" and res.head.dims == [DIM, 2 * DIM] and res.best["lr"] == 3e-2
    assert res.val_dice_by_setting["lr=0.03"] > 0.85
    pred = res.predict(test, out_size=SIZE)
    assert pred.shape == (16, *SIZE) and pred.dtype == np.uint8
    assert 2 * (pred & sm).sum() / (pred.sum() + sm.sum()) > 0.8
    linear = train_seg_probe(train, val, tm, vm, num_classes=2, lrs=[3e-2], epochs=15, batch_size=16)
    assert linear.val_dice_by_setting["lr=0.03"] < res.val_dice_by_setting["lr=0.03"] - 0.2  # coarse only
    with pytest.raises(DataError, match="features hold no multi-level tokens"):
        res.predict(FeatureSet(test.embeddings, test.labels, test.tokens, test.grid), out_size=SIZE)
    other, _ = _data(16, 3)
    other.levels = [(other.tokens, other.grid)]
    with pytest.raises(DataError, match="1 levels of widths \\[8\\], but the head is for 2 levels"):
        train_seg_probe(train, other, tm, vm[:16], num_classes=2, head="multiscale", epochs=1)


@pytest.mark.parametrize(("stride_out", "fused"), [(16, (4, 4)), (32, (2, 2)), (None, (4, 4))])
def test_stride_out_sets_the_fusion_grid(stride_out, fused):
    size = (64, 64)
    (train, tm), (val, vm) = _ms_data(8, 0, size), _ms_data(4, 1, size)
    kwargs = {} if stride_out is None else {"stride_out": stride_out}
    res = train_seg_probe(train, val, tm, vm, num_classes=2, head="multiscale", lrs=[1e-2], epochs=1,
                          batch_size=4, head_kwargs=kwargs)  # fmt: skip
    seen = []
    res.head.classifier.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    assert res.predict(val, out_size=size).shape == (4, *size)
    assert seen == [fused] and res.head.stride_out == stride_out


def test_multiscale_levels_option_defaults_to_four_or_what_the_backbone_has():
    from medadapt.backbones import create_backbone
    from medadapt.strategies.model import resolve_levels as _levels

    vit = create_backbone("timm:vit_small_patch14_dinov2?embed_dim=32&depth=6&num_heads=2", pretrained=False,
                          img_size=28)  # fmt: skip
    small = create_backbone("timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2", pretrained=False,
                            img_size=28)  # fmt: skip
    assert (_levels(None, vit), _levels(None, small), _levels(3, vit), _levels("2", vit)) == (4, 2, 3, 2)
    with pytest.raises(ConfigError, match="levels=3, but .* has 2 levels"):
        _levels(3, small)
    for bad in (0, "x", 1.5, True):
        with pytest.raises(ConfigError, match="levels must be a positive integer"):
            _levels(bad, vit)


def test_medadapt_probe_trains_the_multiscale_head_on_cached_levels(tmp_path, monkeypatch):
    import json

    import pandas as pd

    from medadapt.cli import main

    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    root = write_square_masks(tmp_path / "seg")
    (tmp_path / "run.yaml").write_text("head_kwargs: {levels: 2, stride_out: 8, width: 16}\n")
    out = tmp_path / "out"
    args = ["probe", "--dataset", f"segfolder:{root}?val_fraction=0.2", "--backbone",
            "timm:vit_small_patch14_dinov2?embed_dim=32&depth=3&num_heads=2&patch_size=8", "--no-pretrained",
            "--head", "multiscale", "--img-size", "32", "--lrs", "0.03", "--epochs", "20", "--batch-size", "8",
            "--config", str(tmp_path / "run.yaml"), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    test = table[table["split"] == "test"].set_index("metric")["value"]
    assert test["dice"] > 0.5  # it learnt the squares (all background scores 0)
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    assert len(metas) == 3 and all(len(m["levels"]) == 2 and m["levels"][0]["grid"] == [4, 4] for m in metas)


def test_fold_rows_take_and_join_every_level_reading_the_last_once():
    """A cross-validation fold takes its rows from the official splits' features: levels included."""
    from medadapt.driver.base import _concat, _take

    a, _ = _ms_data(6, 0)
    b, _ = _ms_data(4, 1)
    rows_a, rows_b = np.array([0, 2, 5]), np.array([1, 3])
    joined = _concat([_take(a, rows_a), _take(b, rows_b)])
    assert len(joined) == 5 and [g for _, g in joined.levels] == [GRID, (2, 2)]
    for i in range(2):
        expected = np.concatenate([a.levels[i][0][rows_a], b.levels[i][0][rows_b]])
        np.testing.assert_array_equal(joined.levels[i][0], expected)
    assert joined.levels[-1][0] is joined.tokens
