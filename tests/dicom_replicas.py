"""Tiny replicas of DICOM datasets as their owners distribute them (CBIS-DDSM, SIIM-ACR), made with pydicom."""

from __future__ import annotations

import csv
import itertools
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

_counter = itertools.count(24515)


def write_dicom(path: Path, pixels: np.ndarray, bits: int, **tags) -> Path:
    """A minimal uncompressed MONOCHROME2 DICOM file with ``pixels`` and extra ``tags``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.set_pixel_data(pixels, "MONOCHROME2", bits)
    with warnings.catch_warnings():  # SIIM's PatientAge values ("38") are not valid AS values
        warnings.simplefilter("ignore", UserWarning)
        for name, value in tags.items():
            setattr(ds, name, value)
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------ CBIS-DDSM

FULL_SHAPE, CROP_SHAPE = (32, 24), (8, 6)
MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]  # fmt: skip
CALC_COLUMNS = [c.replace("breast_density", "breast density").replace("mass shape", "calc type")
                .replace("mass margins", "calc distribution") for c in MASS_COLUMNS]  # fmt: skip


@dataclass
class Abn:
    """One abnormality row. ``layout``: exact (the CSV's UID paths exist), swapped (they exist but the
    CSV's cropped and ROI paths are swapped), nbia (NBIA folders, one series each), same (mask and crop in
    one NBIA series folder, told apart by SeriesDescription), nodesc (one folder, no description: by size)."""

    kind: str
    split: str
    patient: str
    side: str = "LEFT"
    view: str = "CC"
    abn_id: int = 1
    pathology: str = "BENIGN"
    layout: str = "nbia"
    box: tuple[int, int, int, int] = (2, 2, 8, 8)  # y0, x0, y1, x1 of the lesion in the ROI mask

    @property
    def folder(self) -> str:
        return f"{self.kind.capitalize()}-{'Training' if self.split == 'train' else 'Test'}_{self.patient}_{self.side}_{self.view}"

    @property
    def image_id(self) -> str:
        return f"{self.patient}_{self.side}_{self.view}"

    def mask(self) -> np.ndarray:
        y0, x0, y1, x1 = self.box
        mask = np.zeros(FULL_SHAPE, np.uint8)
        mask[y0:y1, x0:x1] = 1
        return mask


def _uid_path(folder: str, name: str) -> str:
    return (
        f"{folder}/1.3.6.1.4.1.9590.100.1.2.{next(_counter)}/1.3.6.1.4.1.9590.100.1.2.{next(_counter)}/{name}"
    )


def _nbia(folder: str, series: str, name: str = "1-1.dcm") -> str:
    return f"{folder}/07-20-2016-DDSM-{next(_counter)}/1.000000-{series}-{next(_counter)}/{name}"


def _write_full(base: Path, abn: Abn, written: dict[str, str], rng: np.random.Generator) -> str:
    """Writes the full mammogram once per folder; returns the path the CSV gives (UID style)."""
    if abn.folder not in written:
        rel = _uid_path(abn.folder, "000000.dcm")
        stored = rel if abn.layout in ("exact", "swapped") else _nbia(abn.folder, "full mammogram images")
        pixels = rng.integers(0, 4096, FULL_SHAPE, dtype=np.uint16)
        write_dicom(
            base / stored, pixels, 16, SeriesDescription="full mammogram images", PatientID=abn.patient
        )
        written[abn.folder] = rel
    return written[abn.folder]


def _write_roi(base: Path, abn: Abn, rng: np.random.Generator) -> tuple[str, str]:
    """Writes the ROI mask and the cropped image; returns the (cropped, roi) paths the CSV gives."""
    folder = f"{abn.folder}_{abn.abn_id}"
    if abn.layout in ("exact", "swapped"):
        crop, roi = _uid_path(folder, "000000.dcm"), _uid_path(folder, "000001.dcm")
    elif abn.layout == "nbia":
        crop, roi = _nbia(folder, "cropped images"), _nbia(folder, "ROI mask images")
    else:
        roi = _nbia(folder, "ROI mask images", "1-1.dcm")
        crop = str(Path(roi).parent / "1-2.dcm")
    described = abn.layout != "nodesc"
    mask_tags = {"SeriesDescription": "ROI mask images"} if described else {}
    crop_tags = {"SeriesDescription": "cropped images"} if described else {}
    write_dicom(base / roi, abn.mask() * 255, 8, **mask_tags)
    write_dicom(base / crop, rng.integers(0, 4096, CROP_SHAPE, dtype=np.uint16), 16, **crop_tags)
    if abn.layout in ("exact", "swapped"):  # the CSV's own (UID) paths, possibly swapped as in the real CSVs
        return (roi, crop) if abn.layout == "swapped" else (crop, roi)
    return (f"{folder}/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.2/000000.dcm",
            f"{folder}/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.3/000001.dcm")  # fmt: skip


def make_cbis(root: Path, abns: list[Abn], *, nbia_folder: bool = True) -> Path:
    """The four description CSVs in ROOT, the images in ROOT/CBIS-DDSM (or ROOT); missing CSVs are empty."""
    base = root / "CBIS-DDSM" if nbia_folder else root
    base.mkdir(parents=True, exist_ok=True)
    rng, written = np.random.default_rng(0), {}
    rows: dict[tuple[str, str], list[list[str]]] = {
        (k, s): [] for k in ("mass", "calc") for s in ("train", "test")
    }
    for abn in abns:
        full = _write_full(base, abn, written, rng)
        crop, roi = _write_roi(base, abn, rng)
        extra = ["OVAL", "CIRCUMSCRIBED"] if abn.kind == "mass" else ["PLEOMORPHIC", "CLUSTERED"]
        rows[abn.kind, abn.split].append(
            [abn.patient, "3", abn.side, abn.view, str(abn.abn_id), "mass" if abn.kind == "mass" else "calcification",
             *extra, "4", abn.pathology, "5", full, crop + "\n", roi + "\n"])  # fmt: skip
    for (kind, split), table in rows.items():
        with open(root / f"{kind}_case_description_{split}_set.csv", "w", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
            writer.writerow(MASS_COLUMNS if kind == "mass" else CALC_COLUMNS)
            writer.writerows(table)
    return root


# ---------------------------------------------------------------------------------------------- SIIM-ACR


def mask2rle(mask: np.ndarray) -> str:
    """The competition's ``mask_functions.mask2rle``, over a 0/1 ``[H, W]`` mask (column-major, relative
    starts), plus a final run that touches the last pixel (the original drops it)."""
    rle, last, current, start, length = [], 0, 0, -1, 0
    height, width = mask.shape
    for x in range(width):
        for y in range(height):
            colour = int(mask[y, x])
            if colour != last:
                if colour == 1:
                    start, length = current, 1
                else:
                    rle += [str(start), str(length)]
                    start, length, current = -1, 0, 0
            elif start > -1:
                length += 1
            last = colour
            current += 1
    if start > -1:
        rle += [str(start), str(length)]
    return " ".join(rle) if rle else "-1"


def write_siim_image(root: Path, image_id: str, patient: str, *, age: str = "38", sex: str = "M",
                     view: str = "PA", stage: int = 1, shape: tuple[int, int] = (32, 32)) -> Path:  # fmt: skip
    rng = np.random.default_rng(zlib.crc32(image_id.encode()))
    if stage == 1:
        path = (
            root
            / "dicom-images-train"
            / f"1.2.276.0.7230010.3.1.2.{image_id}"
            / f"1.2.276.0.7230010.3.1.3.{image_id}"
            / f"{image_id}.dcm"
        )
    else:
        path = root / "stage_2_images" / f"{image_id}.dcm"
    tags = {"PatientID": patient, "PatientAge": age, "PatientSex": sex, "ViewPosition": view}
    return write_dicom(path, rng.integers(0, 256, shape, dtype=np.uint8), 8, **tags)


def write_rle_csv(path: Path, rows: list[tuple[str, str]], *, stage: int = 1) -> Path:
    header = "ImageId, EncodedPixels" if stage == 1 else "ImageId,EncodedPixels"
    lines = [header] + [f"{image_id},{' ' if stage == 1 else ''}{rle}" for image_id, rle in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
