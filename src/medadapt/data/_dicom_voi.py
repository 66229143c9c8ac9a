"""DICOM pixel values → uint8 under an :class:`~medadapt.data._intensity.Intensity` rule, with pydicom's LUTs.

Grayscale (MONOCHROME1/2), PS3.4 N.2: stored values → ``apply_modality_lut`` (Modality LUT or Rescale
Slope/Intercept) → VOI by ``intensity.voi``:

- ``stored``: ``apply_voi_lut`` (the first VOI LUT, else the first window, as pydicom prefers them), then
  uint8 over that transform's output range: the table's min..max for a VOI LUT, pydicom's window output for
  inputs -inf..+inf for a window. When the VOI output runs backwards (pydicom's window output with a negative
  Rescale Slope) the mapping follows it, so low modality values stay dark. No VOI in the file → ``full``.
- ``full``: uint8 over the modality output of the whole stored range (Bits Stored, Pixel Representation).
- ``window``: the fixed window (DICOM LINEAR function) on modality values; ``minmax``: the image's min/max.

MONOCHROME1 is inverted afterwards, so high values are always bright. PALETTE COLOR goes through
``apply_color_lut`` and RGB/YBR come converted to RGB by pydicom; colour images are scaled by their bit
depth (the LUT entry depth, Bits Stored) under ``stored``/``full``, and ``window``/``minmax`` act on the RGB
values. All arithmetic is float64, so signed and 32-bit data never wrap.

Header values that cannot give a sensible image raise :class:`DataError` naming the file and the fix (see
:func:`check_voi_header`); nothing falls back silently.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ._intensity import Intensity, apply_fixed, scale_to_uint8

__all__ = ["check_voi_header", "to_uint8"]

_GRAY = ("MONOCHROME1", "MONOCHROME2")
_LINEAR_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_FIX = "read the dataset with voi=full or window=CENTER,WIDTH, or fix the file's header"


def _luts():
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    return apply_modality_lut, apply_voi_lut, apply_color_lut


# ------------------------------------------------------------------------------------------ header checks


def check_voi_header(ds, intensity: Intensity, name: str) -> None:
    """Refuse header values that would give a black, constant or wrong image, before any decoding."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _GRAY:
        return
    _check_modality(ds, name)
    if intensity.voi == "stored":
        kind = _stored_voi_kind(ds)
        if kind == "window":
            _check_window(ds, name)
        elif kind == "lut":
            _voi_lut_range(ds, name)


def _check_modality(ds, name: str) -> None:
    if ds.get("ModalityLUTSequence"):
        _check_lut(
            ds.ModalityLUTSequence[0], name, "Modality LUT", (8, 16), fix="fix the file's Modality LUT"
        )
        return
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            value = _number(ds, keyword, name, fix="fix or remove it")
            if keyword == "RescaleSlope" and value == 0:
                raise DataError(
                    f"DICOM file {name} has Rescale Slope 0, so every pixel has the same value; "
                    "fix the file's Rescale Slope (e.g. 1)"
                )


def _stored_voi_kind(ds) -> str | None:
    """Which VOI ``apply_voi_lut`` will apply: "lut", "window" or None. pydicom does not say which it picked,
    and the uint8 scaling needs that transform's output range, so its preference is mirrored here."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _check_window(ds, name: str) -> None:
    center = _first_number(ds, "WindowCenter", name)
    width = _first_number(ds, "WindowWidth", name)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in _LINEAR_FUNCTIONS:
        raise DataError(f"DICOM file {name} has an unknown VOI LUT Function {function!r}; {_FIX}")
    too_narrow = width < 1 if function == "LINEAR" else width <= 0
    if too_narrow:
        raise DataError(
            f"DICOM file {name} has Window Center {center:g} / Window Width {width:g}, which is not a "
            f"valid {function} window (width must be {'>= 1' if function == 'LINEAR' else '> 0'}); {_FIX}"
        )


def _voi_lut_range(ds, name: str) -> tuple[float, float]:
    """Lowest and highest output of the file's first VOI LUT: its whole input range through pydicom."""
    _, apply_voi_lut, _ = _luts()
    first, last = _check_lut(ds.VOILUTSequence[0], name, "VOI LUT", (8, *range(10, 17)), fix=_FIX)
    table = np.asarray(apply_voi_lut(np.arange(first, last + 1, dtype=np.int64), ds), dtype=np.float64)
    low, high = float(table.min()), float(table.max())
    if low == high:
        raise DataError(f"DICOM file {name} has a VOI LUT whose entries are all {low:g}; {_FIX}")
    if table[0] > table[-1]:
        raise DataError(
            f"DICOM file {name} has a VOI LUT that runs backwards (from {table[0]:g} down to {table[-1]:g}), "
            f"which would invert the image; {_FIX}"
        )
    return low, high


