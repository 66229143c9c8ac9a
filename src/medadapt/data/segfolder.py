"""Segmentation datasets from an image folder and a mask folder: ``segfolder:ROOT``.

Layout: ``ROOT/images/`` and ``ROOT/masks/``, paired by file stem (``images/a.jpg`` with ``masks/a.png``;
sub-folders keep their relative path in the stem), either

- under split folders ``ROOT/train/``, ``ROOT/val/``, ``ROOT/test/`` (also ``valid``, ``validation``, any
  case), each holding its own ``images/`` and ``masks/``; or
- flat, with split lists ``ROOT/splits/{train,val,test}.txt`` (one stem per line; an image suffix is
  dropped; blank and ``#`` lines are skipped). Images in no list are left out; a listed stem without an
  image is a bad pair; or
- flat without lists: a seeded, patient-grouped split stratified by "has foreground" (``seed``,
  ``fractions``), as CSV datasets get.

**Split rule.** When the lists are ``train.txt`` and ``val.txt`` with no ``test.txt``, ``val.txt`` is the
test set (Kvasir-SEG's published 880/120 split, whose 120 images published results test on; ``val_list=val``
keeps it as validation instead). Whenever a layout gives a train part but no validation part (split lists or
split folders), a seeded, patient-grouped ``val_fraction`` (0.1) of train becomes the validation set.

Other files in ROOT (all optional): ``classes.txt`` (one class name per line, background first);
``patients.csv`` (columns ``stem,patient_id``; without it every image is its own patient, and a stem it does
not list is one too); ``*bboxes.json`` (Kvasir-SEG's ``{stem: {height, width, bbox: [{label, xmin, ymin,
xmax, ymax}]}}``), which gives the metadata column ``object_size`` = largest box area / image area (0 for
no box, NaN for a stem it does not list), its band ``object_size_band`` (:data:`SIZE_BANDS`: small, medium,
large; for ``medadapt compare --subgroup object_size_band``) and, when its boxes have one label, the name of the
foreground class.

**Masks** (index, palette and JPEG files), **classes** and **resizing** (``size``: images antialiased,
masks by nearest neighbour, so no new label values) follow :mod:`medadapt.data.masks`, which ``csv:`` datasets
with a ``mask_path`` column share. Without ``size`` images and masks keep the file's size (Kvasir-SEG's
vary), so batches need ``size``.

Options (all optional): ``classes=a,b`` (default: ``classes.txt``, else ``background`` and the box label or
``foreground``), ``palette=000000,ff0000`` (``RRGGBB`` or ``R-G-B`` per class), ``threshold`` (127),
``empty=allow|error`` (a mask with no foreground), ``size``, ``interpolation`` (nearest, bilinear, bicubic),
``channels`` (1 or 3; default from the images, as ``folder:``), ``seed`` (0), ``fractions`` (0.7,0.1,0.2),
``val_fraction`` (0.1; 0 carves none), ``val_list=test|val``, ``mask_suffix`` (``_mask`` pairs ``a.png``
with ``a_mask.png``), ``skip_bad``, ``verify``.

Bad pairs (missing mask or image, several files of one stem, unreadable image or mask, image and mask sizes
that differ, a mask value outside the classes, an empty mask under ``empty=error``) raise a
:class:`~medadapt.errors.BadRowsError` listing the first few by stem; ``skip_bad=True`` (``--skip-bad-rows``)
drops them with one warning and lists them in ``dataset.skipped`` as ``(stem, reason)``. Only the requested
split's masks are read (and train's when validation is carved out of it; every mask for the automatic split).

Example:
    >>> ds = load_dataset("segfolder:/data/kvasir-seg?size=256", "test")  # doctest: +SKIP
    >>> s = ds[0]; s["image"].shape, s["mask"].shape, ds.classes
    (torch.Size([3, 256, 256]), torch.Size([256, 256]), ['background', 'polyp'])
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .base import DATASETS, DatasetAddress
from .folder import list_images, split_dirs
from .images import DEFAULT_INTENSITY, INTENSITY_OPTIONS, Intensity
from .layouts import carve_val, parse_val_fraction
from .masks import (
    MASK_OPTIONS,
    SIZE_BANDS,
    MaskOptions,
    MaskScan,
    SegmentationDataset,
    mask_classes,
    mask_columns,
    read_lines,
    read_mask,
    scan_masks,
    size_bands,
)
from .splits import DEFAULT_FRACTIONS
from .tables import (
    IMAGE_SUFFIXES,
    SPLIT_ALIASES,
    FileOptions,
    Rows,
    as_float,
    auto_splits,
    build_split,
    check_options,
)

__all__ = ["SegmentationDataset", "load_segfolder", "read_mask", "SIZE_BANDS", "size_bands"]

logger = logging.getLogger(__name__)

_SHARED = ("classes", "seed", "fractions", "channels", "skip_bad", "verify")  # checked as folder.py does
_OPTIONS = (*_SHARED, *MASK_OPTIONS, *INTENSITY_OPTIONS, "val_fraction", "val_list", "mask_suffix")


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _SegOptions:
    classes: list[str] | None = None
    seed: int = 0
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    channels: int | None = None
    skip_bad: bool = False
    verify: bool = False
    val_fraction: float = 0.1
    val_list: str | None = None
    mask_suffix: str = ""
    masks: MaskOptions = field(default_factory=MaskOptions)
    intensity: Intensity = DEFAULT_INTENSITY
    patient_col: ClassVar[str] = "patient_id"  # the metadata column of patient ids (read by build_split)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> _SegOptions:
        check_options(options, _OPTIONS, "segfolder")
        shared = FileOptions.parse({k: v for k, v in options.items() if k in _SHARED}, _SHARED, "segfolder")
        masks = MaskOptions.parse(options)
        values = {k: v for k, v in options.items() if k not in (*_SHARED, *MASK_OPTIONS, *INTENSITY_OPTIONS)}
        if "val_fraction" in values:
            values["val_fraction"] = as_float(values["val_fraction"], "val_fraction")
        if "mask_suffix" in values:
            values["mask_suffix"] = str(values["mask_suffix"])
        return cls(**{k: getattr(shared, k) for k in _SHARED}, **values, masks=masks,
                   intensity=Intensity.parse(options))  # fmt: skip

    def __post_init__(self) -> None:
        if self.val_list not in (None, "test", "val"):
            raise ConfigError(f"val_list={self.val_list!r} is not valid; choose test or val")
        parse_val_fraction(self.val_fraction)
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError(
                f"classes={','.join(self.classes)!r}: segmentation needs two or more (background first)"
            )


# ---------------------------------------------------------------------------------------------- layout


def _by_stem(folder: Path, suffix: str) -> dict[str, list[Path]]:
    """Image files of ``folder`` by stem (relative path without suffix, minus ``suffix`` for masks)."""
    found: dict[str, list[Path]] = {}
    for path in list_images(folder):
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if suffix and not stem.endswith(suffix):
            continue
        found.setdefault(stem[: len(stem) - len(suffix)], []).append(path)
    return found


def _pairs(root: Path, base: Path, split: str, opts: _SegOptions) -> list[tuple]:
    """``(stem, path, mask_path, split, error)`` per image stem under ``base/images`` (``error``: why the
    pair is bad, else None)."""
    images_dir, masks_dir = base / "images", base / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(
                f"{str(folder)!r} does not exist; a segfolder: dataset has ROOT/images and ROOT/masks (or "
                "ROOT/train/images, ROOT/train/masks, ...)"
            )
    images, masks = _by_stem(images_dir, ""), _by_stem(masks_dir, opts.mask_suffix)
    if not images:
        raise DataError(
            f"found no images in {str(images_dir)!r} (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    entries = []
    for stem, files in images.items():
        found, error = masks.get(stem, []), None
        if len(files) > 1:
            error = f"{len(files)} images share the stem: {', '.join(p.name for p in files)}"
        elif not found:
            expected = f"{masks_dir.relative_to(root)}/{stem}{opts.mask_suffix}.*"
            error = f"no mask for {files[0].relative_to(root)} (expected {expected})"
        elif len(found) > 1:
            error = f"{len(found)} masks share the stem: {', '.join(p.name for p in found)}"
        mask = str(found[0].relative_to(root)) if found else ""
        entries.append((stem, str(files[0].relative_to(root)), mask, split, error))
    return entries


def _split_lists(folder: Path, opts: _SegOptions) -> dict[str, tuple[str, list[str]]]:
    """``split -> (file name, stems)`` from ``folder/{train,val,test}.txt``, with the val -> test rule."""
    lists: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        split = SPLIT_ALIASES.get(path.stem.lower())
        if split in lists:
            raise DataError(
                f"{str(folder)!r} has two lists for the {split} split: {lists[split][0]}, {path.name}"
            )
        if split:
            stems = [
                s[: -len(Path(s).suffix)] if Path(s).suffix.lower() in IMAGE_SUFFIXES else s
                for s in read_lines(path)
            ]
            lists[split] = (path.name, stems)
    if opts.val_list is not None and "val" not in lists:
        raise ConfigError(
            f"val_list={opts.val_list} names what splits/val.txt is, but {str(folder)!r} has no val list"
        )
    if "val" in lists and "test" not in lists and opts.val_list != "val":
        logger.info(
            "%s has no test list: %s is the test set (val_list=val keeps it as validation)",
            folder,
            lists["val"][0],
        )
        lists["test"] = lists.pop("val")
    elif opts.val_list == "test":
        raise ConfigError(f"val_list=test, but {str(folder)!r} has a test list already; drop the option")
    return lists


def _apply_lists(entries: list[tuple], lists: dict[str, tuple[str, list[str]]]) -> list[tuple]:
    """Entries of listed stems with their split; a listed stem without an image becomes a bad pair."""
    split_of: dict[str, tuple[str, str]] = {}
    for split, (name, stems) in lists.items():
        for stem in stems:
            if split_of.get(stem, (split,))[0] != split:
                raise DataError(
                    f"{stem!r} is listed in both splits/{split_of[stem][1]} and splits/{name}; keep one"
                )
            split_of[stem] = (split, name)
    kept = [(s, p, m, split_of[s][0], e) for s, p, m, _, e in entries if s in split_of]
    if len(kept) < len(entries):
        logger.info("%d of %d images are in no split list: left out", len(entries) - len(kept), len(entries))
    have = {e[0] for e in entries}
    missing = [(s, "", "", split, f"listed in splits/{name} but no image images/{s}.* exists")
               for s, (split, name) in split_of.items() if s not in have]  # fmt: skip
    return kept + missing


def _layout(root: Path, opts: _SegOptions) -> pd.DataFrame:
    """Every pair: ``stem, path, mask_path`` (relative to ROOT), ``split`` ("" when the layout gives none),
    ``error``."""
    dirs = split_dirs(root)
    if dirs:
        entries = [e for name, split in dirs.items() for e in _pairs(root, root / name, split, opts)]
    else:
        entries = _pairs(root, root, "", opts)
        lists = _split_lists(root / "splits", opts)
        entries = _apply_lists(entries, lists) if lists else entries
    if opts.val_list is not None and dirs:
        raise ConfigError("val_list applies to split lists (ROOT/splits/val.txt), not to split folders")
    return pd.DataFrame(entries, columns=["stem", "path", "mask_path", "split", "error"])


# ---------------------------------------------------------------------------------- classes, patients, boxes


def _boxes(root: Path) -> tuple[dict[str, float] | None, set[str]]:
    """``stem -> largest box area / image area`` and the box labels, from ``ROOT/*bboxes.json``."""
    files = sorted(root.glob("*bboxes.json"))
    if len(files) > 1:
        raise DataError(f"{str(root)!r} has several box files ({', '.join(f.name for f in files)}); keep one")
    if not files:
        return None, set()
    try:
        data = json.loads(files[0].read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse {files[0]}: {e}") from e
    sizes, labels = {}, set()
    for stem, entry in data.items():
        try:
            boxes = entry.get("bbox") or []
            area = max(((b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"]) for b in boxes), default=0)
            sizes[stem] = area / (entry["height"] * entry["width"])
            labels |= {str(b["label"]) for b in boxes if "label" in b}
        except (AttributeError, KeyError, TypeError, ZeroDivisionError) as e:
            shape = "{height, width, bbox: [{xmin, ymin, xmax, ymax}]}"
            raise DataError(f"{files[0].name}: entry {stem!r} is not {shape} ({e!r})") from e
    return sizes, labels


def _patients(root: Path, stems: pd.Series) -> pd.Series:
    """Patient id per row from ``ROOT/patients.csv`` (blank where it has none), else the stem."""
    path = root / "patients.csv"
    if not path.is_file():
        return stems.copy()
    table = pd.read_csv(path, dtype=str)
    if not {"stem", "patient_id"} <= set(table.columns):
        raise DataError(f"{path} needs the columns stem and patient_id (has: {', '.join(table.columns)})")
    return stems.map(dict(zip(table["stem"].str.strip(), table["patient_id"].str.strip())))


# ------------------------------------------------------------------------------------------------ scan


def _scan(table: pd.DataFrame, root: Path, read: Callable, opts: _SegOptions, rows: np.ndarray) -> MaskScan:
    """Read the masks of ``rows``; the layout's bad pairs keep their reason and are not read."""
    known = {int(i): e for i, e in enumerate(table["error"]) if isinstance(e, str)}
    images, masks = ([str(root / p) for p in table[c]] for c in ("path", "mask_path"))
    todo = [int(i) for i in rows if int(i) not in known]
    names = (list(table["path"]), list(table["mask_path"]))
    scan = scan_masks(images, masks, todo, read, empty=opts.masks.empty, names=names)
    scan.errors = {**known, **scan.errors}
    return scan


# --------------------------------------------------------------------------------------------- splits


def _splits(
    table: pd.DataFrame,
    split: str,
    scan: Callable[[np.ndarray], MaskScan],
    groups: np.ndarray,
    opts: _SegOptions,
) -> tuple[np.ndarray, MaskScan]:
    """``(splits, scan)``: the layout's splits (val carved out of train when there is none), else the
    automatic split; only the masks the requested split needs are read."""
    given = table["split"].to_numpy(dtype=object)
    if not given.any():
        found = scan(np.arange(len(table)))
        return auto_splits(found.labels, groups, opts, source="segfolder"), found
    train = given == "train"
    carve = train.any() and not (given == "val").any() and opts.val_fraction > 0
    needed = (given == split) | (train & carve & (split in ("train", "val")))
    found = scan(np.flatnonzero(needed))
    if carve and split in ("train", "val"):
        return carve_val(given, found.labels, groups, opts.val_fraction, opts.seed), found
    return given.copy(), found


@dataclass
class _PairRows(Rows):
    def where(self, i: int) -> str:
        return f"pair {self.table['stem'].iat[i]!r}"


def _rows(root: Path, split: str, opts: _SegOptions) -> tuple[_PairRows, Callable[[str], np.ndarray]]:
    sizes, box_labels = _boxes(root)
    default = box_labels.pop() if len(box_labels) == 1 else "foreground"
    classes = mask_classes(opts.classes, root / "classes.txt", default=default, palette=opts.masks.palette)
    table = _layout(root, opts)
    read = opts.masks.reader(len(classes))
    patients = _patients(root, table["stem"])
    groups = np.where(patients.isna(), "\0" + table["stem"], patients.astype(str))
    splits, found = _splits(table, split, functools.partial(_scan, table, root, read, opts), groups, opts)
    meta = table[["stem", "path", "mask_path"]].assign(patient_id=patients)
    sizes = table["stem"].map(sizes).astype(float) if sizes is not None else None
    meta = mask_columns(meta, root.name, found.foreground, sizes)
    paths = [str(root / p) if p else "" for p in table["path"]]
    errors = dict(sorted(found.errors.items()))
    rows = _PairRows(root.name, meta, paths, found.labels, classes, "segmentation", splits, errors, "pair")
    return rows, read


# ----------------------------------------------------------------------------------------------- kind


def _load(
    address: DatasetAddress,
    split: str,
    *,
    root: str | None = None,
    size: int | None = None,
    skip_bad: bool = False,
    **ignored: Any,
) -> SegmentationDataset:
    """Load one split of a ``segfolder:`` dataset (options: see the module docstring)."""
    opts = _SegOptions.parse(address.options)
    folder = Path(address.location).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"dataset folder {str(folder)!r} does not exist; check the path in the dataset address"
        )
    rows, read = _rows(folder, split, opts)
    base = build_split(rows, split, str(address), opts, skip_bad or opts.skip_bad)
    return SegmentationDataset.wrap(
        base,
        mask_paths=[str(folder / p) for p in base.metadata["mask_path"]],
        skipped=[(rows.table["stem"].iat[i], reason) for i, reason in base.skipped],
        read=read,
        opts=opts.masks,
        size=size,
    )


#: ``load_dataset("segfolder:/data/kvasir-seg?size=256", "test")``
load_segfolder = DATASETS.register(
    "segfolder",
    _load,
    examples=lambda: ["segfolder:DIR"],
    check=lambda address: _SegOptions.parse(address.options),
    location="folder",
)
