"""Read DICOM files as uint8 arrays under one :class:`~medadapt.data._intensity.Intensity` rule per dataset.

Pixel values → uint8 follows :mod:`medadapt.data._dicom_voi` (pydicom's modality, VOI and palette LUTs;
MONOCHROME1 inverted; RGB/YBR as RGB). This module decides which files are images and finds bad ones early.
Every failure is a :class:`~medadapt.errors.DataError` whose message names the file:

- Not a DICOM Part 10 file (no ``DICM`` marker / file meta), no Transfer Syntax UID, no pixel data, float
  pixel data, missing or impossible image attributes (Rows, Columns, Bits Allocated/Stored, Samples per
  Pixel, Photometric Interpretation, Number of Frames).
- Non-image objects, refused by their SOP class name whether or not they carry pixel data: segmentations,
  RT objects other than RT images (dose, structure sets, plans, records), structured reports, presentation
  states, key object selections, encapsulated documents, waveforms, raw data, registrations, ...
- Multi-frame files under ``frames=error`` (the message gives the frame count and the options).
- A compressed transfer syntax whose decoder is not installed (the message names the packages, from
  pydicom's ``missing_dependencies``), or that pydicom cannot decode at all.
- Native (uncompressed) pixel data shorter than Rows × Columns × Samples × Bits Allocated / 8 × Frames, or
  running past the end of the file: checked by the header probe from the element's length and offset,
  without reading the pixel data.
- Header values that cannot give a sensible image under the chosen ``voi`` (Window Width < 1, an unknown VOI
  LUT Function, a VOI/Modality LUT with a bad descriptor, a VOI LUT that is constant or runs
  backwards, Rescale Slope 0): the message
  says to use ``voi=full`` or ``window=C,W`` or to fix the file. A negative Rescale Slope is valid and gives
  a correct image. There are no silent fallbacks; the only fallback is documented: ``voi=stored`` on a file
  without any VOI LUT or window uses ``voi=full``.
- Pixel data that fails to decode (corrupt JPEG, ...): pydicom's error text, with the other decoders that
  might read it. pydicom's own log records (including tracebacks) emitted by the thread doing the read are
  dropped during the call; the error carries the message instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .._optional import require
from ..errors import DataError
from ._dicom_voi import check_voi_header, to_uint8
from ._intensity import DEFAULT_INTENSITY, ImageInfo, Intensity

__all__ = ["read_dicom", "probe_dicom", "is_dicom", "non_image_reason", "quiet_pydicom"]

_PREAMBLE = 128
_DEFER_BYTES = 64 * 1024  # elements larger than this (the pixel data) are not read by the header probe
_INSTALL = "pip install 'medadapt[dicom]'"
_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_NON_IMAGE_WORDS = (
    *("Segmentation", "SR Storage", "Structured Report", "Presentation State", "Key Object Selection"),
    *("Encapsulated", "Waveform", "Raw Data", "Registration", "Fiducials", "Real World Value Mapping"),
    *("Spectroscopy", "Tractography", "Annotation", "Protocol", "Measurement", "Surface", "Directory"),
    *("Plan Storage", "Treatment", "Dose", "Structure Set", "Document", "Mesh", "Point Cloud"),
)
_PHOTOMETRIC = {
    1: ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"),
    3: ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"),
}


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(_PREAMBLE)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(
    path: str | os.PathLike, *, intensity: Intensity = DEFAULT_INTENSITY, frame: int | None = None
) -> np.ndarray:
    """Read one DICOM frame as uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB).

    ``frame`` picks a frame of a multi-frame file (``frames=all``: the dataset passes each index); with
    ``frame=None`` the ``intensity.frames`` rule decides (``error`` refuses multi-frame files, ``first`` and
    ``all`` read frame 0).

    Example:
        >>> read_dicom("ct.dcm", intensity=Intensity(window=(40, 400))).dtype  # doctest: +SKIP
        dtype('uint8')
    """
    name = os.fspath(path)
    with quiet_pydicom():
        ds = _open(name)
        info = _check_header(ds, intensity, name)
        index = _frame_index(info.frames, frame, name)
        return _pipeline(ds, intensity, index, name)


def probe_dicom(
    path: str | os.PathLike, *, verify: bool = False, intensity: Intensity = DEFAULT_INTENSITY
) -> ImageInfo:
    """Check a DICOM file without decoding its pixels (see the module docstring for what is checked);
    with ``verify`` also decode it through the whole pipeline (every frame under ``frames=all``)."""
    name = os.fspath(path)
    with quiet_pydicom():
        ds = _open(name)
        info = _check_header(ds, intensity, name)
        if verify:  # every frame under frames=all, else the one frame that will be read
            _pipeline(ds, intensity, 0 if info.frames > 1 and intensity.frames == "first" else None, name)
    return info


def non_image_reason(sop_class_uid: str) -> str | None:
    """Why an object of this SOP class is not an image (``"is a Segmentation Storage object, not an
    image"``), or None for image (and unknown) SOP classes."""
    from pydicom.uid import UID

    sop = UID(str(sop_class_uid).strip())
    label = sop.name
    if not label or label == str(sop) or "Image Storage" in label:
        return None
    if label.startswith("RT ") or any(word in label for word in _NON_IMAGE_WORDS):
        article = "an" if label[0] in "AEIOU" or label.startswith(("RT ", "X-")) else "a"
        return f"is {article} {label} object, not an image"
    return None


# ----------------------------------------------------------------------------------------------- reading


def _open(name: str):
    pydicom = require("pydicom", extra="dicom")
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(name, defer_size=_DEFER_BYTES)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax == DeflatedExplicitVRLittleEndian:  # offsets are in the inflated stream: nothing to defer
            ds = pydicom.dcmread(name)
        return ds
    except InvalidDicomError as e:
        raise DataError(
            f"{name} is not a DICOM Part 10 file (no 'DICM' marker and file meta information); "
            "re-export it as a standard DICOM file"
        ) from e
    except Exception as e:  # pydicom raises many types for corrupt files
        raise DataError(f"not a readable DICOM file {name}: {_summary(e)}") from e


def _pipeline(ds, intensity: Intensity, index: int | None, name: str) -> np.ndarray:
    arr = _decode(ds, index, name)
    try:
        return to_uint8(arr, ds, intensity, name)
    except DataError:
        raise
    except Exception as e:  # pydicom's LUT functions raise ValueError/KeyError/... on odd headers
        raise DataError(f"cannot convert the pixels of DICOM file {name}: {_summary(e)}") from e


def _decode(ds, index: int | None, name: str) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        ds.pixel_array_options(index=index)
        arr = ds.pixel_array
    except Exception as e:  # decoders raise RuntimeError, ValueError, ...
        others = _other_decoders(syntax)
        hint = f"; other decoders that may read it: {others}" if others else ""
        raise DataError(
            f"cannot decode the pixel data of DICOM file {name} ({syntax.name}): {_summary(e)}{hint}"
        ) from e
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel)
    expected = (rows, columns) if samples == 1 else (rows, columns, samples)
    if arr.shape[-len(expected) :] != expected:
        raise DataError(f"DICOM file {name} decoded to shape {arr.shape}, expected {expected}")
    return arr


