"""Datasets (MedMNIST v2, CSV / image folders, DICOM) and batched tensor preprocessing."""

from . import folder, medmnist  # noqa: F401  (register the dataset kinds)
from .base import DATASETS, SPLITS, TASKS, DatasetAddress, MedicalDataset, load_dataset

__all__ = ["DATASETS", "SPLITS", "TASKS", "DatasetAddress", "MedicalDataset", "load_dataset"]
