"""DICOM reading: rescale, windowing, VOI LUT, MONOCHROME1 inversion, color, header probing.

More: tests/test_dicom_read.py (one test per reported defect) and tests/test_dicom_bundled.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medadapt.data.dicom import is_dicom, probe_dicom, read_dicom
from medadapt.data.images import Intensity
from medadapt.errors import DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid  # noqa: E402

# stored values 0..200; with slope 2 and intercept -100 the modality values are -100, 0, 100, 200, 300
STORED = np.array([[0, 50, 100, 150, 200]], dtype=np.uint16)


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags
) -> Path:
    """Write a minimal uncompressed DICOM file with ``pixels`` and extra ``tags``."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.set_pixel_data(pixels, photometric, bits)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


def test_rescale_and_window_monochrome2(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "a.dcm", STORED, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100, WindowWidth=200
    )
    # window [0, 200] in modality units: -100 and 0 → black, 100 → middle, 200 and 300 → white
    np.testing.assert_array_equal(read_dicom(path), [[0, 0, 128, 255, 255]])


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "a.dcm",
        STORED,
        "MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=100,
        WindowWidth=200,
    )
    np.testing.assert_array_equal(read_dicom(path), [[255, 255, 127, 0, 0]])


def test_without_window_uses_the_full_stored_range(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", STORED + 1000, bits=16)
    out = read_dicom(path)  # voi=stored without a window falls back to voi=full: 0..65535 → 0..255
    assert out.dtype == np.uint8 and out.shape == (1, 5)
    np.testing.assert_array_equal(out, np.rint((STORED + 1000.0) * 255 / 65535))
    minmax = read_dicom(path, intensity=Intensity(voi="minmax"))
    np.testing.assert_array_equal(minmax, [[0, 64, 128, 191, 255]])  # 127.5 rounds to even


def test_voi_lut_sequence_scales_by_its_table(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [int(v) for v in np.arange(256) // 2])  # LUT Data reaching only 127
    path = write_dicom(
        tmp_path / "a.dcm", np.array([[0, 127, 255]], dtype=np.uint16), bits=8, VOILUTSequence=[item]
    )
    # LUT outputs 0, 63, 127 are scaled over the table's own range 0..127
    np.testing.assert_array_equal(read_dicom(path), [[0, 126, 255]])


def test_rgb_dicom(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "c.dcm", rgb, "RGB", bits=8)
    np.testing.assert_array_equal(read_dicom(path), rgb)
    assert probe_dicom(path).channels == 3


def test_probe_and_is_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", STORED)
    assert is_dicom(path) and probe_dicom(path).channels == 1
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file")
    assert not is_dicom(junk) and not is_dicom(tmp_path / "missing.dcm")
    with pytest.raises(DataError, match="not a DICOM Part 10 file"):
        probe_dicom(junk)
    with pytest.raises(DataError, match="junk.dcm"):
        read_dicom(junk)
