"""Segmentation heads on frozen patch tokens, and the segmentation loss.

Every head maps patch tokens to per-pixel logits ``[B, C, H, W]`` (float32, as :func:`float32_logits`),
with class attributes ``input_key = "tokens"``, ``outputs = "logits"``, ``trainable = True`` and
``multiscale`` (whether ``forward`` takes one token set or a list of them):

* ``linear`` (:class:`LinearSegHead`): BatchNorm + 1x1 conv + bilinear upsampling, the DINOv2 linear
  segmentation probe;
* ``multiscale`` (:class:`MultiScaleSegHead`): several token sets (ViT depths, or the stages of a
  hierarchical backbone at different grids), projected to one width, resized to one grid and summed;
* ``decoder`` (:class:`ProgressiveDecoderHead`): a light SETR-PUP decoder (conv3x3 + BN + ReLU, x2
  upsampling, repeated).

Segmentation heads live in their own registry, :data:`SEGMENTATION_HEADS`: ``linear`` there is the 1x1
conv head, not the classification head of the same name in :data:`~medadapt.heads.HEADS`. Grids are
``(h, w)`` of row-major patch tokens without [CLS] (as :class:`~medadapt.features.featureset.FeatureSet`
stores them); the stride of a token set is ``image_size / grid`` (16 for a ViT-B/16, 32 for the last stage
of a ConvNeXt).

Example:
    >>> head = create_segmentation_head("linear", 384, 3)
    >>> head(torch.zeros(2, 16 * 16, 384, dtype=torch.float16), (16, 16), (224, 224)).shape
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..tasks import SEGMENTATION_LOSSES, segmentation_loss
from . import SEGMENTATION_HEADS  # the registry (lazy entries) lives in the package, importable without torch

__all__ = [
    "SEGMENTATION_HEADS",
    "SEGMENTATION_LOSSES",
    "LinearSegHead",
    "bilinear_resize",
    "MultiScaleSegHead",
    "ProgressiveDecoderHead",
    "create_segmentation_head",
    "segmentation_loss",
    "tokens_to_map",
]

Size = tuple[int, int]


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Row-major patch tokens ``[B, T, D]`` as a feature map ``[B, D, h, w]`` (``tokens[:, i * w + j]`` is
    pixel ``(i, j)``), in the tokens' dtype.

    Example:
        >>> tokens_to_map(torch.zeros(2, 6, 8), (2, 3)).shape
        torch.Size([2, 8, 2, 3])
    """
    h, w = _grid_of(tokens, grid)
    b, _, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, h, w)


def _grid_of(tokens: torch.Tensor, grid: Sequence[int]) -> Size:
    """``grid`` as ``(h, w)``, checked to hold the tokens ``[B, T, D]`` (a DataError saying why not)."""
    h, w = (int(g) for g in grid)
    if tokens.ndim != 3:
        raise DataError(
            f"expected patch tokens [B, T, D], got a tensor of shape {tuple(tokens.shape)}; a feature map "
            "[B, D, h, w] is flattened with fmap.flatten(2).transpose(1, 2) (backbones.tokens_from_map)"
        )
    t = tokens.shape[1]
    if t != h * w:
        extra = t - h * w
        hint = (
            f"; {extra} extra token(s) look like a [CLS] token (1) or [CLS] + register tokens left in: keep only "
            f"the patch tokens, tokens[:, {extra}:]"
            if 0 < extra <= 16
            else "; check that the grid belongs to these tokens (a grid (h, w) has h * w tokens, row-major)"
        )
        raise DataError(f"{t} tokens do not fill the grid {(h, w)} of {h * w} patches{hint}")
    return h, w


def _size(size: Sequence[int]) -> Size:
    h, w = (int(s) for s in size)
    return h, w


#: Inputs up to this many rows / columns are resized by :func:`bilinear_resize`'s matmuls.
_MATMUL_RESIZE_MAX = 128


