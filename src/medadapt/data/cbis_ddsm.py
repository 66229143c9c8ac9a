"""CBIS-DDSM mammograms as TCIA distributes them: ``cbis-ddsm:/data/CBIS-DDSM``.

ROOT holds the four description CSVs (``mass_case_description_{train,test}_set.csv``,
``calc_case_description_{train,test}_set.csv``) and the NBIA download, either directly or in
``ROOT/CBIS-DDSM/`` (the NBIA Data Retriever's folder). Get both from
https://www.cancerimagingarchive.net/collection/cbis-ddsm/.

**Paths.** A CSV path (``Mass-Training_P_00001_LEFT_CC/<study uid>/<series uid>/000000.dcm``) is used when
that file exists; otherwise the folder named by its first component is searched (NBIA stores
``Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm``: other
folder and file names). A full-image folder must hold one DICOM. An abnormality folder (``..._1``) holds
the ROI mask and the cropped image, told apart by, in turn, the DICOM SeriesDescription ("ROI mask images" /
"cropped images"), the series folder's name, and size (the mask has the full mammogram's size); the first
rule that singles out one file wins, so swapped CSV paths are corrected too.

**Options**: ``abnormality=mass|calc|all`` (all), ``target=pathology|segmentation`` (pathology),
``image=full|roi`` (full; roi: the cropped lesion images, classification only), ``val_fraction`` (0.1),
``seed``, ``fractions``, ``channels`` (default 1), ``skip_bad``, ``verify``, ``size``, ``interpolation``.

**Rows and labels.** Classes ``benign, malignant`` (binary); BENIGN_WITHOUT_CALLBACK is benign. With
``image=full`` a row is one mammogram (patient, side, view; under ``abnormality=all`` the mass and calc
copies of one mammogram are one row, read from the first CSV's copy): malignant when any of its
abnormalities is, and with ``target=segmentation`` its mask is the union of all its ROI masks (classes
``background, lesion``; any non-zero mask value is the lesion). With ``image=roi`` a row is one abnormality.

**Metadata**: ``image_id``, ``patient_id``, ``breast_density``, ``side``, ``view``, ``abnormality_type``
(all of the image's, joined by ``+``), ``n_abnormalities``, and of the leading abnormality (the first
malignant one, else the first): ``abnormality_id``, ``assessment`` (BI-RADS), ``pathology``, ``subtlety``
(1 subtle .. 5 obvious), the mass shape/margins and calc type/distribution columns; ``csv``, ``row`` (its
0-based data row there), ``path`` and (segmentation) ``mask_path``.

**Splits.** The CSVs' train/test; a seeded, patient-grouped ``val_fraction`` of train is validation. A
patient in both train and test (possible across the mass and calc CSVs) keeps only the test rows.
``fractions=0.7,0.1,0.2`` replaces the official split by a seeded patient-grouped one.

Building the table reads DICOM headers only (``stop_before_pixels``); mammograms are up to 5000x3000
16-bit, so give ``size=`` (e.g. 512): images (and masks, by nearest neighbour) are resized at load; for
segmentation the ``size`` loader argument (``--size``) wins. Bad rows (image or mask not found, ambiguous
folders, unreadable headers, mask and image sizes that differ, an unknown pathology) name their CSV and row;
``skip_bad`` drops them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._optional import require
from ..errors import ConfigError, DataError
from .base import DATASETS, DatasetAddress
from .layouts import (
    SHARED_OPTIONS,
    LayoutRows,
    carve_val,
    finish,
    gray_layout_options,
    layout_root,
    missing,
    parse_val_fraction,
    read_header,
)
from .masks import MaskOptions
from .tables import FileOptions, as_float, auto_splits

__all__ = ["load_cbis_ddsm", "read_roi_masks"]

logger = logging.getLogger(__name__)

URL = "https://www.cancerimagingarchive.net/collection/cbis-ddsm/"
_PATHOLOGY = {"BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0, "MALIGNANT": 1}
_RENAME = {"left_or_right_breast": "side", "image_view": "view", "image_file_path": "image_file",
           "cropped_image_file_path": "cropped_file", "roi_mask_file_path": "roi_file"}  # fmt: skip
_REQUIRED = ("patient_id", "breast_density", "side", "view", "abnormality_id", "abnormality_type",
             "assessment", "pathology", "subtlety", "image_file", "cropped_file", "roi_file")  # fmt: skip
_NUMERIC_TAGS = frozenset({"Rows", "Columns"})
_OPTIONS = (*SHARED_OPTIONS, "abnormality", "target", "image", "val_fraction", "size", "interpolation")


# ------------------------------------------------------------------------ shared with siim_acr.py
# ------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    shared: FileOptions
    masks: MaskOptions
    abnormality: str = "all"
    target: str = "pathology"
    image: str = "full"
    val_fraction: float = 0.1
    fractions_given: bool = False

    @classmethod
    def parse(cls, options: dict[str, Any]) -> _Options:
        shared, masks, rest = gray_layout_options(options, _OPTIONS, "cbis-ddsm")
        if "val_fraction" in rest:
            rest["val_fraction"] = as_float(rest["val_fraction"], "val_fraction")
        return cls(shared, masks, **{k: str(v) if k != "val_fraction" else v for k, v in rest.items()},
                   fractions_given="fractions" in options)  # fmt: skip

    def __post_init__(self) -> None:
        for name, valid in (("abnormality", ("mass", "calc", "all")), ("target", ("pathology", "segmentation")),
                            ("image", ("full", "roi"))):  # fmt: skip
            if getattr(self, name) not in valid:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not valid; choose one of {', '.join(valid)}"
                )
        if self.target == "segmentation" and self.image == "roi":
            raise ConfigError("image=roi has no masks (the crops' masks are not distributed); segmentation "
                              "uses the full mammograms: drop image=roi")  # fmt: skip
        parse_val_fraction(self.val_fraction)  # a multiple of 1/k below 1, as the grouped split needs


# ---------------------------------------------------------------------------------------------- table


def _read_csvs(root: Path, abnormality: str) -> pd.DataFrame:
    """Every abnormality of the chosen CSVs, columns renamed, paths stripped; ``csv``, ``row``, ``split``."""
    frames = []
    for kind in ("mass", "calc") if abnormality == "all" else (abnormality,):
        for split in ("train", "test"):
            name = f"{kind}_case_description_{split}_set.csv"
            if not (root / name).is_file():
                raise missing(f"the description CSV {name}", root / name, "CBIS-DDSM", URL)
            table = pd.read_csv(root / name, dtype=str, keep_default_na=False).apply(lambda c: c.str.strip())
            table.columns = [
                _RENAME.get(c, c) for c in (c.strip().lower().replace(" ", "_") for c in table.columns)
            ]
            absent = [c for c in _REQUIRED if c not in table.columns]
            if absent:
                raise DataError(
                    f"CBIS-DDSM: {name} has no column {absent[0]!r} (columns: {', '.join(table.columns)})"
                )
            frames.append(table.assign(csv=name, row=np.arange(len(table)), split=split))
    return pd.concat(frames, ignore_index=True)


def _drop_crossing(table: pd.DataFrame) -> pd.DataFrame:
    """Train rows of patients who also have test rows are dropped (the official test set stays whole)."""
    crossing = (table["split"] == "train") & table["patient_id"].isin(
        table.loc[table["split"] == "test", "patient_id"]
    )
    if crossing.any():
        logger.warning("CBIS-DDSM: %d train abnormalities of %d patients also in test are left out",
                       crossing.sum(), table.loc[crossing, "patient_id"].nunique())  # fmt: skip
    return table[~crossing].reset_index(drop=True)


def _per_image(table: pd.DataFrame) -> pd.DataFrame:
    """One row per mammogram: its leading abnormality's columns, all ROI paths, the worst label."""
    table = table.assign(image_id=table["patient_id"] + "_" + table["side"] + "_" + table["view"],
                         order=np.arange(len(table)))  # fmt: skip
    groups = table.groupby("image_id", sort=False)
    lead = table.sort_values(["label", "order"], ascending=[False, True]).drop_duplicates("image_id")
    lead = lead.set_index("image_id").loc[list(groups.groups)]
    lead["abnormality_type"] = groups["abnormality_type"].agg(lambda s: "+".join(sorted(set(s))))
    lead["n_abnormalities"] = groups.size()
    lead["roi_files"] = groups["roi_file"].agg(list)
    lead["label"] = groups["label"].agg(lambda s: -1 if (s < 0).any() else s.max())
    lead["image_file"] = groups["image_file"].first()  # the first CSV's copy of the mammogram
    return lead.reset_index().sort_values("order").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- paths


