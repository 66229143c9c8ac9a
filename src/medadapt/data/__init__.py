"""Datasets (MedMNIST v2, CSV / image folders, DICOM, the seed layouts) and batched tensor preprocessing."""

# importing the kinds registers them
from . import aptos, cbis_ddsm, chexpert, folder, isic, medmnist, segfolder, siim_acr  # noqa: F401
from .base import DATASETS, SPLITS, DatasetAddress, MedicalDataset, load_dataset
from .splits import grouped_split, patient_kfold

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetAddress",
    "MedicalDataset",
    "Preprocess",
    "collate",
    "grouped_split",
    "load_dataset",
    "make_loader",
    "patient_kfold",
]


def __getattr__(name: str):
    """``Preprocess``, ``collate`` and ``make_loader`` (torch) load on first use: the dataset layer itself
    imports without torch, so that a bad dataset address or file is reported in a fraction of a second."""
    if name in ("Preprocess", "collate", "make_loader"):
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
