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

**Masks.** Values are class indices, 0 the background, read by :func:`read_mask`:

- index PNG / TIFF / BMP (modes 1, L, I, I;16) as they are; with two classes, masks saved as 0/255 are read
  as 0/1. A value outside the classes is a bad pair (the error names the file and the values).
- palette PNG (mode P): the **palette index** is the class (the palette only colours it for display, as in
  PASCAL VOC). With the ``palette`` option, pixels are mapped by **colour** instead (colour k is class k;
  P files go through their own palette; RGB PNG masks need it); a colour outside it is a bad pair (colours
  must match exactly, so not for JPEG masks).
- JPEG: lossy, so binary only: luma ``> threshold`` (default 127, i.e. 128..255) is class 1.

**Resizing.** With ``size=S`` (or the ``size`` loader argument, ``--size``, which wins) images are resized to
S×S at load with antialiased ``interpolation`` (default bilinear, :func:`medadapt.data.transforms.resize`)
and masks with nearest neighbour ("nearest-exact", as PIL): masks are never interpolated, so no new label
values appear. Without ``size`` both keep the file's size (Kvasir-SEG's vary), so batches need ``size``.

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

import difflib
import functools
import json
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from .base import DATASETS, DatasetAddress, MedicalDataset
from .folder import (
    _SPLIT_ALIASES,
    IMAGE_SUFFIXES,
    _as_float,
    _as_list,
    _auto_splits,
    _build,
    _list_images,
    _Options,
    _Rows,
    _split_dirs,
)
from .images import _PIL_ERRORS, is_dicom_file, read_image
from .splits import DEFAULT_FRACTIONS, grouped_split
from .transforms import INTERPOLATIONS, resize

__all__ = ["SegmentationDataset", "load_segfolder", "read_mask", "SIZE_BANDS", "size_bands"]

logger = logging.getLogger(__name__)

_SHARED = ("classes", "seed", "fractions", "channels", "skip_bad", "verify")  # checked as folder.py does
_OPTIONS = (
    *_SHARED,
    *("palette", "threshold", "empty", "size", "interpolation", "val_fraction", "val_list", "mask_suffix"),
)
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


# --------------------------------------------------------------------------------------------- dataset


class SegmentationDataset(MedicalDataset):
    """Image/mask pairs read on demand; ``labels`` is ``[N, 1]`` "has foreground" (0/1)."""

    task = "segmentation"

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: list[str],
        n_channels: int,
        paths: list[str],
        mask_paths: list[str],
        labels: np.ndarray,
        metadata: pd.DataFrame,
        skipped: list[tuple[str, str]],
        size: int | None,
        interpolation: str,
        read: Callable[[str], np.ndarray],
    ) -> None:
        assert len(paths) == len(mask_paths) == len(labels) == len(metadata)
        self.name, self.split, self.classes, self.n_channels = name, split, classes, n_channels
        self.paths, self.mask_paths, self.labels, self.metadata = paths, mask_paths, labels, metadata
        self.skipped, self.size, self.interpolation, self._read = skipped, size, interpolation, read
        self.patient_col = "patient_id"

    def image(self, i: int) -> torch.Tensor:
        """uint8 ``[C, H, W]``, resized to ``size`` when given."""
        img = read_image(self.paths[i], self.n_channels)
        if self.size is None:
            return img
        x = resize(img[None].float().div_(255), (self.size, self.size), self.interpolation)
        return x[0].mul_(255).round_().clamp_(0, 255).to(torch.uint8)

    def mask(self, i: int) -> torch.Tensor:
        """int64 ``[H, W]`` class indices, resized to ``size`` by nearest neighbour when given."""
        mask = torch.from_numpy(self._read(self.mask_paths[i]).astype(np.int64))
        if self.size is None:
            return mask
        return resize(mask[None, None].float(), (self.size, self.size), "nearest")[0, 0].long()

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.name!r}, split={self.split!r}, n={len(self)}, classes={self.classes})"
        )


# ----------------------------------------------------------------------------------------------- masks


