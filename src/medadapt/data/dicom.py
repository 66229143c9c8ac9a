"""Read DICOM files as display-ready uint8 arrays, using pydicom's own LUT functions.

Grayscale pipeline (DICOM PS3.4 N.2): stored values → modality LUT / rescale slope+intercept → VOI LUT or
window center/width (the first one when the file lists several) → uint8 over the VOI output range; when the
file has no VOI LUT and no window, the image's own min/max is used. MONOCHROME1 images are then inverted so
that high values are always bright. Color files come back as RGB (pydicom converts YBR), scaled by bit
depth. Multi-frame files give their first frame.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from .._optional import require
from ..errors import DataError

__all__ = ["read_dicom", "probe_dicom", "is_dicom"]

_PREAMBLE = 128


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(_PREAMBLE)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read one DICOM image as uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB).

    Example:
        >>> read_dicom("chest.dcm").dtype  # doctest: +SKIP
        dtype('uint8')
    """
    pydicom = require("pydicom", extra="dicom")
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for corrupt or undecodable files
        raise DataError(f"cannot read DICOM image {os.fspath(path)!r}: {e}") from e
    samples = int(ds.get("SamplesPerPixel", 1))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if samples > 1:
        return _color_to_uint8(arr, int(ds.get("BitsStored", 8)))
    return _gray_to_uint8(arr, ds)


def probe_dicom(path: str | os.PathLike) -> int:
    """Check a DICOM header without decoding pixels; return its channel count (1 or 3).

    Raises DataError when the file is not DICOM, has no image, or needs a decoder that is not installed.
    """
    pydicom = require("pydicom", extra="dicom")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for corrupt files
        raise DataError(f"not a readable DICOM file ({e})") from e
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError("DICOM file has no image (no Rows/Columns)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        _check_decoder(pydicom, syntax)
    return 1 if int(ds.get("SamplesPerPixel", 1)) == 1 else 3


def _check_decoder(pydicom: ModuleType, syntax: str) -> None:
    get_decoder = getattr(getattr(pydicom, "pixels", None), "get_decoder", None)
    if get_decoder is None:  # pydicom < 3 has no decoder registry to ask
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise DataError(f"DICOM transfer syntax {syntax} cannot be decoded by pydicom ({e})") from e
    if not decoder.is_available:
        need = "; ".join(decoder.missing_dependencies)
        raise DataError(f"decoding DICOM transfer syntax {syntax.name} needs an extra package: {need}")


def _lut_functions() -> tuple:
    """pydicom's (apply_modality_lut, apply_voi_lut, apply_voi, apply_windowing), for pydicom 2.x and 3.x."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (
            apply_modality_lut,
            apply_voi,
            apply_voi_lut,
            apply_windowing,
        )
    return apply_modality_lut, apply_voi_lut, apply_voi, apply_windowing


def _gray_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    apply_modality_lut, apply_voi_lut, _, _ = _lut_functions()
    values = apply_modality_lut(arr, ds)
    voi_range = _voi_output_range(ds)
    if ds.get("VOILUTSequence") and np.issubdtype(values.dtype, np.floating):
        values = np.rint(values).astype(np.int64)  # a VOI LUT is indexed by whole modality values
    if voi_range is None:
        out = _scale(values, float(values.min()), float(values.max()))
    else:
        out = _scale(apply_voi_lut(values, ds), *voi_range)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return out


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The output range of the VOI transform that ``apply_voi_lut`` will use, or None when there is none.

    Found by passing the transform's extreme inputs through pydicom itself: the whole VOI LUT table, or
    -inf/+inf through the window.
    """
    _, _, apply_voi, apply_windowing = _lut_functions()
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        n_entries, first, _ = seq[0].LUTDescriptor
        table = apply_voi(np.arange(first, first + (n_entries or 2**16)), ds)
        return float(table.min()), float(table.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return float(low), float(high)
    return None


def _color_to_uint8(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return _scale(arr, 0.0, float(2**bits_stored - 1))


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto ``[0, 255]`` (all zeros when the range is empty)."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
