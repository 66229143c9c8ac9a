"""CheXpert as Stanford distributes it: ``chexpert:/data/CheXpert-v1.0-small`` (or the full ``CheXpert-v1.0``).

Layout (the unzipped download; https://stanfordmlgroup.github.io/competitions/chexpert/)::

    FOLDER/train.csv, FOLDER/valid.csv
    FOLDER/train/patient00001/study1/view1_frontal.jpg, FOLDER/valid/patient64541/...
    FOLDER/test_labels.csv (or a labelled test.csv) and FOLDER/test/...   (optional: the later test release)

``Path`` values (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``) start at the folder
*above* FOLDER; their first part is replaced by FOLDER, so a renamed or moved folder still works (a path that
starts with ``train/``, ``valid/`` or ``test/`` is taken as relative to FOLDER).

**Labels**: multilabel, float32, over the 14 observations in CSV order (``findings=all``), the 5 competition
ones (``findings=competition``: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion), or a comma
list (``findings=Edema,Pleural Effusion``; case and ``_`` for space do not matter). 1.0 is positive, 0.0
negative, blank ("not mentioned" in the report) is **negative**, as in the CheXpert paper. -1.0 (uncertain)
follows ``uncertain=``: ``ignore`` (default, U-Ignore: ``nan``, left out of the loss and the metrics, so the
model is neither taught nor scored on labels the report left open), ``zeros`` (U-Zeros) or ``ones`` (U-Ones).
valid.csv (and the test labels) are radiologist consensus labels with no uncertain or blank values. Any other
value is a bad row.

**Views**: ``view=frontal`` (default: most CheXpert results, the paper's included, are on frontal images,
and lateral films are a different image distribution), ``lateral`` or ``all``. Rows of other views are left
out (not bad rows).

**Splits** (``test=auto``, the default): without test labels, valid.csv (200 patients, radiologist-labelled)
is the **test** split, and a seeded, patient-grouped, stratified ``val_fraction`` (0.1) of train.csv's
patients is **val**; the rest is train. With ``FOLDER/test_labels.csv`` (or a ``test.csv`` with the finding
columns) the official protocol is used: train.csv is train, valid.csv is val and the test labels are test
(``val_fraction`` then does not apply). ``test=valid`` forces the first mapping, ``test=official`` the second
(an error naming the missing file without test labels). Train, valid and test patients are disjoint.

**Metadata**: ``row`` (the CSV's data row), ``path`` (the CSV value), ``patient_id`` (``patient00001``, from the
path; ``dataset.patient_col``), ``study`` (``patient00001/study1``), ``sex``, ``age``, ``view`` (frontal /
lateral; from the file name when the CSV has no ``Frontal/Lateral`` column) and ``ap_pa``.

Options: ``findings``, ``uncertain``, ``view``, ``test``, ``val_fraction``, and ``seed``, ``channels``
(default from the images: 1), ``skip_bad``, ``verify`` as for ``csv:``.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
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
from .tables import FileOptions, ImageFileDataset, Rows, as_list, build_split

__all__ = ["FINDINGS", "COMPETITION_FINDINGS", "load_chexpert"]

logger = logging.getLogger(__name__)

FINDINGS = [
    *("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema"),
    *("Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other"),
    *("Fracture", "Support Devices"),
]
COMPETITION_FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
URL = "https://stanfordmlgroup.github.io/competitions/chexpert/"
_NAME = "CheXpert"
_LAYOUT = "FOLDER/train.csv, FOLDER/valid.csv, FOLDER/train/patientNNNNN/studyN/viewN_frontal.jpg"
_OPTIONS = (
    "findings",
    "uncertain",
    "view",
    "test",
    "val_fraction",
    *(o for o in SHARED_OPTIONS if o != "fractions"),
)
_UNCERTAIN = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
_VIEWS = ("frontal", "lateral", "all")
_TESTS = ("auto", "valid", "official")
_SPLIT_DIRS = ("train", "valid", "test")


@dataclass(frozen=True)
class ChexpertOptions:
    files: FileOptions
    findings: tuple[str, ...] = tuple(FINDINGS)
    uncertain: str = "ignore"
    view: str = "frontal"
    test: str = "auto"
    val_fraction: float = 0.1
    val_fraction_given: bool = False

    @classmethod
    def parse(cls, options: dict[str, Any]) -> ChexpertOptions:
        files, rest = layout_options(options, _OPTIONS, "chexpert")
        for key, valid in (("uncertain", _UNCERTAIN), ("view", _VIEWS), ("test", _TESTS)):
            if key in rest and str(rest[key]).lower() not in valid:
                raise ConfigError(f"{key}={rest[key]!r} is not valid; choose one of {', '.join(valid)}")
            if key in rest:
                rest[key] = str(rest[key]).lower()
        if "findings" in rest:
            rest["findings"] = parse_findings(rest["findings"])
        if "val_fraction" in rest:
            rest["val_fraction"] = parse_val_fraction(rest["val_fraction"])
        return cls(files=files, **rest, val_fraction_given="val_fraction" in rest)


def parse_findings(value: Any) -> tuple[str, ...]:
    """``all``, ``competition`` or a comma list of finding names (case and ``_`` for space do not matter)."""
    if str(value).lower() in ("all", "competition"):
        return tuple(FINDINGS if str(value).lower() == "all" else COMPETITION_FINDINGS)
    by_key = {f.lower(): f for f in FINDINGS}
    chosen = []
    for name in as_list(value):
        key = name.replace("_", " ").lower()
        if key not in by_key:
            close = difflib.get_close_matches(key, by_key, n=1)
            hint = f"; did you mean {by_key[close[0]]!r}?" if close else ""
            raise ConfigError(
                f"findings: {name!r} is not a CheXpert finding{hint} (give all, competition or a comma list of: "
                f"{', '.join(FINDINGS)})"
            )
        chosen.append(by_key[key])
    if not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"findings={value!r} must name one or more distinct findings")
    return tuple(chosen)


# ---------------------------------------------------------------------------------------------- files


def _test_csv(folder: Path) -> Path | None:
    """The test release's labels: test_labels.csv, else a test.csv that has the finding columns."""
    if (folder / "test_labels.csv").is_file():
        return folder / "test_labels.csv"
    test = folder / "test.csv"
    if test.is_file() and set(FINDINGS) <= set(pd.read_csv(test, nrows=0).columns):
        return test
    if test.is_file():
        logger.info("%s has no finding columns: not used as the test split", test)
    return None


