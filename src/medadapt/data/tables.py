"""Tables of image files, the machinery every file-based dataset kind shares (``csv:``, ``folder:``,
``segfolder:`` and the seed layouts: CheXpert, ISIC 2019, APTOS 2019, CBIS-DDSM, SIIM-ACR).

A kind reads its files into :class:`Rows` (metadata table, paths, labels, classes, task, split per row and
the reasons rows are bad), and :func:`build_split` turns one split of them into an
:class:`ImageFileDataset`: it checks the split's image headers, reports bad rows with their row numbers (or
drops them with ``skip_bad``) and picks the channel count. :func:`auto_splits` is the patient-grouped split
for tables without one, checked so that no split is empty and no class is missing from one.
:class:`FileOptions` holds the address options these kinds share.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._choices import CLASSIFICATION_TASKS as TASKS
from ..errors import BadRowsError, ConfigError, DataError
from .base import SPLITS, MedicalDataset, path_problem, where_is
from .images import DEFAULT_INTENSITY, INTENSITY_OPTIONS, Intensity, probe_image, read_image
from .masks import MASK_OPTIONS, MaskOptions, read_lines
from .splits import DEFAULT_FRACTIONS, grouped_split

__all__ = [
    "COMMON_OPTIONS",
    "CSV_OPTIONS",
    "IMAGE_SUFFIXES",
    "SPLIT_ALIASES",
    "FileOptions",
    "ImageFileDataset",
    "Rows",
    "as_float",
    "as_list",
    "auto_splits",
    "build_split",
    "check_options",
    "declared_classes",
    "encode_labels",
    "infer_task",
    "labels_from_column",
    "labels_from_columns",
    "merge_errors",
    "parse_splits",
    "patient_groups",
    "pooled_splits",
    "require_columns",
    "resolve_paths",
    "split_problem",
]

if TYPE_CHECKING:
    import torch

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
        intensity: Intensity = DEFAULT_INTENSITY,
        frames: list[int] | None = None,
    ) -> None:
        assert len(paths) == len(labels) == len(metadata) and (frames is None or len(frames) == len(paths))
        self.name, self.split, self.task, self.classes = name, split, task, classes
        self.n_channels, self.paths, self.labels, self.metadata = n_channels, paths, labels, metadata
        self.skipped, self.intensity, self.frames = skipped, intensity, frames

    def image(self, i: int) -> torch.Tensor:
        frame = None if self.frames is None else self.frames[i]
        try:
            return read_image(self.paths[i], self.n_channels, intensity=self.intensity, frame=frame)
        except DataError as e:  # a file that passed the header probe but fails to decode: name its row
            raise DataError(f"{self.name} ({self.split} split), {where_is(self, i)}: {e}") from e

    def __repr__(self) -> str:
        return f"ImageFileDataset({self.name!r}, split={self.split!r}, n={len(self)}, task={self.task!r})"


# --------------------------------------------------------------------------------------------- options

COMMON_OPTIONS = ("task", "classes", "classes_file", "seed", "fractions", "channels", "skip_bad", "verify",
                  *INTENSITY_OPTIONS)  # fmt: skip
CSV_OPTIONS = (
    *COMMON_OPTIONS,
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
    intensity: Intensity = DEFAULT_INTENSITY

    @classmethod
    def parse(cls, options: dict[str, Any], valid: tuple[str, ...], kind: str) -> FileOptions:
        check_options(options, valid, kind)
        values = {k: v for k, v in options.items() if k not in (*MASK_OPTIONS, *INTENSITY_OPTIONS)}
        for key in ("classes", "label_cols"):
            if key in values:
                values[key] = as_list(values[key])
        if "fractions" in values:
            values["fractions"] = tuple(as_float(v, "fractions") for v in as_list(values["fractions"]))
        for key in (*_TEXT_OPTIONS, "mask_col", "mask_root", "classes_file"):
            if key in values:
                values[key] = str(values[key])
        return cls(**values, masks=MaskOptions.parse(options), intensity=Intensity.parse(options))

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


def encode_labels(tokens: list[list[str] | None], opts: FileOptions, multilabel: bool) -> tuple:
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


def infer_task(opts: FileOptions, classes: list[str], multilabel: bool, source: str) -> str:
    task = opts.task or ("multilabel" if multilabel else "binary" if len(classes) == 2 else "multiclass")
    minimum = 1 if task == "multilabel" else 2
    if len(classes) < minimum:
        raise DataError(f"{source}: found only the classes {classes}; a {task} task needs at least {minimum}")
    if task == "binary" and len(classes) != 2:
        raise ConfigError(f"task=binary needs exactly 2 classes, but {source} has {len(classes)}: {classes}")
    return task


def labels_from_column(table: pd.DataFrame, opts: FileOptions, source: str) -> tuple:
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
    labels, classes, errors = encode_labels(tokens, opts, multilabel)
    return labels, classes, infer_task(opts, classes, multilabel, source), errors


def labels_from_columns(table: pd.DataFrame, opts: FileOptions, source: str) -> tuple:
    columns = opts.label_cols
    require_columns(table, columns, source, "label_cols")
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    valid = np.isin(values, (0, 1))
    errors = {}
    for i in np.flatnonzero(~valid.all(axis=1)):
        col = columns[int(np.argmin(valid[i]))]
        errors[int(i)] = f"label column {col!r} has {table[col].iloc[i]!r}, expected 0 or 1"
    return np.where(valid, values, 0).astype(np.int64), list(columns), "multilabel", errors


def require_columns(table: pd.DataFrame, columns: list[str], source: str, option: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{source} has no column {missing[0]!r} (columns: {', '.join(str(c) for c in table.columns if c != 'row')}); "
            f"name the right one with the {option}= option"
        )


def parse_splits(values: pd.Series) -> tuple[np.ndarray, dict[int, str]]:
    names = [SPLIT_ALIASES.get(str(v).strip().lower(), "") if not pd.isna(v) else "" for v in values]
    errors = {
        i: f"split {v!r} is not one of train/val/test" for i, (v, n) in enumerate(zip(values, names)) if not n
    }
    return np.array(names, dtype=object), errors


_POOLED: contextvars.ContextVar[bool] = contextvars.ContextVar("medadapt_pooled_splits", default=False)


@contextlib.contextmanager
def pooled_splits() -> Iterator[None]:
    """Datasets loaded inside are pooled into cross-validation folds, so the automatic train/val/test split
    is not used and not checked (a small dataset may leave a class out of its val split without harm)."""
    token = _POOLED.set(True)
    try:
        yield
    finally:
        _POOLED.reset(token)


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
    in it; otherwise a DataError says which fractions would work for these rows. Inside
    :func:`pooled_splits` (cross-validation pools the three splits) the check is skipped."""
    splits = grouped_split(labels, groups, fractions=opts.fractions, seed=opts.seed).astype(object)
    problem = None if _POOLED.get() else split_problem(splits, labels, opts.fractions, classes)
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


