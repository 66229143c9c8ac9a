"""Reading one image file (PNG, JPEG, TIFF, BMP or DICOM) as a uint8 tensor, and cheap header probes.

16-bit and float images are scaled to uint8 by the image's own min/max; RGB to gray uses PIL's ITU-R 601-2
luma. DICOM goes through :mod:`medadapt.data.dicom` (pydicom's modality and VOI LUTs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .dicom import _scale, is_dicom, probe_dicom, read_dicom

__all__ = ["read_image", "probe_image", "is_dicom_file", "GRAY_MODES"]

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike, channels: int) -> torch.Tensor:
    """Read one image file (PIL formats or DICOM) as a uint8 ``Tensor[channels, H, W]``."""
    arr = read_dicom(path) if is_dicom_file(path) else _read_pil(path)
    arr = _to_channels(arr, channels)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def is_dicom_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in _DICOM_SUFFIXES or is_dicom(path)


def _read_pil(path: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode.startswith(("I", "F")):
                values = np.asarray(im)
                return _scale(values, float(values.min()), float(values.max()))
            return np.array(im.convert("L" if im.mode in GRAY_MODES else "RGB"))  # a writable copy
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read image {os.fspath(path)!r}: {e}") from e


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` uint8 → ``(H, W, channels)``; RGB → gray uses PIL's ITU-R 601-2 luma."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    return np.array(Image.fromarray(arr).convert("L"))[:, :, None]


def probe_image(path: str, *, verify: bool) -> int:
    """Open the header (and with ``verify`` check the file's integrity); return 1 (gray) or 3 channels."""
    if is_dicom_file(path):
        return probe_dicom(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            if verify:
                im.verify()
    except _PIL_ERRORS as e:
        raise DataError(f"not a readable image ({e})") from e
    return 1 if mode in GRAY_MODES or mode.startswith(("I;", "F;")) else 3