def read_mask(
    path: str | Path,
    *,
    n_classes: int,
    threshold: int = 127,
    palette: tuple[tuple[int, int, int], ...] | None = None,
) -> np.ndarray:
    """One mask file as an ``[H, W]`` integer array of class indices (rules: see the module docstring).

    Example:
        >>> read_mask("masks/a.png", n_classes=3).max() < 3  # doctest: +SKIP
        True
    """
    try:
        with Image.open(path) as im:
            if palette is not None:
                return _by_colour(np.asarray(im.convert("RGB")), palette, path)
            if im.format == "JPEG" or Path(path).suffix.lower() in _JPEG_SUFFIXES:
                if n_classes != 2:
                    raise DataError(
                        f"mask {path} is a JPEG, which can only hold a binary mask (lossy compression blurs "
                        f"class indices), but there are {n_classes} classes; save multi-class masks as PNG"
                    )
                return (np.asarray(im.convert("L")) > threshold).astype(np.uint8)
            values = _index_values(im, path)
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read mask {path}: {e}") from e
    return _checked(values, n_classes, path)


def _index_values(im: Image.Image, path: str | Path) -> np.ndarray:
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 0] != rgb[..., 2]).any():
            raise DataError(f"mask {path} is a colour image; map its colours to classes with palette=...")
        return rgb[..., 0]
    values = np.asarray(im.getchannel("L") if im.mode == "LA" else im)
    if values.dtype == bool:
        return values.astype(np.uint8)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise DataError(f"mask {path} holds non-integer values; class indices must be integers")
    return values


def _checked(values: np.ndarray, n_classes: int, path: str | Path) -> np.ndarray:
    if values.size == 0:
        raise DataError(f"mask {path} has no pixels")
    low, high = values.min(), values.max()
    if n_classes == 2 and high == 255 and not ((values != 0) & (values != 255)).any():
        return (values == 255).astype(np.uint8)  # a binary mask saved as 0/255
    if low < 0 or high >= n_classes:
        bad = np.unique(values[(values < 0) | (values >= n_classes)])
        shown = ", ".join(str(v) for v in bad[:8].tolist()) + (" ..." if len(bad) > 8 else "")
        raise DataError(
            f"mask {path} has values {shown} outside the {n_classes} classes (0..{n_classes - 1}); "
            "declare the classes (classes=... or ROOT/classes.txt)"
        )
    return values.astype(np.int64) if values.dtype.kind == "f" else values


def _by_colour(rgb: np.ndarray, palette: tuple[tuple[int, int, int], ...], path: str | Path) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
    order = np.argsort(table)
    pos = np.searchsorted(table[order], codes).clip(max=len(table) - 1)
    known = table[order][pos] == codes
    if not known.all():
        unknown = [f"{c:06x}" for c in np.unique(codes[~known])[:8].tolist()]
        raise DataError(f"mask {path} has colours {', '.join(unknown)} that are not in palette=...")
    return order[pos].astype(np.uint8)


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _SegOptions:
    classes: list[str] | None = None
    seed: int = 0
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    channels: int | None = None
    skip_bad: bool = False
    verify: bool = False
    palette: tuple[tuple[int, int, int], ...] | None = None
    threshold: int = 127
    empty: str = "allow"
    size: int | None = None
    interpolation: str = "bilinear"
    val_fraction: float = 0.1
    val_list: str | None = None
    mask_suffix: str = ""
    patient_col: ClassVar[str] = "patient_id"  # the metadata column of patient ids (read by folder._build)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> _SegOptions:
        for key in options:
            if key not in _OPTIONS:
                close = difflib.get_close_matches(key, _OPTIONS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown option {key!r} for segfolder: datasets{hint} (valid: {', '.join(_OPTIONS)})"
                )
        shared = _Options.parse({k: v for k, v in options.items() if k in _SHARED}, _SHARED, "segfolder")
        values = {
            **{k: getattr(shared, k) for k in _SHARED},
            **{k: v for k, v in options.items() if k not in _SHARED},
        }
        if "palette" in values:
            values["palette"] = tuple(_colour(token) for token in _as_list(values["palette"]))
        if "val_fraction" in values:
            values["val_fraction"] = _as_float(values["val_fraction"], "val_fraction")
        if "mask_suffix" in values:
            values["mask_suffix"] = str(values["mask_suffix"])
        return cls(**values)

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (is_int(self.threshold) and 0 <= self.threshold < 255):
            raise ConfigError(f"threshold={self.threshold!r} is not valid; give an integer from 0 to 254")
        if self.empty not in ("allow", "error"):
            raise ConfigError(f"empty={self.empty!r} is not valid; choose allow or error")
        if self.size is not None and not (is_int(self.size) and self.size > 0):
            raise ConfigError(f"size={self.size!r} is not valid; give a positive integer (pixels)")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation={self.interpolation!r} is not valid; choose one of {INTERPOLATIONS}"
            )
        if self.val_list not in (None, "test", "val"):
            raise ConfigError(f"val_list={self.val_list!r} is not valid; choose test or val")
        vf = self.val_fraction
        if not (0 <= vf < 1 and any(np.isclose(vf * k, round(vf * k)) for k in range(1, 21))):
            raise ConfigError(
                f"val_fraction={vf!r} is not valid; give a multiple of 1/k (k <= 20) below 1, e.g. 0.1"
            )
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError(
                f"classes={','.join(self.classes)!r}: segmentation needs two or more (background first)"
            )
        if self.palette is not None and (
            len(self.palette) < 2 or len(set(self.palette)) != len(self.palette)
        ):
            raise ConfigError("palette=... must list two or more distinct colours, one per class")