class _Resolver:
    """Finds the files a CSV path names, in the NBIA layout when the exact path does not exist."""

    _TAGS = ("SeriesDescription", "Rows", "Columns")

    def __init__(self, base: Path) -> None:
        self.base, self._headers, self._files = base, {}, {}

    def header(self, path: Path) -> dict[str, Any]:
        if path not in self._headers:
            self._headers[path] = read_header(path, self._TAGS)
        return self._headers[path]

    def shape(self, path: Path) -> tuple[int, int]:
        h = self.header(path)
        return int(h["Rows"] or 0), int(h["Columns"] or 0)

    def folder_files(self, value: str) -> list[Path]:
        """The DICOMs under the folder named by the path's first component (error: none there)."""
        folder = self.base / Path(value).parts[0]
        if folder not in self._files:
            self._files[folder] = sorted(folder.rglob("*.dcm")) if folder.is_dir() else []
        if not self._files[folder]:
            raise DataError(f"not found: {self.base / value}, and no DICOM in {folder}")
        return self._files[folder]

    def full(self, value: str) -> Path:
        if (self.base / value).is_file():
            return self.base / value
        files = self.folder_files(value)
        if len(files) > 1:
            folder = self.base / Path(value).parts[0]
            raise DataError(f"{len(files)} DICOMs in {folder}; expected one full mammogram")
        return files[0]

    def pick(self, want: str, values: list[str], full: Path) -> Path:
        """The ROI ``mask`` or ``cropped`` image among the CSV's paths (when both exist) or the folder."""
        exact = sorted({self.base / v for v in values if v and (self.base / v).is_file()})
        files = exact if len(exact) == 2 else self.folder_files(values[0])
        signals = (lambda p: _kind_of(str(self.header(p)["SeriesDescription"] or "")),
                   lambda p: _kind_of(p.parent.name),
                   lambda p: "mask" if self.shape(p) == self.shape(full) else "cropped")  # fmt: skip
        for signal in signals:
            hits = [p for p in files if signal(p) == want]
            if len(hits) == 1:
                return hits[0]
        names = ", ".join(str(p.relative_to(self.base)) for p in files)
        raise DataError(f"cannot tell the ROI mask from the cropped image among {names}")


