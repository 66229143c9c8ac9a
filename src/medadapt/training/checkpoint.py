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

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._io import _fsync_dir
from ..errors import ConfigError

__all__ = ["CHECKPOINT_NAME", "FORMAT", "config_hash", "save_checkpoint", "load_checkpoint", "cpu_state"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1  # bump when the checkpoint layout changes


def config_hash(parts: Mapping[str, Any]) -> str:
    """A short sha256 of ``parts`` as canonical JSON (anything not JSON-native is written with ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save`` ``state`` (plus the format version) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "format": FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


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
