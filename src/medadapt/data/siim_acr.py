"""SIIM-ACR Pneumothorax Segmentation (Kaggle) as distributed: ``siim-acr:/data/siim``.

Get it from https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation (1024x1024 chest X-rays, DICOM).
ROOT holds an RLE CSV and the DICOMs anywhere below it (``dicom-images-train/<study>/<series>/<ImageId>.dcm``
in stage 1, ``stage_2_images/<ImageId>.dcm`` in stage 2): files are found by name (ImageId = file stem) with
one recursive search; of two files of one ImageId the first in path order is used.

**RLE CSV**: ``rle=NAME`` (relative to ROOT, or absolute), else ``train-rle.csv`` (stage 1: columns
``ImageId`` and `` EncodedPixels``, with the header's leading space), else ``stage_2_train.csv`` (stage 2).
Stage 2's file covers stage 1's train and test images, and relabelled some stage-1 images: results on the two
files are not comparable. ``-1`` is no pneumothorax; several rows of one ImageId are several regions, whose
union is the mask (a ``-1`` row beside regions adds nothing).

**RLE format**: pairs (offset from the end of the previous run, run length) over the image in
**column-major** order: :func:`decode_rle` equals the competition's ``mask_functions.rle2mask(...).T``.

**Options**: ``target=binary|segmentation`` (binary), ``rle``, ``seed``, ``fractions``, ``channels``
(default 1), ``skip_bad``, ``verify``, ``size``, ``interpolation``. ``target=binary``: classes
``no_pneumothorax, pneumothorax``. ``target=segmentation``: classes ``background, pneumothorax``, masks
decoded on demand, labels the "has pneumothorax" flags, metadata adds ``foreground``, ``object_size`` and
``object_size_band`` (:mod:`medadapt.data.masks`); ``size`` resizes images and masks (the ``size`` loader
argument wins); for classification ``?size=`` resizes images at load.

**Metadata**, from each DICOM header (read once, without pixels): ``patient_id`` (PatientID),
``age`` (PatientAge, years), ``sex`` (PatientSex), ``view`` (ViewPosition, PA/AP); and ``image_id``,
``n_regions``, ``csv``, ``row`` (the ImageId's first 0-based data row), ``path``.

**Splits**: the competition published no labelled test set in stage 1, so every split is a seeded,
patient-grouped split stratified by pneumothorax (``fractions``, default 0.7,0.1,0.2).

Bad rows (no DICOM for an ImageId, unreadable header, malformed RLE, runs past the image's end) name the CSV
row and ImageId; ``skip_bad`` drops them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .base import DATASETS, DatasetAddress
from .layouts import (
    SHARED_OPTIONS,
    LayoutRows,
    finish,
    gray_layout_options,
    layout_root,
    missing,
    read_header,
)
from .masks import MaskOptions, mask_columns, object_size
from .tables import FileOptions, auto_splits

__all__ = ["load_siim_acr", "decode_rle", "rle_runs"]

logger = logging.getLogger(__name__)

URL = "https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation"
_RLE_FILES = ("train-rle.csv", "stage_2_train.csv")
_TAGS = ("PatientID", "PatientAge", "PatientSex", "ViewPosition", "Rows", "Columns")
_OPTIONS = (*SHARED_OPTIONS, "size", "interpolation", "target", "rle")
_AGE_UNITS = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}


# ------------------------------------------------------------------------------------------------ RLE
# The competition's RLE is relative (each start counts from the end of the previous run) and column-major;
# no library decodes this variant (pycocotools and the usual Kaggle rle_decode take absolute starts in
# row-major order), so it is decoded here by hand.


def rle_runs(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Absolute ``(starts, lengths)`` of the runs of one relative RLE string over ``n_pixels`` pixels."""
    try:
        values = np.array([int(t) for t in rle.split()], dtype=np.int64)
    except ValueError:
        raise DataError(f"RLE {rle[:40]!r} has a token that is not an integer") from None
    if len(values) == 0 or len(values) % 2:
        raise DataError(f"RLE has {len(values)} numbers; it must be (offset, length) pairs, or -1 for none")
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any() or (lengths <= 0).any():
        raise DataError("RLE has a negative offset or a run length below 1")
    ends = np.cumsum(offsets + lengths)
    if ends[-1] > n_pixels:
        raise DataError(f"RLE runs end at pixel {ends[-1]}, past the image's {n_pixels} pixels")
    return ends - lengths, lengths


