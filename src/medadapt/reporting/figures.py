"""Figures for reports: t-SNE of embeddings, Grad-CAM grids and annotated sweep heatmaps.

Every function draws on its own matplotlib ``Figure`` with an Agg canvas (no pyplot: no global figure state
to leak or close, no display needed), writes a PNG atomically and returns its path. matplotlib and
pytorch-grad-cam are imported when a function runs, so ``import medadapt`` works without the ``plots``
extra. Colours are colourblind-friendly (``tab10`` for classes, ``viridis`` for values).

Example:
    >>> plot_tsne({"teacher": t_emb, "distilled student": s_emb}, labels, "tsne.png")  # doctest: +SKIP
    >>> plot_gradcam(model, images, "cam.png", preprocess=prep, labels=labels)  # doctest: +SKIP
    >>> plot_heatmap(table, "sweep.png", title="val AUC", xlabel="alpha", ylabel="T")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from .._io import atomic_write
from .._optional import require
from ..errors import ConfigError
from .gradcam import check_images, default_target_layer, eval_logits, gradcam_maps, model_device

__all__ = [
    "plot_tsne",
    "tsne_coordinates",
    "plot_gradcam",
    "gradcam_maps",
    "default_target_layer",
    "plot_heatmap",
]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike
_DPI = 150
_NONE_COLOR = "#bbbbbb"  # rows of a multilabel set with no positive label


# ------------------------------------------------------------------------------------------------ common
def _figure(width: float, height: float) -> Any:
    figure = require("matplotlib.figure", extra="plots", package="matplotlib")
    agg = require("matplotlib.backends.backend_agg", extra="plots", package="matplotlib")
    fig = figure.Figure(figsize=(width, height), layout="constrained")
    agg.FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: StrPath) -> Path:
    # The canvas renders in memory; atomic_write puts the finished PNG in place, never a partial one.
    # bbox_inches="tight" grows the canvas to fit a long title or a wide legend instead of clipping them.
    return atomic_write(
        path,
        lambda f: fig.savefig(
            f, format="png", dpi=_DPI, facecolor="white", bbox_inches="tight", pad_inches=0.1
        ),
    )


def _class_colors(n: int) -> list[Any]:
    cm = require("matplotlib", extra="plots").colormaps
    if n <= 10:
        return [cm["tab10"](i) for i in range(n)]
    if n <= 20:
        return [cm["tab20"](i) for i in range(n)]
    return [cm["viridis"](v) for v in np.linspace(0, 1, n)]


def _names(class_names: Sequence[str] | None, n: int, what: str) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(n)]
    if len(class_names) < n:
        raise ConfigError(f"class_names has {len(class_names)} names but the {what} need at least {n}")
    return [str(c) for c in class_names]


def _label_groups(labels: ArrayLike, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str], bool]:
    """Group index per row, the group names and whether the labels are multilabel.

    A group is the class, or for multilabel ``[N, L]`` labels the first positive label; multilabel rows
    with no positive label (an unknown ``nan`` counts as negative) form a last group "none".
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        if y.size and (np.isnan(y).any() or (y < 0).any() or (y != np.round(y)).any()):
            raise ConfigError("single-label labels must be non-negative integer class indices")
        groups = y.astype(np.int64)
        return groups, _names(class_names, int(groups.max(initial=-1)) + 1, "labels"), False
    if y.ndim != 2:
        raise ConfigError(f"labels must be [N], [N, 1] class indices or [N, L] 0/1, got shape {y.shape}")
    positive = np.nan_to_num(y, nan=0.0) > 0
    groups = np.where(positive.any(1), positive.argmax(1), y.shape[1])
    return groups, _names(class_names, y.shape[1], "labels")[: y.shape[1]] + ["none"], True


