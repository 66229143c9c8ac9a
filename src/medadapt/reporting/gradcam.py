"""Grad-CAM maps of a classifier (pytorch-grad-cam), with the target layer and token reshape found per family.

Only the maps: :func:`medadapt.reporting.figures.plot_gradcam` draws them. pytorch-grad-cam is imported when
:func:`gradcam_maps` runs (the ``plots`` extra).

Example:
    >>> maps = gradcam_maps(model, images, preprocess=prep)  # doctest: +SKIP
    >>> maps.shape  # [N, H, W] in [0, 1], at the images' size
    (8, 28, 28)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._optional import require
from ..data.transforms import PAD_MODES
from ..errors import ConfigError

__all__ = ["gradcam_maps", "default_target_layer"]

log = logging.getLogger(__name__)

_GRADCAM_BATCH = 16


def _norm_children(module: nn.Module) -> list[nn.Module]:
    return [
        c
        for c in module.children()
        if isinstance(c, nn.LayerNorm) or "rmsnorm" in type(c).__name__.lower().replace("_", "")
    ]


def default_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads by default, searched in ``model.backbone`` (or ``model`` if it has none).

    * Transformers (ViT, DINOv2, CLIP, Hiera, ...): the first norm of the last transformer block, a block
      being any module with two or more LayerNorm/RMSNorm children (timm ``blocks[-1].norm1``, HF
      ``layernorm_before``, open_clip ``ln_1``). Its tokens become a map through the default reshape of
      :func:`gradcam_maps` (prefix tokens dropped, patch grid).
    * CNNs: the parent module of the last ``nn.Conv2d`` (timm ResNet ``layer4[-1]``, ConvNeXt the last
      block): the last block with spatial resolution; the conv itself when it is a direct child of the
      network (EfficientNet ``conv_head``).

    Example:
        >>> default_target_layer(resnet_clf) is resnet_clf.backbone.model.layer4[-1]  # doctest: +SKIP
        True
    """
    root = getattr(model, "backbone", model)
    blocks = [m for m in root.modules() if len(_norm_children(m)) >= 2]
    if blocks:
        return _norm_children(blocks[-1])[0]
    convs = [name for name, m in root.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(
            f"found no transformer block or Conv2d in {type(root).__name__}; pass target_layer= explicitly"
        )
    parent = root.get_submodule(convs[-1].rpartition(".")[0])
    if parent is root or parent is getattr(root, "model", None):
        # A conv sitting on the network itself (EfficientNet's conv_head): the parent's output is pooled.
        return root.get_submodule(convs[-1])
    return parent


def _token_map(grid: tuple[int, int] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Layer output -> ``[B, D, h, w]``: tokens drop their prefix and fold to the grid; NHWC turns NCHW."""

    def reshape(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # [B, N, D]: [CLS] / register tokens come first, then patches in row-major order
            h, w = grid or (math.isqrt(x.shape[1]),) * 2
            if x.shape[1] < h * w:
                raise ConfigError(
                    f"the target layer gives {x.shape[1]} tokens, fewer than the {h}x{w} patch grid; "
                    "pass reshape_transform= for this model"
                )
            return x[:, x.shape[1] - h * w :].reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)
        if x.ndim == 4 and grid and tuple(x.shape[1:3]) == grid and tuple(x.shape[2:4]) != grid:
            return x.permute(0, 3, 1, 2)  # channels-last stages (Swin, Hiera)
        return x

    return reshape


@contextlib.contextmanager
def _eval_without_weight_grads(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen weights and grad enabled inside; every mode, flag and ``.grad`` restored after.

    Grad-CAM needs gradients at the target layer, not at the weights: the input requires grad instead,
    so a frozen model works and no weight accumulates a ``.grad``. grad-cam also calls ``model.eval()``
    and ``model.zero_grad()``, which would otherwise change a model in the middle of training.
    """
    modes = {m: m.training for m in model.modules()}
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training
        for p, flag, grad in params:
            p.requires_grad_(flag)
            p.grad = grad


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


def check_images(images: torch.Tensor) -> torch.Tensor:
    """``images`` as a tensor, checked to be a raw batch ``[N, C, H, W]`` with 1 or 3 channels."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"images must be a batch [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}")
    return images


def _to_image_size(cams: np.ndarray, hw: tuple[int, int], mode: str) -> np.ndarray:
    """CAMs at the model's input size -> the raw images' size, each rescaled to [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))[:, None]
    if mode in PAD_MODES:  # the image sits centred on a canvas (Preprocess pad modes): cut it back out
        top, left = (t.shape[-2] - hw[0]) // 2, (t.shape[-1] - hw[1]) // 2
        t = t[..., top : top + hw[0], left : left + hw[1]]
    else:
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    t = t[:, 0] - t[:, 0].amin((1, 2), keepdim=True)
    peak = t.amax((1, 2), keepdim=True)
    return (t / torch.where(peak > 0, peak, 1.0)).numpy()


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients, float32 on the CPU; the model's modes are restored."""
    with _eval_without_weight_grads(model), torch.no_grad():
        return model(x).float().cpu()


def gradcam_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    targets: Sequence[int] | None = None,
    target_layer: nn.Module | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Grad-CAM maps ``[N, H, W]`` in [0, 1] at the raw images' size, one per image.

    Args:
        model: a classifier returning logits ``[B, C]`` (e.g. a :class:`~medadapt.strategies.Classifier`);
            run in eval mode without weight gradients, then left with its modes, flags and ``.grad`` as they
            were.
        images: raw ``[N, C, H, W]`` images as datasets return them (uint8, C = 1 or 3).
        preprocess: turns a batch of raw images into model input (a
            :class:`~medadapt.data.transforms.Preprocess`); its pad modes are undone by cropping.
        targets: the class explained per image; default the predicted class.
        target_layer: default :func:`default_target_layer`.
        reshape_transform: layer output -> ``[B, D, h, w]``; the default drops prefix tokens of ``[B, N, D]``
            outputs and folds the rest to the backbone's patch grid (a square grid for models without a
            ``backbone``), turns channels-last maps NCHW and leaves other maps alone.
    """
    gradcam = require("pytorch_grad_cam", extra="plots", package="grad-cam")
    model_targets = require("pytorch_grad_cam.utils.model_targets", extra="plots", package="grad-cam")
    images = check_images(images)
    if targets is not None and len(targets) != images.shape[0]:
        raise ConfigError(f"targets has {len(targets)} entries for {images.shape[0]} images")
    layer = target_layer if target_layer is not None else default_target_layer(model)
    device = model_device(model)
    maps = []
    with _eval_without_weight_grads(model):
        x = preprocess(images.to(device)).detach()
        if target_layer is None:
            layer = _with_spatial_map(model, layer, x[:1])
        reshape = reshape_transform or _token_map(_feature_grid(model, x[:1]))
        cam = gradcam.GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
        try:
            for start in range(0, x.shape[0], _GRADCAM_BATCH):
                chunk = x[start : start + _GRADCAM_BATCH].clone().requires_grad_(True)
                chosen = None if targets is None else targets[start : start + _GRADCAM_BATCH]
                wanted = (
                    None if chosen is None else [model_targets.ClassifierOutputTarget(int(c)) for c in chosen]
                )
                maps.append(cam(input_tensor=chunk, targets=wanted))
            _warn_if_one_cell(cam.activations_and_grads.activations)
        finally:
            cam.activations_and_grads.release()  # not `with cam`: its __exit__ swallows IndexErrors
    return _to_image_size(
        np.concatenate(maps), tuple(images.shape[-2:]), getattr(preprocess, "mode", "resize")
    )


def _with_spatial_map(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> nn.Module:
    """``layer``, or, when its map is 1x1 at this input size (a CNN at stride 32 on small images), the last
    earlier block of the backbone whose map is larger: a 1x1 map makes every Grad-CAM flat."""
    root = getattr(model, "backbone", model)
    parents = []
    for name, m in root.named_modules():
        if isinstance(m, nn.Conv2d):
            parent = root.get_submodule(name.rpartition(".")[0])
            if parent is not root and all(parent is not p for p in parents):
                parents.append(parent)
    if all(p is not layer for p in parents):
        return layer  # a transformer's norm layer: its token grid is what it is
    sizes: dict[int, int] = {}
    hooks = [p.register_forward_hook(lambda m, i, o: sizes.__setitem__(id(m), _cells(o))) for p in parents]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if sizes.get(id(layer), 2) > 1:
        return layer
    larger = [p for p in parents if sizes.get(id(p), 0) > 1]
    if larger:
        log.info("Grad-CAM: the default layer's map is 1x1 at this input size; using the last larger block")
        return larger[-1]
    return layer


def _cells(output: Any) -> int:
    return int(output.shape[-2:].numel()) if isinstance(output, torch.Tensor) and output.ndim == 4 else 0


def _warn_if_one_cell(activations: list[torch.Tensor]) -> None:
    if activations and activations[0].ndim == 4 and activations[0].shape[-2:].numel() == 1:
        log.warning(
            "the Grad-CAM target layer has a 1x1 map at this input size, so every map is flat; "
            "use a larger input size or pass an earlier target_layer="
        )


def _feature_grid(model: nn.Module, x: torch.Tensor) -> tuple[int, int] | None:
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "forward_features"):
        return None
    with torch.no_grad():
        return tuple(backbone.forward_features(x).grid)