def _split_sources(folder: Path, opts: ChexpertOptions) -> dict[str, Path]:
    """Which CSV each split comes from: ``{"train": ..., "val": ..., "test": ...}``."""
    test = _test_csv(folder) if opts.test != "valid" else None
    if opts.test == "official" and test is None:
        layout_file(folder / "test_labels.csv", "CheXpert test labels (test=official)", URL, _LAYOUT)
    if test is None:
        return {"train": folder / "train.csv", "val": folder / "train.csv", "test": folder / "valid.csv"}
    if opts.val_fraction_given:
        raise ConfigError(
            f"val_fraction= carves validation out of train.csv, but {folder} has the official test labels "
            f"({test.name}), so valid.csv is the validation split; drop val_fraction, or give test=valid"
        )
    return {"train": folder / "train.csv", "val": folder / "valid.csv", "test": test}


def _check_folder(folder: Path) -> None:
    """train.csv and valid.csv must be there (checked before any split loads, so a run fails early)."""
    below = [] if (folder / "train.csv").is_file() else sorted(p.parent for p in folder.glob("*/train.csv"))
    if below:
        raise DataError(
            f"{_NAME}: {folder} has no train.csv, but {below[0]} has: give that folder, chexpert:{below[0]}"
        )
    for name in ("train.csv", "valid.csv"):
        layout_file(folder / name, _NAME, URL, _LAYOUT)


def resolve_path(folder: Path, value: str) -> Path:
    """A CSV ``Path`` value as a file under ``folder`` (its first part names the dataset folder)."""
    parts = PurePosixPath(str(value).strip().replace("\\", "/")).parts
    return folder.joinpath(*(parts if parts and parts[0] in _SPLIT_DIRS else parts[1:]))


# --------------------------------------------------------------------------------------------- labels


