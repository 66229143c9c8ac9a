"""Segmentation metrics: hand-computed cases, MONAI parity (Dice, IoU, HD95), empty-mask rules, bad input."""

from __future__ import annotations

import logging
import math
import sys
import warnings

import numpy as np
import pytest

from medadapt.errors import ConfigError, DataError, MissingDependencyError
from medadapt.evaluation.segmentation import (
    confusion_counts,
    dice_per_image,
    hd95_per_image,
    iou_per_image,
    labels_from_scores,
    segmentation_metrics,
)

LOGGER = "medadapt.evaluation.segmentation"
# MONAI >= 1.5 calls its own deprecated argument when the tests call it directly as the reference
MONAI_DEPRECATION = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _square(top: int, left: int, size: int = 4, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    m = np.zeros(shape, dtype=np.int64)
    m[top : top + size, left : left + size] = 1
    return m


def _random_maps(seed: int, n: int = 3, n_classes: int = 4, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Random label maps where every class is in every image's truth and prediction."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, size=(n, size, size))
    pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, n_classes, size=truth.shape))
    counts = confusion_counts(truth, pred, n_classes)
    assert (counts[..., [0, 2]].sum(-1) > 0).all() and (counts[..., [0, 1]].sum(-1) > 0).all()
    return truth, pred


def _one_hot(labels: np.ndarray, n_classes: int):
    torch = pytest.importorskip("torch")
    return torch.nn.functional.one_hot(torch.from_numpy(labels), n_classes).permute(0, 3, 1, 2).float()


# -------------------------------------------------------------------------------------------- hand computed
def test_shifted_square_by_hand() -> None:
    truth, pred = _square(2, 2)[None], _square(2, 3)[None]  # a 4x4 square and the same shifted one column
    # overlap 4 x 3 = 12 pixels; each side has 4 pixels the other lacks; background: 64 - 20 = 44 shared
    np.testing.assert_array_equal(confusion_counts(truth, pred, 2), [[[44, 4, 4], [12, 4, 4]]])
    assert dice_per_image(truth, pred, 2)[0, 0] == pytest.approx(2 * 12 / (16 + 16))  # 0.75
    assert iou_per_image(truth, pred, 2)[0, 0] == pytest.approx(12 / 20)  # 0.6
    with_bg = dice_per_image(truth, pred, 2, include_background=True)
    np.testing.assert_allclose(with_bg, [[2 * 44 / (2 * 44 + 8), 0.75]])


def test_labels_from_scores_is_the_argmax() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5, 5))
    np.testing.assert_array_equal(labels_from_scores(scores), scores.argmax(1))
    labels = labels_from_scores(scores)
    np.testing.assert_array_equal(dice_per_image(labels, labels, 3), np.ones((2, 2)))


def test_pooled_and_per_image_mean_differ() -> None:
    big = np.zeros((8, 8), dtype=np.int64)
    big[:6, :6] = 1  # 36 pixels, predicted exactly: Dice 1
    small = np.zeros((8, 8), dtype=np.int64)
    small[0, 0] = 1  # 1 pixel, missed: Dice 0
    truth, pred = np.stack([big, small]), np.stack([big, np.zeros_like(small)])
    m = segmentation_metrics(truth, pred, 2, hd95=False)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(0.5)
    assert m["dice_pooled"] == pytest.approx(2 * 36 / (2 * 36 + 1))
    assert m["iou_pooled"] == pytest.approx(36 / 37)
    assert (m["n_images"], m["n_empty_truth"], m["n_both_empty"], m["n_one_side_empty"]) == (2, 0, 0, 1)


def test_metrics_keys_and_per_class_means() -> None:
    truth, pred = _random_maps(1, n_classes=3)
    m = segmentation_metrics(truth, pred, 3, hd95=False)
    dice = dice_per_image(truth, pred, 3)
    assert set(m) == {
        *("dice", "iou", "dice_pooled", "iou_pooled", "dice_1", "dice_2", "iou_1", "iou_2"),
        *("n_images", "n_empty_truth", "n_both_empty", "n_one_side_empty"),
    }
    assert m["dice"] == pytest.approx(dice.mean())
    assert (m["dice_1"], m["dice_2"]) == pytest.approx(tuple(dice.mean(0)))


# ------------------------------------------------------------------------------------------- MONAI parity
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_and_iou_match_monai(include_background: bool) -> None:
    monai = pytest.importorskip("monai.metrics")
    for seed in range(3):
        truth, pred = _random_maps(seed)
        y, y_pred = _one_hot(truth, 4), _one_hot(pred, 4)
        ref_dice = monai.compute_dice(y_pred, y, include_background=include_background).numpy()
        ref_iou = monai.compute_iou(y_pred, y, include_background=include_background).numpy()
        ours = {"include_background": include_background}
        np.testing.assert_allclose(dice_per_image(truth, pred, 4, **ours), ref_dice, rtol=0, atol=1e-6)
        np.testing.assert_allclose(iou_per_image(truth, pred, 4, **ours), ref_iou, rtol=0, atol=1e-6)


