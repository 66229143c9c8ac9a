"""Backbone addresses, the source registry and ``create_backbone``."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from .._address import format_address, split_address
from .._choices import CHANNEL_MODES
from .._registry import Registry
from ..errors import ConfigError, MedadaptError, brief

if TYPE_CHECKING:  # addresses are parsed without torch (fast errors); models import it when built
    from .base import Backbone

__all__ = [
    "BackboneAddress",
    "BackboneSource",
    "SOURCES",
    "create_backbone",
    "list_backbones",
    "catalog",
    "adapt_channels",
]

log = logging.getLogger(__name__)


class BackboneSource(Protocol):
    """A source module (timm, hf, open_clip) registers one of these in :data:`SOURCES`."""

    def __call__(
        self,
        address: BackboneAddress,
        *,
        pretrained: bool,
        weights: str | None,
        img_size: tuple[int, int],
        data_chans: int,
        channel_mode: str,
    ) -> Backbone: ...


SOURCES: Registry[BackboneSource] = Registry("backbone source")


def _lazy_source(module: str) -> BackboneSource:
    # Source modules import their heavy library (transformers, open_clip) only when used.
    def create(address: BackboneAddress, **kwargs: Any) -> Backbone:
        return importlib.import_module(f"{__package__}.{module}").create(address, **kwargs)

    return create


for _name, _module in {"timm": "_timm", "hf": "_hf", "open_clip": "_open_clip", "smp": "_smp"}.items():
    SOURCES.register(_name, _lazy_source(_module))


#: Address options of every source, not passed to the model constructor: the per-channel normalisation the
#: model expects, replacing the source's (``mean=0.5&std=0.5`` as the official MedMNIST v2 code).
NORM_OPTIONS = ("mean", "std")


@dataclass(frozen=True)
class BackboneAddress:
    """``source:name[?key=value&...]``; query keys are passed to the model constructor (tiny test models),
    except ``mean`` and ``std`` (:meth:`stats`)."""

    source: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> BackboneAddress:
        example = "timm:vit_small_patch14_dinov2.lvd142m, hf:microsoft/rad-dino or a name from `medadapt list backbones`"
        source, name, options = split_address(resolve_alias(text), SOURCES, what="backbone", example=example)
        norm = {k: _channel_values(options.pop(k), k, text) for k in NORM_OPTIONS if k in options}
        return cls(source, name, options, **norm)

    def __str__(self) -> str:
        norm = {k: v[0] if len(v) == 1 else list(v) for k in NORM_OPTIONS if (v := getattr(self, k))}
        return format_address(self.source, self.name, {**self.kwargs, **norm})

    def stats(
        self, mean: Sequence[float], std: Sequence[float]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The normalisation the model expects: the address's ``mean`` / ``std`` where given (one value
        stands for every channel), else the source's own ``mean`` / ``std``."""
        return self._pick("mean", mean), self._pick("std", std)

    def _pick(self, key: str, default: Sequence[float]) -> tuple[float, ...]:
        own, n = getattr(self, key), len(default)
        if own is None:
            return tuple(float(v) for v in default)
        if len(own) not in (1, n):
            raise ConfigError(
                f"{key}={','.join(f'{v:g}' for v in own)} in backbone address {self} has {len(own)} values, "
                f"but the model takes {n} channels; give one value or {n}"
            )
        return own * n if len(own) == 1 else own


