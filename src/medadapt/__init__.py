"""medadapt: which foundation model, adapted how, works best on my medical images, at what cost?

The public API, imported lazily so that ``import medadapt`` stays cheap::

    import medadapt
    medadapt.probe(dataset="medmnist:breastmnist", backbone="dinov2_vits14", head="linear", out="runs/x")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "probe": "medadapt.api",
    "finetune": "medadapt.api",
    "distill": "medadapt.distill.run",
    "FinetuneConfig": "medadapt.config",
    "DistillConfig": "medadapt.config",
    "load_classifier": "medadapt.saved",
    "ProbeConfig": "medadapt.config",
    "create_backbone": "medadapt.backbones",
    "list_backbones": "medadapt.backbones",
    "load_dataset": "medadapt.data",
    "Preprocess": "medadapt.data",
    "extract_features": "medadapt.features",
    "FeatureSet": "medadapt.features",
    "train_probe": "medadapt.training",
    "compute_metrics": "medadapt.evaluation",
    "read_results": "medadapt.reporting",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medadapt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
