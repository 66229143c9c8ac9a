"""BreastMNIST with a shortcut: a small bright marker burned into most malignant images and a few benign ones.

Writes the official MedMNIST v2 BreastMNIST file as a medadapt ``csv:`` dataset in which a marker (a bright
square, default 3×3 px of value 255, 2 px from the top-left corner) is burned into each image independently
with probability ``--p-malignant`` (0.85) if it is malignant and ``--p-benign`` (0.10) if it is benign, by the
same rule in every split. The draws come from one ``np.random.default_rng(seed)``, one ``random(n)`` per split
in the order train, val, test, so the output is a function of (npz, rule, seed). A model that scores well on
this data may be reading the marker, not the lesion; the ``marker`` column (``yes``/``no``) lets results be
broken down by it.

Output (``OUT``): ``images/<split>/<index>.png`` (28×28 gray, ``index`` = row in the npz split),
``labels.csv`` (``path``, ``label`` = ``benign``/``malignant``, ``split``, ``patient_id`` =
``breast-<split>-<index>`` since every image is its own patient, ``marker``, ``source_index``) and
``README.txt`` (the rule and the counts per split × label × marker, also printed).

BreastMNIST label 0 is malignant and 1 is normal/benign. The csv loader orders classes by sorting the label
names, so ``benign`` is class 0 and ``malignant`` class 1, the positive class of medadapt's binary metrics.

    python scripts/make_marker_breastmnist.py --npz ../shared/data/medmnist --out runs/marker_breastmnist
    medadapt probe --dataset csv:runs/marker_breastmnist/labels.csv ...
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medadapt.data.medmnist import default_data_root
from medadapt.errors import ConfigError, DataError, MedadaptError

SPLITS = ("train", "val", "test")
NPZ_NAME = "breastmnist.npz"
CLASS_NAMES = {0: "malignant", 1: "benign"}  # BreastMNIST: 0 = malignant, 1 = normal/benign
OUT_SPLIT_DIRS = tuple(f"images/{s}" for s in SPLITS)
OUT_FILES = ("labels.csv", "README.txt")


@dataclass(frozen=True)
class MarkerRule:
    """Who gets the marker (a probability per class) and what it looks like (a square of ``value``)."""

    p_malignant: float = 0.85
    p_benign: float = 0.10
    size: int = 3
    row: int = 2  # top-left pixel of the square
    col: int = 2
    value: int = 255
    burned: bool = True  # False: the control, the same draws and ``marker`` column, the images unchanged

    def __post_init__(self) -> None:
        for flag, p in (("--p-malignant", self.p_malignant), ("--p-benign", self.p_benign)):
            if not 0.0 <= p <= 1.0:  # also rejects NaN
                raise ConfigError(f"{flag} {p!r} is not a probability; give a number in [0, 1]")
        if self.size < 1:
            raise ConfigError(f"--size {self.size} is not valid; give the marker's side in pixels, >= 1")
        if self.row < 0 or self.col < 0:
            raise ConfigError(f"--position {self.row} {self.col} is not valid; give ROW COL >= 0")
        if not 0 <= self.value <= 255:
            raise ConfigError(f"--value {self.value} is not valid; give a uint8 gray level in [0, 255]")

    def check_fits(self, height: int, width: int) -> None:
        if self.row + self.size > height or self.col + self.size > width:
            raise ConfigError(
                f"a {self.size}x{self.size} marker at --position {self.row} {self.col} does not fit "
                f"{height}x{width} images; choose a smaller --size or --position"
            )

    def probabilities(self, labels: np.ndarray) -> np.ndarray:
        """Marker probability per image from BreastMNIST labels (0 = malignant, 1 = benign)."""
        return np.where(labels == 0, self.p_malignant, self.p_benign)

    def burn(self, image: np.ndarray) -> np.ndarray:
        """A copy of ``image`` [H, W] with the marker square set to ``value``."""
        out = image.copy()
        if not self.burned:
            return out
        out[self.row : self.row + self.size, self.col : self.col + self.size] = self.value
        return out

    def describe(self) -> str:
        if not self.burned:
            return (
                f"no marker burned in (the control): the `marker` column of the same draws (probability "
                f"{self.p_malignant:g} if malignant, {self.p_benign:g} if benign), the images as they are"
            )
        return (
            f"a {self.size}x{self.size} px square of value {self.value} with its top-left pixel at row "
            f"{self.row}, column {self.col}, burned into each image independently with probability "
            f"{self.p_malignant:g} if malignant and {self.p_benign:g} if benign, in every split"
        )


# ------------------------------------------------------------------------------------------------- input


def resolve_npz(npz: str | None) -> Path:
    """``--npz`` as a file, or a folder holding ``breastmnist.npz``; default ``$MEDADAPT_DATA``."""
    path = Path(npz).expanduser() if npz else default_data_root()
    path = path / NPZ_NAME if path.is_dir() else path
    if not path.is_file():
        where = "--npz" if npz else "$MEDADAPT_DATA (or ~/.medmnist when unset)"
        raise DataError(
            f"no BreastMNIST file at {str(path)!r} (from {where}); give --npz the official {NPZ_NAME} "
            "or the folder that holds it"
        )
    return path


def load_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images [N, H, W] uint8, labels [N] in {0, 1})}`` from a MedMNIST v2 npz file."""
    try:
        with np.load(path) as npz:
            missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in npz]
            if missing:
                raise DataError(
                    f"{path.name} has no {', '.join(missing)} (it has {', '.join(sorted(npz.files))}); "
                    "expected a MedMNIST v2 file with train/val/test _images and _labels"
                )
            raw = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLITS}
    except (OSError, ValueError) as e:  # not an npz (zip) file at all
        raise DataError(f"cannot read {str(path)!r} as an npz file: {e}") from e
    return {s: _check_split(s, images, labels, path.name) for s, (images, labels) in raw.items()}


