"""One test per reported DICOM/PNG reading defect, on tiny files written here with pydicom and PIL."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data.dicom import non_image_reason, probe_dicom, quiet_pydicom, read_dicom
from medadapt.data.images import INTENSITY_OPTIONS, ImageInfo, Intensity, probe_image, read_image
from medadapt.errors import ConfigError, DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RTDoseStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)

# stored 0..200; with slope 2 and intercept -100 the modality values are -100, 0, 100, 200, 300
STORED = np.array([[0, 50, 100, 150, 200]], dtype=np.uint16)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    sop: str = SecondaryCaptureImageStorage,
    **tags,
) -> Path:
    """A minimal uncompressed DICOM Part 10 file with ``pixels`` and extra ``tags``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop, generate_uid()
    ds.set_pixel_data(pixels, photometric, bits)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_encapsulated(path: Path, syntax: str, fragment: bytes, photometric: str = "MONOCHROME2") -> Path:
    """A DICOM file whose (compressed) pixel data is ``fragment``, for decoder and decode-failure tests."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def expected_window(values, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window, computed independently of medadapt."""
    x = np.asarray(values, dtype=float)
    c, w = center - 0.5, width - 1
    unit = np.clip((x - c) / w + 0.5, 0, 1)
    unit[x <= c - w / 2], unit[x > c + w / 2] = 0, 1
    return np.rint(unit * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ palette colour


def test_palette_color_gives_its_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    lut = {  # 16-bit LUT entries, 4 entries starting at index 0
        "Red": np.array([0, 65535, 0, 32768], dtype=np.uint16),
        "Green": np.array([0, 0, 65535, 32768], dtype=np.uint16),
        "Blue": np.array([65535, 0, 0, 0], dtype=np.uint16),
    }
    tags = {}
    for colour, values in lut.items():
        tags[f"{colour}PaletteColorLookupTableDescriptor"] = [4, 0, 16]
        tags[f"{colour}PaletteColorLookupTableData"] = values.tobytes()
    path = write_dicom(tmp_path / "p.dcm", indices, "PALETTE COLOR", bits=8, **tags)
    rgb = np.stack([lut[c] for c in ("Red", "Green", "Blue")], axis=-1)[indices[0]][None]
    np.testing.assert_array_equal(read_dicom(path), np.rint(rgb * 255.0 / 65535).astype(np.uint8))
    assert probe_image(path).channels == 3
    assert tuple(read_image(path, 3).shape) == (3, 1, 4)


# --------------------------------------------------------------------------------- header nonsense


def test_window_width_zero_is_a_clear_data_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "w0.dcm", STORED, WindowCenter=100, WindowWidth=0)
    for call in (lambda: probe_dicom(path), lambda: read_dicom(path)):
        with pytest.raises(DataError, match=r"w0\.dcm.*Window Width 0.*voi=full or window=") as info:
            call()
        assert not isinstance(info.value, ValueError)
    np.testing.assert_array_equal(
        read_dicom(path, intensity=Intensity(voi="full")), np.rint(STORED * 255 / 4095)
    )


def test_negative_rescale_slope_with_window_is_correct_not_black(tmp_path: Path) -> None:
    # modality = -2 * stored + 300 → 300, 200, 100, 0, -100; window [0, 200]
    path = write_dicom(
        tmp_path / "neg.dcm", STORED, RescaleSlope=-2, RescaleIntercept=300, WindowCenter=100, WindowWidth=200
    )
    out = read_dicom(path)
    np.testing.assert_array_equal(out, expected_window([[300, 200, 100, 0, -100]], 100, 200))
    np.testing.assert_array_equal(out, [[255, 255, 128, 0, 0]])
    # voi=full with a negative slope: higher modality values are brighter
    full = read_dicom(path, intensity=Intensity(voi="full"))  # modality range 300 - 2*4095 .. 300
    low = 300 - 2 * 4095
    np.testing.assert_array_equal(
        full, np.rint((np.array([[300, 200, 100, 0, -100]]) - low) * 255 / (300 - low))
    )


