"""How stored pixel values become uint8 intensities: one rule per dataset (:class:`Intensity`), shared by the
PIL and DICOM readers, and the small array helpers both use.

The helpers here are written by hand because they must work without pydicom (PNG/TIFF datasets) and they
only do linear arithmetic: :func:`linear_window` is the DICOM ``LINEAR`` window of PS3.3 C.11.2.1.2.1
(pydicom's ``apply_windowing`` needs a DICOM dataset), :func:`scale_to_uint8` maps a value range onto 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["Intensity", "INTENSITY_OPTIONS", "VOI_MODES", "FRAME_MODES", "ImageInfo", "DEFAULT_INTENSITY"]

INTENSITY_OPTIONS = ("voi", "window", "frames")
VOI_MODES = ("stored", "window", "full", "minmax")
FRAME_MODES = ("first", "all", "error")


@dataclass(frozen=True)
class Intensity:
    """How a dataset's images become uint8: the same rule for every file of the dataset.

    ``voi`` (value of interest):

    - ``stored`` (default): DICOM: the file's first VOI LUT or window (as pydicom's ``apply_voi_lut`` picks
      it); a DICOM file without one falls back to ``full``. PNG/TIFF/JPEG/BMP: as ``full``.
    - ``window``: the fixed ``window=(center, width)`` (DICOM ``LINEAR`` function), on modality values for
      DICOM (e.g. Hounsfield units for CT) and on the raw pixel values for other formats.
    - ``full``: the whole range the pixel format can hold, the same for every file of the dataset: for DICOM
      the stored value range (Bits Stored, Pixel Representation) through the modality transform, for
      PIL integer images their bit depth (a 16-bit value ``v`` is ``v / 65535`` of full scale).
      Float images (PIL mode ``F``) have no bit depth and use their own min/max.
    - ``minmax``: each image's own min/max (intensity scales then differ between images).

    ``frames`` (DICOM multi-frame files): ``error`` (default) refuses them, ``first`` reads frame 0, ``all``
    reads the frame the dataset asks for (one sample per frame).

    Example:
        >>> Intensity.parse({"window": "40,400"})
        Intensity(voi='window', window=(40.0, 400.0), frames='error')
    """

    voi: str = "stored"
    window: tuple[float, float] | None = None
    frames: str = "error"

    def __post_init__(self) -> None:
        if self.voi not in VOI_MODES:
            raise ConfigError(f"voi={self.voi!r} is not valid; use one of {', '.join(VOI_MODES)}")
        if self.frames not in FRAME_MODES:
            raise ConfigError(f"frames={self.frames!r} is not valid; use one of {', '.join(FRAME_MODES)}")
        if self.window is None:
            if self.voi == "window":
                raise ConfigError("voi=window needs the window itself: add window=CENTER,WIDTH (e.g. 40,400)")
            return
        center, width = _window_pair(self.window)
        if self.voi not in ("stored", "window"):
            raise ConfigError(
                f"window={center:g},{width:g} contradicts voi={self.voi}; drop one of them "
                "(giving a window means voi=window)"
            )
        object.__setattr__(self, "window", (center, width))
        object.__setattr__(self, "voi", "window")

    @classmethod
    def parse(cls, options: dict[str, Any]) -> Intensity:
        """Build from dataset-address options (string values such as ``window="40,400"``); other keys are
        ignored, so the whole option dict of a dataset address can be passed."""
        kwargs: dict[str, Any] = {}
        for key in INTENSITY_OPTIONS:
            value = options.get(key)
            if value is None or value == "":
                continue
            kwargs[key] = _parse_window(value) if key == "window" else str(value).strip().lower()
        return cls(**kwargs)


DEFAULT_INTENSITY = Intensity()  # voi=stored, no window, frames=error


def _parse_window(value: Any) -> tuple[float, float]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 2:
        raise ConfigError(
            f"window={value!r} is not valid; give CENTER,WIDTH as two numbers, e.g. window=40,400"
        )
    return numbers  # type: ignore[return-value]


def _window_pair(window: Any) -> tuple[float, float]:
    center, width = _parse_window(window)
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise ConfigError(
            f"window={center:g},{width:g} is not valid: the center must be finite and the width at least 1 "
            "(DICOM LINEAR window); e.g. window=40,400"
        )
    return center, width


@dataclass(frozen=True)
class ImageInfo:
    """What a header probe found: ``channels`` (1 or 3, after conversion) and ``frames`` (1 unless a DICOM
    file has several)."""

    channels: int
    frames: int = 1


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM ``LINEAR`` window (PS3.3 C.11.2.1.2.1) as float64 in [0, 1]: ``x <= c - 0.5 - (w-1)/2`` → 0,
    ``x > c - 0.5 + (w-1)/2`` → 1, else ``((x - (c - 0.5)) / (w - 1) + 0.5)``."""
    x = np.asarray(values, dtype=np.float64)
    c, w = center - 0.5, width - 1.0
    out = np.where(x > c + w / 2, 1.0, 0.0)
    between = (x > c - w / 2) & (x <= c + w / 2)
    if w > 0 and between.any():
        out[between] = (x[between] - c) / w + 0.5
    return out


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` → 0 and ``high`` → 255 linearly, clip, round. ``high < low`` is allowed and inverts
    (used for VOI outputs that run backwards, see :mod:`medadapt.data._dicom_voi`); an empty range
    (``high == low``) gives zeros."""
    if high == low:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * 255.0 / (high - low)  # exact for integer values
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float → uint8 (rounded)."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Each image by its own min/max (a constant image is all zeros)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    return scale_to_uint8(values, float(values.min()), float(values.max()))


def apply_fixed(values: np.ndarray, intensity: Intensity, full: tuple[float, float] | None) -> np.ndarray:
    """The format-independent modes: ``window`` (fixed), ``minmax``, and ``full`` over ``full`` (a range, or
    None when the format has none, e.g. float images, which then use their own min/max)."""
    if intensity.voi == "window":
        assert intensity.window is not None
        return unit_to_uint8(linear_window(values, *intensity.window))
    if intensity.voi == "minmax" or full is None:
        return minmax_to_uint8(values)
    return scale_to_uint8(values, *full)