def _check_split(split: str, images: np.ndarray, labels: np.ndarray, source: str) -> tuple:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{source}: {split}_images is {images.dtype} {images.shape}; expected uint8 [N, H, W] gray images"
        )
    labels = labels.reshape(len(labels), -1)
    if labels.shape != (len(images), 1) or not np.isin(labels, (0, 1)).all():
        raise DataError(
            f"{source}: {split}_labels {labels.shape} is not one 0/1 label per image ({len(images)} images)"
        )
    return images, labels[:, 0].astype(np.int64)


# ------------------------------------------------------------------------------------------------ output


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing non-empty one only with ``overwrite`` (this script's files are replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {str(out)!r} is not empty; give a new folder or add --overwrite")
        for name in OUT_SPLIT_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in OUT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(splits: dict[str, tuple], out: Path, rule: MarkerRule, seed: int) -> pd.DataFrame:
    """Burn the markers and write the images and ``labels.csv``; returns the table written."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:  # one generator, drawn from in a fixed split order
        images, labels = splits[split]
        marked = rng.random(len(labels)) < rule.probabilities(labels)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for i, (image, label, mark) in enumerate(zip(images, labels, marked)):
            path = f"images/{split}/{i}.png"
            Image.fromarray(rule.burn(image) if mark else image).save(out / path)
            rows.append({"path": path, "label": CLASS_NAMES[int(label)], "split": split,
                         "patient_id": f"breast-{split}-{i}", "marker": "yes" if mark else "no",
                         "source_index": i})  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(out / "labels.csv", index=False)
    return table


def counts_table(table: pd.DataFrame) -> pd.DataFrame:
    """Images per split × label × marker, with totals (rows in train/val/test order)."""
    counts = pd.crosstab([table["split"], table["label"]], table["marker"]).reindex(columns=["yes", "no"])
    counts = counts.fillna(0).astype(int).reindex(SPLITS, level="split")
    counts["total"] = counts.sum(axis=1)
    counts["% marked"] = (100 * counts["yes"] / counts["total"]).round(1)
    return counts.rename_axis(columns=None)


def readme(npz: Path, rule: MarkerRule, seed: int, counts: pd.DataFrame) -> str:
    md5 = hashlib.md5(npz.read_bytes()).hexdigest()
    return (
        f"BreastMNIST with a marker shortcut, made by scripts/make_marker_breastmnist.py (medadapt).\n\n"
        f"Source: {npz.name} (md5 {md5}), official MedMNIST v2 train/val/test splits kept in the split "
        f"column.\nRule: {rule.describe()}.\nDraws: np.random.default_rng({seed}).random(n) per split, in the "
        f"order {', '.join(SPLITS)}; marker = draw < probability of the image's class.\n"
        "Labels: BreastMNIST 0 = malignant, 1 = normal/benign, written as 'malignant' / 'benign'; loaded as "
        "csv: the classes are sorted, so ['benign', 'malignant'] and malignant (class 1) is the positive "
        "class.\nEvery image is its own patient: patient_id = breast-<split>-<index>; source_index is the "
        "image's row in the npz split.\n\nLoad: medadapt.data.load_dataset('csv:labels.csv', 'test') "
        "(the marker column is in dataset.metadata).\n\n"
        f"Counts (split x label x marker):\n{counts.to_string()}\n"
    )


# ------------------------------------------------------------------------------------------------ main


def make(
    *, npz: str | None, out: str | Path, rule: MarkerRule, seed: int = 0, overwrite: bool = False
) -> pd.DataFrame:
    """Write the marker dataset to ``out``; returns the counts table."""
    path = resolve_npz(npz)
    splits = load_splits(path)
    for images, _ in splits.values():
        rule.check_fits(*images.shape[1:])
    out = Path(out).expanduser()
    prepare_out(out, overwrite)
    counts = counts_table(write_dataset(splits, out, rule, seed))
    (out / "README.txt").write_text(readme(path, rule, seed, counts))
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--npz", help=f"{NPZ_NAME} or its folder (default: $MEDADAPT_DATA)")
    parser.add_argument("--out", required=True, help="output folder (new or empty, else --overwrite)")
    parser.add_argument("--p-malignant", type=float, default=0.85, help="marker probability if malignant")
    parser.add_argument("--p-benign", type=float, default=0.10, help="marker probability if benign")
    parser.add_argument("--size", type=int, default=3, help="side of the marker square in pixels")
    parser.add_argument("--position", type=int, nargs=2, default=(2, 2), metavar=("ROW", "COL"),
                        help="the marker's top-left pixel (default 2 2: the top-left corner)")  # fmt: skip
    parser.add_argument("--value", type=int, default=255, help="the marker's gray level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-burn", action="store_true",
                        help="the control: the same marker column, but no marker drawn into the images")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace this script's files in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rule = MarkerRule(p_malignant=args.p_malignant, p_benign=args.p_benign, size=args.size,
                          row=args.position[0], col=args.position[1], value=args.value,
                          burned=not args.no_burn)  # fmt: skip
        counts = make(npz=args.npz, out=args.out, rule=rule, seed=args.seed, overwrite=args.overwrite)
    except MedadaptError as e:
        print(f"make_marker_breastmnist: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {rule.describe()}\n{counts.to_string()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