def encode_labels(table: pd.DataFrame, findings: tuple[str, ...], uncertain: str) -> tuple[np.ndarray, dict]:
    """float32 ``[N, L]``: 1 positive, 0 negative or blank, -1 by the ``uncertain`` policy; bad values: errors."""
    raw = table[list(findings)]
    text = raw.astype("string").apply(lambda column: column.str.strip())
    blank = (text.isna() | (text == "")).fillna(True).to_numpy(dtype=bool)
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~blank & ~np.isin(values, (1.0, 0.0, -1.0))
    errors = {}
    for i, j in zip(*np.nonzero(bad)):
        errors.setdefault(int(i), f"column {findings[j]!r} has {raw.iat[i, j]!r}; expected 1, 0, -1 or blank")
    labels = np.where(blank, 0.0, values)
    labels[labels == -1.0] = _UNCERTAIN[uncertain]
    labels[bad] = np.nan
    return labels.astype(np.float32), errors


def _views(table: pd.DataFrame) -> pd.Series:
    """frontal / lateral per row: the Frontal/Lateral column, else the file name (``view1_frontal.jpg``)."""
    names = table["Path"].astype(str).str.lower()
    from_name = pd.Series(np.where(names.str.contains("frontal"), "frontal",
                                   np.where(names.str.contains("lateral"), "lateral", None)), index=table.index)  # fmt: skip
    if "Frontal/Lateral" not in table.columns:
        return from_name
    return table["Frontal/Lateral"].astype("string").str.strip().str.lower().fillna(from_name)


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table.columns else pd.Series(np.nan, index=table.index)


def metadata(table: pd.DataFrame) -> pd.DataFrame:
    """Row-aligned metadata; the test release has only ``Path``, so absent columns stay blank."""
    ids = table["Path"].astype(str).str.extract(r"(patient\d+)/(study\d+)")
    column = functools.partial(_column, table)
    return pd.DataFrame({
        "row": table["row"], "path": table["Path"], "patient_id": ids[0], "study": ids[0] + "/" + ids[1],
        "sex": column("Sex"), "age": pd.to_numeric(column("Age"), errors="coerce"), "view": _views(table),
        "ap_pa": column("AP/PA"),
    })  # fmt: skip


# ----------------------------------------------------------------------------------------------- rows


def _rows(folder: Path, split: str, opts: ChexpertOptions) -> Rows:
    sources = _split_sources(folder, opts)
    source = sources[split]
    table = read_layout_csv(source, _NAME, URL, _LAYOUT, ["Path", *opts.findings], ("Path", *opts.findings))
    labels, errors = encode_labels(table, opts.findings, opts.uncertain)
    meta = metadata(table)
    kept = (meta["view"] == opts.view).to_numpy() if opts.view != "all" else np.ones(len(table), bool)
    if not kept.all():
        logger.info("%s: %d of %d rows are not %s views: left out (view=all keeps them)",
                    source.name, int((~kept).sum()), len(table), opts.view)  # fmt: skip
    carve = split in ("train", "val") and sources["train"] == sources["val"]
    splits = np.where(kept, "train" if carve else split, EXCLUDED).astype(object)
    if carve:
        splits = carve_val(splits, labels, own_groups(meta["patient_id"]), opts.val_fraction, opts.files.seed)
    paths = [str(resolve_path(folder, p)) for p in table["Path"]]
    errors = {**errors, **file_errors(paths, splits == split)}
    return Rows(source.name, meta, paths, labels, list(opts.findings), "multilabel", splits,
                dict(sorted(errors.items())), "row")  # fmt: skip


def _check(address: DatasetAddress) -> None:
    ChexpertOptions.parse(address.options)


@DATASETS.register(
    "chexpert", examples=lambda: ["chexpert:DIR"], check=_check, location="folder", download=URL
)
def load_chexpert(
    address: DatasetAddress, split: str, *, skip_bad: bool = False, **ignored: Any
) -> ImageFileDataset:
    """One split of CheXpert (options and split mapping: see the module docstring).

    Example: ``load_dataset("chexpert:/data/CheXpert-v1.0-small?findings=competition", "test")``
    """
    opts = ChexpertOptions.parse(address.options)
    folder = layout_root(address.location, _NAME, URL, _LAYOUT)
    _check_folder(folder)
    rows = _rows(folder, split, opts)
    ds = build_split(rows, split, str(address), opts.files, skip_bad or opts.files.skip_bad)
    ds.patient_col = "patient_id"
    return ds