def _colour(token: str) -> tuple[int, int, int]:
    text = token.strip().lstrip("#")
    if len(text) == 6 and all(c in string.hexdigits for c in text):
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    parts = text.split("-")
    if len(parts) == 3 and all(p.isdigit() and int(p) < 256 for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    raise ConfigError(
        f"palette colour {token!r} is not valid; give RRGGBB or R-G-B, e.g. palette=000000,ff0000"
    )


# ---------------------------------------------------------------------------------------------- layout


def _read_lines(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _by_stem(folder: Path, suffix: str) -> dict[str, list[Path]]:
    """Image files of ``folder`` by stem (relative path without suffix, minus ``suffix`` for masks)."""
    found: dict[str, list[Path]] = {}
    for path in _list_images(folder):
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
        split = _SPLIT_ALIASES.get(path.stem.lower())
        if split in lists:
            raise DataError(
                f"{str(folder)!r} has two lists for the {split} split: {lists[split][0]}, {path.name}"
            )
        if split:
            stems = [
                s[: -len(Path(s).suffix)] if Path(s).suffix.lower() in IMAGE_SUFFIXES else s
                for s in _read_lines(path)
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
    split_dirs = _split_dirs(root)
    if split_dirs:
        entries = [e for name, split in split_dirs.items() for e in _pairs(root, root / name, split, opts)]
    else:
        entries = _pairs(root, root, "", opts)
        lists = _split_lists(root / "splits", opts)
        entries = _apply_lists(entries, lists) if lists else entries
    if opts.val_list is not None and split_dirs:
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


def _classes(root: Path, opts: _SegOptions, box_labels: set[str]) -> list[str]:
    if opts.classes is not None:
        names = opts.classes
    elif (root / "classes.txt").is_file():
        names = _read_lines(root / "classes.txt")
        if len(names) < 2 or len(set(names)) != len(names):
            raise DataError(
                f"{root / 'classes.txt'} must list two or more distinct class names, background first"
            )
    else:
        names = ["background", box_labels.pop() if len(box_labels) == 1 else "foreground"]
    if opts.palette is not None and len(opts.palette) != len(names):
        raise ConfigError(
            f"palette has {len(opts.palette)} colours but there are {len(names)} classes {names}; give one "
            "colour per class (name the classes with classes=... or ROOT/classes.txt)"
        )
    return names


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


def _image_shape(path: str) -> tuple[int, int]:
    if is_dicom_file(path):
        return tuple(read_image(path, 1).shape[-2:])
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except _PIL_ERRORS as e:
        raise DataError(f"unreadable image {path}: {e}") from e


def _scan(table: pd.DataFrame, root: Path, rows: np.ndarray, read: Callable, opts: _SegOptions) -> tuple:
    """Read the masks of ``rows``: ``(labels [N, 1], foreground fraction [N], errors)``."""
    labels, foreground = np.zeros((len(table), 1), dtype=np.int64), np.full(len(table), np.nan)
    errors = {int(i): e for i, e in enumerate(table["error"]) if isinstance(e, str)}
    for i in (int(i) for i in rows if int(i) not in errors):
        image, mask_path = str(root / table["path"].iat[i]), str(root / table["mask_path"].iat[i])
        try:
            mask, shape = read(mask_path), _image_shape(image)
        except DataError as e:
            errors[i] = str(e)
            continue
        if mask.shape != shape:
            (h, w), (mh, mw) = shape, mask.shape
            errors[i] = f"image {table['path'].iat[i]} is {w}x{h} but its mask is {mw}x{mh}"
            continue
        foreground[i] = np.count_nonzero(mask) / mask.size
        labels[i, 0] = int(foreground[i] > 0)
        if opts.empty == "error" and not labels[i, 0]:
            errors[i] = f"mask {table['mask_path'].iat[i]} has no foreground (empty=allow keeps such masks)"
    return labels, foreground, errors


# --------------------------------------------------------------------------------------------- splits


def _splits(
    table: pd.DataFrame,
    split: str,
    scan: Callable[[np.ndarray], tuple],
    groups: np.ndarray,
    opts: _SegOptions,
) -> tuple:
    """``(splits, labels, foreground, errors)``: the layout's splits (val carved out of train when there is
    none), else the automatic split; only the masks the requested split needs are read."""
    given = table["split"].to_numpy(dtype=object)
    if not given.any():
        labels, foreground, errors = scan(np.arange(len(table)))
        return _auto_splits(labels, groups, opts), labels, foreground, errors
    train = given == "train"
    carve = train.any() and not (given == "val").any() and opts.val_fraction > 0
    needed = (given == split) | (train & carve & (split in ("train", "val")))
    labels, foreground, errors = scan(np.flatnonzero(needed))
    splits = given.copy()
    if carve and split in ("train", "val"):
        fractions = (1 - opts.val_fraction, opts.val_fraction, 0.0)
        splits[train] = grouped_split(labels[train], groups[train], fractions=fractions, seed=opts.seed)
    return splits, labels, foreground, errors


#: Object size bands (upper bound of the box's share of the image, name): small objects are the hard case.
SIZE_BANDS = ((0.05, "small (<5%)"), (0.20, "medium (5-20%)"), (1.0, "large (>20%)"))


def size_bands(sizes: pd.Series) -> pd.Series:
    """The :data:`SIZE_BANDS` name of each object size (a box's share of the image); empty where unknown."""
    bounds = [0.0] + [b for b, _ in SIZE_BANDS]
    bands = pd.cut(sizes, bins=bounds, labels=[n for _, n in SIZE_BANDS], include_lowest=True)
    return bands.astype(object).where(sizes.notna(), "")


@dataclass
class _PairRows(_Rows):
    def where(self, i: int) -> str:
        return f"pair {self.table['stem'].iat[i]!r}"


def _rows(root: Path, split: str, opts: _SegOptions) -> tuple[_PairRows, Callable[[str], np.ndarray]]:
    sizes, box_labels = _boxes(root)
    classes = _classes(root, opts, box_labels)
    table = _layout(root, opts)
    read = functools.partial(
        read_mask, n_classes=len(classes), threshold=opts.threshold, palette=opts.palette
    )
    patients = _patients(root, table["stem"])
    groups = np.where(patients.isna(), "\0" + table["stem"], patients.astype(str))
    scan = functools.partial(_scan, table, root, read=read, opts=opts)
    splits, labels, foreground, errors = _splits(table, split, scan, groups, opts)
    meta = table[["stem", "path", "mask_path"]].assign(patient_id=patients)
    if sizes is not None:
        meta["object_size"] = table["stem"].map(sizes).astype(float)
        meta["object_size_band"] = size_bands(meta["object_size"])
    meta["foreground"] = foreground
    paths = [str(root / p) if p else "" for p in table["path"]]
    rows = _PairRows(
        root.name, meta, paths, labels, classes, "segmentation", splits, dict(sorted(errors.items())), "pair"
    )
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
    if size is not None and opts.size is not None and size != opts.size:
        logger.warning("size=%s overrides ?size=%s in %s", size, opts.size, address)
    rows, read = _rows(folder, split, opts)
    base = _build(rows, split, str(address), opts, skip_bad or opts.skip_bad)
    return SegmentationDataset(
        name=str(address),
        split=split,
        classes=rows.classes,
        n_channels=base.n_channels,
        paths=base.paths,
        mask_paths=[str(folder / p) for p in base.metadata["mask_path"]],
        labels=base.labels,
        metadata=base.metadata,
        skipped=[(rows.table["stem"].iat[i], reason) for i, reason in base.skipped],
        size=size if size is not None else opts.size,
        interpolation=opts.interpolation,
        read=read,
    )


#: ``load_dataset("segfolder:/data/kvasir-seg?size=256", "test")``
load_segfolder = DATASETS.register(
    "segfolder",
    _load,
    examples=lambda: ["segfolder:DIR"],
    check=lambda address: _SegOptions.parse(address.options),
)