def _kind_of(text: str) -> str | None:
    text = text.lower()
    return "mask" if "roi mask" in text else "cropped" if "crop" in text else None


def _resolve(row: pd.Series, opts: _Options, resolver: _Resolver) -> tuple[str, str]:
    """``(image path, mask key)`` of one table row (key: ROI mask paths, one a line)."""
    if row["label"] < 0:
        raise DataError(f"pathology {row['pathology']!r} is not one of {', '.join(_PATHOLOGY)}")
    full = resolver.full(row["image_file"])
    if opts.image == "roi":
        return str(resolver.pick("cropped", [row["cropped_file"], row["roi_file"]], full)), ""
    if opts.target != "segmentation":
        return str(full), ""
    masks = [resolver.pick("mask", [roi, ""], full) for roi in row["roi_files"]]
    for mask in masks:
        if resolver.shape(mask) != resolver.shape(full):
            (h, w), (mh, mw) = resolver.shape(full), resolver.shape(mask)
            raise DataError(f"image {full} is {w}x{h} but its ROI mask {mask} is {mw}x{mh}")
    return str(full), "\n".join(str(m) for m in masks)


def read_roi_masks(key: str) -> np.ndarray:
    """The union of the ROI masks in ``key`` (paths, one a line) as a 0/1 uint8 ``[H, W]`` array."""
    pydicom = require("pydicom", extra="dicom")
    union = None
    for path in key.split("\n"):
        try:
            values = pydicom.dcmread(path).pixel_array
        except Exception as e:  # pydicom raises many types for corrupt files
            raise DataError(f"cannot read ROI mask {path}: {e}") from e
        if union is not None and union.shape != values.shape:
            raise DataError(f"ROI masks of one image differ in size: {key.replace(chr(10), ', ')}")
        union = (values != 0) if union is None else union | (values != 0)
    return union.astype(np.uint8)