def _frame_index(n_frames: int, frame: int | None, name: str) -> int | None:
    if frame is None:
        return 0 if n_frames > 1 else None  # frames=error was refused by the header check
    if not 0 <= frame < n_frames:
        raise DataError(f"DICOM file {name} has {n_frames} frame(s); frame {frame} does not exist")
    return frame if n_frames > 1 else None


# ------------------------------------------------------------------------------------------ header check


def _check_header(ds, intensity: Intensity, name: str) -> ImageInfo:
    """Everything that can be checked without decoding; returns channels and frame count."""
    meta = getattr(ds, "file_meta", None)
    reason = non_image_reason(ds.get("SOPClassUID") or getattr(meta, "MediaStorageSOPClassUID", ""))
    if reason:
        raise DataError(f"DICOM file {name} {reason}")
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if not syntax:
        raise DataError(f"DICOM file {name} has no Transfer Syntax UID in its file meta information")
    if "PixelData" not in ds:
        what = "float pixel data, which is not supported" if _has_float_pixels(ds) else "no pixel data"
        raise DataError(f"DICOM file {name} has {what}; it is not an image medadapt can read")
    samples, frames = _geometry(ds, name)
    if frames > 1 and intensity.frames == "error":
        raise DataError(
            f"DICOM file {name} has {frames} frames; choose frames=first (read frame 0) or frames=all "
            "(one sample per frame) in the dataset address"
        )
    _check_decoder(syntax, name)
    if not syntax.is_encapsulated:
        _check_native_length(ds, frames, name)
    check_voi_header(ds, intensity, name)
    palette = str(ds.PhotometricInterpretation).strip() == "PALETTE COLOR"
    return ImageInfo(channels=1 if samples == 1 and not palette else 3, frames=frames)


