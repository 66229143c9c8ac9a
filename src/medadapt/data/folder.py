"""Datasets from your own images: a CSV of paths and labels (``csv:``) or one subfolder per class (``folder:``).

``csv:/data/labels.csv?image_root=/data/images&task=multilabel`` reads a CSV with a ``path`` and a ``label``
column, and optionally ``patient_id``, ``split`` (train/val/test) and any metadata columns, which are kept
row-aligned in ``dataset.metadata`` together with ``row``, the CSV's 0-based data row (line ``row + 2`` of the
file). Options (all optional):

- ``image_root``: folder that relative paths start from (default: the CSV's folder).
- ``path_col``, ``label_col``, ``patient_col``, ``split_col``: column names (``path``, ``label``,
  ``patient_id``, ``split``).
- ``label_cols=a,b,c``: multi-label as one 0/1 column per label (instead of ``a|b`` in the label column;
  ``label_sep`` changes the ``|``).
- ``task``: binary | multiclass | multilabel | ordinal. Default: multilabel when ``label_cols`` is given or a
  label contains the separator, binary for two classes, else multiclass.
- ``classes=a,b,c``: class order; labels outside it are bad rows. Default: ``classes_file=NAME`` (one class
  per line, relative to the CSV), else a ``classes.txt`` beside the CSV, both enforced the same way, else
  the sorted unique labels, sorted numerically when every label is an integer (so ordinal grades keep
  their order). For binary tasks the positive class is ``classes[1]``.
- ``seed`` (0) and ``fractions`` (0.7,0.1,0.2): the patient-grouped, stratified split used when there is no
  split column (:func:`medadapt.data.splits.grouped_split`); rows of one patient never cross splits, and a
  row with a blank patient id is its own group (with a warning naming the rows). A split with a non-zero
  fraction that would be empty, or lack a class (a label, for multilabel), is an error before any work that
  lists the fractions that would work for these rows.
- ``channels``: 1 or 3. Default: 1 when every probed image (up to 256, spread over the whole table) is
  grayscale, else 3; every image is converted to that.
- ``skip_bad``: drop bad rows instead of raising (same as the ``skip_bad=True`` argument).
- ``verify``: also check each image file's integrity (PIL ``verify()``: reads whole PNG files, finds
  truncated ones); by default only headers are read, which is cheap.

**Masks.** A ``mask_path`` column (``mask_col`` names another) makes the CSV a segmentation dataset (task
``segmentation``, a :class:`~medadapt.data.masks.SegmentationDataset`) with ``segfolder:``'s mask rules
(:mod:`medadapt.data.masks`): ``labels`` are "has foreground" flags (the automatic split is stratified by
them), and ``metadata`` adds ``foreground``, ``object_size`` (largest region's box area / image area; a CSV
column of that name wins) and ``object_size_band``. A ``label`` column stays metadata; a task option
(binary, ...) reads the CSV as classification instead, with ``mask_path`` as metadata, and ``label_col``,
``label_cols`` or ``label_sep`` alongside a mask column is an error. Options: ``mask_root`` (where relative
mask paths start; default: as image paths), ``classes`` (default: ``classes_file``, a file relative to the
CSV, else ``classes.txt`` beside the CSV, else ``background,foreground``), ``palette``, ``threshold``,
``empty``, ``size`` (the ``size`` loader argument wins) and ``interpolation``. Missing or empty mask paths,
image/mask size mismatches, unreadable masks and values outside the classes are bad rows.

``folder:/data/root`` reads ``root/CLASS/**/image`` or, when ``root/train``, ``root/val`` or ``root/test``
exist, ``root/SPLIT/CLASS/**/image``; options ``task``, ``classes`` (default: ``classes_file``, else
``root/classes.txt``, else the folder names), ``seed``, ``fractions``, ``channels``, ``skip_bad``, ``verify``. Without split folders every image is its own group in the split.

Images: PNG, JPEG, TIFF, BMP (PIL) and DICOM (:mod:`medadapt.data.dicom`). RGBA/P/CMYK become RGB, LA
becomes L (alpha is dropped). 16-bit, 32-bit and float images are scaled to uint8 by **their own min/max**
(as DICOM files without a window are), since 12-bit data stored in 16-bit files would be nearly black if
scaled by bit depth. ``image(i)`` returns a uint8 ``Tensor[C, H, W]`` at the file's own size; resizing is
done later on batches. The ``root`` loader argument is not used, nor ``size`` but by segmentation CSVs.

Bad rows (missing file, a folder or unreadable file where the image should be, empty or unknown label, invalid
split, unreadable image header) raise a DataError listing the first few with their row numbers; with
``skip_bad=True`` they are dropped, logged, and listed in ``dataset.skipped`` as ``(row, reason)``, unless
that would leave the split empty (an error). A CSV path that is a folder, or a folder path that is a file,
is reported as such.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import BadRowsError, ConfigError, DataError
from ..tasks import CLASSIFICATION_TASKS as TASKS
from .base import DATASETS, SPLITS, DatasetAddress, MedicalDataset, path_problem, require_file, require_folder
from .images import probe_image, read_image
from .masks import (
    MASK_OPTIONS,
    MaskOptions,
    SegmentationDataset,
    mask_classes,
    mask_columns,
    read_lines,
    scan_masks,
)
from .splits import DEFAULT_FRACTIONS, grouped_split

__all__ = ["ImageFileDataset", "load_csv", "load_folder"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SHOWN_ERRORS = 5
_PROBE_LIMIT = 256


# --------------------------------------------------------------------------------------------- dataset


class ImageFileDataset(MedicalDataset):
    """Images read from files on demand; built by the ``csv`` and ``folder`` dataset kinds."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        task: str,
        classes: list[str],
        n_channels: int,
        paths: list[str],
        labels: np.ndarray,
        metadata: pd.DataFrame,
        skipped: list[tuple[int, str]],
    ) -> None:
        assert len(paths) == len(labels) == len(metadata)
        self.name, self.split, self.task, self.classes = name, split, task, classes
        self.n_channels, self.paths, self.labels, self.metadata = n_channels, paths, labels, metadata
        self.skipped = skipped

    def image(self, i: int) -> torch.Tensor:
        return read_image(self.paths[i], self.n_channels)

    def __repr__(self) -> str:
        return f"ImageFileDataset({self.name!r}, split={self.split!r}, n={len(self)}, task={self.task!r})"


