"""Device selection, bf16 autocast and seeding helpers shared by extraction and training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "autocast_context", "seeded"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else CPU; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {name!r} is not a device name (e.g. auto, cpu, cuda, cuda:1)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r} was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def _native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` has bf16 arithmetic in hardware, not only emulated.

    Neither of torch's own checks says that: ``torch.cuda.is_bf16_supported()`` counts emulation (V100, T4)
    by default, and the oneDNN one on CPU is true for any AVX-512 CPU. Native: CUDA from compute capability
    8.0 (Ampere); CPUs with AVX512-BF16 or AMX.
    """
    if dev.type == "cuda":
        if torch.version.hip:  # ROCm: torch's check without emulation
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.cuda.get_device_capability(dev) >= (8, 0)
    if dev.type == "cpu":
        checks = [
            getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ]
        try:
            return any(bool(check()) for check in checks if check is not None)
        except RuntimeError:
            return False
    return False


def runs_bf16(device: str | torch.device, enabled: bool = True) -> bool:
    """Whether :func:`autocast_context` ``(device, enabled)`` computes in bf16 (else float32)."""
    return enabled and _native_bf16(torch.device(device))


def autocast_context(device: str | torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device runs bf16 natively (CUDA, CPUs with AVX512-BF16/AMX); else a no-op.

    On CPUs without native bf16, autocast is emulated and much slower, so it stays off there.
    """
    dev = torch.device(device)
    if runs_bf16(dev, enabled):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Seed torch's CPU RNG (and ``device``'s, if CUDA) inside a fork; the global state is restored on exit."""
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