def _has_float_pixels(ds) -> bool:
    return "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def _geometry(ds, name: str) -> tuple[int, int]:
    missing = [keyword for keyword in _REQUIRED if ds.get(keyword) in (None, "")]
    if missing:
        raise DataError(f"DICOM file {name} lacks the image attribute(s) {', '.join(missing)}")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, allocated = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored") or allocated)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as e:
        raise DataError(f"DICOM file {name} has an invalid image attribute ({_summary(e)})") from e
    photometric = str(ds.PhotometricInterpretation).strip()
    problems = [
        *(["Rows/Columns < 1"] if min(rows, columns) < 1 else []),
        *([f"Number of Frames {frames}"] if frames < 1 else []),
        *([f"Bits Allocated {allocated}"] if allocated not in (1, 8, 16, 32, 64) else []),
        *([f"Bits Stored {stored}"] if not 1 <= stored <= allocated else []),
        *(
            [f"{photometric} with {samples} sample(s) per pixel"]
            if photometric not in _PHOTOMETRIC.get(samples, ())
            else []
        ),
    ]
    if problems:
        raise DataError(f"DICOM file {name} has an impossible image header: {'; '.join(problems)}")
    return samples, frames


def _check_decoder(syntax, name: str) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise DataError(
            f"DICOM file {name} uses transfer syntax {syntax.name} ({syntax}), which pydicom cannot decode; "
            "convert it to an uncompressed or JPEG/JPEG 2000 transfer syntax"
        ) from e
    if not decoder.is_available:
        need = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise DataError(
            f"DICOM file {name} uses transfer syntax {syntax.name}, whose decoder needs a package that is "
            f"not installed: {need}. Install it with {_INSTALL}"
        )


def _other_decoders(syntax) -> str:
    from pydicom.pixels import get_decoder

    try:
        return "; ".join(get_decoder(syntax).missing_dependencies)
    except NotImplementedError:
        return ""


def _check_native_length(ds, frames: int, name: str) -> None:
    """Uncompressed pixel data must hold every frame: compare the element's declared length with the
    expected length, and its end with the file size (a deferred element is never read here)."""
    from pydicom.pixels.utils import get_expected_length

    elem = ds.get_item("PixelData", keep_deferred=True)
    if getattr(elem, "is_undefined_length", False):
        raise DataError(f"DICOM file {name} has uncompressed pixel data of undefined length; it is corrupt")
    value = getattr(elem, "value", None)
    length = len(value) if value is not None else int(elem.length)
    available = length
    value_tell = getattr(elem, "value_tell", None)
    if value is None and value_tell is not None:
        available = min(length, max(0, os.path.getsize(name) - int(value_tell)))
    expected = get_expected_length(ds, unit="bytes")
    if available < expected:
        raise DataError(
            f"DICOM file {name} has truncated pixel data: {available} bytes for {frames} frame(s) of "
            f"{int(ds.Rows)}x{int(ds.Columns)}, which need {expected}; the file is incomplete or corrupt"
        )


def _summary(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------- logging


class _ThreadFilter(logging.Filter):
    """Drops records only from threads that are inside :func:`quiet_pydicom`; other threads are untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.depth: dict[int, int] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.get_ident() not in self.depth  # filters run in the thread that logs


_FILTER = _ThreadFilter()


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's loggers for the current thread only, for the duration of the block.

    pydicom logs a full traceback for every failed decoder before raising; our DataError carries the
    message instead. A filter is attached (once) to every ``pydicom`` logger; logger levels and handlers are
    never changed, and other threads keep their pydicom log records.
    """
    for logger_name in list(logging.Logger.manager.loggerDict):
        if logger_name == "pydicom" or logger_name.startswith("pydicom."):
            logger = logging.getLogger(logger_name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    ident = threading.get_ident()
    with _FILTER.lock:
        _FILTER.depth[ident] = _FILTER.depth.get(ident, 0) + 1
    try:
        yield
    finally:
        with _FILTER.lock:
            _FILTER.depth[ident] -= 1
            if not _FILTER.depth[ident]:
                del _FILTER.depth[ident]
