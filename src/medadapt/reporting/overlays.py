"""Segmentation overlays: the best, median and worst test images by Dice, with their true and predicted masks.

One row per example, three panels: the image; the image with the true mask's contour (one fixed colour per
class); the image with the predicted mask as a translucent fill and the true contour for reference. Like
:mod:`medadapt.reporting.plots`, :func:`plot_overlays` returns a matplotlib ``Figure`` on its own Agg canvas
(no pyplot) and matplotlib is imported when it runs (the ``plots`` extra).

Example:
    >>> write_overlays(ds, truth, pred, "run/figures/overlays_test", n_classes=2)  # doctest: +SKIP
    [PosixPath('run/figures/overlays_test.png')]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from .._optional import require
from ..errors import ConfigError, DataError
from ..evaluation.segmentation import dice_per_image
from .plots import _figure, _text, save_figure

__all__ = ["pick_examples", "plot_overlays", "write_overlays"]

StrPath = str | os.PathLike
_FILL_ALPHA = 0.4


def pick_examples(dice: ArrayLike) -> dict[str, int]:
    """The indices of the ``best``, ``median`` and ``worst`` images by per-image Dice ``[N]``.

    Ties go to the lowest index; the median is the image whose Dice is the lower median; nan values (no
    Dice) are never picked.

    Example:
        >>> pick_examples([0.5, 0.9, float("nan"), 0.1, 0.5])
        {'best': 1, 'median': 0, 'worst': 3}
    """
    d = np.asarray(dice, dtype=np.float64)
    if d.ndim != 1:
        raise ConfigError(f"per-image Dice must be [N], got shape {d.shape}")
    valid = np.flatnonzero(~np.isnan(d))
    if valid.size == 0:
        raise DataError(f"no image has a Dice value (all {d.size} are nan): no example to show")
    v = d[valid]
    lower_median = np.sort(v)[(v.size - 1) // 2]
    # argmax / argmin / flatnonzero return the first match: the lowest index among ties
    picks = {"best": np.argmax(v), "median": np.flatnonzero(v == lower_median)[0], "worst": np.argmin(v)}
    return {name: int(valid[i]) for name, i in picks.items()}


def _display(image: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``[C, H, W]`` or ``[H, W]`` (or float in [0, 1]) -> float ``[H, W]`` gray or ``[H, W, 3]`` RGB
    in [0, 1], resized (bilinear) to the mask's ``shape`` where it differs."""
    x = torch.as_tensor(np.asarray(image))
    x = x[None] if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ConfigError(f"an image must be [H, W], [1, H, W] or [3, H, W], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float().clamp(0, 1)
    else:
        raise ConfigError(f"images must be uint8 (or float in [0, 1]), got {x.dtype}")
    if tuple(x.shape[1:]) != tuple(shape):
        x = F.interpolate(x[None], size=tuple(shape), mode="bilinear", align_corners=False, antialias=True)
        x = x[0].clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _class_color(c: int) -> Any:
    """The fixed colour of foreground class ``c`` (1, 2, ...): tab10, in order."""
    return require("matplotlib", extra="plots").colormaps["tab10"]((c - 1) % 10)


def _masks(truth: Any, pred: Any, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(truth) != n or len(pred) != n:
        raise ConfigError(f"{n} images need {n} true and predicted masks, got {len(truth)} and {len(pred)}")
    pairs = [(np.asarray(t), np.asarray(p)) for t, p in zip(truth, pred)]
    for i, (t, p) in enumerate(pairs):
        if t.ndim != 2 or t.shape != p.shape:
            raise ConfigError(f"example {i}: masks must be [H, W] of one shape, got {t.shape} and {p.shape}")
    return pairs


def _class_names(class_names: Sequence[str] | None, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    top = max(int(max(t.max(initial=0), p.max(initial=0))) for t, p in pairs)
    if class_names is None:
        return [str(c) for c in range(top + 1)]
    if top >= len(class_names):
        raise ConfigError(f"a mask holds class {top} but class_names names {len(class_names)} classes")
    return [str(c) for c in class_names]


def _contours(ax: Any, mask: np.ndarray, classes: list[int]) -> None:
    """The outline of each class at level 0.5; padded so that an object touching the border is closed."""
    h, w = mask.shape
    xs, ys = np.arange(-1, w + 1), np.arange(-1, h + 1)
    for c in classes:
        inside = np.pad(mask == c, 1).astype(np.float32)
        if inside.any():
            ax.contour(xs, ys, inside, levels=[0.5], colors=[_class_color(c)], linewidths=1.2)


def _fill(mask: np.ndarray, classes: list[int]) -> np.ndarray:
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    for c in classes:
        rgba[mask == c] = (*_class_color(c)[:3], _FILL_ALPHA)
    return rgba


def _panel(ax: Any, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_overlays(
    images: Sequence[ArrayLike],
    truth: Sequence[ArrayLike],
    pred: Sequence[ArrayLike],
    *,
    titles: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> Any:
    """One row per example: the image; its true contour; its predicted mask (translucent fill) over the true
    contour. Class 0 is background and is not drawn.

    Args:
        images: uint8 ``[C, H, W]`` (C = 1 or 3) or ``[H, W]``, resized (bilinear) to their mask's size.
        truth: true class maps ``[H, W]``, one per image (a ``[k, H, W]`` array works).
        pred: predicted class maps ``[H, W]``, one per image.
        titles: one per row, e.g. ``"best: Dice 0.93 (image 12)"``.
        class_names: legend names by class index, background first; default the indices.

    Example:
        >>> fig = plot_overlays(imgs, truth, pred, titles=["best: Dice 0.93 (image 12)"])  # doctest: +SKIP
    """
    if not len(images) or len(titles) != len(images):
        raise ConfigError(
            f"plot_overlays needs one title per image, got {len(images)} images, {len(titles)} titles"
        )
    pairs = _masks(truth, pred, len(images))
    names = _class_names(class_names, pairs)
    shown = sorted({int(c) for t, p in pairs for c in np.union1d(np.unique(t), np.unique(p)) if c > 0})
    fig = _figure(7.8, 2.5 * len(images) + 0.6)
    axes = fig.subplots(len(images), 3, squeeze=False)
    for row, image, (t, p), title in zip(axes, images, pairs, titles):
        x = _display(image, t.shape)
        _panel(row[0], x, _text(title))
        _panel(row[1], x, "truth (contour)")
        _contours(row[1], t, shown)
        _panel(row[2], x, "prediction (fill), truth (contour)")
        row[2].imshow(_fill(p, shown), interpolation="nearest")
        _contours(row[2], t, shown)
        for ax in row:  # a contour reaches half a pixel past the image: keep the image's frame
            ax.set_xlim(-0.5, t.shape[1] - 0.5)
            ax.set_ylim(t.shape[0] - 0.5, -0.5)
    if shown:
        patch = require("matplotlib.patches", extra="plots", package="matplotlib").Patch
        handles = [patch(color=_class_color(c), label=_text(names[c])) for c in shown]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    return fig


def _nan_mean_rows(x: np.ndarray) -> np.ndarray:
    """Mean of each row's non-nan values (nan where there are none), without numpy's warning."""
    n = (~np.isnan(x)).sum(axis=1)
    return np.where(n > 0, np.nansum(x, axis=1) / np.maximum(n, 1), np.nan)


def write_overlays(
    ds: Any, truth: ArrayLike, pred: ArrayLike, path_stem: StrPath, *, n_classes: int
) -> list[Path]:
    """Draw the best, median and worst images of ``ds`` by per-image Dice (the mean over foreground classes)
    and write ``PATH_STEM.png``; returns the paths written.

    ``ds`` gives its images by ``ds.image(i)`` (uint8 ``[C, H, W]``; resized to the masks' size where it
    differs) and, optionally, its class names by ``ds.classes``; ``truth`` and ``pred`` are its ``[N, H, W]``
    true and predicted class maps. An image that is two of the three examples is drawn once.

    Example:
        >>> write_overlays(test_ds, truth, pred, "run/figures/overlays_test", n_classes=2)  # doctest: +SKIP
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.ndim != 3 or truth.shape != pred.shape or truth.shape[0] != len(ds):
        raise DataError(
            f"write_overlays needs [N, H, W] true and predicted masks for the {len(ds)} images, "
            f"got {truth.shape} and {pred.shape}"
        )
    dice = _nan_mean_rows(dice_per_image(truth, pred, n_classes))
    rows: dict[int, list[str]] = {}  # image index -> its labels, e.g. ["best"] or ["median", "worst"]
    for label, i in pick_examples(dice).items():
        rows.setdefault(i, []).append(label)
    titles = [f"{' / '.join(labels)}: Dice {dice[i]:.2f} (image {i})" for i, labels in rows.items()]
    names = getattr(ds, "classes", None)
    names = names if names is not None and len(names) == n_classes else None
    index = list(rows)
    fig = plot_overlays(
        [ds.image(i) for i in index], truth[index], pred[index], titles=titles, class_names=names
    )
    stem = Path(path_stem)
    return [save_figure(fig, stem.with_name(stem.name + ".png"))]
