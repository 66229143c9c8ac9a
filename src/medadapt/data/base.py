"""The dataset contract and the dataset-kind registry.

Every dataset returns one sample shape, ``{"image": uint8 Tensor[C, H, W], "label": Tensor, "index": int}``,
and exposes ``task``, ``classes``, ``n_channels``, ``labels`` (``[N, 1]`` int64 class indices, or ``[N, L]``
0/1 for multi-label: the MedMNIST layout) and a row-aligned ``metadata`` table (patient id, site, subgroup
columns) for later subgroup analysis and patient-level splits. Gray images stay one channel: channel
adaptation is the backbone's job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._address import format_address, split_address
from .._registry import Registry
from ..errors import ConfigError, DataError

if (
    TYPE_CHECKING
):  # the dataset layer imports without torch or pandas: bad input fails in a fraction of a second
    import pandas as pd
    import torch

__all__ = [
    "SPLITS",
    "MedicalDataset",
    "DatasetAddress",
    "DATASETS",
    "check_dataset",
    "load_dataset",
    "path_problem",
    "require_file",
    "require_folder",
    "where_is",
]

SPLITS = ("train", "val", "test")


class MedicalDataset:
    """Base class: subclasses set the attributes below and implement ``image(i) -> uint8 Tensor[C, H, W]``."""

    name: str  # the address it was loaded from
    split: str
    task: str
    classes: list[str]
    n_channels: int
    labels: np.ndarray
    metadata: pd.DataFrame

    @property
    def num_outputs(self) -> int:
        """Width of the score matrix: number of classes (2 for binary), or of labels for multi-label."""
        return len(self.classes)

    def image(self, i: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch  # the dataset layer imports without torch, so that bad input fails fast

        item = {"image": self.image(i), "label": torch.from_numpy(self.labels[i]), "index": int(i)}
        if hasattr(self, "mask"):  # segmentation datasets: ``mask(i) -> LongTensor[H, W]``
            item["mask"] = self.mask(i)
        return item


@dataclass(frozen=True)
class DatasetAddress:
    """``kind:location[?key=value&...]``, e.g. ``medmnist:breastmnist?size=64`` or ``csv:/data/labels.csv``."""

    kind: str
    location: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DatasetAddress:
        example = "medmnist:breastmnist or csv:/path/labels.csv"
        return cls(*split_address(text, DATASETS, what="dataset", example=example))

    def __str__(self) -> str:
        return format_address(self.kind, self.location, self.options)


#: Dataset kinds. A loader is called as ``loader(address, split, **kwargs)`` and returns a MedicalDataset.
DATASETS: Registry[Callable[..., MedicalDataset]] = Registry("dataset kind")


def check_dataset(address: str | DatasetAddress, *, location: bool = True) -> DatasetAddress:
    """Check a dataset address without loading anything (and without torch): its kind, its options (the
    kind's ``check`` hook) and, for kinds whose location is a file or folder (registered with
    ``location="file"`` or ``"folder"``), that it is one and is readable (``location=False``: not the files,
    for a grid planned where the data are not). The CLI calls it before any work.

    Example:
        >>> check_dataset("csv:/nowhere/labels.csv")  # doctest: +SKIP
        DataError: dataset file '/nowhere/labels.csv' does not exist; ...
    """
    addr = address if isinstance(address, DatasetAddress) else DatasetAddress.parse(address)
    meta = DATASETS.meta(addr.kind)
    if meta.get("check") is not None:
        meta["check"](addr)
    kind = meta.get("location") if location else None
    if kind in ("file", "folder"):
        check = require_file if kind == "file" else require_folder
        fix = f"check the location in {addr.kind}:LOCATION"
        if meta.get("download"):
            fix = f"give the folder of the download as distributed (get it from {meta['download']})"
        check(Path(addr.location).expanduser(), f"dataset {kind}", fix)
    return addr


def load_dataset(address: str | DatasetAddress, split: str, **kwargs: Any) -> MedicalDataset:
    """Load one split of a dataset by address.

    Keyword arguments (``root``, ``size``, ``download``, ``skip_bad``, ...) go to the kind's loader; options
    in the address query override nothing and are merged under them.

    Example:
        >>> ds = load_dataset("medmnist:breastmnist", "train", root="~/.medmnist")  # doctest: +SKIP
        >>> ds[0]["image"].shape, ds.task, ds.classes
        (torch.Size([1, 28, 28]), 'binary', ['malignant', 'normal, benign'])
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not valid; choose one of {list(SPLITS)}")
    addr = address if isinstance(address, DatasetAddress) else DatasetAddress.parse(address)
    return DATASETS.get(addr.kind)(addr, split, **kwargs)


def path_problem(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` is not a readable file (``folder``: a readable folder), or None when it is.

    The reasons tell apart what a bare "not found" hides: a folder where a file should be (or the reverse),
    a path that does not exist, and one the user may not read.
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if folder and not path.is_dir():
        return "is a file, not a folder"
    if not folder and path.is_dir():
        return "is a folder, not a file"
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return "is not readable (permission denied)"
    return None


def require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """``path`` as a Path when it is a readable file, else a DataError: ``{what} {path} {problem}; {fix}``."""
    problem = path_problem(path)
    if problem:
        raise DataError(f"{what} {str(path)!r} {problem}; {fix}")
    return Path(path)


def require_folder(path: str | os.PathLike, what: str, fix: str) -> Path:
    """``path`` as a Path when it is a readable folder, else a DataError naming the problem and the fix."""
    problem = path_problem(path, folder=True)
    if problem:
        raise DataError(f"{what} {str(path)!r} {problem}; {fix}")
    return Path(path)


def where_is(ds: MedicalDataset, i: int) -> str:
    """Sample ``i`` of a loaded split as the user knows it: its row in the source table (and the rerun hint)."""
    row = ds.metadata["row"].iat[i] if "row" in ds.metadata.columns else i
    return f"row {row} (add verify=true to the address to find such files before any work)"