def _channel_values(value: Any, key: str, text: str) -> tuple[float, ...]:
    """``0.5``, ``[0.5, 0.4]`` or ``"0.5,0.4"`` -> a tuple of finite floats (positive for ``std``)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    try:
        values = tuple(float(v) for v in items if not isinstance(v, bool))  # YAML reads yes/no as bools
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(v) for v in values) or (key == "std" and min(values) <= 0):
        kind = "positive numbers" if key == "std" else "numbers"
        raise ConfigError(
            f"{key}={value} in backbone address {text!r} is not valid; give one or one per channel "
            f"{kind}, e.g. {key}=0.5 or {key}=0.485,0.456,0.406"
        )
    return values


def catalog() -> list[dict[str, Any]]:
    """The curated backbone catalogue (``catalog/backbones.yaml``): alias, address, family, license."""
    return [dict(e) for e in _read_catalog()]


@functools.lru_cache(maxsize=1)
def _read_catalog() -> tuple[dict[str, Any], ...]:
    text = resources.files("medadapt").joinpath("catalog/backbones.yaml").read_text()
    return tuple(yaml.safe_load(text)["backbones"])


def catalog_license(address: BackboneAddress) -> str | None:
    """License of the released weights, where the catalogue lists the address."""
    text = f"{address.source}:{address.name}"
    return next((e.get("license") for e in _read_catalog() if e["address"] == text), None)


def resolve_alias(text: str) -> str:
    if ":" in text:
        return text
    for entry in catalog():
        if entry["alias"] == text:
            return entry["address"]
    return text


def list_backbones(pattern: str = "*") -> list[dict[str, Any]]:
    """Catalogue entries whose alias or address matches the glob ``pattern``."""
    return [
        e
        for e in catalog()
        if fnmatch.fnmatchcase(e["alias"], pattern) or fnmatch.fnmatchcase(e["address"], pattern)
    ]


def adapt_channels(
    model, *, data_chans: int, channel_mode: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[int, tuple[float, ...], tuple[float, ...], str]:
    """Adapt ``model`` to the data's channels; returns ``(in_chans, mean, std, applied_mode)``."""
    if channel_mode not in CHANNEL_MODES:
        raise ConfigError(
            f"--channel-mode {channel_mode!r} is not valid; choose one of {list(CHANNEL_MODES)}"
        )
    if data_chans == 3:
        return 3, tuple(mean), tuple(std), "none"
    if data_chans != 1:
        raise ConfigError(f"images with {data_chans} channels are not supported; use 1 (gray) or 3 (RGB)")
    if channel_mode == "repeat":
        return 3, tuple(mean), tuple(std), "repeat"
    from .adapt import adapt_first_conv

    adapt_first_conv(model, mode=channel_mode, mean=tuple(mean), std=tuple(std))
    return 1, (0.0,), (1.0,), channel_mode


def _as_hw(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"image size must be a positive int or (H, W), got {img_size!r}")
    return int(hw[0]), int(hw[1])


def create_backbone(
    address: str | BackboneAddress,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    img_size: int | tuple[int, int] = 224,
    data_chans: int = 3,
    channel_mode: str = "sum",
) -> Backbone:
    """Build a backbone from its address, adapted to the data's channels and input size.

    Args:
        address: ``timm:NAME[.TAG]``, ``hf:ORG/NAME``, ``open_clip:NAME`` or a catalogue alias.
        pretrained: load the source's pretrained weights from its hub (ignored when ``weights`` is given).
        weights: a local weights file (safetensors, or ``.pth``/``.pt``/``.bin`` loaded with
            ``weights_only=True``), or a directory in the source's own format.
        img_size: input size the model will run at; position embeddings are interpolated (bicubic).
        data_chans: channels of the images (1 for gray).
        channel_mode: how gray images meet an RGB model, one of ``sum``, ``mean``, ``first``, ``repeat``.

    Example:
        >>> bb = create_backbone("timm:resnet18", pretrained=False, img_size=64, data_chans=1)
        >>> bb.forward_features(torch.zeros(2, 1, 64, 64)).embedding.shape
        torch.Size([2, 512])
    """
    addr = address if isinstance(address, BackboneAddress) else BackboneAddress.parse(address)
    factory = SOURCES.get(addr.source)
    hw = _as_hw(img_size)
    try:
        backbone = factory(
            addr,
            pretrained=pretrained and weights is None,
            weights=weights,
            img_size=hw,
            data_chans=data_chans,
            channel_mode=channel_mode,
        )
    except MedadaptError:
        raise
    except (TypeError, AssertionError, RuntimeError, ValueError) as e:
        # the source's constructor refused an address option (an unknown name, inconsistent values) or the
        # input size (a position grid of zero patches); sources turn download and file errors into their own
        source = f" from --weights {weights!r}" if weights is not None else ""
        raise ConfigError(
            f"{addr} could not be built{source} at {hw[0]}x{hw[1]} ({type(e).__name__}: {brief(e, 2)}); the "
            "options after '?' are the model constructor's arguments: check their names and values, and "
            "--img-size"
            + ("; and that the file is a checkpoint of this model" if weights is not None else "")
        ) from e
    _check_runs(backbone, hw)
    return backbone


def _check_runs(backbone: Backbone, hw: tuple[int, int]) -> None:
    """One tiny forward pass, so an input size the architecture cannot take fails here with a clear message."""
    import torch

    x = torch.zeros(1, backbone.spec.in_chans, *hw)
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()  # a train-mode pass would update BatchNorm running statistics
    try:
        with torch.inference_mode():
            backbone.forward_features(x)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"{backbone.spec.address} cannot run on {hw[0]}x{hw[1]} inputs ({type(e).__name__}: {brief(e, 2)}); "
            "choose another --img-size (e.g. 224, or a multiple of the patch size / total stride)"
        ) from e
    finally:
        for module, training in modes.items():  # restore each module's own mode (sources mix them)
            module.training = training