# ----------------------------------------------------------------------------------------------- rows


def _splits(table: pd.DataFrame, opts: _Options) -> np.ndarray:
    labels, groups = table[["label"]].clip(lower=0).to_numpy(), table["patient_id"].to_numpy()
    if opts.fractions_given:
        return auto_splits(labels, groups, opts.shared, source="CBIS-DDSM", classes=["benign", "malignant"])
    return carve_val(
        table["split"].to_numpy(dtype=object), labels, groups, opts.val_fraction, opts.shared.seed
    )


def _rows(root: Path, split: str, opts: _Options) -> LayoutRows:
    table = _read_csvs(root, opts.abnormality)
    table["label"] = table["pathology"].str.upper().map(_PATHOLOGY).fillna(-1).astype(int)
    table = table if opts.fractions_given else _drop_crossing(table)
    if opts.image == "full":
        table = _per_image(table)
    else:
        table = table.assign(image_id=table["patient_id"] + "_" + table["side"] + "_" + table["view"]
                             + "_" + table["abnormality_id"], n_abnormalities=1)  # fmt: skip
    splits = _splits(table, opts)
    base = root / "CBIS-DDSM" if (root / "CBIS-DDSM").is_dir() else root
    if not any(d.name.startswith(("Mass-", "Calc-")) for d in base.iterdir() if d.is_dir()):
        raise missing("the image folders (Mass-Training_P_..., Calc-Test_P_...)", base, "CBIS-DDSM", URL)
    resolver, paths, keys, errors = _Resolver(base), [""] * len(table), [""] * len(table), {}
    for i in np.flatnonzero(splits == split):
        try:
            paths[i], keys[i] = _resolve(table.iloc[i], opts, resolver)
        except DataError as e:
            errors[int(i)] = str(e)
    meta = _metadata(table).assign(path=paths)
    target = opts.target == "segmentation"
    labels = np.ones((len(table), 1), np.int64) if target else table[["label"]].clip(lower=0).to_numpy()
    meta = meta.assign(mask_path=keys) if target else meta
    classes = ["background", "lesion"] if target else ["benign", "malignant"]
    return LayoutRows(root.name, meta, paths, labels, classes, "segmentation" if target else "binary",
                      splits, errors, "row")  # fmt: skip


def _metadata(table: pd.DataFrame) -> pd.DataFrame:
    columns = ["image_id", "patient_id", "breast_density", "side", "view", "abnormality_type",
               "n_abnormalities", "abnormality_id", "assessment", "pathology", "subtlety", "mass_shape",
               "mass_margins", "calc_type", "calc_distribution", "csv", "row"]  # fmt: skip
    meta = table.reindex(columns=columns).reset_index(drop=True)
    for column in ("breast_density", "assessment", "subtlety", "abnormality_id"):
        meta[column] = pd.to_numeric(meta[column], errors="coerce")
    return meta


# ----------------------------------------------------------------------------------------------- kind


def _load(address: DatasetAddress, split: str, *, size: int | None = None, skip_bad: bool = False,
          **ignored: Any) -> Any:  # fmt: skip
    """Load one split of ``cbis-ddsm:ROOT`` (options: see the module docstring)."""
    opts = _Options.parse(address.options)
    root = layout_root(
        address.location, "CBIS-DDSM", URL, "ROOT/*_case_description_*_set.csv and ROOT/CBIS-DDSM/"
    )
    rows = _rows(root, split, opts)
    read = read_roi_masks if opts.target == "segmentation" else None
    return finish(rows, split, str(address), opts.shared, opts.masks, skip_bad=skip_bad or opts.shared.skip_bad,
                  read=read, size=size)  # fmt: skip


#: ``load_dataset("cbis-ddsm:/data/CBIS-DDSM?abnormality=mass&size=512", "test")``
load_cbis_ddsm = DATASETS.register(
    "cbis-ddsm",
    _load,
    examples=lambda: ["cbis-ddsm:DIR"],
    check=lambda address: _Options.parse(address.options),
    location="folder",
    download=URL,
)
