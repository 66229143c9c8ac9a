"""Seeded, vectorised training augmentation on image batches.

Augmentation runs on the collated uint8 batch ``[B, C, h, w]`` on the training device, before
:class:`~medadapt.data.transforms.Preprocess`: it returns float images in [0, 1] of the same shape, which
``Preprocess`` then resizes / pads and normalises as for evaluation. Working at the stored resolution
keeps ``--resize-mode pad`` (MedMNIST+) meaningful: the crop never mixes image and padding.

Every random parameter (crop box, flip, jitter factors) is drawn per image from the ``torch.Generator``
passed in, on the CPU, so the same generator state gives the same batch on any device, and torch's global
RNG is never touched. The transforms are applied to the whole batch at once (one ``grid_sample``).

Presets (``--augment``):

* ``none``: no augmentation.
* ``light``: random resized crop with scale (0.7, 1), horizontal flip.
* ``natural``: the ImageNet-style recipe used when fine-tuning natural-image models (Inception crop):
  random resized crop with scale (0.08, 1) and aspect ratio (3/4, 4/3), horizontal flip, colour jitter
  of brightness and contrast 0.4 (and saturation 0.4 for RGB; gray images get brightness and contrast only).

Example:
    >>> aug = make_augment("natural")
    >>> out = aug(images, torch.Generator().manual_seed(0))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where batches are augmented: TrainConfig checks presets without it
    import torch

__all__ = ["AUGMENT_PRESETS", "Augment", "make_augment"]


@dataclass(frozen=True)
class Augment:
    """One augmentation recipe; ``Augment()`` is the identity (uint8 input is returned unchanged)."""

    crop_scale: tuple[float, float] | None = None  # area fraction of a random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0  # RGB only

    @property
    def is_identity(self) -> bool:
        colour = self.brightness or self.contrast or self.saturation
        return self.crop_scale is None and not self.hflip and not colour

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (or [0, 1] float) ``[B, C, H, W]`` -> augmented float ``[B, C, H, W]`` in [0, 1]."""
        return self.pair(images, None, generator)[0]

    def pair(
        self, images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images as :meth:`__call__`, and integer masks ``[B, H, W]`` moved by the same crop and flip
        (nearest-neighbour, so no new labels appear; colour changes leave them alone). The same generator
        state gives the same images with or without masks."""
        if self.is_identity:
            return images, masks
        if images.ndim != 4:
            raise DataError(f"augmentation expects a batch [B, C, H, W], got shape {tuple(images.shape)}")
        if masks is not None and (masks.ndim != 3 or masks.shape != (images.shape[0], *images.shape[2:])):
            raise DataError(
                f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}: a segmentation batch "
                "needs masks [B, H, W] at the images' stored size (give the dataset one size: --size)"
            )
        import torch
        import torch.nn.functional as F

        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        grid = self._grid(x, generator)
        if grid is not None:
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            if masks is not None:
                moved = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="border",
                                      align_corners=False)  # fmt: skip
                masks = moved[:, 0].round().to(masks.dtype)
        return self._colour(x, generator).clamp_(0.0, 1.0), masks

    def _grid(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        """The sampling grid of this batch's random crop and flip (``None``: no geometric change)."""
        import torch
        import torch.nn.functional as F

        b, _, h, w = x.shape
        if self.crop_scale is None and not self.hflip:
            return None
        if self.crop_scale is not None:
            sx, sy, cx, cy = _crop_boxes(b, h, w, self.crop_scale, self.crop_ratio, gen)
        else:
            sx, sy, cx, cy = torch.ones(b), torch.ones(b), torch.zeros(b), torch.zeros(b)
        if self.hflip:
            sx = torch.where(torch.rand(b, generator=gen) < 0.5, -sx, sx)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
        return F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)

    def _colour(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        import torch

        b, c = x.shape[:2]

        def factors(strength: float) -> torch.Tensor:
            f = 1 + strength * (2 * torch.rand(b, generator=gen) - 1)
            return f.to(x.device, x.dtype).view(b, 1, 1, 1)

        if self.brightness:
            x = x * factors(self.brightness)
        if self.contrast:
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factors(self.contrast) + mean
        if self.saturation and c == 3:
            gray = _gray(x)
            x = (x - gray) * factors(self.saturation) + gray
        return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance ``[B, 1, H, W]`` (ITU-R 601 weights, as torchvision); gray input is returned as is."""
    if x.shape[1] != 3:
        return x[:, :1]
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _crop_boxes(
    b: int,
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
    tries: int = 10,
) -> tuple[torch.Tensor, ...]:
    """Random resized crop boxes as affine parameters: half-sizes ``sx, sy``, centres ``cx, cy`` in [-1, 1].

    torchvision's rule, vectorised: up to ``tries`` (area, log-ratio) draws per image, the first that fits
    is used; images where none fits get the whole image.
    """
    import torch

    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, tries, generator=gen))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, tries, generator=gen))
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
    first = fits.float().argmax(dim=1)
    ok = fits.any(dim=1)
    cw = torch.where(ok, cw.gather(1, first[:, None])[:, 0], torch.tensor(float(w)))
    ch = torch.where(ok, ch.gather(1, first[:, None])[:, 0], torch.tensor(float(h)))
    left = torch.floor(torch.rand(b, generator=gen) * (w - cw + 1))
    top = torch.floor(torch.rand(b, generator=gen) * (h - ch + 1))
    # pixel box [left, left + cw) -> normalised centre and half-extent (align_corners=False coordinates)
    return cw / w, ch / h, (2 * left + cw) / w - 1, (2 * top + ch) / h - 1


#: ``--augment`` presets (see the module docstring).
AUGMENT_PRESETS: dict[str, Augment] = {
    "none": Augment(),
    "light": Augment(crop_scale=(0.7, 1.0), hflip=True),
    "natural": Augment(crop_scale=(0.08, 1.0), hflip=True, brightness=0.4, contrast=0.4, saturation=0.4),
}


def make_augment(name: str) -> Augment:
    """The augmentation preset ``name`` (one of :data:`AUGMENT_PRESETS`)."""
    try:
        return AUGMENT_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"--augment {name!r} is not a preset; choose one of {list(AUGMENT_PRESETS)}"
        ) from None
