"""Every file bundled with pydicom (``pydicom.data.get_testdata_files()``) either loads as pydicom itself
decodes and transforms it, or fails with a DataError naming the file.

The expected uint8 images are computed here from pydicom's own decoding and LUT functions
(``apply_modality_lut``, ``apply_voi_lut``, ``apply_color_lut``) with the VOI output range taken from the
standard (stored range through the rescale), independently of medadapt's code. Each file is read once
(module cache).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from medadapt.data import load_dataset
from medadapt.data.images import ImageInfo, Intensity, probe_image, read_image
from medadapt.errors import DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_files  # noqa: E402
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut  # noqa: E402

ROOT = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))
NAMES = [os.path.relpath(f, ROOT) for f in FILES]

# a representative set that must load and match the reference: name → what it stands for
REPRESENTATIVE = {
    "dicomdirtests/77654033/CR1/6154": "MONOCHROME1 with rescale and window",
    "MR_small.dcm": "MONOCHROME2 with window",
    "JPGExtended.dcm": "MONOCHROME2 without window (12-bit JPEG)",
    "CT_small.dcm": "signed CT with rescale, without window",
    "693_J2KI.dcm": "signed CT with window, JPEG 2000",
    "examples_overlay.dcm": "several windows (the first is used)",
    "examples_palette.dcm": "PALETTE COLOR",
    "examples_rgb_color.dcm": "RGB",
    "SC_ybr_full_422_uncompressed.dcm": "YBR_FULL_422",
    "SC_rgb_jpeg_dcmtk.dcm": "YBR_FULL JPEG",
    "examples_ybr_color.dcm": "multi-frame YBR with frames=first",
    "SC_rgb_rle_16bit_2frame.dcm": "multi-frame 16-bit RGB with frames=first",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG Lossless process 14",
    "image_dfl.dcm": "deflated transfer syntax",
    "MR_small_bigendian.dcm": "big endian",
}
# files that must fail, with a fragment of the reason
REFUSED = {
    "MR_truncated.dcm": "truncated pixel data",
    "JPEG-lossy.dcm": "cannot decode the pixel data",
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot decode the pixel data",
    "liver_1frame.dcm": "is a Segmentation Storage object, not an image",
    "rtdose.dcm": "is an RT Dose Storage object, not an image",
    "rtplan.dcm": "is an RT Plan Storage object, not an image",
    "test-SR.dcm": "is a Comprehensive SR Storage object, not an image",
    "reportsi.dcm": "is a Basic Text SR Storage object",
    "waveform_ecg.dcm": "Waveform Storage object, not an image",
    "no_meta.dcm": "not a DICOM Part 10 file",
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    "dicomdirtests/DICOMDIR": "Directory Storage object, not an image",
    "README.txt": "not a readable image",
}


@dataclass
class Outcome:
    intensity: Intensity
    info: ImageInfo | None = None
    image: np.ndarray | None = None  # (H, W, C) uint8
    error: DataError | None = None


@functools.cache
def outcome(path: str) -> Outcome:
    """Probe and read once; a multi-frame refusal is retried with frames=first."""
    intensity = Intensity()
    for retry in (False, True):
        try:
            info = probe_image(path, intensity=intensity)
            image = read_image(path, info.channels, intensity=intensity).numpy().transpose(1, 2, 0)
            return Outcome(intensity, info, image)
        except DataError as e:
            if retry or "frames=first" not in str(e):
                return Outcome(intensity, error=e)
            intensity = Intensity(frames="first")
    raise AssertionError("unreachable")


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.BitsStored)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation == 1 else (0, 2**bits - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        low, high = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (low, high))
    return float(low), float(high)


def _to_uint8(values, low: float, high: float) -> np.ndarray:
    return np.rint(np.clip((np.asarray(values, dtype=float) - low) / (high - low), 0, 1) * 255).astype(
        np.uint8
    )


def reference(path: str, frame: int | None) -> np.ndarray:
    """The expected (H, W, C) uint8 from pydicom alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array if frame is None else ds.pixel_array[frame]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)[..., :3]
        return _to_uint8(rgb, 0, np.iinfo(rgb.dtype).max)
    if ds.SamplesPerPixel == 3:
        return _to_uint8(pixels, 0, 2 ** int(ds.BitsStored) - 1)
    modality = apply_modality_lut(pixels, ds)
    if "WindowWidth" in ds:  # no bundled file has a VOI LUT Sequence; tests/test_dicom.py covers one
        y_min, y_max = _stored_range(ds)  # pydicom's window output spans the stored range after rescale
        gray = _to_uint8(apply_voi_lut(modality, ds), y_min, y_max)
    else:
        gray = _to_uint8(modality, *_stored_range(ds))  # voi=stored without a window falls back to full
    if ds.PhotometricInterpretation == "MONOCHROME1":
        gray = 255 - gray
    return gray[:, :, None]


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_bundled_file_loads_like_pydicom_or_fails_naming_the_file(path: str) -> None:
    result = outcome(path)
    if result.error is not None:
        assert path in str(result.error), str(result.error)
        return
    assert result.image is not None and result.info is not None
    assert result.image.dtype == np.uint8 and result.image.shape[2] == result.info.channels
    frame = 0 if result.info.frames > 1 else None
    expected = reference(path, frame)
    assert result.image.shape == expected.shape
    difference = np.abs(result.image.astype(int) - expected.astype(int))
    assert difference.max() <= 1, f"{np.count_nonzero(difference > 1)} pixels differ by more than 1"


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE), ids=lambda n: REPRESENTATIVE[n])
def test_representative_files_load(name: str) -> None:
    result = outcome(os.path.join(ROOT, name))
    assert result.error is None, str(result.error)
    assert result.image is not None and result.image.max() > result.image.min()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_and_non_image_files_are_refused_with_their_reason(name: str) -> None:
    path = os.path.join(ROOT, name)
    result = outcome(path)
    assert result.error is not None and REFUSED[name] in str(result.error), str(result.error)
    if "cannot decode" in REFUSED[name]:  # only a decode finds these: the header probe passes, verify fails
        probe_image(path)
        with pytest.raises(DataError, match="cannot decode"):
            probe_image(path, verify=True)


