"""Segmentation masks, shared by ``segfolder:`` datasets and ``csv:`` datasets with a ``mask_path`` column.

**Masks.** Values are class indices, 0 the background, read by :func:`read_mask`:

- index PNG / TIFF / BMP (modes 1, L, I, I;16) as they are; with two classes, masks saved as 0/255 are read
  as 0/1. A value outside the classes is a bad pair (the error names the file and the values).
- palette PNG (mode P): the **palette index** is the class (the palette only colours it for display, as in
  PASCAL VOC). With the ``palette`` option, pixels are mapped by **colour** instead (colour k is class k;
  P files go through their own palette; RGB PNG masks need it); a colour outside it is a bad pair (colours
  must match exactly, so not for JPEG masks).
- JPEG: lossy, so binary only: luma ``> threshold`` (default 127, i.e. 128..255) is class 1.

**Classes** (:func:`mask_classes`): ``classes=a,b``, else a class file (one name per line, background first;
blank and ``#`` lines skipped), else ``background`` and one foreground name.

**Resizing.** With ``size=S`` (or the ``size`` loader argument, ``--size``, which wins) images are resized to
S×S at load with antialiased ``interpolation`` (default bilinear, :func:`medadapt.data.transforms.resize`)
and masks with nearest neighbour ("nearest-exact", as PIL): masks are never interpolated, so no new label
values appear. Without ``size`` both keep the file's size, so batches of mixed sizes need ``size``.

**Checks and metadata** (:func:`scan_masks`): an image and its mask must have one size; ``empty=error`` makes
a mask without foreground a bad pair. Each read mask gives ``foreground`` (its foreground share), the
"has foreground" label (``labels`` of a segmentation dataset are ``[N, 1]`` 0/1 flags) and optionally
:func:`object_size`, banded by :func:`size_bands`.

Mask options (:data:`MASK_OPTIONS`, parsed by :class:`MaskOptions`): ``palette=000000,ff0000`` (``RRGGBB`` or
``R-G-B`` per class), ``threshold`` (127), ``empty=allow|error``, ``size``, ``interpolation`` (nearest,
bilinear, bicubic).
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from .._choices import INTERPOLATIONS
from ..errors import ConfigError, DataError
from .base import MedicalDataset, where_is
from .images import _PIL_ERRORS, DEFAULT_INTENSITY, Intensity, is_dicom_file, read_image

if TYPE_CHECKING:
    import torch

__all__ = [
    "MASK_OPTIONS",
    "SIZE_BANDS",
    "MaskOptions",
    "MaskScan",
    "SegmentationDataset",
    "image_shape",
    "resize_image",
    "mask_classes",
    "mask_columns",
    "object_size",
    "parse_colour",
    "read_lines",
    "read_mask",
    "scan_masks",
    "size_bands",
]

logger = logging.getLogger(__name__)

#: Address options about masks, accepted by every kind that reads masks.
MASK_OPTIONS = ("palette", "threshold", "empty", "size", "interpolation")
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
Palette = tuple[tuple[int, int, int], ...]


# --------------------------------------------------------------------------------------------- dataset


def resize_image(img: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """A uint8 ``[C, H, W]`` image resized to ``size`` x ``size`` (uint8 again, rounded)."""
    import torch

    from .transforms import resize  # torch: imported on first use, so the dataset layer imports without it

    x = resize(img[None].float().div_(255), (size, size), interpolation)
    return x[0].mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class SegmentationDataset(MedicalDataset):
    """Image/mask pairs read on demand; ``labels`` is ``[N, 1]`` "has foreground" (0/1)."""

    task = "segmentation"

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: list[str],
        n_channels: int,
        paths: list[str],
        mask_paths: list[str],
        labels: np.ndarray,
        metadata: pd.DataFrame,
        skipped: list[tuple[Any, str]],
        size: int | None,
        interpolation: str,
        read: Callable[[str], np.ndarray],
        patient_col: str = "patient_id",
        intensity: Intensity = DEFAULT_INTENSITY,
    ) -> None:
        assert len(paths) == len(mask_paths) == len(labels) == len(metadata)
        self.name, self.split, self.classes, self.n_channels = name, split, classes, n_channels
        self.paths, self.mask_paths, self.labels, self.metadata = paths, mask_paths, labels, metadata
        self.skipped, self.size, self.interpolation, self._read = skipped, size, interpolation, read
        self.patient_col, self.intensity = patient_col, intensity

    @classmethod
    def wrap(
        cls,
        base: MedicalDataset,
        *,
        mask_paths: list[str],
        skipped: list[tuple[Any, str]],
        read: Callable[[str], np.ndarray],
        opts: MaskOptions,
        size: int | None = None,
    ) -> SegmentationDataset:
        """The images of ``base`` (one loaded split) with their masks; the ``size`` loader argument wins over
        ``opts.size``."""
        if getattr(base, "frames", None) is not None:
            raise ConfigError(
                f"{base.name}: frames=all makes one sample per frame of a multi-frame DICOM, but a mask belongs "
                "to a whole image; use frames=first for segmentation"
            )
        if size is not None and opts.size is not None and size != opts.size:
            logger.warning("size=%s overrides ?size=%s in %s", size, opts.size, base.name)
        return cls(
            name=base.name,
            split=base.split,
            classes=base.classes,
            n_channels=base.n_channels,
            paths=base.paths,
            mask_paths=mask_paths,
            labels=base.labels,
            metadata=base.metadata,
            skipped=skipped,
            size=size if size is not None else opts.size,
            interpolation=opts.interpolation,
            read=read,
            patient_col=getattr(base, "patient_col", None) or "patient_id",
            intensity=getattr(base, "intensity", DEFAULT_INTENSITY),
        )

    def image(self, i: int) -> torch.Tensor:
        """uint8 ``[C, H, W]``, resized to ``size`` when given."""
        try:
            img = read_image(self.paths[i], self.n_channels, intensity=self.intensity)
        except DataError as e:  # passed the header probe, fails to decode: name its row
            raise DataError(f"{self.name} ({self.split} split), {where_is(self, i)}: {e}") from e
        return img if self.size is None else resize_image(img, self.size, self.interpolation)

    def mask(self, i: int) -> torch.Tensor:
        """int64 ``[H, W]`` class indices, resized to ``size`` by nearest neighbour when given."""
        import torch

        from .transforms import resize

        mask = torch.from_numpy(self._read(self.mask_paths[i]).astype(np.int64))
        if self.size is None:
            return mask
        return resize(mask[None, None].float(), (self.size, self.size), "nearest")[0, 0].long()

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.name!r}, split={self.split!r}, n={len(self)}, classes={self.classes})"
        )


# ------------------------------------------------------------------------------------------- reading


def read_mask(
    path: str | Path,
    *,
    n_classes: int,
    threshold: int = 127,
    palette: Palette | None = None,
) -> np.ndarray:
    """One mask file as an ``[H, W]`` integer array of class indices (rules: see the module docstring).

    Example:
        >>> read_mask("masks/a.png", n_classes=3).max() < 3  # doctest: +SKIP
        True
    """
    try:
        with Image.open(path) as im:
            if palette is not None:
                return _by_colour(np.asarray(im.convert("RGB")), palette, path)
            if im.format == "JPEG" or Path(path).suffix.lower() in _JPEG_SUFFIXES:
                if n_classes != 2:
                    raise DataError(
                        f"mask {path} is a JPEG, which can only hold a binary mask (lossy compression blurs "
                        f"class indices), but there are {n_classes} classes; save multi-class masks as PNG"
                    )
                return (np.asarray(im.convert("L")) > threshold).astype(np.uint8)
            values = _index_values(im, path)
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read mask {path}: {e}") from e
    return _checked(values, n_classes, path)


def _index_values(im: Image.Image, path: str | Path) -> np.ndarray:
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 0] != rgb[..., 2]).any():
            raise DataError(f"mask {path} is a colour image; map its colours to classes with palette=...")
        return rgb[..., 0]
    values = np.asarray(im.getchannel("L") if im.mode == "LA" else im)
    if values.dtype == bool:
        return values.astype(np.uint8)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise DataError(f"mask {path} holds non-integer values; class indices must be integers")
    return values


def _checked(values: np.ndarray, n_classes: int, path: str | Path) -> np.ndarray:
    if values.size == 0:
        raise DataError(f"mask {path} has no pixels")
    low, high = values.min(), values.max()
    if n_classes == 2 and high == 255 and not ((values != 0) & (values != 255)).any():
        return (values == 255).astype(np.uint8)  # a binary mask saved as 0/255
    if low < 0 or high >= n_classes:
        bad = np.unique(values[(values < 0) | (values >= n_classes)])
        shown = ", ".join(str(v) for v in bad[:8].tolist()) + (" ..." if len(bad) > 8 else "")
        raise DataError(
            f"mask {path} has values {shown} outside the {n_classes} classes (0..{n_classes - 1}); "
            "declare the classes (classes=... or a classes.txt file)"
        )
    return values.astype(np.int64) if values.dtype.kind == "f" else values


def _by_colour(rgb: np.ndarray, palette: Palette, path: str | Path) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
    order = np.argsort(table)
    pos = np.searchsorted(table[order], codes).clip(max=len(table) - 1)
    known = table[order][pos] == codes
    if not known.all():
        unknown = [f"{c:06x}" for c in np.unique(codes[~known])[:8].tolist()]
        raise DataError(f"mask {path} has colours {', '.join(unknown)} that are not in palette=...")
    return order[pos].astype(np.uint8)


def image_shape(path: str) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (DICOM: from its pixels)."""
    if is_dicom_file(path):
        return tuple(read_image(path, 1).shape[-2:])
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except _PIL_ERRORS as e:
        raise DataError(f"unreadable image {path}: {e}") from e


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MaskOptions:
    """The :data:`MASK_OPTIONS` of a dataset address, checked."""

    palette: Palette | None = None
    threshold: int = 127
    empty: str = "allow"
    size: int | None = None
    interpolation: str = "bilinear"

    @classmethod
    def parse(cls, options: dict[str, Any]) -> MaskOptions:
        """From an address's options; keys that are not mask options are ignored."""
        values = {k: v for k, v in options.items() if k in MASK_OPTIONS}
        if "palette" in values:
            raw = values["palette"]
            tokens = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            values["palette"] = tuple(parse_colour(str(t)) for t in tokens if str(t).strip())
        return cls(**values)

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (is_int(self.threshold) and 0 <= self.threshold < 255):
            raise ConfigError(f"threshold={self.threshold!r} is not valid; give an integer from 0 to 254")
        if self.empty not in ("allow", "error"):
            raise ConfigError(f"empty={self.empty!r} is not valid; choose allow or error")
        if self.size is not None and not (is_int(self.size) and self.size > 0):
            raise ConfigError(f"size={self.size!r} is not valid; give a positive integer (pixels)")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation={self.interpolation!r} is not valid; choose one of {INTERPOLATIONS}"
            )
        if self.palette is not None and (
            len(self.palette) < 2 or len(set(self.palette)) != len(self.palette)
        ):
            raise ConfigError("palette=... must list two or more distinct colours, one per class")

    def reader(self, n_classes: int) -> Callable[[str], np.ndarray]:
        """``read(path) -> [H, W]`` class indices with these options (picklable, for loader workers)."""
        return functools.partial(
            read_mask, n_classes=n_classes, threshold=self.threshold, palette=self.palette
        )


