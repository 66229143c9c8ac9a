"""ISIC 2019 as the challenge distributes it: ``isic2019:/data/isic2019``.

Layout (https://challenge.isic-archive.com/data/#2019; the zips and CSVs unpacked into ROOT)::

    ROOT/ISIC_2019_Training_Input/ISIC_0000000.jpg   (a copy nested twice, .../Input/ISIC_2019_Training_Input/,
                                                      is found too)
    ROOT/ISIC_2019_Training_GroundTruth.csv          image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot floats)
    ROOT/ISIC_2019_Training_Metadata.csv             image,age_approx,anatom_site_general,lesion_id,sex
    ROOT/ISIC_2019_Test_Input/, ISIC_2019_Test_GroundTruth.csv, ISIC_2019_Test_Metadata.csv   (optional)

Task ``multiclass`` over the 8 diagnoses, in the CSV's order: ``MEL`` melanoma, ``NV`` melanocytic nevus,
``BCC`` basal cell carcinoma, ``AK`` actinic keratosis, ``BKL`` benign keratosis, ``DF`` dermatofibroma,
``VASC`` vascular lesion, ``SCC`` squamous cell carcinoma. ``UNK`` (the challenge's "none of the others",
never positive in training) is not a class: a row whose only positive is UNK (the test set has such rows) is
left out with a log line; any other row that is not exactly one-hot over the 8 is a bad row.

**Splits.** With ``ISIC_2019_Test_GroundTruth.csv`` in ROOT, the official test images are the test split
(``ISIC_2019_Test_Input/`` and ``ISIC_2019_Test_Metadata.csv`` are then required too), and a seeded,
lesion-grouped, stratified ``val_fraction`` (0.1) of the training images is val. Without it (the original
2019 release had no test labels) train/val/test are a lesion-grouped, stratified split of the training images
(``fractions``, 0.7,0.1,0.2). ``lesion_id`` is the closest thing to a patient id ISIC 2019 has: images of one
lesion never cross splits. Images without a ``lesion_id`` (those not from HAM10000) are each their own group,
with a warning giving their number: images of one lesion or patient among them may cross splits.

**Metadata**: ``row`` (the ground-truth CSV's data row), ``image``, ``age`` (``age_approx``), ``site``
(``anatom_site_general``), ``sex`` and ``lesion_id`` (``dataset.patient_col``); missing values stay blank.

Options: ``val_fraction`` (with the official test set), ``fractions`` (without it; giving the option that
does not apply is an error), ``seed``, ``channels`` (default from the images: 3), ``skip_bad``, ``verify``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .base import DATASETS, DatasetAddress
from .layouts import (
    EXCLUDED,
    SHARED_OPTIONS,
    carve_val,
    file_errors,
    layout_file,
    layout_options,
    layout_root,
    own_groups,
    parse_val_fraction,
    read_layout_csv,
)
from .tables import ImageFileDataset, Rows, auto_splits, build_split

__all__ = ["CLASSES", "DIAGNOSES", "load_isic2019"]

logger = logging.getLogger(__name__)

CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
DIAGNOSES = dict(zip(CLASSES, (
    "melanoma", "melanocytic nevus", "basal cell carcinoma", "actinic keratosis", "benign keratosis",
    "dermatofibroma", "vascular lesion", "squamous cell carcinoma",
)))  # fmt: skip
URL = "https://challenge.isic-archive.com/data/#2019"
_NAME = "ISIC 2019"
_LAYOUT = (
    "ROOT/ISIC_2019_Training_Input/*.jpg, ROOT/ISIC_2019_Training_GroundTruth.csv, "
    "ROOT/ISIC_2019_Training_Metadata.csv"
)
_OPTIONS = ("val_fraction", *SHARED_OPTIONS)
_PART = {"train": "Training", "test": "Test"}
_META = {"age_approx": "age", "anatom_site_general": "site", "sex": "sex", "lesion_id": "lesion_id"}


def _file(root: Path, part: str, what: str) -> Path:
    return root / f"ISIC_2019_{_PART[part]}_{what}"


def has_official_test(root: Path) -> bool:
    return _file(root, "test", "GroundTruth.csv").is_file()


def image_dir(root: Path, part: str) -> Path:
    """``ISIC_2019_{Training,Test}_Input``, or the same name nested inside it (some copies unzip twice)."""
    folder = layout_file(_file(root, part, "Input"), _NAME, URL, _LAYOUT, folder=True)
    return folder / folder.name if (folder / folder.name).is_dir() else folder


def read_part(root: Path, part: str) -> pd.DataFrame:
    """The ground truth of ``part`` (train or test) with its metadata columns joined by ``image``."""
    truth = read_layout_csv(
        _file(root, part, "GroundTruth.csv"),
        _NAME,
        URL,
        _LAYOUT,
        ["image", *CLASSES],
        ("image", *CLASSES, "UNK"),
    )
    meta = read_layout_csv(
        _file(root, part, "Metadata.csv"), _NAME, URL, _LAYOUT, ["image"], ("image", "lesion_id")
    )
    meta = meta.drop(columns="row").drop_duplicates("image").set_index("image")
    unlisted = int((~truth["image"].isin(meta.index)).sum())
    if unlisted:
        logger.warning("%s: %d images have no metadata row: their metadata is blank", _NAME, unlisted)
    columns = {k: meta[k] if k in meta.columns else pd.Series(np.nan, index=meta.index) for k in _META}
    joined = pd.DataFrame(columns).rename(columns=_META).reindex(truth["image"])
    table = truth[["row", "image"]].join(joined.reset_index(drop=True))
    table["age"] = pd.to_numeric(table["age"], errors="coerce").astype(float)
    return table.assign(**{c: truth[c] for c in [*CLASSES, "UNK"] if c in truth.columns})


def encode_labels(table: pd.DataFrame) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """``(labels [N, 1], errors, unk)``: the class index of one-hot rows; ``unk`` marks UNK-only rows."""
    values = table[CLASSES].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    unk = (
        pd.to_numeric(table.get("UNK", pd.Series(0.0, index=table.index)), errors="coerce")
        .fillna(0)
        .to_numpy()
    )
    binary = np.isin(values, (0.0, 1.0)).all(axis=1)
    one_hot = binary & (values.sum(axis=1) == 1) & (unk == 0)
    unk_only = binary & (values.sum(axis=1) == 0) & (unk == 1)
    errors = {int(i): _why(table[CLASSES].iloc[i], values[i]) for i in np.flatnonzero(~one_hot & ~unk_only)}
    labels = np.where(one_hot, np.nan_to_num(values).argmax(axis=1), 0).astype(np.int64)[:, None]
    return labels, errors, unk_only


def _why(raw: pd.Series, values: np.ndarray) -> str:
    shown = ", ".join(f"{c}={r}" for c, r, v in zip(CLASSES, raw, values) if v != 0)
    if np.isnan(values).any() or not np.isin(values, (0.0, 1.0)).all():
        return f"labels {shown} are not 0/1 values; expected one 1.0 among {', '.join(CLASSES)}"
    if values.sum() == 0:
        return f"no diagnosis: every one of {', '.join(CLASSES)} is 0"
    return f"not one-hot over the 8 diagnoses: {shown} (UNK counted too)"


def lesion_groups(table: pd.DataFrame) -> np.ndarray:
    groups = own_groups(table["lesion_id"])
    missing = int(pd.Series(groups).str.startswith("\0row").sum())
    if missing:
        logger.warning(
            "%s: %d of %d training images have no lesion_id: each is its own group in the split, so images of "
            "one lesion (or patient) among them may cross splits", _NAME, missing, len(table),
        )  # fmt: skip
    return groups


def _splits(
    table: pd.DataFrame, labels: np.ndarray, unk: np.ndarray, official: bool, opts: IsicOptions
) -> np.ndarray:
    """Split per training row: a 3-way lesion-grouped split, or train with val carved out of it."""
    groups = lesion_groups(table)
    if official:
        splits = np.full(len(table), "train", dtype=object)
        splits = carve_val(splits, labels, groups, opts.val_fraction, opts.files.seed)
    else:
        splits = auto_splits(labels, groups, opts.files, source=_NAME, classes=list(CLASSES))
    return np.where(unk, EXCLUDED, splits).astype(object)


class IsicOptions:
    """The options of an ``isic2019:`` address, checked (see the module docstring)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.given = set(options)
        self.files, rest = layout_options(options, _OPTIONS, "isic2019")
        self.val_fraction = parse_val_fraction(rest.get("val_fraction", 0.1))

    def check_protocol(self, root: Path, official: bool) -> None:
        wrong = "fractions" if official else "val_fraction"
        if wrong in self.given:
            why = ("has the official test set (ISIC_2019_Test_GroundTruth.csv), so only val is carved out of "
                   "training: give val_fraction" if official else
                   "has no test ground truth, so train/val/test are split from training: give fractions")  # fmt: skip
            raise ConfigError(f"{wrong}= does not apply: {root} {why}")