# --------------------------------------------------------------------------------------------- options

_COMMON_OPTIONS = ("task", "classes", "classes_file", "seed", "fractions", "channels", "skip_bad", "verify")
_CSV_OPTIONS = (
    *_COMMON_OPTIONS,
    *("image_root", "path_col", "label_col", "label_cols", "label_sep", "patient_col", "split_col"),
    *("mask_col", "mask_root", *MASK_OPTIONS),
)
_TEXT_OPTIONS = ("image_root", "path_col", "label_col", "label_sep", "patient_col", "split_col")


def check_options(options: dict[str, Any], valid: tuple[str, ...], kind: str) -> None:
    """Refuse an option ``kind:`` datasets do not have, suggesting the nearest valid one."""
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown option {key!r} for {kind}: datasets{hint} (valid: {', '.join(valid)})"
            )


@dataclass(frozen=True)
class FileOptions:
    """The options of ``csv:`` and ``folder:`` addresses (see the module docstring), checked."""

    task: str | None = None
    classes: list[str] | None = None
    seed: int = 0
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    channels: int | None = None
    skip_bad: bool = False
    verify: bool = False
    image_root: str | None = None
    path_col: str = "path"
    label_col: str = "label"
    label_cols: list[str] | None = None
    label_sep: str = "|"
    patient_col: str | None = None
    split_col: str = "split"
    mask_col: str | None = None  # None: "mask_path" when the CSV has it
    mask_root: str | None = None
    classes_file: str | None = None
    masks: MaskOptions = MaskOptions()

    @classmethod
    def parse(cls, options: dict[str, Any], valid: tuple[str, ...], kind: str) -> FileOptions:
        check_options(options, valid, kind)
        values = {k: v for k, v in options.items() if k not in MASK_OPTIONS}
        for key in ("classes", "label_cols"):
            if key in values:
                values[key] = as_list(values[key])
        if "fractions" in values:
            values["fractions"] = tuple(as_float(v, "fractions") for v in as_list(values["fractions"]))
        for key in (*_TEXT_OPTIONS, "mask_col", "mask_root", "classes_file"):
            if key in values:
                values[key] = str(values[key])
        return cls(**values, masks=MaskOptions.parse(options))

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in (*TASKS, "segmentation"):
            raise ConfigError(
                f"task={self.task!r} is not valid; choose one of {', '.join(TASKS)} (or segmentation, csv only)"
            )
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels={self.channels!r} is not valid; choose 1 (gray) or 3 (RGB)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r} is not valid; give an integer")
        for name in ("skip_bad", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid; give true or false")
        if self.label_cols is not None and self.task not in (None, "multilabel"):
            raise ConfigError(f"label_cols gives a multilabel task, but task={self.task!r}; drop one of them")
        if self.label_cols is not None and self.classes is not None:
            raise ConfigError(
                "give either label_cols or classes: with label_cols the columns are the classes"
            )
        for name in ("classes", "label_cols"):
            values = getattr(self, name)
            if values is not None and (not values or len(set(values)) != len(values)):
                raise ConfigError(f"{name}={','.join(values)!r} must be a non-empty list of distinct names")


def as_list(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def as_float(value: str, option: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{option}={value!r} is not a number list, e.g. 0.7,0.1,0.2") from None


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class Rows:
    """Everything known about all rows of a source before one split is selected."""

    source: str
    table: pd.DataFrame  # metadata, with a ``row`` column
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    task: str
    splits: np.ndarray  # split name per row; "" when the row's split is invalid
    errors: dict[int, str]  # row -> reason
    unit: str  # "row" or "file"

    def where(self, i: int) -> str:
        return f"row {i} (line {i + 2})" if self.unit == "row" else f"file {i}"


def _sort_classes(names: set[str]) -> list[str]:
    """Sorted class names, numerically when every name is an integer."""
    try:
        return sorted(names, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(names)


def _encode_labels(tokens: list[list[str] | None], opts: FileOptions, multilabel: bool) -> tuple:
    """Label tokens per row (None = missing) → (labels, classes, errors)."""
    classes = opts.classes or _sort_classes({t for row in tokens if row for t in row})
    index = {c: k for k, c in enumerate(classes)}
    labels = np.zeros((len(tokens), len(classes) if multilabel else 1), dtype=np.int64)
    errors: dict[int, str] = {}
    for i, row in enumerate(tokens):
        unknown = [t for t in row or [] if t not in index]
        if not row:
            errors[i] = "label is empty"
        elif unknown:
            errors[i] = f"label {unknown[0]!r} is not one of the classes {classes}"
        elif multilabel:
            labels[i, [index[t] for t in row]] = 1
        else:
            labels[i, 0] = index[row[0]]
    return labels, classes, errors


def _infer_task(opts: FileOptions, classes: list[str], multilabel: bool, source: str) -> str:
    task = opts.task or ("multilabel" if multilabel else "binary" if len(classes) == 2 else "multiclass")
    minimum = 1 if task == "multilabel" else 2
    if len(classes) < minimum:
        raise DataError(f"{source}: found only the classes {classes}; a {task} task needs at least {minimum}")
    if task == "binary" and len(classes) != 2:
        raise ConfigError(f"task=binary needs exactly 2 classes, but {source} has {len(classes)}: {classes}")
    return task


def _labels_from_column(table: pd.DataFrame, opts: FileOptions, source: str) -> tuple:
    raw = table[opts.label_col]
    text = [None if pd.isna(v) or not str(v).strip() else str(v).strip() for v in raw]
    multilabel = opts.task == "multilabel" or (
        opts.task is None and any(t is not None and opts.label_sep in t for t in text)
    )
    if multilabel:
        tokens = [
            None if t is None else [s.strip() for s in t.split(opts.label_sep) if s.strip()] for t in text
        ]
    else:
        tokens = [None if t is None else [t] for t in text]
    labels, classes, errors = _encode_labels(tokens, opts, multilabel)
    return labels, classes, _infer_task(opts, classes, multilabel, source), errors


def _labels_from_columns(table: pd.DataFrame, opts: FileOptions, source: str) -> tuple:
    columns = opts.label_cols
    _require_columns(table, columns, source, "label_cols")
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    valid = np.isin(values, (0, 1))
    errors = {}
    for i in np.flatnonzero(~valid.all(axis=1)):
        col = columns[int(np.argmin(valid[i]))]
        errors[int(i)] = f"label column {col!r} has {table[col].iloc[i]!r}, expected 0 or 1"
    return np.where(valid, values, 0).astype(np.int64), list(columns), "multilabel", errors


def _require_columns(table: pd.DataFrame, columns: list[str], source: str, option: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{source} has no column {missing[0]!r} (columns: {', '.join(str(c) for c in table.columns if c != 'row')}); "
            f"name the right one with the {option}= option"
        )


def _parse_splits(values: pd.Series) -> tuple[np.ndarray, dict[int, str]]:
    names = [SPLIT_ALIASES.get(str(v).strip().lower(), "") if not pd.isna(v) else "" for v in values]
    errors = {
        i: f"split {v!r} is not one of train/val/test" for i, (v, n) in enumerate(zip(values, names)) if not n
    }
    return np.array(names, dtype=object), errors


_CANDIDATE_FRACTIONS = ((0.7, 0.1, 0.2), (0.6, 0.2, 0.2), (0.5, 0.25, 0.25), (0.4, 0.3, 0.3), (0.4, 0.2, 0.4))


def auto_splits(
    labels: np.ndarray,
    groups: np.ndarray | None,
    opts: FileOptions,
    *,
    source: str = "the dataset",
    classes: list[str] | None = None,
) -> np.ndarray:
    """The automatic patient-grouped split, checked before any work: a split with a non-zero fraction must
    not be empty, and (when ``classes`` names the label columns or class indices) every class must appear
    in it; otherwise a DataError says which fractions would work for these rows."""
    splits = grouped_split(labels, groups, fractions=opts.fractions, seed=opts.seed).astype(object)
    problem = split_problem(splits, labels, opts.fractions, classes)
    if problem is None:
        return splits
    working = [
        f
        for f in _CANDIDATE_FRACTIONS
        if f != tuple(opts.fractions)
        and split_problem(grouped_split(labels, groups, fractions=f, seed=opts.seed), labels, f, classes)
        is None
    ]
    hint = (
        f"fractions that work for these rows (seed={opts.seed}): "
        + " or ".join(",".join(f"{v:g}" for v in f) for f in working)
        if working
        else "no usual fractions work for so few rows: add rows, or give a split column"
    )
    n_groups = len(labels) if groups is None else len(np.unique(groups))
    raise DataError(
        f"{source}: the automatic split with fractions={','.join(f'{v:g}' for v in opts.fractions)} "
        f"(seed={opts.seed}, {len(labels)} rows in {n_groups} patient groups) {problem}; {hint}"
    )


def split_problem(
    splits: np.ndarray, labels: np.ndarray, fractions: tuple[float, ...], classes: list[str] | None
) -> str | None:
    """Why an automatic split is unusable (an empty split, or a class absent from one), or None."""
    labels = labels.reshape(len(labels), -1)
    for name, fraction in zip(SPLITS, fractions):
        if fraction <= 0:
            continue
        rows = splits == name
        if not rows.any():
            return f"leaves the {name} split empty"
        if classes is None:
            continue
        if labels.shape[1] > 1:  # multilabel: every label needs a positive
            present = np.nan_to_num(labels[rows].astype(float)) > 0
            absent = [c for c, seen in zip(classes, present.any(axis=0)) if not seen]
        else:
            absent = [c for k, c in enumerate(classes) if not (labels[rows, 0] == k).any()]
        if absent:
            return f"leaves class {absent[0]!r} out of the {name} split"
    return None


# ------------------------------------------------------------------------------------------------- csv


def _read_table(csv_path: Path, opts: FileOptions) -> pd.DataFrame:
    require_file(csv_path, "CSV file", "the csv: address names the CSV file itself (csv:/data/labels.csv)")
    text_cols = (opts.path_col, opts.label_col, opts.patient_col or "patient_id", opts.split_col)
    text_cols += (opts.mask_col or "mask_path",)
    try:
        table = pd.read_csv(
            csv_path, sep="\t" if csv_path.suffix == ".tsv" else ",", dtype=dict.fromkeys(text_cols, str)
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse CSV file {str(csv_path)!r}: {e}") from e
    if "row" in table.columns:
        raise DataError(
            f"{csv_path.name} has a column named 'row', which medadapt uses for the row number; rename it"
        )
    return table.assign(row=np.arange(len(table)))


def _resolve_paths(
    values: pd.Series, root: Path, mask_col: str | None = None
) -> tuple[list[str], dict[int, str]]:
    """Absolute paths (relative ones start at ``root``) and why a row's file is missing; ``mask_col`` names
    the mask column in the messages (None: image paths)."""
    paths, errors = [], {}
    for i, value in enumerate(values):
        if pd.isna(value) or not str(value).strip():
            paths.append("")
            errors[i] = f"{mask_col} is empty; give every row its mask file" if mask_col else "path is empty"
            continue
        path = Path(str(value).strip()).expanduser()
        path = path if path.is_absolute() else root / path
        paths.append(str(path))
        problem = path_problem(path)
        if problem and mask_col:
            where = f"check {mask_col}; relative paths start at {root}, set by mask_root="
            errors[i] = (
                f"mask file {path} {problem} ({where})"
                if path.exists()
                else f"mask file not found: {path} ({where})"
            )
        elif problem:
            errors[i] = f"file not found: {path}" if not path.exists() else f"image file {path} {problem}"
    return paths, errors


def _patient_groups(table: pd.DataFrame, opts: FileOptions, source: str) -> np.ndarray | None:
    column = opts.patient_col or "patient_id"
    if column not in table.columns:
        if opts.patient_col:
            _require_columns(table, [column], source, "patient_col")
        logger.info("%s has no %r column: every row is its own group in the split", source, column)
        return None
    ids = table[column].astype("string").str.strip()
    blank = (ids.isna() | (ids == "")).to_numpy()
    if blank.any():
        rows = np.flatnonzero(blank)
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        logger.warning(
            "%s: %d row(s) have a blank %s (rows %s); each is treated as its own patient in the split, so "
            "if it belongs to a patient with other rows, that patient can cross splits: fill in the ids",
            source, len(rows), column, shown,
        )  # fmt: skip
    return np.where(blank, "\0row" + table["row"].astype(str), ids.fillna("").to_numpy(dtype=str))


def declared_classes(opts: FileOptions, folder: Path, source: str) -> FileOptions:
    """``opts`` with ``classes`` from the ``classes_file`` option or a ``classes.txt`` in ``folder`` when the
    address gives none: a declared class list is enforced (other labels are bad rows)."""
    if opts.classes is not None or opts.label_cols is not None:
        if opts.classes_file is not None:
            raise ConfigError(f"{source}: give either classes= or classes_file=, not both")
        return opts
    file = folder / Path(opts.classes_file or "classes.txt").expanduser()
    if opts.classes_file and not file.is_file():
        raise DataError(f"classes_file {str(file)!r} does not exist (relative paths start at {folder})")
    if not file.is_file():
        return opts
    names = read_lines(file)
    if not names or len(set(names)) != len(names):
        raise DataError(f"{file} must list distinct class names, one per line (it has {names})")
    logger.info("%s: classes %s from %s; other labels are bad rows", source, names, file)
    return replace(opts, classes=names)


def _csv_rows(csv_path: Path, table: pd.DataFrame, opts: FileOptions) -> Rows:
    source = csv_path.name
    _require_columns(table, [opts.path_col], source, "path_col")
    opts = declared_classes(opts, csv_path.parent, source)
    if opts.label_cols is None:
        _require_columns(table, [opts.label_col], source, "label_col (or label_cols=a,b,c for 0/1 columns)")
        labels, classes, task, errors = _labels_from_column(table, opts, source)
    else:
        labels, classes, task, errors = _labels_from_columns(table, opts, source)
    root = Path(opts.image_root).expanduser() if opts.image_root else csv_path.parent
    paths, path_errors = _resolve_paths(table[opts.path_col], root)
    if opts.split_col in table.columns:
        splits, split_errors = _parse_splits(table[opts.split_col])
    else:
        groups = _patient_groups(table, opts, source)
        splits, split_errors = auto_splits(labels, groups, opts, source=source, classes=classes), {}
    errors = _merge_errors(path_errors, errors, split_errors)
    return Rows(source, table, paths, labels, classes, task, splits, errors, "row")


def _mask_column(table: pd.DataFrame, opts: FileOptions, source: str) -> str | None:
    """The mask column when the CSV is a segmentation dataset, else None (rule: the module docstring)."""
    column = opts.mask_col or "mask_path"
    if (opts.mask_col or opts.task == "segmentation") and column not in table.columns:
        _require_columns(table, [column], source, "mask_col")
    if column in table.columns and opts.task in (None, "segmentation"):
        defaults = (("label_col", "label"), ("label_cols", None), ("label_sep", "|"))
        given = [k for k, default in defaults if getattr(opts, k) != default]
        if given:
            raise ConfigError(
                f"{source} has a {column!r} column, which makes it a segmentation dataset, but {given[0]}= "
                f"asks for class labels; drop {given[0]}, or give task=binary (multiclass, ...) to read the "
                f"labels, keeping {column} as metadata"
            )
        return column
    mask_only = [k for k in MASK_OPTIONS if getattr(opts.masks, k) != getattr(MaskOptions(), k)]
    mask_only += [k for k in ("mask_root",) if getattr(opts, k) is not None]
    if mask_only:
        why = f"task={opts.task}" if opts.task else f"it has no {column!r} column"
        raise ConfigError(f"{mask_only[0]}= applies to segmentation CSVs, but {source} is not one ({why})")
    return None


def _csv_masks(
    csv_path: Path, table: pd.DataFrame, column: str, opts: FileOptions, split: str, name: str, size: int | None,
    skip_bad: bool,
) -> SegmentationDataset:  # fmt: skip
    """One split of a segmentation CSV: images and masks row by row."""
    source = csv_path.name
    _require_columns(table, [opts.path_col], source, "path_col")
    mask_columns(table.iloc[:0], source, np.zeros(0))  # refuses the computed columns' names before any read
    classes_file = csv_path.parent / Path(opts.classes_file or "classes.txt").expanduser()
    if opts.classes_file and not classes_file.is_file():
        raise DataError(
            f"classes_file {str(classes_file)!r} does not exist (relative paths start at the CSV)"
        )
    classes = mask_classes(opts.classes, classes_file, palette=opts.masks.palette)
    image_root = Path(opts.image_root).expanduser() if opts.image_root else csv_path.parent
    mask_root = Path(opts.mask_root).expanduser() if opts.mask_root else image_root
    paths, image_errors = _resolve_paths(table[opts.path_col], image_root)
    mask_paths, mask_errors = _resolve_paths(table[column], mask_root, column)
    splits, split_errors = _parse_splits(table[opts.split_col]) if opts.split_col in table else (None, {})
    known = _merge_errors(image_errors, mask_errors, split_errors)
    wanted = np.flatnonzero(splits == split if splits is not None else np.ones(len(table), bool))
    read = opts.masks.reader(len(classes))
    shown = tuple([str(v).strip() for v in table[c]] for c in (opts.path_col, column))
    scan = scan_masks(paths, mask_paths, [i for i in wanted if int(i) not in known], read,
                      empty=opts.masks.empty, names=shown, sizes="object_size" not in table)  # fmt: skip
    if splits is None:  # the automatic split is stratified by "has foreground": every mask was read
        splits = auto_splits(scan.labels, _patient_groups(table, opts, source), opts, source=source)
    sizes = (
        pd.to_numeric(table["object_size"], errors="coerce") if "object_size" in table else scan.object_size
    )
    meta = mask_columns(table, source, scan.foreground, sizes)
    errors = _merge_errors(known, scan.errors)
    rows = Rows(source, meta, paths, scan.labels, classes, "segmentation", splits, errors, "row")
    base = build_split(rows, split, name, opts, skip_bad)
    kept = [mask_paths[i] for i in base.metadata["row"]]
    return SegmentationDataset.wrap(
        base, mask_paths=kept, skipped=base.skipped, read=read, opts=opts.masks, size=size
    )


def _merge_errors(*sources: dict[int, str]) -> dict[int, str]:
    """One reason per row: the first source that has one."""
    merged: dict[int, str] = {}
    for errors in sources:
        for i, reason in errors.items():
            merged.setdefault(i, reason)
    return merged


# ---------------------------------------------------------------------------------------------- folder


def list_images(folder: Path) -> list[Path]:
    files = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_table(root: Path) -> pd.DataFrame:
    dirs = split_dirs(root)
    entries = []
    for name, split in dirs.items() or [("", "")]:
        for class_dir in _class_dirs(root / name):
            entries += [(str(p.relative_to(root)), class_dir.name, split) for p in list_images(class_dir)]
    if not entries:
        raise DataError(
            f"found no images under {str(root)!r}; expected ROOT/CLASS/image files or ROOT/train/CLASS/..., "
            f"with suffixes {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    table = pd.DataFrame(entries, columns=["path", "label", "split"])
    table = table if dirs else table.drop(columns="split")
    return table.assign(row=np.arange(len(table)))


def split_dirs(root: Path) -> dict[str, str]:
    """Sub-folders that name a split (``train``, ``val`` / ``valid`` / ``validation``, ``test``, any case)."""
    found = {
        d.name: SPLIT_ALIASES[d.name.lower()] for d in _class_dirs(root) if d.name.lower() in SPLIT_ALIASES
    }
    for split in SPLITS:
        names = sorted(n for n, s in found.items() if s == split)
        if len(names) > 1:
            raise DataError(f"{str(root)!r} has several folders for the {split} split: {names}; keep one")
    return found


def _folder_rows(root: Path, opts: FileOptions) -> Rows:
    require_folder(root, "dataset folder", "folder: names the folder that holds one subfolder per class")
    table = _folder_table(root)
    opts = declared_classes(opts, root, root.name)
    labels, classes, errors = _encode_labels([[c] for c in table["label"]], opts, multilabel=False)
    errors = {
        i: f"class folder {table['label'].iloc[i]!r} is not one of the classes {classes}" for i in errors
    }
    if opts.task in ("multilabel", "segmentation"):
        instead = "a csv: dataset with label_cols" if opts.task == "multilabel" else "a segfolder: dataset"
        raise ConfigError(f"folder: datasets cannot be {opts.task}; use {instead}")
    task = _infer_task(opts, classes, False, root.name)
    if "split" in table.columns:
        splits = table["split"].to_numpy(dtype=object)
    else:
        splits = auto_splits(labels, None, opts, source=root.name, classes=classes)
    paths = [str(root / p) for p in table["path"]]
    return Rows(root.name, table, paths, labels, classes, task, splits, errors, "file")


# ------------------------------------------------------------------------------------------- one split


def _choose_channels(rows: Rows, opts: FileOptions) -> int:
    """``channels`` option, else 1 when every probed image (spread over all rows) is grayscale."""
    if opts.channels is not None:
        return opts.channels
    good = np.array([i for i in range(len(rows.paths)) if i not in rows.errors], dtype=int)
    sample = good[np.unique(np.linspace(0, len(good) - 1, min(len(good), _PROBE_LIMIT)).astype(int))]
    for i in sample:
        try:
            if probe_image(rows.paths[i], verify=False) == 3:
                logger.info(
                    "%s: %s is a color image, so images are read as RGB (channels=1 forces gray)",
                    rows.source,
                    rows.paths[i],
                )
                return 3
        except DataError:
            continue  # reported by the validation pass if it is in the loaded split
    return 1


def _split_errors(rows: Rows, in_split: np.ndarray, verify: bool) -> dict[int, str]:
    """Known errors of this split's rows (and rows with no valid split), plus unreadable image headers."""
    errors = {i: r for i, r in rows.errors.items() if in_split[i] or not rows.splits[i]}
    for i in np.flatnonzero(in_split):
        if int(i) not in errors:
            try:
                probe_image(rows.paths[i], verify=verify)
            except DataError as e:
                errors[int(i)] = f"unreadable image {rows.paths[i]}: {e}"
    return dict(sorted(errors.items()))


def _bad_rows_message(rows: Rows, split: str, errors: dict[int, str], n_split: int) -> str:
    shown = "; ".join(f"{rows.where(i)}: {reason}" for i, reason in list(errors.items())[:_SHOWN_ERRORS])
    more = f"; ... and {len(errors) - _SHOWN_ERRORS} more" if len(errors) > _SHOWN_ERRORS else ""
    fix = (
        "Fix them: skipping would leave the split empty"
        if len(errors) >= n_split
        else "Fix or remove them, or drop them with skip_bad=True (CLI: --skip-bad-rows)"
    )
    return f"{rows.source}: {len(errors)} bad {rows.unit}(s) for split {split!r} ({n_split} in it): {shown}{more}. {fix}"


def build_split(rows: Rows, split: str, name: str, opts: FileOptions, skip_bad: bool) -> ImageFileDataset:
    n_channels = _choose_channels(rows, opts)
    in_split = rows.splits == split
    if not in_split.any():
        logger.warning("%s: split %r has no %ss; the dataset is empty", rows.source, split, rows.unit)
    errors = _split_errors(rows, in_split, opts.verify)
    if errors and (not skip_bad or len(errors) >= in_split.sum()):
        raise BadRowsError(_bad_rows_message(rows, split, errors, int(in_split.sum())))
    if errors:
        logger.warning(
            "%s: skipped %d bad %s(s) in split %r; see dataset.skipped",
            rows.source,
            len(errors),
            rows.unit,
            split,
        )
    keep = in_split.copy()
    keep[list(errors)] = False
    idx = np.flatnonzero(keep)
    ds = ImageFileDataset(
        name=name,
        split=split,
        task=rows.task,
        classes=rows.classes,
        n_channels=n_channels,
        paths=[rows.paths[i] for i in idx],
        labels=rows.labels[idx],
        metadata=rows.table.iloc[idx].reset_index(drop=True),
        skipped=list(errors.items()),
    )
    ds.patient_col = (
        opts.patient_col or "patient_id"
    )  # the metadata column of patient ids (folds group by it)
    return ds


# ---------------------------------------------------------------------------------------------- kinds


@DATASETS.register("csv", examples=lambda: ["csv:PATH.csv"])
def load_csv(
    address: DatasetAddress, split: str, *, size: int | None = None, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset | SegmentationDataset:
    """Load one split of a ``csv:`` dataset (options: see the module docstring).

    Example: ``load_dataset("csv:/data/labels.csv?task=multilabel", "train")``
    """
    opts = FileOptions.parse(address.options, _CSV_OPTIONS, "csv")
    csv_path = Path(address.location).expanduser()
    table = _read_table(csv_path, opts)
    skip_bad = skip_bad or opts.skip_bad
    column = _mask_column(table, opts, csv_path.name)
    if column is not None:
        return _csv_masks(csv_path, table, column, opts, split, str(address), size, skip_bad)
    return build_split(_csv_rows(csv_path, table, opts), split, str(address), opts, skip_bad)


@DATASETS.register("folder", examples=lambda: ["folder:DIR"])
def load_folder(
    address: DatasetAddress, split: str, *, size: int | None = None, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset:
    """Load one split of a ``folder:`` dataset (options: see the module docstring).

    Example: ``load_dataset("folder:/data/xrays?channels=1", "test")``
    """
    opts = FileOptions.parse(address.options, _COMMON_OPTIONS, "folder")
    rows = _folder_rows(Path(address.location).expanduser(), opts)
    return build_split(rows, split, str(address), opts, skip_bad or opts.skip_bad)