def test_rescale_slope_zero_and_bad_voi_lut_are_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "s0.dcm", STORED, RescaleSlope=0, RescaleIntercept=5)
    with pytest.raises(DataError, match=r"s0\.dcm.*Rescale Slope 0"):
        probe_dicom(path)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [1, 2, 3])  # 3 values for a 256-entry LUT
    path = write_dicom(tmp_path / "lut.dcm", STORED, bits=8, VOILUTSequence=[item])
    with pytest.raises(DataError, match=r"lut\.dcm.*VOI LUT with a bad descriptor.*voi=full"):
        probe_dicom(path)
    assert read_dicom(path, intensity=Intensity(voi="full")).shape == (1, 5)


def test_reversed_voi_lut_and_unknown_voi_function_are_refused(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))
    path = write_dicom(tmp_path / "rev.dcm", STORED, bits=8, VOILUTSequence=[item])
    with pytest.raises(DataError, match=r"rev\.dcm has a VOI LUT that runs backwards.*voi=full"):
        read_dicom(path)
    path = write_dicom(tmp_path / "fn.dcm", STORED, WindowCenter=100, WindowWidth=200, VOILUTFunction="CUBIC")
    with pytest.raises(DataError, match=r"fn\.dcm has an unknown VOI LUT Function 'CUBIC'"):
        probe_dicom(path)


def test_sigmoid_window_is_scaled_over_its_output_range(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "sig.dcm", STORED, WindowCenter=100, WindowWidth=200, VOILUTFunction="SIGMOID"
    )
    expected = np.rint(255 / (1 + np.exp(-4 * (STORED - 100.0) / 200)))
    np.testing.assert_array_equal(read_dicom(path), expected)


# ------------------------------------------------------------------------------- truncated pixel data


def test_truncated_pixel_data_is_found_by_the_header_probe(tmp_path: Path) -> None:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    cut = write_dicom(tmp_path / "cut.dcm", pixels, bits=16)
    cut.write_bytes(cut.read_bytes()[:-100])  # the file ends inside the pixel data
    with pytest.raises(DataError, match=r"cut\.dcm has truncated pixel data"):
        probe_image(cut)  # header only, no decode
    short = tmp_path / "short.dcm"
    ds = pydicom.dcmread(write_dicom(short, pixels, bits=16))
    ds.PixelData = ds.PixelData[:-64]  # a well-formed file whose pixel data element is too short
    ds.save_as(short, enforce_file_format=True)
    with pytest.raises(DataError, match=r"short\.dcm has truncated pixel data: 8128 bytes .* need 8192"):
        probe_image(short)
    with pytest.raises(DataError, match=r"short\.dcm"):
        read_image(short, 1)


def test_verify_decodes_what_the_header_probe_cannot_see(tmp_path: Path) -> None:
    path = write_encapsulated(tmp_path / "bad.dcm", JPEGBaseline8Bit, b"\xff\xd8\xff\xdbnot a jpeg\xff\xd9")
    assert probe_image(path) == ImageInfo(channels=1, frames=1)
    with pytest.raises(
        DataError, match=r"cannot decode the pixel data of DICOM file .*bad\.dcm \(JPEG Baseline"
    ):
        probe_image(path, verify=True)


# ---------------------------------------------------------------------- multi-frame and non-images


def test_multi_frame_error_first_all(tmp_path: Path) -> None:
    frames = np.stack([np.full((2, 3), v, dtype=np.uint8) for v in (10, 20, 30)])
    path = write_dicom(tmp_path / "mf.dcm", frames, bits=8)
    with pytest.raises(DataError, match=r"mf\.dcm has 3 frames; choose frames=first .* or frames=all"):
        read_image(path, 1)
    with pytest.raises(DataError, match="3 frames"):
        probe_image(path)
    first = Intensity(frames="first")
    assert probe_image(path, intensity=first) == ImageInfo(channels=1, frames=3)
    assert read_dicom(path, intensity=first).tolist() == [[10] * 3] * 2
    every = Intensity(frames="all")
    assert probe_image(path, intensity=every, verify=True).frames == 3
    for k, value in enumerate((10, 20, 30)):
        assert read_image(path, 1, intensity=every, frame=k).unique().tolist() == [value]
    with pytest.raises(DataError, match="frame 3 does not exist"):
        read_dicom(path, intensity=every, frame=3)


