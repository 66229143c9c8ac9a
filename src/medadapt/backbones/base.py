"""The one backbone contract every source (timm, transformers, open_clip) adapts to.

A :class:`Backbone` wraps a model and exposes

* ``forward_features(x) -> Features(embedding [B, D], tokens [B, N, D], grid (h, w))``: the global
  embedding ([CLS], the model's own pooled output, or mean-pooled tokens where there is no [CLS], as in
  SAM2/Hiera and CNNs) and the patch tokens / flattened last feature map in row-major order,
* ``num_features`` (D),
* ``forward_levels(x, levels) -> [Features, ...]``: the last ``levels`` levels (ViT blocks, or the stages
  of a hierarchical backbone), input to output, each with its own tokens ``[B, N_i, D_i]`` and grid; the
  last one is ``forward_features(x)`` itself. Sources that have them set ``num_levels`` and implement
  ``_forward_levels`` (timm models with ``forward_intermediates``, open_clip towers on a timm trunk,
  transformers DINOv2/DINOv3/SigLIP); the default raises a :class:`~medadapt.errors.ConfigError`,
* ``layer_groups()``: parameter names (as in ``named_parameters()``) grouped and ordered from input to
  output (stem, blocks/stages, final norm), each parameter in exactly one group, for gradual unfreezing and
  layer-wise LR decay; sources with a module list build it with :func:`groups_from_modules`,
* ``spec``: a frozen :class:`BackboneSpec` from which preprocessing is derived (mean, std, input size, the
  number of input channels after channel adaptation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .._choices import CHANNEL_MODES
from ..errors import ConfigError

__all__ = ["Backbone", "BackboneSpec", "Features", "CHANNEL_MODES", "groups_from_modules", "tokens_from_map"]


class Features(NamedTuple):
    embedding: torch.Tensor  # [B, D]
    tokens: torch.Tensor  # [B, N, D], patch tokens only (no [CLS] / register tokens)
    grid: tuple[int, int]  # (h, w) with h * w == N


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that determines what a backbone computes, minus its weights' values.

    ``mean``/``std``/``in_chans`` describe the tensor the adapted model expects: after a ``sum``/``mean``/
    ``first`` channel adaptation the normalisation is folded into the first convolution, so a gray image
    scaled to [0, 1] goes in with ``mean=(0.0,)``, ``std=(1.0,)``.
    """

    address: str
    source: str
    num_features: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 3
    data_chans: int = 3
    channel_mode: str = "none"
    patch_size: int | None = None
    pretrained: str | None = None  # "hub:<id>", "file:<path>" or None for random init
    license: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Backbone(nn.Module):
    """Base class of source adapters; subclasses implement ``_forward_features`` and ``layer_groups``."""

    spec: BackboneSpec

    def __init__(self, model: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    @property
    def num_features(self) -> int:
        return self.spec.num_features

    @property
    def token_dim(self) -> int:
        """Width of the patch tokens; the embedding's (``num_features``) unless a model's head has layers of
        its own between them (timm's ``conv_head``: MobileNetV3, GhostNet)."""
        return self.num_features

    def forward_features(self, x: torch.Tensor) -> Features:
        return self._forward_features(x)

    def _forward_features(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).embedding

    @property
    def num_levels(self) -> int | None:
        """How many levels :meth:`forward_levels` can return (blocks of a ViT, stages of a hierarchical
        backbone); ``None`` where this source has no multi-level features."""
        return None

    def forward_levels(self, x: torch.Tensor, levels: int) -> list[Features]:
        """The last ``levels`` levels of the model on ``x``, ordered from input to output.

        Each is ``Features(embedding [B, D_i], tokens [B, N_i, D_i], grid_i)`` with patch tokens only (no
        [CLS] / register tokens), row-major; the last element is what :meth:`forward_features` returns
        (same tokens, grid and embedding). An intermediate level's embedding is the mean of its tokens.
        How a source normalises the levels before the last is its own rule (timm and transformers ViTs:
        the final norm on every level, as DINOv2's multi-layer probes do).

        Example:
            >>> bb = create_backbone("timm:resnet18", pretrained=False, img_size=64)  # doctest: +SKIP
            >>> [f.grid for f in bb.forward_levels(torch.zeros(1, 3, 64, 64), 4)]  # doctest: +SKIP
            [(16, 16), (8, 8), (4, 4), (2, 2)]
        """
        self.check_levels(levels)
        return self._forward_levels(x, levels)

    def check_levels(self, levels: int) -> None:
        """Raise the :class:`~medadapt.errors.ConfigError` :meth:`forward_levels` would for ``levels``."""
        available = self.num_levels
        if available is None:
            raise ConfigError(
                f"{self.spec.address} ({self.spec.source} source) has no multi-level features; sources that "
                "have them: timm models with forward_intermediates (ViTs, ConvNeXt, Swin, ResNet, Hiera, ...; "
                "also open_clip towers on a timm trunk, as BiomedCLIP's) and hf DINOv2 / DINOv2-with-registers "
                "/ DINOv3 / SigLIP ViTs. Use a one-level head (linear, decoder) with this backbone"
            )
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= available:
            raise ConfigError(
                f"levels must be an integer from 1 to {available} (the blocks / stages of "
                f"{self.spec.address}), got {levels!r}"
            )

    def _forward_levels(self, x: torch.Tensor, levels: int) -> list[Features]:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError


def groups_from_modules(backbone: nn.Module, modules: list[nn.Module]) -> list[list[str]]:
    """Parameter-name groups from ordered modules; parameters outside them join the nearest group.

    Parameters not owned by any listed module (e.g. a [CLS] token on the root) go to the first group if they
    come before the first listed module in registration order, otherwise to the last.
    """
    owner = {id(p): i for i, m in enumerate(modules) for p in m.parameters()}
    groups: list[list[str]] = [[] for _ in modules]
    seen_first = False
    for name, p in backbone.named_parameters():
        i = owner.get(id(p))
        seen_first = seen_first or i is not None
        groups[i if i is not None else (-1 if seen_first else 0)].append(name)
    return [g for g in groups if g]


def tokens_from_map(fmap: torch.Tensor) -> Features:
    """Features of a CNN / hierarchical feature map ``[B, D, h, w]``: mean-pooled embedding + flat tokens."""
    b, d, h, w = fmap.shape
    tokens = fmap.flatten(2).transpose(1, 2)
    return Features(tokens.mean(1), tokens, (h, w))