@MONAI_DEPRECATION
@pytest.mark.parametrize(("include_background", "spacing"), [(False, None), (True, (0.5, 2.0))])
def test_hd95_matches_monai_on_non_empty_masks(include_background: bool, spacing: tuple | None) -> None:
    monai = pytest.importorskip("monai.metrics")
    truth, pred = _random_maps(7)
    y, y_pred = _one_hot(truth, 4), _one_hot(pred, 4)
    ref = monai.compute_hausdorff_distance(
        y_pred, y, include_background=include_background, percentile=95, spacing=spacing
    ).numpy()
    ours = hd95_per_image(truth, pred, 4, include_background=include_background, spacing=spacing)
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_hd95_of_the_shifted_square() -> None:
    pytest.importorskip("monai.metrics")
    truth, pred = _square(2, 2)[None], _square(2, 3)[None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hd95_per_image(truth, pred, 2)[0, 0] == pytest.approx(1.0)
    assert not caught, [str(w.message) for w in caught]  # MONAI's own deprecation warning stays inside
    assert hd95_per_image(truth, pred, 2, spacing=(1.0, 3.0))[0, 0] == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------- empty-mask rules
EMPTY = np.zeros((1, 8, 8), dtype=np.int64)
SQUARE = _square(2, 2)[None]


def test_both_empty_is_perfect_by_default() -> None:
    assert dice_per_image(EMPTY, EMPTY, 2).tolist() == [[1.0]]
    assert iou_per_image(EMPTY, EMPTY, 2).tolist() == [[1.0]]
    assert hd95_per_image(EMPTY, EMPTY, 2).tolist() == [[0.0]]  # no MONAI call: nothing to measure


def test_both_empty_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dice = dice_per_image(EMPTY, EMPTY, 2, empty="nan")
        hd = hd95_per_image(EMPTY, EMPTY, 2, empty="nan")
    assert math.isnan(dice[0, 0]) and math.isnan(hd[0, 0])
    assert "dice: 1 of 1 (image, class) pairs" in caplog.text and "hd95: 1 of 1" in caplog.text


@pytest.mark.parametrize(
    ("truth", "pred"), [(EMPTY, SQUARE), (SQUARE, EMPTY)], ids=["truth_empty", "pred_empty"]
)
def test_one_side_empty_scores_zero_and_the_diagonal(truth: np.ndarray, pred: np.ndarray) -> None:
    for empty in ("one", "nan"):
        assert dice_per_image(truth, pred, 2, empty=empty).tolist() == [[0.0]]
        assert iou_per_image(truth, pred, 2, empty=empty).tolist() == [[0.0]]
    assert hd95_per_image(truth, pred, 2)[0, 0] == pytest.approx(math.hypot(7, 7))
    assert hd95_per_image(truth, pred, 2, spacing=(2.0, 0.5))[0, 0] == pytest.approx(math.hypot(14, 3.5))


@MONAI_DEPRECATION
def test_monai_is_undefined_where_the_rules_apply() -> None:
    """Why the rules exist: MONAI gives nan (or inf) for HD95 whenever a side is empty."""
    monai = pytest.importorskip("monai.metrics")
    for truth, pred in [(EMPTY, EMPTY), (EMPTY, SQUARE), (SQUARE, EMPTY)]:
        with pytest.warns(UserWarning, match="all 0"):
            ref = monai.compute_hausdorff_distance(_one_hot(pred, 2), _one_hot(truth, 2), percentile=95)
        assert not np.isfinite(ref.numpy()).any()


def test_metrics_count_and_apply_each_rule(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("monai.metrics")
    # image 0: found exactly; 1: both empty; 2: missed; 3: hallucinated
    truth = np.concatenate([SQUARE, EMPTY, SQUARE, EMPTY])
    pred = np.concatenate([SQUARE, EMPTY, EMPTY, SQUARE])
    diagonal = math.hypot(7, 7)
    m = segmentation_metrics(truth, pred, 2)
    assert (m["dice"], m["iou"], m["hd95"]) == pytest.approx((0.5, 0.5, 2 * diagonal / 4))
    assert (m["n_images"], m["n_empty_truth"], m["n_both_empty"], m["n_one_side_empty"]) == (4, 2, 1, 2)
    assert m["dice_pooled"] == pytest.approx(2 * 16 / (2 * 16 + 16 + 16))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        m = segmentation_metrics(truth, pred, 2, empty="nan")
    assert (m["dice"], m["hd95"], m["n_both_empty"]) == pytest.approx((1 / 3, 2 * diagonal / 3, 1))
    assert "dice, iou, hd95: 1 of 4 (image, class) pairs" in caplog.text


def test_every_pair_left_out_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        m = segmentation_metrics(
            np.concatenate([EMPTY, EMPTY]), np.concatenate([EMPTY, EMPTY]), 2, hd95=False, empty="nan"
        )
    assert math.isnan(m["dice"]) and math.isnan(m["dice_pooled"]) and math.isnan(m["dice_1"])
    assert (
        "2 images have no value at all" in caplog.text and "classes [1] have no value at all" in caplog.text
    )


def test_dice_and_iou_need_no_monai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "monai", None)
    monkeypatch.setitem(sys.modules, "monai.metrics", None)
    assert segmentation_metrics(SQUARE, SQUARE, 2, hd95=False)["dice"] == 1.0
    assert hd95_per_image(EMPTY, SQUARE, 2)[0, 0] == pytest.approx(
        math.hypot(7, 7)
    )  # the rule needs no MONAI
    with pytest.raises(MissingDependencyError, match=r"medadapt\[seg\]"):
        hd95_per_image(SQUARE, SQUARE, 2)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("truth", "pred", "n_classes", "match"),
    [
        (SQUARE[0], SQUARE[0], 2, r"\[N, H, W\].*truth\[None\]"),
        (SQUARE[:, None], SQUARE[:, None], 2, "labels_from_scores"),
        (SQUARE, np.concatenate([SQUARE, SQUARE]), 2, "same"),
        (SQUARE * 2, SQUARE, 2, r"outside \[0, 1\].*\[2\]"),
        (SQUARE, -SQUARE, 2, r"outside \[0, 1\].*\[-1\]"),
        (SQUARE * 0.5, SQUARE, 2, "integer class indices"),
        (np.zeros((0, 8, 8), int), np.zeros((0, 8, 8), int), 2, "non-empty"),
    ],
    ids=["2d", "4d", "shapes", "too_large", "negative", "fractional", "no_images"],
)
def test_bad_label_maps_raise_data_error(truth, pred, n_classes: int, match: str) -> None:
    for fn in (confusion_counts, dice_per_image, iou_per_image, segmentation_metrics):
        with pytest.raises(DataError, match=match):
            fn(truth, pred, n_classes)


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="n_classes"):
        dice_per_image(SQUARE, SQUARE, 1)
    with pytest.raises(ConfigError, match=r"\['one', 'nan'\]"):
        dice_per_image(SQUARE, SQUARE, 2, empty="zero")
    with pytest.raises(ConfigError, match=r"\['zero', 'nan'\]"):
        hd95_per_image(SQUARE, SQUARE, 2, empty="one")
    for spacing in (0.0, (1.0, 2.0, 3.0), "x", (1.0, float("nan"))):
        with pytest.raises(ConfigError, match="spacing"):
            hd95_per_image(SQUARE, SQUARE, 2, spacing=spacing)


