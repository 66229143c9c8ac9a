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
``root/classes.txt``, else the folder names), ``seed``, ``fractions``, ``channels``, ``skip_bad``, ``verify``.
Without split folders every image is its own group in the split.

Images: PNG, JPEG, TIFF, BMP (PIL) and DICOM (:mod:`medadapt.data.dicom`). RGBA/P/CMYK become RGB, LA becomes
L (alpha is dropped). Intensities follow one rule per dataset (:class:`~medadapt.data.images.Intensity`,
options ``voi``, ``window``, ``frames``): 16-bit and 32-bit images are scaled by their bit depth, so the same
value is the same brightness in every file (12-bit data stored in 16-bit files then look dark: give
``voi=minmax`` or ``window=C,W``); float images by their own min/max. ``image(i)`` returns a uint8
``Tensor[C, H, W]`` at the file's own size; resizing is done later on batches. The ``root`` loader argument is not used,
nor ``size`` but by segmentation CSVs.

Bad rows (missing file, a folder or unreadable file where the image should be, empty or unknown label, invalid
split, unreadable image header) raise a DataError listing the first few with their row numbers; with
``skip_bad=True`` they are dropped, logged, and listed in ``dataset.skipped`` as ``(row, reason)``, unless
that would leave the split empty (an error). A CSV path that is a folder, or a folder path that is a file,
is reported as such.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .base import DATASETS, SPLITS, DatasetAddress, require_file, require_folder
from .masks import MASK_OPTIONS, MaskOptions, SegmentationDataset, mask_classes, mask_columns, scan_masks
from .tables import (
    COMMON_OPTIONS,
    CSV_OPTIONS,
    IMAGE_SUFFIXES,
    SPLIT_ALIASES,
    FileOptions,
    ImageFileDataset,
    Rows,
    auto_splits,
    build_split,
    declared_classes,
    encode_labels,
    infer_task,
    labels_from_column,
    labels_from_columns,
    merge_errors,
    parse_splits,
    patient_groups,
    require_columns,
    resolve_paths,
)

__all__ = ["load_csv", "load_folder", "list_images", "split_dirs"]

logger = logging.getLogger(__name__)


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


def _csv_rows(csv_path: Path, table: pd.DataFrame, opts: FileOptions) -> Rows:
    source = csv_path.name
    require_columns(table, [opts.path_col], source, "path_col")
    opts = declared_classes(opts, csv_path.parent, source)
    if opts.label_cols is None:
        require_columns(table, [opts.label_col], source, "label_col (or label_cols=a,b,c for 0/1 columns)")
        labels, classes, task, errors = labels_from_column(table, opts, source)
    else:
        labels, classes, task, errors = labels_from_columns(table, opts, source)
    root = Path(opts.image_root).expanduser() if opts.image_root else csv_path.parent
    paths, path_errors = resolve_paths(table[opts.path_col], root)
    if opts.split_col in table.columns:
        splits, split_errors = parse_splits(table[opts.split_col])
    else:
        groups = patient_groups(table, opts, source)
        splits, split_errors = auto_splits(labels, groups, opts, source=source, classes=classes), {}
    errors = merge_errors(path_errors, errors, split_errors)
    return Rows(source, table, paths, labels, classes, task, splits, errors, "row")