@pytest.mark.parametrize(
    ("sop", "label"), [(SegmentationStorage, "Segmentation Storage"), (RTDoseStorage, "RT Dose Storage")]
)
def test_non_image_objects_are_refused_by_name(tmp_path: Path, sop: str, label: str) -> None:
    path = write_dicom(tmp_path / "obj.dcm", np.zeros((4, 4), dtype=np.uint8), bits=8, sop=sop)
    for call in (lambda: probe_image(path), lambda: read_image(path, 1)):
        with pytest.raises(DataError, match=rf"obj\.dcm is an? {label} object, not an image"):
            call()


@pytest.mark.parametrize(
    "keyword",
    [
        *("GrayscaleSoftcopyPresentationStateStorage", "KeyObjectSelectionDocumentStorage"),
        *("EncapsulatedPDFStorage", "RawDataStorage", "RTStructureSetStorage", "RTPlanStorage"),
        *("ComprehensiveSRStorage", "XRayRadiationDoseSRStorage", "TwelveLeadECGWaveformStorage"),
        *("SpatialRegistrationStorage", "SurfaceSegmentationStorage"),
    ],
)
def test_non_image_sop_classes(keyword: str) -> None:
    uid = getattr(pydicom.uid, keyword)
    assert re.fullmatch(rf"is an? {re.escape(uid.name)} object, not an image", non_image_reason(uid) or "")


@pytest.mark.parametrize(
    "keyword",
    [
        *("CTImageStorage", "RTImageStorage", "EnhancedMRImageStorage", "UltrasoundMultiFrameImageStorage"),
        *("DigitalXRayImageStorageForPresentation", "VLWholeSlideMicroscopyImageStorage"),
    ],
)
def test_image_sop_classes_are_accepted(keyword: str) -> None:
    assert non_image_reason(getattr(pydicom.uid, keyword)) is None
    assert non_image_reason("1.2.3.4.5") is None  # unknown (private) SOP classes are judged by their pixels


# ------------------------------------------------------------------------------------------ decoders


def test_missing_decoder_names_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_encapsulated(tmp_path / "ls.dcm", JPEGLSLossless, b"\xff\xd8\xff\xd9")
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    with pytest.raises(
        DataError, match=r"ls\.dcm uses transfer syntax JPEG-LS Lossless.*medadapt\[dicom\]"
    ) as info:
        probe_image(path)
    for dependency in decoder.missing_dependencies:
        assert dependency in str(info.value)


def test_installed_decoders_cover_jpeg_ls_lossless_and_12_bit_jpeg() -> None:
    from pydicom.uid import JPEGExtended12Bit, JPEGLosslessSV1

    for syntax in (JPEGLSLossless, JPEGLosslessSV1, JPEGExtended12Bit):
        assert get_decoder(syntax).is_available, f"pip install 'medadapt[dicom]' for {syntax.name}"


# --------------------------------------------------------------------------------- intensity modes


def test_voi_modes_exact_values(tmp_path: Path) -> None:
    tags = {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 100, "WindowWidth": 200}
    path = write_dicom(tmp_path / "ct.dcm", STORED, **tags)
    modality = np.array([[-100, 0, 100, 200, 300]], dtype=float)

    def read(**kw) -> np.ndarray:
        return read_dicom(path, intensity=Intensity(**kw))

    np.testing.assert_array_equal(read(), expected_window(modality, 100, 200))  # stored: the file's window
    np.testing.assert_array_equal(read(window=(0, 401)), expected_window(modality, 0, 401))
    low, high = -100, 4095 * 2 - 100  # 12-bit unsigned stored range through the rescale
    np.testing.assert_array_equal(read(voi="full"), np.rint((modality - low) * 255 / (high - low)))
    np.testing.assert_array_equal(read(voi="minmax"), np.rint((modality + 100) * 255 / 400))


def test_signed_and_32_bit_data_do_not_wrap(tmp_path: Path) -> None:
    signed = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "s.dcm", signed, bits=12)
    np.testing.assert_array_equal(
        read_dicom(path, intensity=Intensity(voi="full")), np.rint((signed + 2048.0) * 255 / 4095)
    )
    big = np.array([[0, 2**31, 2**32 - 1]], dtype=np.uint32)
    path = write_dicom(tmp_path / "u32.dcm", np.zeros((1, 3), dtype=np.uint16), bits=16)
    ds = pydicom.dcmread(path)  # set_pixel_data() does not write 32-bit data
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelData = 32, 32, 31, big.tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom(path), [[0, 128, 255]])
    ds.PixelRepresentation, ds.PixelData = 1, np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32).tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom(path), [[0, 128, 255]])