def test_every_frame_of_a_multi_frame_file() -> None:
    path = os.path.join(ROOT, "SC_rgb_rle_2frame.dcm")
    every = Intensity(frames="all")
    assert probe_image(path, intensity=every, verify=True) == ImageInfo(channels=3, frames=2)
    for frame in range(2):
        image = read_image(path, 3, intensity=every, frame=frame).numpy().transpose(1, 2, 0)
        np.testing.assert_array_equal(image, reference(path, frame))


def _bundled_csv(tmp_path) -> str:
    import pandas as pd

    rows = [{"path": f, "label": "ab"[i % 2], "split": "train"} for i, f in enumerate(FILES)]
    pd.DataFrame(rows).to_csv(tmp_path / "bundled.csv", index=False)
    return str(tmp_path / "bundled.csv")


def test_the_bundled_set_through_the_dataset_api(tmp_path) -> None:
    """Every file is a sample that reads as above, or a skipped row whose reason names the file."""
    ds = load_dataset(
        f"csv:{_bundled_csv(tmp_path)}?frames=first&verify=true&channels=3", "train", skip_bad=True
    )
    expected_ok = [f for f in FILES if outcome(f).error is None]
    assert ds.paths == expected_ok and len(ds.skipped) == len(FILES) - len(expected_ok)
    for row, reason in ds.skipped:
        assert FILES[row] in reason
    for i in range(0, len(ds), 7):  # a sample of them: the dataset reads what read_image reads
        assert ds[i]["image"].shape[0] == 3


def test_the_bundled_set_through_the_cli(tmp_path, capsys) -> None:
    """Without --skip-bad-rows the run stops before any work, naming the bad rows and files; no traceback."""
    from medadapt.cli import main

    code = main(["probe", "--dataset", f"csv:{_bundled_csv(tmp_path)}?frames=first", "--backbone",
                 "timm:vit_small_patch14_dinov2?embed_dim=32&depth=1&num_heads=2", "--no-pretrained",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "bad row(s) for split 'train'" in err
    first_bad = next(i for i, f in enumerate(FILES) if outcome(f).error is not None)
    assert f"row {first_bad} (line {first_bad + 2})" in err and FILES[first_bad] in err