def parse_colour(token: str) -> tuple[int, int, int]:
    """``RRGGBB`` (``#`` optional) or ``R-G-B`` as an ``(r, g, b)`` tuple."""
    text = token.strip().lstrip("#")
    if len(text) == 6 and all(c in string.hexdigits for c in text):
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    parts = text.split("-")
    if len(parts) == 3 and all(p.isdigit() and int(p) < 256 for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    raise ConfigError(
        f"palette colour {token!r} is not valid; give RRGGBB or R-G-B, e.g. palette=000000,ff0000"
    )


def read_lines(path: Path) -> list[str]:
    """The lines of a text file, stripped, without blank and ``#`` lines."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def mask_classes(
    given: list[str] | None,
    file: Path | None = None,
    *,
    default: str = "foreground",
    palette: Palette | None = None,
) -> list[str]:
    """Class names, background first: ``given``, else the lines of ``file`` when it exists, else
    ``["background", default]``; a ``palette`` must have one colour per class."""
    if given is not None:
        names = list(given)
        if len(names) < 2:
            raise ConfigError(
                f"classes={','.join(names)!r}: segmentation needs two or more (background first)"
            )
    elif file is not None and file.is_file():
        names = read_lines(file)
        if len(names) < 2 or len(set(names)) != len(names):
            raise DataError(f"{file} must list two or more distinct class names, background first")
    else:
        names = ["background", default]
    if palette is not None and len(palette) != len(names):
        raise ConfigError(
            f"palette has {len(palette)} colours but there are {len(names)} classes {names}; give one "
            "colour per class (name the classes with classes=... or a classes.txt file)"
        )
    return names


# -------------------------------------------------------------------------------------- scan, metadata


@dataclass
class MaskScan:
    """What :func:`scan_masks` found, per row (rows it did not read: label 0, NaN sizes)."""

    labels: np.ndarray  # [N, 1] int64 "has foreground"
    foreground: np.ndarray  # [N] foreground share of the mask
    object_size: np.ndarray  # [N] :func:`object_size`, when asked for
    errors: dict[int, str]  # row -> why the pair is bad


def scan_masks(
    images: Sequence[str],
    masks: Sequence[str],
    rows: Iterable[int],
    read: Callable[[str], np.ndarray],
    *,
    empty: str = "allow",
    names: tuple[Sequence[str], Sequence[str]] | None = None,
    sizes: bool = False,
) -> MaskScan:
    """Read the masks of ``rows`` (indices into the ``images`` / ``masks`` paths) and check each pair: the
    mask readable and within the classes (``read``), the image's size, foreground unless ``empty="allow"``.
    ``names`` are the image and mask names errors show (default: the paths); ``sizes`` adds
    :func:`object_size`."""
    n = len(images)
    labels, foreground = np.zeros((n, 1), dtype=np.int64), np.full(n, np.nan)
    objects, errors = np.full(n, np.nan), {}
    image_names, mask_names = names or (images, masks)
    for i in (int(i) for i in rows):
        try:
            mask, shape = read(masks[i]), image_shape(images[i])
        except DataError as e:
            errors[i] = str(e)
            continue
        if mask.shape != shape:
            (h, w), (mh, mw) = shape, mask.shape
            errors[i] = (
                f"image {image_names[i]} is {w}x{h} but its mask is {mw}x{mh} ({mask_names[i]}); "
                "a mask must have its image's size"
            )
            continue
        foreground[i] = np.count_nonzero(mask) / mask.size
        labels[i, 0] = int(foreground[i] > 0)
        if sizes:
            objects[i] = object_size(mask)
        if empty == "error" and not labels[i, 0]:
            errors[i] = f"mask {mask_names[i]} has no foreground (empty=allow keeps such masks)"
    return MaskScan(labels, foreground, objects, errors)


def object_size(mask: np.ndarray) -> float:
    """Largest bounding-box area of a connected foreground region (8-connected, any class but 0) / the
    mask's area; 0 for an empty mask. Boxes as Kvasir-SEG's ``bboxes.json`` draws them around polyps.

    Example:
        >>> m = np.zeros((10, 10), dtype=np.uint8); m[0:2, 0:5] = 1; m[6, 6] = 2
        >>> object_size(m)
        0.1
    """
    from scipy import ndimage

    regions, n = ndimage.label(mask != 0, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return 0.0
    boxes = ndimage.find_objects(regions)
    return max((s[0].stop - s[0].start) * (s[1].stop - s[1].start) for s in boxes) / mask.size


#: Object size bands (upper bound of the box's share of the image, name): small objects are the hard case.
SIZE_BANDS = ((0.05, "small (<5%)"), (0.20, "medium (5-20%)"), (1.0, "large (>20%)"))


def mask_columns(
    meta: pd.DataFrame, source: str, foreground: np.ndarray, object_size: Sequence[float] | None = None
) -> pd.DataFrame:
    """``meta`` plus the mask metadata: ``object_size`` and its ``object_size_band`` (when sizes are given;
    NaN: unknown) and ``foreground``; ``meta`` (from ``source``) must not have the last two already."""
    for taken in ("foreground", "object_size_band"):
        if taken in meta.columns:
            raise DataError(
                f"{source} has a column {taken!r}, which medadapt computes from the masks; rename it"
            )
    meta = meta.copy()
    if object_size is not None:
        meta["object_size"] = np.asarray(object_size, dtype=float)
        meta["object_size_band"] = size_bands(meta["object_size"])
    meta["foreground"] = foreground
    return meta


def size_bands(sizes: pd.Series) -> pd.Series:
    """The :data:`SIZE_BANDS` name of each object size (a box's share of the image); empty where unknown."""
    bounds = [0.0] + [b for b, _ in SIZE_BANDS]
    bands = pd.cut(sizes, bins=bounds, labels=[n for _, n in SIZE_BANDS], include_lowest=True)
    return bands.astype(object).where(sizes.notna(), "")