def test_bad_scores_raise_data_error() -> None:
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        labels_from_scores(np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match="non-finite"):
        labels_from_scores(np.full((1, 2, 4, 4), np.nan))


def test_weighted_segmentation_metrics_are_the_metrics_of_repeated_images():
    """The bootstrap's form: unit weights give segmentation_metrics, integer weights its value on repeated images."""
    from medadapt.evaluation.weighted import SEGMENTATION_METRICS, weighted_metric

    rng = np.random.default_rng(3)
    truth = (rng.random((6, 8, 8)) < 0.3).astype(int)
    pred = np.where(rng.random((6, 8, 8)) < 0.8, truth, 1 - truth)
    truth[5], pred[5] = 0, 0  # an image without the structure, predicted so
    plain = segmentation_metrics(truth, pred, 2)
    w = np.array([2, 0, 1, 3, 1, 1])
    repeated = segmentation_metrics(np.repeat(truth, w, axis=0), np.repeat(pred, w, axis=0), 2)
    for name in SEGMENTATION_METRICS:
        ones = weighted_metric(name, "segmentation", truth, pred, np.ones(6))
        assert float(ones) == pytest.approx(plain[name], abs=1e-9), name
        assert float(weighted_metric(name, "segmentation", truth, pred, w)) == pytest.approx(
            repeated[name], abs=1e-9
        )


def test_metrics_computed_in_chunks_of_images_equal_one_pass(monkeypatch) -> None:
    """Large sets are scored 64 images at a time (bounded memory): every key is what one pass gives."""
    import medadapt.evaluation.segmentation as seg

    rng = np.random.default_rng(0)
    truth = (rng.random((150, 16, 16)) > 0.7).astype(np.uint8) * rng.integers(1, 3, (150, 1, 1)).astype(
        np.uint8
    )
    pred = np.where(rng.random((150, 16, 16)) > 0.2, truth, rng.integers(0, 3, (150, 16, 16))).astype(
        np.uint8
    )
    truth[:5], pred[3:7] = 0, 0  # empty truths and predictions, across a chunk's edge too
    chunked = seg.segmentation_metrics(truth, pred, 3)
    monkeypatch.setattr(seg, "_IMAGE_CHUNK", 10_000)
    whole = seg.segmentation_metrics(truth, pred, 3)
    assert chunked.keys() == whole.keys() and chunked["n_images"] == 150
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