def decode_rle(rles: list[str] | tuple[str, ...], height: int, width: int) -> np.ndarray:
    """The union of ``rles`` ("-1": none) as a 0/1 uint8 ``[height, width]`` mask.

    Example:
        >>> decode_rle(["1 2 1 1"], 2, 3).tolist()  # runs at pixels 1-2 and 4, counted down the columns
        [[0, 1, 1], [1, 0, 0]]
    """
    flat = np.zeros(height * width, dtype=np.uint8)
    for rle in rles:
        if rle.strip() != "-1":
            for start, length in zip(*rle_runs(rle, height * width)):
                flat[start : start + length] = 1
    return np.ascontiguousarray(flat.reshape(width, height).T)


@dataclass(frozen=True)
class _RleMasks:
    """``read(image_id) -> mask``: decodes the RLE of one image of the split (picklable for workers)."""

    entries: dict[str, tuple[int, int, tuple[str, ...]]]

    def __call__(self, image_id: str) -> np.ndarray:
        height, width, rles = self.entries[image_id]
        return decode_rle(rles, height, width)


# ---------------------------------------------------------------------------------------------- table


def _read_rle(root: Path, name: str | None) -> tuple[Path, pd.DataFrame]:
    """The RLE CSV (columns stripped): one row per ImageId with ``rles``, ``n_regions``, ``csv``, ``row``."""
    if name is None:
        name = next((n for n in _RLE_FILES if (root / n).is_file()), " or ".join(_RLE_FILES))
    path = root / Path(name).expanduser()
    if not path.is_file():
        raise missing(f"the RLE CSV {name}", path, "SIIM-ACR", URL)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    for column in ("ImageId", "EncodedPixels"):
        if column not in table.columns:
            raise DataError(
                f"SIIM-ACR: {path.name} has no column {column!r} (columns: {', '.join(table.columns)})"
            )
    table = table.assign(ImageId=table["ImageId"].str.strip(), rle=table["EncodedPixels"].str.strip())
    groups = table.assign(row=np.arange(len(table))).groupby("ImageId", sort=False)
    images = groups.agg(row=("row", "first"), rles=("rle", tuple)).reset_index()
    images["n_regions"] = [sum(r != "-1" for r in rles) for rles in images["rles"]]
    return path, images.rename(columns={"ImageId": "image_id"}).assign(csv=path.name)


def _index_dicoms(root: Path) -> dict[str, Path]:
    """``ImageId -> path`` of every ``*.dcm`` below ROOT (the first in path order for a repeated stem)."""
    found = {p.stem: p for p in sorted(root.rglob("*.dcm"), reverse=True)}
    if not found:
        raise missing("the DICOM images (dicom-images-train/ or stage_2_images/)", root, "SIIM-ACR", URL)
    return found


def _age(value: Any) -> float:
    match = re.fullmatch(r"0*(\d+)\s*([YMWD]?)", str(value or "").strip().upper())
    return int(match[1]) / _AGE_UNITS[match[2]] if match else np.nan


def _headers(images: pd.DataFrame, files: dict[str, Path]) -> tuple[pd.DataFrame, dict[int, str]]:
    """Path, patient, age, sex, view, height and width per image; errors: no file, unreadable header."""
    records, errors = [], {}
    for i, image_id in enumerate(images["image_id"]):
        path, header = files.get(image_id), dict.fromkeys(_TAGS)
        if path is None:
            errors[i] = f"image not found: no {image_id}.dcm below the dataset folder"
        else:
            try:
                header = read_header(path, _TAGS)
            except DataError as e:
                errors[i] = str(e)
        records.append({"path": str(path or ""), "patient_id": str(header["PatientID"] or "") or None,
                        "age": _age(header["PatientAge"]), "sex": header["PatientSex"],
                        "view": header["ViewPosition"], "height": int(header["Rows"] or 0),
                        "width": int(header["Columns"] or 0)})  # fmt: skip
    return pd.DataFrame(records, index=images.index), errors


# ----------------------------------------------------------------------------------------------- rows