def bilinear_resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of maps ``[..., h, w]``, in ``x``'s dtype.

    Bilinear resizing is linear and separable: ``A_h @ x @ A_w.T`` with fixed ``[H, h]`` and ``[W, w]``
    weight matrices (two non-zeros per row, torch's source-index rule) gives the same values within float
    rounding (tested against ``F.interpolate``). It is written out because torch's CPU kernel and its
    backward are slow: upsampling a probe's logits from a 16 x 16 token grid to 224 x 224 took 37% of a
    cached segmentation-probe step; the two matmuls are ~15x faster forward + backward (and deterministic
    on CUDA, where the kernel's backward is not). The dense matrices cost ``h`` multiply-adds an output
    pixel, so inputs larger than 128 a side go to ``F.interpolate``. Computed in float32 under autocast.

    Example:
        >>> bilinear_resize(torch.ones(1, 2, 3, 4), (6, 8)).shape
        torch.Size([1, 2, 6, 8])
    """
    (h, w), (out_h, out_w) = x.shape[-2:], _size(size)
    if (h, w) == (out_h, out_w):
        return x
    if max(h, w) > _MATMUL_RESIZE_MAX:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    with torch.autocast(x.device.type, enabled=False):
        rows = _resize_matrix(h, out_h, x.device)
        cols = _resize_matrix(w, out_w, x.device)
        return (rows @ x.float() @ cols.T).to(x.dtype)


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``[n_out, n_in]`` float32 weights of 1-D bilinear resizing (align_corners=False), as torch computes
    them: source ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, its floor and the next index (the last
    index repeats), weighted by the distance."""
    with torch.inference_mode(False):  # built once, maybe under inference mode, then saved for backward
        # in float32, as torch's kernel computes the scale, the source index and the weights of float maps
        scale = torch.tensor(n_in, dtype=torch.float32) / n_out
        src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
        low = src.floor().long().clamp_max(n_in - 1)
        frac = src - low
        high = (low + 1).clamp_max(n_in - 1)
        weights = torch.zeros(n_out, n_in, dtype=torch.float32)
        out = torch.arange(n_out)
        weights.index_put_((out, low), 1 - frac, accumulate=True)
        weights.index_put_((out, high), frac, accumulate=True)
        return weights.to(device)


def _classify(conv: nn.Conv2d, x: torch.Tensor, out_size: Size) -> torch.Tensor:
    """``conv(x)`` upsampled bilinearly to ``out_size``, in float32 even under autocast (as
    :func:`~medadapt.heads.linear.float32_logits`)."""
    with torch.autocast(x.device.type, enabled=False):
        return bilinear_resize(conv(x.float()), out_size)


def _classifier(width: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(width, num_classes, 1)
    nn.init.trunc_normal_(conv.weight, std=0.01)  # mmseg's conv_seg init
    nn.init.zeros_(conv.bias)
    return conv


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"segmentation head {name} must be >= 1, got {value}")


class LinearSegHead(nn.Module):
    """A linear probe per patch: tokens as a map ``[B, D, h, w]``, BatchNorm, 1x1 conv, bilinear upsampling.

    ``norm="bn"`` (default) puts a ``BatchNorm2d`` on the frozen features before the 1x1 conv, as in the
    DINOv2 linear segmentation evaluation (one learning rate then fits backbones whose feature scales
    differ); ``norm="none"`` leaves it out. The head stays linear in the features.

    Example:
        >>> head = LinearSegHead(32, 2)
        >>> head(torch.zeros(2, 12, 32), (3, 4), (30, 40)).shape
        torch.Size([2, 2, 30, 40])
    """

    input_key: ClassVar[str] = "tokens"
    outputs: ClassVar[str] = "logits"
    trainable: ClassVar[bool] = True
    multiscale: ClassVar[bool] = False

    def __init__(self, dim: int, num_classes: int, *, norm: str = "bn") -> None:
        super().__init__()
        _check_positive(dim=dim, num_classes=num_classes)
        if norm not in ("bn", "none"):
            raise ConfigError(f"linear segmentation head norm must be 'bn' or 'none', got {norm!r}")
        self.norm = nn.BatchNorm2d(dim) if norm == "bn" else nn.Identity()
        self.classifier = _classifier(dim, num_classes)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int], out_size: Sequence[int]) -> torch.Tensor:
        # The same as norm + 1x1 conv on tokens_to_map(tokens), without transposing the tokens into a map:
        # BatchNorm2d of tokens as [B*T, D, 1, 1] has the same per-channel statistics, and the 1x1 conv is a
        # linear layer on the last axis; only the C-channel logits are laid out as a map.
        h, w = _grid_of(tokens, grid)
        b, t, d = tokens.shape
        x = self.norm(tokens.float().reshape(b * t, d, 1, 1)).reshape(b, t, d)
        with torch.autocast(x.device.type, enabled=False):
            weight = self.classifier.weight.flatten(1)
            logits = F.linear(x.float(), weight, self.classifier.bias).transpose(1, 2).reshape(b, -1, h, w)
            return bilinear_resize(logits, out_size)


