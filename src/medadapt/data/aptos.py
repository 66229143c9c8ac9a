"""APTOS 2019 Blindness Detection as Kaggle distributes it: ``aptos2019:/data/aptos2019-blindness-detection``.

Layout (``kaggle competitions download -c aptos2019-blindness-detection``, unzipped into ROOT)::

    ROOT/train.csv               id_code,diagnosis   (3,662 rows; diagnosis 0-4)
    ROOT/train_images/{id_code}.png
    ROOT/test.csv, test_images/  (no labels: not used; it cannot be a test split)

Task ``ordinal`` over the five grades in grade order, class index = grade: ``No DR`` (0), ``Mild`` (1),
``Moderate`` (2), ``Severe`` (3), ``Proliferative DR`` (4). The released test set has no labels, so train,
val and test are a seeded, stratified split of ``train.csv`` (``fractions``, default 0.7,0.1,0.2).

APTOS has **no patient ids**: every image is its own group (``dataset.patient_col`` is ``id_code``). Both
eyes of one patient, and repeat images of one eye, may therefore land in different splits: a known leakage
risk of APTOS that makes scores optimistic; compare models on the same split, and do not read the numbers as
patient-level generalisation.

Metadata: ``row`` (train.csv data row), ``id_code``, and ``width`` / ``height`` of the loaded split's images
(APTOS image sizes differ by clinic and camera, so they are a proxy subgroup for the acquisition site).

Options: ``seed`` (0), ``fractions`` (0.7,0.1,0.2), ``channels`` (default from the images: 3), ``skip_bad``,
``verify``, as for ``csv:``. Bad rows (a missing image, a diagnosis that is not 0-4) stop the load with their
row numbers unless ``skip_bad``.

The helpers under "shared by the layouts" are used by :mod:`~medadapt.data.chexpert` and
:mod:`~medadapt.data.isic` as well.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .base import DATASETS, DatasetAddress
from .layouts import SHARED_OPTIONS, file_errors, layout_file, layout_options, layout_root, read_layout_csv
from .tables import FileOptions, ImageFileDataset, Rows, auto_splits, build_split

__all__ = ["GRADES", "load_aptos2019"]

logger = logging.getLogger(__name__)

GRADES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]
URL = "https://www.kaggle.com/competitions/aptos2019-blindness-detection/data"
_LAYOUT = "ROOT/train.csv and ROOT/train_images/{id_code}.png"
_OPTIONS = SHARED_OPTIONS

# ------------------------------------------------------------------------ shared by the layouts
# ----------------------------------------------------------------------------------------------- APTOS


def _grades(values: pd.Series) -> tuple[np.ndarray, dict[int, str]]:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    valid = np.isin(numbers, np.arange(len(GRADES)))
    errors = {int(i): _why(values.iat[i]) for i in np.flatnonzero(~valid)}
    return np.where(valid, numbers, 0).astype(np.int64)[:, None], errors


def _why(value: Any) -> str:
    if pd.isna(value) or not str(value).strip():
        return "diagnosis is empty"
    return f"diagnosis {value!r} is not a grade 0-4 ({', '.join(GRADES)})"


def _image_sizes(paths: list[str], rows: np.ndarray) -> pd.DataFrame:
    sizes = np.full((len(paths), 2), np.nan)
    for i in rows:
        try:
            with Image.open(paths[i]) as im:
                sizes[i] = im.size
        except (OSError, ValueError):
            continue  # a bad row: reported by build_split
    return pd.DataFrame(sizes, columns=["width", "height"])


def _rows(root: Path, split: str, opts: FileOptions) -> Rows:
    table = read_layout_csv(
        root / "train.csv", "APTOS 2019", URL, _LAYOUT, ["id_code", "diagnosis"], ("id_code", "diagnosis")
    )
    images = layout_file(root / "train_images", "APTOS 2019", URL, _LAYOUT, folder=True)
    labels, errors = _grades(table["diagnosis"])
    paths = [str(images / f"{str(i).strip()}.png") for i in table["id_code"]]
    # no patient ids: every image its own group
    splits = auto_splits(labels, None, opts, source="APTOS 2019 train.csv", classes=list(GRADES))
    in_split = splits == split
    errors = {**errors, **file_errors(paths, in_split)}
    meta = table[["row", "id_code"]].join(_image_sizes(paths, np.flatnonzero(in_split)))
    return Rows(
        "train.csv", meta, paths, labels, list(GRADES), "ordinal", splits, dict(sorted(errors.items())), "row"
    )


def _check(address: DatasetAddress) -> None:
    layout_options(address.options, _OPTIONS, "aptos2019")


@DATASETS.register(
    "aptos2019", examples=lambda: ["aptos2019:DIR"], check=_check, location="folder", download=URL
)
def load_aptos2019(
    address: DatasetAddress, split: str, *, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset:
    """One split of APTOS 2019 (options: see the module docstring).

    Example: ``load_dataset("aptos2019:/data/aptos2019-blindness-detection", "test")``
    """
    opts, _ = layout_options(address.options, _OPTIONS, "aptos2019")
    root = layout_root(address.location, "APTOS 2019", URL, _LAYOUT)
    ds = build_split(_rows(root, split, opts), split, str(address), opts, skip_bad or opts.skip_bad)
    ds.patient_col = "id_code"  # no patient ids in APTOS: each image is its own group
    return ds