# ------------------------------------------------------------------------------------------------- t-SNE
def tsne_coordinates(embeddings: ArrayLike, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE ``[N, 2]`` of ``embeddings`` ``[N, D]``, each feature standardised first.

    ``init="pca"`` and ``random_state=seed`` make it deterministic; perplexity is ``min(30, (N - 1) / 3)``
    so that small sets (down to 3 points) still work.

    Example:
        >>> tsne_coordinates(np.random.default_rng(0).normal(size=(50, 8)), seed=0).shape
        (50, 2)
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ConfigError(f"t-SNE needs embeddings [N, D] with N >= 3, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(
            "the embeddings hold non-finite values (a diverged model?); t-SNE cannot place them"
        )
    # Models put features on very different scales (a ViT's [CLS] vs a ResNet's pooled map; a few large
    # features would decide every neighbourhood): standardising makes the panels comparable.
    std = x.std(0)
    x = (x - x.mean(0)) / np.where(std > 0, std, 1.0)
    tsne = require("sklearn.manifold", extra="plots", package="scikit-learn").TSNE(
        n_components=2,
        perplexity=min(30.0, (x.shape[0] - 1) / 3),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    return tsne.fit_transform(x)


def _check_embeddings(embeddings: Mapping[str, ArrayLike], n: int) -> dict[str, np.ndarray]:
    if not embeddings:
        raise ConfigError("plot_tsne needs at least one {name: embeddings} entry")
    out = {}
    for name, emb in embeddings.items():
        arr = np.asarray(emb)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ConfigError(
                f"embeddings {name!r} must be [N, D] with one row per label (N = {n}), got shape {arr.shape}"
            )
        out[name] = arr
    return out


def plot_tsne(
    embeddings: Mapping[str, ArrayLike],
    labels: ArrayLike,
    path: StrPath,
    *,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """One t-SNE panel per model, points coloured by class, with one shared legend.

    Args:
        embeddings: ``{panel title: [N, D] embeddings}``, rows aligned with ``labels`` (e.g. ``{"teacher":
            ..., "student alone": ..., "distilled student": ...}``).
        labels: ``[N]`` or ``[N, 1]`` class indices, or ``[N, L]`` 0/1 multilabel targets, coloured by the
            first positive label (rows without one are grey, "none").
        path: the PNG to write.
        class_names: legend names of the classes (or labels); default their indices.
        seed: t-SNE seed and the seed of the subsample.
        max_points: at most this many rows, the same random (seeded) rows in every panel.

    Example:
        >>> plot_tsne({"teacher": t, "student": s}, y, "t.png", class_names=["a", "b"])  # doctest: +SKIP
    """
    groups, names, multilabel = _label_groups(labels, class_names)
    embs = _check_embeddings(embeddings, groups.shape[0])
    if max_points < 3:
        raise ConfigError(f"max_points must be at least 3, got {max_points}")
    # A random order (not just a subset) also keeps one class from being drawn on top of all others.
    rows = np.random.default_rng(seed).permutation(groups.shape[0])[:max_points]
    groups = groups[rows]
    colors = _class_colors(len(names) - multilabel) + [_NONE_COLOR] * multilabel
    size = float(np.clip(4000 / rows.size, 4, 40))

    fig = _figure(max(5.0, 3.6 * len(embs)), 4.2)
    axes = fig.subplots(1, len(embs), squeeze=False)[0]
    for ax, (name, emb) in zip(axes, embs.items()):
        xy = tsne_coordinates(emb[rows], seed=seed)
        ax.scatter(xy[:, 0], xy[:, 1], c=[colors[g] for g in groups], s=size, alpha=0.8, linewidths=0)
        ax.set_title(name)
        ax.set_xlabel("t-SNE 1")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
        for spine in ax.spines.values():
            spine.set_color("#999999")
    axes[0].set_ylabel("t-SNE 2")
    _class_legend(fig, names, colors, present=np.unique(groups))
    kind = "first positive label" if multilabel else "class"
    fig.suptitle(f"t-SNE of embeddings ({rows.size} images, coloured by {kind})")
    return _save(fig, path)


def _class_legend(fig: Any, names: list[str], colors: list[Any], present: np.ndarray) -> None:
    line2d = require("matplotlib.lines", extra="plots", package="matplotlib").Line2D
    handles = [
        line2d([], [], marker="o", linestyle="", markersize=7, color=colors[g], label=names[g])
        for g in present
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)


# ---------------------------------------------------------------------------------------------- Grad-CAM
def _targets_and_captions(
    labels: ArrayLike | None, probs: np.ndarray, class_names: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    """The class to explain per image (true label, else predicted) and its caption."""
    names = _names(class_names, probs.shape[1], "model outputs")
    pred = probs.argmax(1)
    tail = [f"pred {names[p]} (p={probs[i, p]:.2f})" for i, p in enumerate(pred)]
    if labels is None:
        return pred.tolist(), tail
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64)
    y = y.reshape(len(probs), -1)
    if y.shape[1] == 1:  # class indices
        true = y[:, 0].astype(np.int64)
        return true.tolist(), [f"label {names[t]}\n{s}" for t, s in zip(true, tail)]
    positive = np.nan_to_num(y) > 0  # multilabel: explain the first positive label (else the prediction)
    targets = np.where(positive.any(1), positive.argmax(1), pred).tolist()
    text = [", ".join(names[j] for j in np.flatnonzero(row)) or "none" for row in positive]
    return targets, [f"label {t}\n{s}" for t, s in zip(text, tail)]


def _display(image: torch.Tensor) -> np.ndarray:
    """Raw ``[C, H, W]`` image -> float RGB ``[H, W, 3]`` in [0, 1] (gray repeated)."""
    x = image.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    return x.expand(3, -1, -1).permute(1, 2, 0).numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def plot_gradcam(
    model: nn.Module,
    images: torch.Tensor,
    path: StrPath,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    target_layer: nn.Module | None = None,
    labels: ArrayLike | None = None,
    scores: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    title: str | None = None,
) -> Path:
    """A grid of images with their Grad-CAM overlaid, captioned "label X" over "pred Y (p=0.93)".

    The map explains the true class where ``labels`` are given (multilabel: the first positive label),
    else the predicted class. Arguments are those of :func:`gradcam_maps`, plus ``labels`` (``[N]``,
    ``[N, 1]`` or ``[N, L]``), ``scores`` (``[N, C]`` probabilities for the captions, e.g. sigmoid outputs of
    a multilabel model; default the softmax of the model's logits), ``class_names`` and ``title``.

    Example:
        >>> images, labels = batch["image"][:8], batch["label"][:8]  # doctest: +SKIP
        >>> plot_gradcam(clf, images, "cam.png", preprocess=prep, labels=labels)  # doctest: +SKIP
    """
    images = check_images(images)
    if scores is None:
        x = preprocess(images.to(model_device(model)))
        probs = torch.softmax(eval_logits(model, x), dim=1).numpy()
    else:
        probs = np.asarray(scores, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != images.shape[0]:
            raise ConfigError(f"scores must be [N, C] for the {images.shape[0]} images, got {probs.shape}")
    targets, captions = _targets_and_captions(labels, probs, class_names)
    maps = gradcam_maps(
        model,
        images,
        preprocess=preprocess,
        targets=targets,
        target_layer=target_layer,
        reshape_transform=reshape_transform,
    )
    cv2 = require("cv2", extra="plots", package="grad-cam")
    overlay = require("pytorch_grad_cam.utils.image", extra="plots", package="grad-cam").show_cam_on_image
    cm = require("matplotlib.cm", extra="plots", package="matplotlib")
    colors = require("matplotlib.colors", extra="plots", package="matplotlib")

    n = images.shape[0]
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(2.5 * ncols + 0.8, 2.6 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < n:
            rgb = overlay(_display(images[i]), maps[i], use_rgb=True, colormap=cv2.COLORMAP_VIRIDIS)
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(captions[i], fontsize=9)
    scale = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap="viridis")
    fig.colorbar(scale, ax=axes.tolist(), shrink=0.7, label="Grad-CAM (scaled per image)")
    explained = "true class" if labels is not None else "predicted class"
    fig.suptitle(title or f"Grad-CAM: where the model looks for the {explained}")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- heatmap
def plot_heatmap(
    table: Any,
    path: StrPath,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    fmt: str = "{:.3f}",
    cmap: str = "viridis",
    highlight_max: bool = True,
    cbar_label: str | None = None,
) -> Path:
    """An annotated heatmap of a numeric ``pandas.DataFrame`` (index -> rows, columns -> columns).

    Each cell shows its value formatted with ``fmt``; NaN cells are grey and blank; with ``highlight_max``
    the best (largest) cell is outlined.

    Example:
        >>> table = results.pivot_table(index="T", columns="alpha", values="value")  # doctest: +SKIP
        >>> plot_heatmap(table, "kd.png", title="val AUC", xlabel="alpha", ylabel="T")  # doctest: +SKIP
    """
    try:
        values = np.asarray(table.to_numpy(dtype=np.float64, na_value=np.nan))
    except (AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f"plot_heatmap needs a numeric pandas DataFrame ({type(e).__name__}: {e})") from e
    if values.ndim != 2 or values.size == 0:
        raise ConfigError(f"plot_heatmap needs a non-empty 2-D table, got shape {values.shape}")
    colormaps = require("matplotlib", extra="plots").colormaps
    if cmap not in colormaps:
        raise ConfigError(f"unknown colormap {cmap!r}; try 'viridis', 'cividis' or 'magma'")
    colormap = colormaps[cmap].with_extremes(bad="#d9d9d9")
    nrows, ncols = values.shape
    fig = _figure(max(4.0, 0.9 * ncols + 2.2), max(3.0, 0.6 * nrows + 1.6))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, aspect="auto")
    ax.set_xticks(range(ncols), [str(c) for c in table.columns])
    ax.set_yticks(range(nrows), [str(r) for r in table.index])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    best = np.unravel_index(np.nanargmax(values), values.shape) if np.isfinite(values).any() else None
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            luminance = np.dot(image.to_rgba(v)[:3], (0.299, 0.587, 0.114))
            weight = "bold" if highlight_max and (r, c) == best else "normal"
            color = "black" if luminance > 0.5 else "white"
            ax.text(c, r, fmt.format(v), ha="center", va="center", color=color, fontsize=9, fontweight=weight)
    if highlight_max and best is not None:
        rect = require("matplotlib.patches", extra="plots", package="matplotlib").Rectangle(
            (best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="black", lw=2.5
        )
        ax.add_patch(rect)
    fig.colorbar(image, ax=ax, label=cbar_label)
    return _save(fig, path)