class MultiScaleSegHead(nn.Module):
    """Fuse several token sets (ViT depths, or hierarchical stages at different grids) into one linear probe.

    Each level ``i`` (tokens ``[B, T_i, D_i]`` on grid ``(h_i, w_i)``) is projected to ``width`` channels by a
    1x1 conv + BatchNorm, resized bilinearly to the fusion grid, and the levels are **summed**; a 1x1 conv
    maps the sum to classes and the logits are upsampled to ``out_size``. Summing per-level projections is
    as expressive as concatenating the levels before one 1x1 conv (a 1x1 conv of a concatenation *is* a sum
    of per-level 1x1 convs), while the classifier keeps one width whatever the number of levels; like
    DINOv2's multi-layer linear probe, the head is linear in the features (``width`` bounds its rank).

    The fusion grid is the finest input grid (most tokens) by default. ``stride_out`` sets it instead from
    the output stride, measured against ``out_size`` (the image size when masks are at image resolution):
    a token set's stride is ``image_size / grid``, so ``stride_out=16`` fuses a 224-pixel image on a 14x14
    grid, ``stride_out=8`` on 28x28 (``ceil(out_size / stride_out)`` per side).

    ``dims`` lists each level's width; an int means ``levels`` levels of that width (default 4: the last
    four blocks of a ViT, as in DINOv2). ``width`` defaults to ``min(max(dims), 256)``.

    Example:
        >>> head = MultiScaleSegHead([96, 192], 3)
        >>> feats = [(torch.zeros(2, 16, 96), (4, 4)), (torch.zeros(2, 4, 192), (2, 2))]
        >>> head(feats, (32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    input_key: ClassVar[str] = "tokens"
    outputs: ClassVar[str] = "logits"
    trainable: ClassVar[bool] = True
    multiscale: ClassVar[bool] = True

    def __init__(
        self,
        dims: Sequence[int] | int,
        num_classes: int,
        *,
        width: int | None = None,
        stride_out: int | None = None,
        levels: int = 4,
    ) -> None:
        super().__init__()
        dims = [int(dims)] * levels if isinstance(dims, int) else [int(d) for d in dims]
        if not dims:
            raise ConfigError("multiscale segmentation head needs at least one level in dims")
        width = width or min(max(dims), 256)
        _check_positive(num_classes=num_classes, width=width, stride_out=stride_out, dims=min(dims))
        self.dims, self.stride_out = dims, stride_out
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, width, 1, bias=False), nn.BatchNorm2d(width)) for d in dims
        )
        self.classifier = _classifier(width, num_classes)

    def fused_size(self, grids: Sequence[Sequence[int]], out_size: Sequence[int]) -> Size:
        """The grid the levels are summed on: ``ceil(out_size / stride_out)``, or the finest of ``grids``."""
        if self.stride_out is not None:
            h, w = _size(out_size)
            return math.ceil(h / self.stride_out), math.ceil(w / self.stride_out)
        return max((_size(g) for g in grids), key=lambda g: g[0] * g[1])

    def forward(
        self, features: list[tuple[torch.Tensor, tuple[int, int]]], out_size: Sequence[int]
    ) -> torch.Tensor:
        self._check_levels(features)
        size = self.fused_size([grid for _, grid in features], out_size)
        fused = None
        for proj, (tokens, grid) in zip(self.proj, features):
            x = proj(tokens_to_map(tokens.float(), grid))
            x = bilinear_resize(x, size)
            fused = x if fused is None else fused + x
        assert fused is not None
        return _classify(self.classifier, fused, _size(out_size))

    def _check_levels(self, features: list[tuple[torch.Tensor, tuple[int, int]]]) -> None:
        got = [int(tokens.shape[-1]) for tokens, _ in features]
        if got != self.dims:
            raise DataError(
                f"multiscale segmentation head was built for {len(self.dims)} levels of widths {self.dims}, "
                f"got {len(got)} token sets of widths {got}; build it with dims={got}"
            )


class ProgressiveDecoderHead(nn.Module):
    """A light progressive-upsampling decoder (SETR-PUP style) on the patch-token map.

    ``stages`` blocks (default 4: x16, a ViT-B/16 grid back to its image), each conv3x3 (``width``
    channels) + BatchNorm + ReLU followed by a x2 bilinear upsampling capped at ``out_size``, so every block
    runs (and trains) on every input; once the map reaches ``out_size`` the remaining blocks keep that size.
    A 1x1 conv maps to classes, and a last bilinear resize gives exactly ``out_size`` (when ``stages``
    doublings fall short of it, or the grid does not divide it). The blocks follow autocast; the classifier
    and the resize run in float32.

    Example:
        >>> head = ProgressiveDecoderHead(32, 2, width=16, stages=2)
        >>> head(torch.zeros(2, 12, 32), (3, 4), (12, 16)).shape
        torch.Size([2, 2, 12, 16])
    """

    input_key: ClassVar[str] = "tokens"
    outputs: ClassVar[str] = "logits"
    trainable: ClassVar[bool] = True
    multiscale: ClassVar[bool] = False

    #: Blocks when ``stages`` is not given: four doublings, the patch stride 16 of a ViT-B/16.
    default_stages: ClassVar[int] = 4

    def __init__(self, dim: int, num_classes: int, *, width: int = 128, stages: int | None = None) -> None:
        super().__init__()
        stages = self.default_stages if stages is None else stages
        _check_positive(dim=dim, num_classes=num_classes, width=width, stages=stages)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim if i == 0 else width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for i in range(stages)
        )
        self.classifier = _classifier(width, num_classes)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int], out_size: Sequence[int]) -> torch.Tensor:
        out_size = _size(out_size)
        x = tokens_to_map(tokens.float(), grid)
        for block in self.blocks:
            x = block(x)
            x = bilinear_resize(x, (min(2 * x.shape[-2], out_size[0]), min(2 * x.shape[-1], out_size[1])))
        return _classify(self.classifier, x, out_size)


def create_segmentation_head(name: str, dim: Any, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered segmentation head ``name`` (``dim``: the token width; for ``multiscale``, a
    list of widths, one per level).

    Example:
        >>> create_segmentation_head("multiscale", [96, 192, 384], 2).multiscale
        True
    """
    return SEGMENTATION_HEADS.get(name)(dim, num_classes, **kwargs)