def _check_rles(images: pd.DataFrame, rows: np.ndarray, errors: dict[int, str]) -> None:
    """Add the bad RLE of ``rows`` (those without an error yet) to ``errors``."""
    for i in (int(i) for i in rows if int(i) not in errors):
        n_pixels = images["height"].iat[i] * images["width"].iat[i]
        try:
            for rle in images["rles"].iat[i]:
                if rle != "-1":
                    rle_runs(rle, n_pixels)
        except DataError as e:
            errors[i] = f"ImageId {images['image_id'].iat[i]}: {e}"


def _mask_metadata(meta: pd.DataFrame, images: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    """``meta`` plus ``foreground``, ``object_size`` and its band, decoded for ``rows`` (NaN elsewhere)."""
    foreground, sizes = np.full(len(meta), np.nan), np.full(len(meta), np.nan)
    for i in rows:
        if images["n_regions"].iat[i] == 0:
            foreground[i] = sizes[i] = 0.0
            continue
        mask = decode_rle(images["rles"].iat[i], images["height"].iat[i], images["width"].iat[i])
        foreground[i], sizes[i] = np.count_nonzero(mask) / mask.size, object_size(mask)
    return mask_columns(meta, "SIIM-ACR", foreground, sizes)


def _rows(root: Path, split: str, opts: FileOptions, target: str, rle: str | None) -> tuple:
    csv_path, images = _read_rle(root, rle)
    info, errors = _headers(images, _index_dicoms(root))
    images = pd.concat([images, info], axis=1)
    labels = (images[["n_regions"]].to_numpy() > 0).astype(np.int64)
    blank = images["patient_id"].isna()
    if blank.any():
        logger.warning(
            "SIIM-ACR: %d of %d images have no PatientID in their DICOM header: each is its own patient in the "
            "split, so images of one patient among them may cross splits", int(blank.sum()), len(images),
        )  # fmt: skip
    groups = images["patient_id"].fillna("\0" + images["image_id"]).to_numpy()
    splits = auto_splits(labels, groups, opts, source="SIIM-ACR", classes=["no_pneumothorax", "pneumothorax"])
    _check_rles(images, np.flatnonzero(splits == split), errors)
    columns = ["image_id", "patient_id", "age", "sex", "view", "n_regions", "csv", "row", "path"]
    meta, read = images[columns], None
    if target == "segmentation":
        wanted = [int(i) for i in np.flatnonzero(splits == split) if int(i) not in errors]
        meta = _mask_metadata(meta.assign(mask_path=images["image_id"]), images, wanted)
        read = _RleMasks({images["image_id"].iat[i]: (images["height"].iat[i], images["width"].iat[i],
                                                      images["rles"].iat[i]) for i in wanted})  # fmt: skip
    classes = ["background", "pneumothorax"] if read else ["no_pneumothorax", "pneumothorax"]
    task = "segmentation" if read else "binary"
    rows = LayoutRows(csv_path.name, meta, list(meta["path"]), labels, classes, task, splits, errors, "row")
    return rows, read


# ----------------------------------------------------------------------------------------------- kind


def _parse(options: dict[str, Any]) -> tuple[FileOptions, MaskOptions, str, str | None]:
    shared, masks, rest = gray_layout_options(options, _OPTIONS, "siim-acr")
    target = str(rest.get("target", "binary"))
    if target not in ("binary", "segmentation"):
        raise ConfigError(f"target={target!r} is not valid; choose binary or segmentation")
    return shared, masks, target, str(rest["rle"]) if "rle" in rest else None


def _load(address: DatasetAddress, split: str, *, size: int | None = None, skip_bad: bool = False,
          **ignored: Any) -> Any:  # fmt: skip
    """Load one split of ``siim-acr:ROOT`` (options: see the module docstring)."""
    opts, masks, target, rle = _parse(address.options)
    root = layout_root(address.location, "SIIM-ACR", URL, "ROOT/train-rle.csv and ROOT/dicom-images-train/")
    rows, read = _rows(root, split, opts, target, rle)
    return finish(
        rows, split, str(address), opts, masks, skip_bad=skip_bad or opts.skip_bad, read=read, size=size
    )


#: ``load_dataset("siim-acr:/data/siim?target=segmentation&size=512", "train")``
load_siim_acr = DATASETS.register(
    "siim-acr",
    _load,
    examples=lambda: ["siim-acr:DIR"],
    check=lambda address: _parse(address.options),
    location="folder",
    download=URL,
)