def _check_lut(item, name: str, what: str, depths: tuple[int, ...], *, fix: str) -> tuple[int, int]:
    """Check a LUT's descriptor (entries, first mapped value, bits per entry) against its data; return the
    first and last input value it maps. pydicom would index out of its table or build an invalid dtype."""
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    try:
        n_entries, first, bits = (int(v) for v in descriptor)
        n_values = len(data) // 2 if isinstance(data, bytes) else np.asarray(data).size
    except (TypeError, ValueError) as e:
        raise DataError(f"DICOM file {name} has an unreadable {what} ({e}); {fix}") from e
    n_entries = n_entries or 2**16
    if bits not in depths or n_values != n_entries:
        raise DataError(
            f"DICOM file {name} has a {what} with a bad descriptor ({n_entries} entries of {bits} bits, "
            f"{n_values} values given); {fix}"
        )
    return first, first + n_entries - 1


def _first_number(ds, keyword: str, name: str) -> float:
    elem = ds[keyword]
    value = elem.value[0] if elem.VM > 1 else elem.value
    return _as_float(value, keyword, name, fix=_FIX)


def _number(ds, keyword: str, name: str, *, fix: str) -> float:
    return _as_float(ds.get(keyword), keyword, name, fix=fix)


def _as_float(value, keyword: str, name: str, *, fix: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise DataError(f"DICOM file {name} has an invalid {keyword} {value!r}; {fix}") from e
    if not np.isfinite(number):
        raise DataError(f"DICOM file {name} has a non-finite {keyword} {value!r}; {fix}")
    return number


# -------------------------------------------------------------------------------------------- transforms


def to_uint8(arr: np.ndarray, ds, intensity: Intensity, name: str) -> np.ndarray:
    """Decoded pixels (one frame, or several stacked first) → uint8 ``(..., H, W)`` or ``(..., H, W, 3)``."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric in _GRAY:
        out = _gray_to_uint8(arr, ds, intensity, name)
        return 255 - out if photometric == "MONOCHROME1" else out
    if photometric == "PALETTE COLOR":
        return _palette_to_uint8(arr, ds, intensity)
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    return apply_fixed(arr, intensity, (0.0, float(2**bits - 1)))


def _gray_to_uint8(arr: np.ndarray, ds, intensity: Intensity, name: str) -> np.ndarray:
    apply_modality_lut, apply_voi_lut, _ = _luts()
    values = apply_modality_lut(arr, ds)
    if intensity.voi == "stored":
        kind = _stored_voi_kind(ds)
        if kind == "lut":
            low, high = _voi_lut_range(ds, name)
            return scale_to_uint8(apply_voi_lut(_lut_input(values, ds), ds), low, high)
        if kind == "window":
            _check_window(ds, name)
            # the output of pydicom's window for -inf and +inf: its black and white levels (y_min, y_max),
            # which run backwards when the Rescale Slope is negative; scaling between them keeps HU order
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
            return scale_to_uint8(apply_voi_lut(values, ds), float(low), float(high))
    full = modality_range(ds) if intensity.voi in ("stored", "full") else None
    return apply_fixed(values, intensity, full)


def _lut_input(values: np.ndarray, ds) -> np.ndarray:
    """Whole numbers inside the VOI LUT's input range: a LUT is indexed by integers, and pydicom's index
    array has the LUT's unsigned dtype, which out-of-range values would wrap around."""
    n_entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    last = first + (n_entries or 2**16) - 1
    return np.clip(np.rint(values), first, last).astype(np.int64)


def modality_range(ds) -> tuple[float, float]:
    """Lowest and highest modality value the file can hold: the stored range (Bits Stored, Pixel
    Representation) through ``apply_modality_lut``; the whole table for a Modality LUT."""
    apply_modality_lut, _, _ = _luts()
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    if ds.get("ModalityLUTSequence"):
        n_entries, first, _ = (int(v) for v in ds.ModalityLUTSequence[0].LUTDescriptor)
        stored = np.arange(first, first + (n_entries or 2**16), dtype=np.int64)
    else:
        stored = np.array([low, high], dtype=np.int64)
    out = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    return float(out.min()), float(out.max())


def _palette_to_uint8(arr: np.ndarray, ds, intensity: Intensity) -> np.ndarray:
    _, _, apply_color_lut = _luts()
    rgb = apply_color_lut(arr, ds)[..., :3]  # drops an alpha LUT if there is one
    depth = 8 if rgb.dtype == np.uint8 else 16  # pydicom returns uint8 or uint16 by the LUT entry depth
    return apply_fixed(rgb, intensity, (0.0, float(2**depth - 1)))