def resolve_paths(
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


def patient_groups(table: pd.DataFrame, opts: FileOptions, source: str) -> np.ndarray | None:
    column = opts.patient_col or "patient_id"
    if column not in table.columns:
        if opts.patient_col:
            require_columns(table, [column], source, "patient_col")
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


def merge_errors(*sources: dict[int, str]) -> dict[int, str]:
    """One reason per row: the first source that has one."""
    merged: dict[int, str] = {}
    for errors in sources:
        for i, reason in errors.items():
            merged.setdefault(i, reason)
    return merged


# ------------------------------------------------------------------------------------------- one split


def _choose_channels(rows: Rows, opts: FileOptions) -> int:
    """``channels`` option, else 1 when every probed image (spread over all rows) is grayscale."""
    if opts.channels is not None:
        return opts.channels
    good = np.array([i for i in range(len(rows.paths)) if i not in rows.errors], dtype=int)
    sample = good[np.unique(np.linspace(0, len(good) - 1, min(len(good), _PROBE_LIMIT)).astype(int))]
    for i in sample:
        try:
            if probe_image(rows.paths[i], intensity=opts.intensity).channels == 3:
                logger.info(
                    "%s: %s is a color image, so images are read as RGB (channels=1 forces gray)",
                    rows.source,
                    rows.paths[i],
                )
                return 3
        except DataError:
            continue  # reported by the validation pass if it is in the loaded split
    return 1


def _split_errors(
    rows: Rows, in_split: np.ndarray, opts: FileOptions
) -> tuple[dict[int, str], dict[int, int]]:
    """Known errors of this split's rows (and rows with no valid split), plus unreadable images (headers, or
    with ``verify`` a full decode); and the frame count of every good row of the split."""
    errors = {i: r for i, r in rows.errors.items() if in_split[i] or not rows.splits[i]}
    frames = {}
    for i in np.flatnonzero(in_split):
        if int(i) not in errors:
            try:
                frames[int(i)] = probe_image(
                    rows.paths[i], verify=opts.verify, intensity=opts.intensity
                ).frames
            except DataError as e:
                errors[int(i)] = f"unreadable image {rows.paths[i]}: {e}"
    return dict(sorted(errors.items())), frames


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
    errors, frames = _split_errors(rows, in_split, opts)
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
    idx, frame = np.flatnonzero(keep), None
    metadata = rows.table.iloc[idx].reset_index(drop=True)
    if opts.intensity.frames == "all":  # one sample per frame: the frames of a file share its split
        counts = np.array([frames[int(i)] for i in idx], dtype=int)
        frame = [int(k) for n in counts for k in range(n)]
        idx, metadata = np.repeat(idx, counts), metadata.loc[np.repeat(np.arange(len(idx)), counts)]
        metadata = metadata.reset_index(drop=True).assign(frame=frame)
    ds = ImageFileDataset(
        name=name,
        split=split,
        task=rows.task,
        classes=rows.classes,
        n_channels=n_channels,
        paths=[rows.paths[i] for i in idx],
        labels=rows.labels[idx],
        metadata=metadata,
        skipped=list(errors.items()),
        intensity=opts.intensity,
        frames=frame,
    )
    ds.patient_col = (
        opts.patient_col or "patient_id"
    )  # the metadata column of patient ids (folds group by it)
    return ds