def _rows(root: Path, split: str, opts: IsicOptions) -> Rows:
    official = has_official_test(root)
    opts.check_protocol(root, official)
    part = "test" if official and split == "test" else "train"
    if not official and _file(root, "test", "Input").is_dir():
        logger.info("%s: test images without ISIC_2019_Test_GroundTruth.csv are not used", _NAME)
    table = read_part(root, part)
    labels, errors, unk = encode_labels(table)
    if unk.any():
        logger.info(
            "%s: %d images whose diagnosis is UNK are left out (UNK is not a class)", _NAME, int(unk.sum())
        )
    if part == "test":
        splits = np.where(unk, EXCLUDED, "test").astype(object)
    else:
        splits = _splits(table, labels, unk, official, opts)
    folder = image_dir(root, part)
    paths = [str(folder / f"{str(name).strip()}.jpg") for name in table["image"]]
    errors = {**errors, **file_errors(paths, splits == split)}
    meta = table[["row", "image", "age", "site", "sex", "lesion_id"]]
    source = _file(root, part, "GroundTruth.csv").name
    return Rows(
        source, meta, paths, labels, list(CLASSES), "multiclass", splits, dict(sorted(errors.items())), "row"
    )


def _check(address: DatasetAddress) -> None:
    IsicOptions(address.options)


@DATASETS.register(
    "isic2019", examples=lambda: ["isic2019:DIR"], check=_check, location="folder", download=URL
)
def load_isic2019(
    address: DatasetAddress, split: str, *, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset:
    """One split of ISIC 2019 (options and splits: see the module docstring).

    Example: ``load_dataset("isic2019:/data/isic2019", "test")``
    """
    opts = IsicOptions(address.options)
    root = layout_root(address.location, _NAME, URL, _LAYOUT)
    for part in ("train", "test") if has_official_test(root) else ("train",):  # fail before a long run
        for what in ("GroundTruth.csv", "Metadata.csv"):
            layout_file(_file(root, part, what), _NAME, URL, _LAYOUT)
        image_dir(root, part)
    ds = build_split(
        _rows(root, split, opts), split, str(address), opts.files, skip_bad or opts.files.skip_bad
    )
    ds.patient_col = "lesion_id"
    return ds
