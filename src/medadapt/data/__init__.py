"""Datasets (MedMNIST v2, CSV / image folders, DICOM) and batched tensor preprocessing."""

from . import folder, medmnist, segfolder  # noqa: F401  (register the dataset kinds)
from .base import DATASETS, SPLITS, DatasetAddress, MedicalDataset, load_dataset
from .splits import grouped_split, patient_kfold
from .transforms import Preprocess, collate, make_loader

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
