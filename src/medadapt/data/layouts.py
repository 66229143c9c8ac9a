"""What the seed-dataset layouts share (CheXpert, ISIC 2019, APTOS 2019, CBIS-DDSM, SIIM-ACR): their options,
the errors for missing files (naming the file, where it belongs, the layout and where to download the
dataset), reading the distributed CSVs with row numbers, carving a patient-grouped validation split out of
an official training split, DICOM header reads and the datasets they return.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._optional import require
from ..errors import ConfigError, DataError
from .base import path_problem
from .images import INTENSITY_OPTIONS
from .masks import MaskOptions, SegmentationDataset, resize_image
from .splits import grouped_split
from .tables import FileOptions, ImageFileDataset, Rows, as_float, build_split, check_options

__all__ = [
    "EXCLUDED",
    "SHARED_OPTIONS",
    "LayoutRows",
    "carve_val",
    "file_errors",
    "finish",
    "gray_layout_options",
    "layout_file",
    "layout_options",
    "layout_root",
    "missing",
    "own_groups",
    "parse_val_fraction",
    "read_header",
    "read_layout_csv",
]

_NUMERIC_TAGS = frozenset({"Rows", "Columns"})


#: Options every layout takes, parsed and checked by :class:`~medadapt.data.folder.FileOptions` as csv: does.
SHARED_OPTIONS = ("seed", "fractions", "channels", "skip_bad", "verify", *INTENSITY_OPTIONS)
#: The split name of rows a layout leaves out (another view, the UNK class): never loaded, never reported.
EXCLUDED = "-"


def layout_options(options: dict[str, Any], valid: tuple[str, ...], kind: str) -> tuple[FileOptions, dict]:
    """Refuse unknown options (with a did-you-mean); ``(FileOptions of the shared ones, the rest)``."""
    check_options(options, valid, kind)
    shared = {k: v for k, v in options.items() if k in SHARED_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in SHARED_OPTIONS}
    return FileOptions.parse(shared, SHARED_OPTIONS, kind), rest


def layout_file(path: Path, dataset: str, url: str, layout: str, *, folder: bool = False) -> Path:
    """``path`` when it is a readable file (``folder``: folder), else a DataError naming it, what is wrong
    (missing, a folder where a file belongs, unreadable), the layout and where to download the dataset."""
    problem = path_problem(path, folder=folder)
    if problem is None:
        return path
    what = "folder" if folder else "file"
    state = "is missing" if problem == "does not exist" else problem
    raise DataError(
        f"{dataset}: the {what} {path.name!r} {state}; it should be at {path} (layout: {layout}). Download "
        f"{dataset} from {url}, unpack it as distributed and give its folder in the dataset address"
    )


def layout_root(location: str, dataset: str, url: str, layout: str) -> Path:
    """The dataset folder of an address, checked like :func:`layout_file`."""
    root = Path(location).expanduser()
    problem = path_problem(root, folder=True)
    if problem:
        raise DataError(
            f"{dataset}: the dataset folder {str(root)!r} {problem} (layout: {layout}). Download {dataset} "
            f"from {url}, unpack it as distributed and give its folder in the dataset address"
        )
    return root


def read_layout_csv(
    path: Path, dataset: str, url: str, layout: str, columns: list[str], text: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A distributed CSV with its ``row`` numbers (0-based data rows); missing file or columns: DataError."""
    layout_file(path, dataset, url, layout)
    try:
        table = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{dataset}: cannot parse {str(path)!r}: {e}") from e
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{dataset}: {path.name} has no column {missing[0]!r} (columns: {', '.join(map(str, table.columns))}); "
            f"is it {dataset}'s {path.name} as distributed? Download it again from {url}"
        )
    return table.assign(row=np.arange(len(table)))


def file_errors(paths: list[str], check: np.ndarray) -> dict[int, str]:
    """``{row: reason}`` for the checked rows whose file does not exist."""
    return {
        int(i): f"file not found: {paths[i]}" for i in np.flatnonzero(check) if not Path(paths[i]).is_file()
    }


def own_groups(ids: pd.Series) -> np.ndarray:
    """Group ids for a split; a missing id makes the row its own group."""
    blank = ids.isna().to_numpy() | (ids.astype("string").str.strip() == "").fillna(True).to_numpy()
    return np.where(blank, [f"\0row{i}" for i in range(len(ids))], ids.astype(str).to_numpy())


