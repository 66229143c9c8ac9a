"""Training checkpoints: written atomically every epoch, loaded with ``torch.load(weights_only=True)``.

A checkpoint is one file, ``OUT/checkpoint.pt``, holding only tensors, dicts, lists, tuples, numbers,
strings and ``None`` (no pickled classes), so loading it never runs code. It is written to a temporary
file in the same folder, fsynced and moved into place with ``os.replace``: a kill at any moment leaves the
previous epoch's checkpoint or the new one, never a partial file. Each checkpoint carries the hash of the
configuration that wrote it; resuming with a different configuration is refused.

Example:
    >>> save_checkpoint(out / CHECKPOINT_NAME, {"config_hash": h, "epoch": 3, ...})  # doctest: +SKIP
    >>> state = load_checkpoint(out / CHECKPOINT_NAME, config_hash=h)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write, leftover_temporaries
from ..data.base import MedicalDataset
from ..data.transforms import Preprocess
from ..errors import ConfigError
from ..features.cache import state_digest

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "checkpoint_path",
    "config_hash",
    "run_fingerprint",
    "save_checkpoint",
    "load_checkpoint",
    "cpu_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1  # bump when the checkpoint layout changes


def config_hash(parts: Mapping[str, Any]) -> str:
    """A short sha256 of ``parts`` as canonical JSON (anything not JSON-native is written with ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_fingerprint(
    settings: Mapping[str, Any],
    strategy: Any,
    model: torch.nn.Module,
    preprocess: Preprocess,
    datasets: Sequence[MedicalDataset],
) -> str:
    """:func:`config_hash` of everything that determines a training run.

    That is the training ``settings``, the strategy (name and options), the model's initial weights (which
    also identify its architecture), the preprocessing and the datasets (name, split, size, labels).
    """
    fields = dataclasses.fields(strategy) if dataclasses.is_dataclass(strategy) else ()

    def data(ds: MedicalDataset) -> list:
        labels = hashlib.sha256(np.ascontiguousarray(ds.labels).tobytes()).hexdigest()[:16]
        return [getattr(ds, "name", type(ds).__name__), getattr(ds, "split", ""), len(ds), labels]

    return config_hash({
        "settings": dict(settings),
        "strategy": [strategy.name, {f.name: getattr(strategy, f.name) for f in fields}],
        "model": state_digest(model),
        "preprocess": dataclasses.asdict(preprocess),
        "data": [data(ds) for ds in datasets],
    })  # fmt: skip


def checkpoint_path(out_dir: str | os.PathLike | None, *, resume: bool) -> Path | None:
    """``out_dir/checkpoint.pt`` (``None`` without ``out_dir``); refuses to overwrite one unless resuming."""
    if out_dir is None:
        if resume:
            raise ConfigError("resume=True (--resume) needs the output folder (--out) of the run to resume")
        return None
    path = Path(out_dir).expanduser() / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise ConfigError(
            f"{str(path)!r} exists: a run was already started in {str(path.parent)!r}. Pass --resume to "
            "continue it, use a new --out, or remove the checkpoint to start over."
        )
    if (
        resume
    ):  # a process killed while writing a checkpoint left its temporary file, as large as a checkpoint
        for stale in leftover_temporaries(path):
            log.info("removing %s, left by a killed checkpoint write", stale)
            stale.unlink(missing_ok=True)
    return path


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save`` ``state`` (plus the format version) to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda f: torch.save({**state, "format": FORMAT}, f))


def load_checkpoint(path: str | os.PathLike, *, config_hash: str) -> dict[str, Any]:
    """Load a checkpoint on the CPU (``weights_only=True``) and check it was written by this configuration.

    Raises:
        ConfigError: the file is unreadable, of another format version, or from a different configuration.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ConfigError(
            f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); remove it to start over"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(
            f"checkpoint {str(path)!r} has format {found!r}, this version writes format {FORMAT}; "
            "remove it to start over, or use a new --out"
        )
    if state.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint {str(path)!r} was written by a different configuration (hash "
            f"{state.get('config_hash')!r}, this run {config_hash!r}): a run can only be resumed with the "
            "settings it started with. Use a new --out for the new settings, or remove the checkpoint "
            "to start over."
        )
    return state


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (kept while training continues to change the model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
