"""Batched tensor preprocessing, collation and data loaders.

Datasets return uint8 ``[C, h, w]`` images; :func:`collate` stacks them into a uint8 batch and
:class:`Preprocess` turns that batch into the float tensor a model takes (resize or zero-pad, optional
gray-to-RGB copy, normalisation), on whatever device the batch is on. Nothing here works per image in PIL.

Example:
    >>> loader = make_loader(dataset, batch_size=64)  # doctest: +SKIP
    >>> prep = Preprocess(size=(224, 224), mean=(0.5,), std=(0.5,))
    >>> x = prep(next(iter(loader))["image"].to(device))  # float32 [64, 1, 224, 224]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from .._choices import INTERPOLATIONS, PAD_MODES, RESIZE_MODES
from ..errors import ConfigError, DataError

__all__ = [
    "RESIZE_MODES",
    "PAD_MODES",
    "INTERPOLATIONS",
    "Preprocess",
    "collate",
    "make_loader",
    "pad_center",
    "resize",
]

#: Our names -> ``torch.nn.functional.interpolate`` modes ("nearest-exact" matches PIL and skimage).
_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def _pair(size: int | Sequence[int], flag: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ConfigError(f"{flag} {size!r} is not a positive size; give an int or (height, width)")
    return pair  # type: ignore[return-value]


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize float ``[B, C, h, w]`` images to ``size``; bilinear/bicubic use antialiased (PIL-like) kernels."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    mode = _TORCH_MODES[interpolation]
    if mode == "nearest-exact":
        return F.interpolate(images, size=size, mode=mode)
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)


def pad_center(
    images: torch.Tensor, size: tuple[int, int], fill: Sequence[float] | None = None
) -> torch.Tensor:
    """Pad ``[B, C, h, w]`` images to ``size`` with the original centred (extra pixel bottom/right).

    The canvas is zero, or ``fill``: one value per channel (or one for all).
    """
    h, w = images.shape[-2:]
    if h > size[0] or w > size[1]:
        raise ConfigError(
            f"--resize-mode pad cannot fit {h}x{w} images into {size[0]}x{size[1]}: padding only grows "
            "images; use --resize-mode resize or a larger input size"
        )
    if (h, w) == tuple(size):  # already fitted (e.g. by collate for a batch of mixed sizes)
        return images
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    if fill is None:
        return F.pad(images, (left, size[1] - w - left, top, size[0] - h - top))
    if len(fill) not in (1, images.shape[1]):
        raise ConfigError(
            f"the pad canvas has {len(fill)} channel values {tuple(fill)} but the images have "
            f"{images.shape[1]} channel(s); check the channel adaptation of the backbone (--channel-mode)"
        )
    # F.pad fills with one scalar; a per-channel colour needs the canvas built first
    value = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    canvas = value.expand(images.shape[0], images.shape[1], *size).clone()
    canvas[..., top : top + h, left : left + w] = images
    return canvas


@dataclass(frozen=True)
class Preprocess:
    """uint8 ``[B, C, h, w]`` (any device) -> normalised float32 ``[B, C', H, W]``.

    Args:
        size: target ``(H, W)`` (an int means square).
        mode: ``"resize"``, ``"pad"`` (the raw image centred on a black canvas) or ``"pad_mean"`` (on a
            canvas of ``mean``, zero after normalising; a gray image meant for three channels is copied to
            them first, so each channel gets its own mean), ``--resize-mode``.
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"`` (``--interpolation``); bilinear and
            bicubic are antialiased, bicubic output is clamped to [0, 1].
        mean, std: per-channel statistics of the tensor the model takes, one value per channel ``C'``
            (both ``None``: no normalisation, values stay in [0, 1]).
        repeat_channels: copy one gray channel to three after resizing (``C' = 3``).

    Example:
        >>> prep = Preprocess(size=(64, 64), mean=(0.5,), std=(0.25,))
        >>> prep(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([2, 1, 64, 64])
    """

    size: tuple[int, int]
    mode: str = "resize"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    repeat_channels: bool = False

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("size", _pair(self.size, "--image-size"))
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"--resize-mode {self.mode!r} is not valid; choose one of {list(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"--interpolation {self.interpolation!r} is not valid; choose one of {list(INTERPOLATIONS)}"
            )
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"give both mean and std or neither (got mean={self.mean}, std={self.std})")
        if self.mean is None:
            if self.mode == "pad_mean":
                raise ConfigError(
                    "--resize-mode pad_mean pads with the normalisation mean, but this preprocessing has no "
                    "mean/std; use --resize-mode pad (a black canvas)"
                )
            return
        set_("mean", tuple(float(m) for m in self.mean))
        set_("std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(f"mean {self.mean} and std {self.std} need one value per channel each")
        if min(self.std) <= 0:
            raise ConfigError(f"std {self.std} must be positive")

    @classmethod
    def for_backbone(cls, spec: Any, size: int | Sequence[int], **kwargs: Any) -> Preprocess:
        """The preprocessing a backbone with ``spec`` (its ``mean``, ``std``, ``channel_mode``) needs at ``size``.

        ``kwargs`` are the other fields (``mode``, ``interpolation``). Deriving it here keeps the statistics
        and the gray-to-RGB copy from being restated by hand wherever a model is run.
        """
        if kwargs.get("mode") == "pad_mean" and spec.channel_mode in ("sum", "mean", "first"):
            raise ConfigError(
                f"--resize-mode pad_mean pads with the model's mean colour, but --channel-mode "
                f"{spec.channel_mode} folded the normalisation into the first layer, so there is no colour to "
                "pad with (gray images would get a black canvas); use --channel-mode repeat, or --resize-mode pad"
            )
        return cls(size=size, mean=spec.mean, std=spec.std, repeat_channels=spec.channel_mode == "repeat",
                   **kwargs)  # fmt: skip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self._fit(_to_unit_float(images))
        if self.repeat_channels and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self._normalize(x) if self.mean is not None else x.contiguous()

    def fit_one(self, image: torch.Tensor) -> torch.Tensor:
        """One uint8 (or [0, 1] float) ``[C, h, w]`` image brought to ``size`` as :meth:`__call__` would:
        float ``[C, H, W]`` in [0, 1], not yet normalised. :func:`collate` uses it for batches of mixed sizes
        (``make_loader(..., fit=prep.fit_one)``), so an image's result does not depend on its batch."""
        return self._fit(_to_unit_float(image[None]))[0]

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "pad":
            return pad_center(x, self.size)
        if self.mode == "pad_mean":
            if self.repeat_channels and x.shape[1] == 1 and len(self.mean) == 3:
                x = x.expand(-1, 3, -1, -1)
            return pad_center(x, self.size, self.mean)
        x = resize(x, self.size, self.interpolation)
        return x.clamp_(0.0, 1.0) if self.interpolation == "bicubic" else x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.mean):
            raise ConfigError(
                f"the model takes {len(self.mean)} channel(s) (mean {self.mean}) but the images have "
                f"{x.shape[1]} after preprocessing (repeat_channels={self.repeat_channels}); check the "
                "channel adaptation of the backbone"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    if images.ndim != 4:
        raise DataError(f"expected a batch [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise DataError(f"expected uint8 or float images, got {images.dtype}")


# ------------------------------------------------------------------------------------ batching


def _resize_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One uint8 ``[C, h, w]`` image resized on tensors (antialiased bilinear), back to uint8."""
    if tuple(image.shape[-2:]) == size:
        return image
    out = resize(image[None].float(), size, "bilinear")[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _stack_images(images: list[torch.Tensor], size: int | Sequence[int] | None) -> torch.Tensor:
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) == 1:
        return torch.stack(images)
    channels = {s[0] for s in shapes}
    if len(channels) > 1:
        raise DataError(f"images in one batch have different channel counts {sorted(channels)}")
    if size is None:
        raise DataError(
            f"images in one batch have different sizes ({sorted(s[1:] for s in shapes)[:4]} ...); "
            "pass a size (--image-size) so they are resized to one"
        )
    target = _pair(size, "--image-size")
    return torch.stack([_resize_uint8(im, target) for im in images])


def collate(
    samples: list[dict[str, Any]],
    size: int | Sequence[int] | None = None,
    fit: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Stack samples into ``{"image": uint8 [B, C, H, W], "label": [B, ...], "index": LongTensor[B]}``.

    Images of one size are stacked as they are. A batch mixing sizes has each image brought to one size
    first: by ``fit`` (e.g. :meth:`Preprocess.fit_one`: the model's own resize or pad, float [0, 1] images)
    when given, else resized to ``size`` (antialiased bilinear, back to uint8). Any further keys go through
    torch's ``default_collate``.
    """
    images = [s["image"] for s in samples]
    mixed = fit is not None and len({tuple(im.shape) for im in images}) > 1
    batch = {
        "image": torch.stack([fit(im) for im in images]) if mixed else _stack_images(images, size),
        "label": torch.stack([torch.as_tensor(s["label"]) for s in samples]),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
    }
    extra = [k for k in samples[0] if k not in batch]
    if "mask" in extra and len({tuple(s["mask"].shape) for s in samples}) > 1:
        sizes = sorted({tuple(s["mask"].shape) for s in samples})[:3]
        raise DataError(
            f"a batch mixes mask sizes (e.g. {sizes}); masks are not resized to the model's input: give the "
            "dataset one size (--size 224, or ?size=224 in its address), which resizes images and masks together"
        )
    for key in extra:
        batch[key] = default_collate([s[key] for s in samples])
    return batch


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    size: int | Sequence[int] | None = None,
    fit: Callable[[torch.Tensor], torch.Tensor] | None = None,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader with :func:`collate` and a seeded generator (same seed, same order).

    ``size`` / ``fit``: how :func:`collate` unifies a batch of mixed image sizes. ``pin_memory`` defaults to
    whether CUDA is available.

    Example:
        >>> loader = make_loader(ds, batch_size=128, shuffle=True, seed=1)  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size!r} must be a positive integer")
    if num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers!r} must be 0 or more")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size=size, fit=fit),
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
    )
