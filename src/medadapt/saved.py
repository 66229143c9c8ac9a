"""A trained classifier on disk, so that later runs (a distillation teacher, inference) can load it.

Each saved model is a folder with ``model.json`` (how to rebuild it: backbone address, head, outputs,
preprocessing, where its weights come from) and ``model.safetensors`` (its weights). Fine-tuned models store
every weight (LoRA / IA3 merged in first); frozen-probe models store the head only when the backbone comes
from a hub or a local file unchanged, and the whole model when the backbone was randomly initialised.

Example:
    >>> save_classifier("runs/ft/full-linear/seed0", model, info)  # doctest: +SKIP
    >>> model, preprocess, info = load_classifier("runs/ft/full-linear/seed0")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ._io import atomic_write
from .data.transforms import Preprocess
from .errors import WeightsError

__all__ = [
    "MODEL_FILE",
    "WEIGHTS_FILE",
    "ModelInfo",
    "save_classifier",
    "load_classifier",
    "read_info",
    "weights_path",
    "find_saved",
]

MODEL_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass
class ModelInfo:
    """Everything needed to rebuild a :class:`~medadapt.strategies.model.Classifier` before its weights load.

    ``stored`` is ``"model"`` (every weight is in the file: build with a random init, then load) or
    ``"head"`` (rebuild the backbone from ``backbone`` / ``pretrained`` / ``weights``, load the head only).
    """

    backbone: str
    head: str
    num_outputs: int
    task: str
    img_size: int
    data_chans: int
    channel_mode: str
    preprocess: dict[str, Any]
    stored: str = "model"
    pretrained: bool = False
    weights: str | None = None
    head_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str | None = None
    strategy: str | None = None
    seed: int | None = None
    classes: list[str] | None = None


def weights_path(path: str | Path | None) -> str | None:
    """A ``--weights`` path as :class:`ModelInfo` records it (absolute), ``None`` for none."""
    return str(Path(path).expanduser().resolve()) if path else None


def save_classifier(folder: str | Path, model: nn.Module, info: ModelInfo) -> Path:
    """Write ``model.safetensors`` (all weights, or the head's for ``stored="head"``) and ``model.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = model.head if info.stored == "head" else model
    # contiguous CPU copies: safetensors refuses shared or strided storage (channels-last CNN weights)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, safetensors_bytes(state))
    atomic_write(folder / MODEL_FILE, json.dumps(dataclasses.asdict(info), indent=2, default=str))
    return folder


def read_info(folder: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of a saved model folder, without building the model (both files checked)."""
    folder = Path(folder)
    for name in (MODEL_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise WeightsError(
                f"{folder / name} is missing: a saved model folder holds {MODEL_FILE} and {WEIGHTS_FILE}, "
                "written by `medadapt probe` / `medadapt finetune` into each run's seed folder"
            )
    try:
        return ModelInfo(**json.loads((folder / MODEL_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise WeightsError(f"{folder / MODEL_FILE} is not a medadapt model description: {e}") from e


def load_classifier(folder: str | Path) -> tuple[nn.Module, Preprocess, ModelInfo]:
    """Rebuild the saved classifier or segmenter (eval mode, on the CPU), its preprocessing and its
    :class:`ModelInfo`."""
    from .backbones import create_backbone
    from .strategies import build_model

    folder = Path(folder)
    info = read_info(folder)
    head_only = info.stored == "head"
    backbone = create_backbone(
        info.backbone,
        pretrained=info.pretrained and head_only,
        weights=info.weights if head_only else None,
        img_size=info.img_size,
        data_chans=info.data_chans,
        channel_mode=info.channel_mode,
    )
    model = build_model(backbone, info.head, info.task, info.num_outputs, **info.head_kwargs)
    state = load_file(folder / WEIGHTS_FILE)
    target = model.head if head_only else model
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(
            f"{folder / WEIGHTS_FILE} does not fit {info.backbone} + {info.head} head: {e}"
        ) from e
    preprocess = Preprocess(**{**info.preprocess, "size": tuple(info.preprocess["size"])})
    return model.eval(), preprocess, info


def find_saved(path: str | Path) -> list[Path]:
    """The saved-model folders at or under ``path`` (sorted), e.g. one per arm and seed of a run."""
    path = Path(path).expanduser()
    if (path / MODEL_FILE).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(MODEL_FILE)) if path.is_dir() else []