def parse_val_fraction(value: Any) -> float:
    vf = as_float(value, "val_fraction")
    if not (0 <= vf < 1 and any(np.isclose(vf * k, round(vf * k)) for k in range(1, 21))):
        raise ConfigError(
            f"val_fraction={vf!r} is not valid; give a multiple of 1/k (k <= 20) below 1, e.g. 0.1"
        )
    return vf


def carve_val(
    splits: np.ndarray, labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int
) -> np.ndarray:
    """A seeded, group-kept, stratified ``val_fraction`` of the ``train`` rows moved to ``val``."""
    splits = splits.copy()
    train = splits == "train"
    if val_fraction > 0 and train.any():
        fractions = (1 - val_fraction, val_fraction, 0.0)
        splits[train] = grouped_split(labels[train], groups[train], fractions=fractions, seed=seed)
    return splits


def gray_layout_options(options: dict[str, Any], valid: tuple[str, ...], kind: str) -> tuple:
    """``(FileOptions, MaskOptions, rest)`` of a DICOM layout's address (``size`` and ``interpolation`` in the
    MaskOptions); channels default to 1 (gray)."""
    shared, rest = layout_options(options, valid, kind)
    masks = MaskOptions.parse({k: rest.pop(k) for k in ("size", "interpolation") if k in rest})
    return replace(shared, channels=shared.channels or 1), masks, rest


def read_header(path: str | Path, tags: tuple[str, ...]) -> dict[str, Any]:
    """The ``tags`` of one DICOM file (None where absent), reading the header only. Text values are decoded
    from their raw bytes, so that non-conforming ones (SIIM's PatientAge "38") do not warn once per file."""
    pydicom = require("pydicom", extra="dicom")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags))
        return {tag: _header_value(ds, tag) for tag in tags}
    except Exception as e:  # pydicom raises many types for corrupt files
        raise DataError(f"unreadable DICOM header {path}: {e}") from e


def _header_value(ds: Any, tag: str) -> Any:
    element = ds.get_item(tag)
    if element is None or tag in _NUMERIC_TAGS:
        return ds.get(tag)
    value = element.value
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value if value is not None else "")
    return text.strip(" \0") or None


@dataclass
class LayoutRows(Rows):
    """Rows whose table has ``csv``, ``row`` (0-based data row of that CSV) and ``image_id``."""

    def where(self, i: int) -> str:
        t = self.table
        return f"{t['csv'].iat[i]} row {t['row'].iat[i]} ({t['image_id'].iat[i]})"


class SizedImages(ImageFileDataset):
    """Classification images resized to ``size`` x ``size`` at load (as segmentation images are)."""

    size: int
    interpolation: str

    def image(self, i: int) -> Any:
        return resize_image(super().image(i), self.size, self.interpolation)


def finish(rows: LayoutRows, split: str, name: str, opts: FileOptions, masks: MaskOptions, *,
           skip_bad: bool, read: Any = None, size: int | None = None) -> Any:  # fmt: skip
    """One split of ``rows``: a SegmentationDataset when ``read`` is given, else classification."""
    base = build_split(rows, split, name, opts, skip_bad)
    skipped = [(rows.where(i), reason) for i, reason in base.skipped]
    if read is not None:
        mask_paths = list(base.metadata["mask_path"])
        return SegmentationDataset.wrap(base, mask_paths=mask_paths, skipped=skipped, read=read, opts=masks,
                                        size=size)  # fmt: skip
    base.skipped = skipped
    if masks.size is None:
        return base
    sized = SizedImages(name=name, split=split, task=base.task, classes=base.classes, n_channels=base.n_channels,
                        paths=base.paths, labels=base.labels, metadata=base.metadata, skipped=skipped,
                        intensity=base.intensity, frames=base.frames)  # fmt: skip
    sized.size, sized.interpolation, sized.patient_col = masks.size, masks.interpolation, base.patient_col
    return sized


def missing(what: str, path: Path, dataset: str, url: str) -> DataError:
    return DataError(f"{dataset}: {what} is missing: expected {path}; download {dataset} from {url}")