def _mask_column(table: pd.DataFrame, opts: FileOptions, source: str) -> str | None:
    """The mask column when the CSV is a segmentation dataset, else None (rule: the module docstring)."""
    column = opts.mask_col or "mask_path"
    if (opts.mask_col or opts.task == "segmentation") and column not in table.columns:
        require_columns(table, [column], source, "mask_col")
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
    require_columns(table, [opts.path_col], source, "path_col")
    mask_columns(table.iloc[:0], source, np.zeros(0))  # refuses the computed columns' names before any read
    classes_file = csv_path.parent / Path(opts.classes_file or "classes.txt").expanduser()
    if opts.classes_file and not classes_file.is_file():
        raise DataError(
            f"classes_file {str(classes_file)!r} does not exist (relative paths start at the CSV)"
        )
    classes = mask_classes(opts.classes, classes_file, palette=opts.masks.palette)
    image_root = Path(opts.image_root).expanduser() if opts.image_root else csv_path.parent
    mask_root = Path(opts.mask_root).expanduser() if opts.mask_root else image_root
    paths, image_errors = resolve_paths(table[opts.path_col], image_root)
    mask_paths, mask_errors = resolve_paths(table[column], mask_root, column)
    splits, split_errors = parse_splits(table[opts.split_col]) if opts.split_col in table else (None, {})
    known = merge_errors(image_errors, mask_errors, split_errors)
    wanted = np.flatnonzero(splits == split if splits is not None else np.ones(len(table), bool))
    read = opts.masks.reader(len(classes))
    shown = tuple([str(v).strip() for v in table[c]] for c in (opts.path_col, column))
    scan = scan_masks(paths, mask_paths, [i for i in wanted if int(i) not in known], read,
                      empty=opts.masks.empty, names=shown, sizes="object_size" not in table)  # fmt: skip
    if splits is None:  # the automatic split is stratified by "has foreground": every mask was read
        splits = auto_splits(scan.labels, patient_groups(table, opts, source), opts, source=source)
    sizes = (
        pd.to_numeric(table["object_size"], errors="coerce") if "object_size" in table else scan.object_size
    )
    meta = mask_columns(table, source, scan.foreground, sizes)
    errors = merge_errors(known, scan.errors)
    rows = Rows(source, meta, paths, scan.labels, classes, "segmentation", splits, errors, "row")
    base = build_split(rows, split, name, opts, skip_bad)
    kept = [mask_paths[i] for i in base.metadata["row"]]
    return SegmentationDataset.wrap(
        base, mask_paths=kept, skipped=base.skipped, read=read, opts=opts.masks, size=size
    )


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
    labels, classes, errors = encode_labels([[c] for c in table["label"]], opts, multilabel=False)
    errors = {
        i: f"class folder {table['label'].iloc[i]!r} is not one of the classes {classes}" for i in errors
    }
    if opts.task in ("multilabel", "segmentation"):
        instead = "a csv: dataset with label_cols" if opts.task == "multilabel" else "a segfolder: dataset"
        raise ConfigError(f"folder: datasets cannot be {opts.task}; use {instead}")
    task = infer_task(opts, classes, False, root.name)
    if "split" in table.columns:
        splits = table["split"].to_numpy(dtype=object)
    else:
        splits = auto_splits(labels, None, opts, source=root.name, classes=classes)
    paths = [str(root / p) for p in table["path"]]
    return Rows(root.name, table, paths, labels, classes, task, splits, errors, "file")


# ---------------------------------------------------------------------------------------------- kinds


@DATASETS.register(
    "csv",
    examples=lambda: ["csv:PATH.csv"],
    check=lambda address: FileOptions.parse(address.options, CSV_OPTIONS, "csv"),
    location="file",
)
def load_csv(
    address: DatasetAddress, split: str, *, size: int | None = None, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset | SegmentationDataset:
    """Load one split of a ``csv:`` dataset (options: see the module docstring).

    Example: ``load_dataset("csv:/data/labels.csv?task=multilabel", "train")``
    """
    opts = FileOptions.parse(address.options, CSV_OPTIONS, "csv")
    csv_path = Path(address.location).expanduser()
    table = _read_table(csv_path, opts)
    skip_bad = skip_bad or opts.skip_bad
    column = _mask_column(table, opts, csv_path.name)
    if column is not None:
        return _csv_masks(csv_path, table, column, opts, split, str(address), size, skip_bad)
    return build_split(_csv_rows(csv_path, table, opts), split, str(address), opts, skip_bad)


@DATASETS.register(
    "folder",
    examples=lambda: ["folder:DIR"],
    check=lambda address: FileOptions.parse(address.options, COMMON_OPTIONS, "folder"),
    location="folder",
)
def load_folder(
    address: DatasetAddress, split: str, *, size: int | None = None, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset:
    """Load one split of a ``folder:`` dataset (options: see the module docstring).

    Example: ``load_dataset("folder:/data/xrays?channels=1", "test")``
    """
    opts = FileOptions.parse(address.options, COMMON_OPTIONS, "folder")
    rows = _folder_rows(Path(address.location).expanduser(), opts)
    return build_split(rows, split, str(address), opts, skip_bad or opts.skip_bad)
