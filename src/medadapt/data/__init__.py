"""Datasets (MedMNIST v2, CSV / image folders, DICOM, the seed layouts) and batched tensor preprocessing."""

from .._lazy import lazy_exports

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


# the batch transforms import torch: they load on first use, so the dataset layer itself imports without it
__getattr__ = lazy_exports(__name__, dict.fromkeys(("Preprocess", "collate", "make_loader"), "transforms"))
