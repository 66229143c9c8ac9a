"""Reading one image file (PNG, JPEG, TIFF, BMP or DICOM) as a uint8 tensor, and cheap header probes.

Intensities follow one :class:`Intensity` rule per dataset (options ``voi``, ``window``, ``frames``):

- PIL integer images are scaled by their **bit depth**, never per image, so one dataset keeps one intensity
  scale: 8-bit modes (L, RGB, P, ...) as they are, 16-bit (``I;16*``) as ``v / 65535``, 32-bit ``I`` by the
  TIFF Bits Per Sample / Sample Format tags (PNG ``I``: 16-bit unsigned; otherwise signed 32-bit).
- Float images (mode ``F``) have no bit depth: they use their own min/max (under ``stored``/``full``).
- ``voi=minmax`` uses each image's min/max for every format; ``window=C,W`` applies the DICOM LINEAR window
  to the raw pixel values (0..255 for 8-bit, 0..65535 for 16-bit files, RGB values per channel).
- DICOM goes through :mod:`medadapt.data.dicom` (pydicom's modality, VOI and palette LUTs).
- Multi-page TIFF and animated images give their first page; ``frames`` applies to DICOM only.

Colour: RGBA/P/CMYK become RGB, LA becomes L (alpha dropped); RGB → gray uses PIL's ITU-R 601-2 luma.
Every failure is a :class:`~medadapt.errors.DataError` whose message names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import DataError
from ._intensity import DEFAULT_INTENSITY, INTENSITY_OPTIONS, ImageInfo, Intensity, apply_fixed

if TYPE_CHECKING:
    import torch

from .dicom import is_dicom, probe_dicom, read_dicom

__all__ = [
    "read_image",
    "probe_image",
    "is_dicom_file",
    "Intensity",
    "INTENSITY_OPTIONS",
    "ImageInfo",
    "GRAY_MODES",
]

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_TIFF_BITS, _TIFF_SAMPLE_FORMAT, _TIFF_SIGNED = 258, 339, 2


def read_image(
    path: str | os.PathLike,
    channels: int,
    *,
    intensity: Intensity = DEFAULT_INTENSITY,
    frame: int | None = None,
) -> torch.Tensor:
    """Read one image file (PIL formats or DICOM) as a uint8 ``Tensor[channels, H, W]``.

    ``frame`` is a DICOM frame index for ``frames=all`` datasets (ignored for other formats).
    """
    if is_dicom_file(path):
        arr = read_dicom(path, intensity=intensity, frame=frame)
    else:
        arr = _read_pil(path, intensity)
    arr = _to_channels(arr, channels)
    import torch  # imported on first read: the dataset layer itself imports without torch

    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def probe_image(
    path: str | os.PathLike, *, verify: bool = False, intensity: Intensity = DEFAULT_INTENSITY
) -> ImageInfo:
    """Check one image file; return its :class:`ImageInfo` (channels 1 or 3, frame count).

    By default only the header is read (DICOM: the checks of :mod:`medadapt.data.dicom`, including the
    length of uncompressed pixel data). ``verify`` decodes the whole image through the same pipeline as
    :func:`read_image` (PIL: ``load()``), so every unreadable file is found before training.
    """
    if is_dicom_file(path):
        return probe_dicom(path, verify=verify, intensity=intensity)
    try:
        with Image.open(path) as im:
            mode = im.mode
            if verify:
                im.verify()  # checksums (PNG CRCs); the image must be reopened afterwards
        if verify:
            with Image.open(path) as im:
                _pil_to_uint8(im, intensity)  # a full decode: finds truncated data verify() misses
    except _PIL_ERRORS as e:
        raise DataError(f"not a readable image {os.fspath(path)}: {e}") from e
    return ImageInfo(channels=1 if mode in GRAY_MODES or mode.startswith(("I;", "F;")) else 3)


def is_dicom_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in _DICOM_SUFFIXES or is_dicom(path)


def _read_pil(path: str | os.PathLike, intensity: Intensity) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return _pil_to_uint8(im, intensity)
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read image {os.fspath(path)}: {e}") from e


def _pil_to_uint8(im: Image.Image, intensity: Intensity) -> np.ndarray:
    """Decode ``im`` fully and apply ``intensity``: ``(H, W)`` or ``(H, W, 3)`` uint8."""
    im.load()
    if im.mode.startswith(("I", "F")):
        values: np.ndarray = np.asarray(im)
        full = _integer_range(im)
    else:
        values = np.array(im.convert("L" if im.mode in GRAY_MODES else "RGB"))
        if intensity.voi in ("stored", "full"):
            return values  # 8-bit: already full scale
        full = (0.0, 255.0)
    return apply_fixed(values, intensity, full)


def _integer_range(im: Image.Image) -> tuple[float, float] | None:
    """The value range of a PIL ``I``/``I;16*`` image from its bit depth; None for float (``F``) images."""
    if im.mode.startswith("F"):
        return None
    if im.mode.startswith("I;16"):
        bits, signed = 16, im.mode.endswith("S")
    elif im.format == "TIFF":
        bits = _first(im.tag_v2.get(_TIFF_BITS), 32)
        signed = _first(im.tag_v2.get(_TIFF_SAMPLE_FORMAT), 1) == _TIFF_SIGNED
    elif im.format == "PNG":  # PNG has at most 16 bits per sample, unsigned
        bits, signed = 16, False
    else:
        bits, signed = 32, True
    if signed:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _first(tag, default: int) -> int:
    """A TIFF tag's (first) value: Pillow gives per-sample tags as tuples."""
    if tag is None:
        return default
    return int(tag[0] if isinstance(tag, tuple) else tag)


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` uint8 → ``(H, W, channels)``; RGB → gray uses PIL's ITU-R 601-2 luma."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    return np.array(Image.fromarray(arr).convert("L"))[:, :, None]