def test_monochrome1_is_inverted_under_every_voi(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "m1.dcm", STORED, "MONOCHROME1", bits=8)
    for voi, expected in (("full", STORED * 255.0 / 255), ("minmax", STORED * 255.0 / 200)):
        np.testing.assert_array_equal(read_dicom(path, intensity=Intensity(voi=voi)), 255 - np.rint(expected))


# ----------------------------------------------------------------------------------- PNG and TIFF


def test_16_bit_png_and_tiff_are_scaled_by_bit_depth(tmp_path: Path) -> None:
    bright = tmp_path / "bright.png"
    dark = tmp_path / "dark.png"
    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16)).save(bright)
    Image.fromarray(np.array([[0, 1000, 2000]], dtype=np.uint16)).save(dark)
    # the same stored value gives the same brightness in both files: 1000 / 65535 of full scale
    assert read_image(bright, 1)[0, 0, 1] == read_image(dark, 1)[0, 0, 1] == round(1000 * 255 / 65535)
    assert read_image(dark, 1, intensity=Intensity(voi="minmax"))[0, 0].tolist() == [0, 128, 255]
    tif = tmp_path / "a.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tif)
    assert read_image(tif, 1)[0, 0].tolist() == [0, 128, 255]
    window = Intensity(window=(1000.5, 1000))  # on raw values: 501..1500 → 0..255
    assert read_image(dark, 1, intensity=window)[0, 0].tolist() == [0, 128, 255]


def test_float_tiff_uses_its_own_min_max(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32)).save(path)
    assert read_image(path, 1)[0, 0].tolist() == [0, 64, 255]


def test_8_bit_png_stays_as_stored_and_verify_loads_it(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(np.array([[3, 100, 200]], dtype=np.uint8)).save(path)
    assert read_image(path, 1)[0, 0].tolist() == [3, 100, 200]
    assert probe_image(path, verify=True) == ImageInfo(channels=1)
    truncated = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"t\.png"):
        probe_image(truncated, verify=True)


# ---------------------------------------------------------------------------------- option parsing


def test_intensity_parse_and_validation() -> None:
    assert INTENSITY_OPTIONS == ("voi", "window", "frames")
    assert Intensity.parse({"window": "40,400", "task": "binary"}) == Intensity(
        voi="window", window=(40, 400)
    )
    assert Intensity.parse({"voi": "FULL", "frames": "all"}) == Intensity(voi="full", frames="all")
    assert Intensity.parse({}) == Intensity()
    bad = [
        ({"window": "40"}, "window='40' is not valid; give CENTER,WIDTH"),
        ({"window": "40,0"}, "width at least 1"),
        ({"window": "a,b"}, "two numbers"),
        ({"voi": "window"}, "voi=window needs the window itself"),
        ({"voi": "full", "window": "40,400"}, "contradicts voi=full"),
        ({"voi": "auto"}, "voi='auto' is not valid; use one of stored, window, full, minmax"),
        ({"frames": "middle"}, "frames='middle' is not valid; use one of first, all, error"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
            Intensity.parse(options)


# ----------------------------------------------------------------------------------------- logging


def test_pydicom_tracebacks_are_not_logged(tmp_path: Path, caplog, capsys) -> None:
    path = write_encapsulated(tmp_path / "bad.dcm", JPEGBaseline8Bit, b"\xff\xd8\xff\xdbnot a jpeg\xff\xd9")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DataError, match=r"bad\.dcm"):
        read_image(path, 1)
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(Exception):  # noqa: B017 - without medadapt, pydicom logs its traceback
        pydicom.dcmread(path).pixel_array  # noqa: B018
    assert any(r.name.startswith("pydicom") and r.exc_info for r in caplog.records)


def test_log_silencing_is_per_thread(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("pydicom")
    with quiet_pydicom():
        logger.warning("from the reading thread")
        other = threading.Thread(target=logger.warning, args=("from another thread",))
        other.start()
        other.join()
    logger.warning("after the read")
    assert [r.getMessage() for r in caplog.records if r.name == "pydicom"] == [
        "from another thread",
        "after the read",
    ]
