"""Safe loading of local weights files (safetensors, or pickles with ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsError

__all__ = ["load_state_dict_file", "hub_hint"]

_WRAPPER_KEYS = ("state_dict", "model", "module", "teacher")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``.pth/.pt/.bin`` pickle (``weights_only=True``).

    A checkpoint that wraps its weights under ``state_dict``/``model``/``module`` is unwrapped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; check the --weights path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is a user-facing file problem
        raise WeightsError(
            f"could not read weights file {str(path)!r} ({type(e).__name__}: {e}); expected a .safetensors "
            "file or a PyTorch state dict (.pth/.pt/.bin) loadable with torch.load(weights_only=True)"
        ) from e
    for key in _WRAPPER_KEYS:  # training checkpoints: {"state_dict": ..., "optimizer": ..., "epoch": ...}
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and _all_tensors(sd[key]):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not _all_tensors(sd):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return sd


def hub_hint(what: str, repo: str, files: str) -> str:
    """The common tail of a 'pretrained weights could not be fetched' message."""
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    # without HF_HUB_OFFLINE, an unreachable hub costs about a minute of huggingface_hub's retries first
    offline = (
        "" if HF_HUB_OFFLINE else "; on a machine without internet, HF_HUB_OFFLINE=1 skips the hub's retries"
    )
    return (
        f"could not fetch pretrained weights for {what} (Hugging Face repo {repo!r}, files {files}). "
        f"Either download them on a machine with internet (`huggingface-cli download {repo}`) into the HF "
        f"cache {HF_HUB_CACHE} (or set HF_HOME), or pass --weights PATH to a local copy, or --no-pretrained for "
        "a random init (recorded in the results)" + offline
    )


def _all_tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())
