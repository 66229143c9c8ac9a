"""timm source: ``timm:NAME[.TAG][?kwarg=value&...]``.

Model code, pretrained configs, checkpoint conversion (including the official DINOv2 release format and
position-embedding resampling) and parameter grouping all come from timm; this module only adapts them to
the :class:`~medadapt.backbones.base.Backbone` contract.

Multi-level features (``forward_levels``): one pass of timm's ``forward_intermediates`` with
``intermediates_only=False``: the levels before the last are its intermediates (``output_fmt="NCHW"``,
prefix tokens dropped, ``norm=True``: a ViT's final norm on every level, as DINOv2's multi-layer probes;
hierarchical models apply no norm before their last stage, Hiera none at all), and the last level is its
final output through the same code as ``forward_features``, so it equals ``forward_features`` exactly.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..errors import ConfigError, WeightsError, brief
from ._factory import BackboneAddress, adapt_channels
from ._weights import hub_hint, load_state_dict_file
from .base import Backbone, BackboneSpec, Features, tokens_from_map

__all__ = ["create", "TimmBackbone"]

log = logging.getLogger(__name__)


class TimmBackbone(Backbone):
    """A timm model as a backbone: global = the model's own pre-logits pooling, tokens = patch tokens."""

    @property
    def token_dim(self) -> int:
        return int(self.model.num_features)  # forward_features' width (the embedding may be head_hidden_size)

    def _forward_features(self, x: torch.Tensor) -> Features:
        return self._features_of(self.model.forward_features(x), x)

    def _features_of(self, feats: torch.Tensor, x: torch.Tensor) -> Features:
        """Features of the model's final output ``feats`` (what ``forward_features`` returns) on input ``x``."""
        embedding = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:  # CNN / hierarchical feature map
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                feats = feats.permute(0, 3, 1, 2)
            return Features(embedding, *tokens_from_map(feats)[1:])
        tokens = feats[:, getattr(self.model, "num_prefix_tokens", 0) :]
        return Features(embedding, tokens, _token_grid(self.model, x, tokens.shape[1]))

    @property
    def num_levels(self) -> int | None:
        """The feature levels timm's ``forward_intermediates`` takes: blocks of a ViT, stages of a ConvNeXt /
        Swin / Hiera, the stem + 4 stages of a ResNet (as ``feature_info`` lists them)."""
        if not callable(getattr(self.model, "forward_intermediates", None)):
            return None
        info = getattr(self.model, "feature_info", None)
        return len(info) if info else None

    def _forward_levels(self, x: torch.Tensor, levels: int) -> list[Features]:
        """One pass of timm's ``forward_intermediates``: the levels before the last come from its intermediates
        (prefix tokens dropped; ViTs with the final norm applied, ``norm=True``, as DINOv2's multi-layer
        probes; a model that cannot normalise its intermediates, e.g. Hiera, without), the last level from
        its final output through the same code as :meth:`forward_features`, so it *is* that level."""
        n = int(self.num_levels or 0)
        if levels == 1:
            return [self._forward_features(x)]
        final, maps = self._intermediates(x, list(range(n - levels, n - 1)))
        out = []
        for m in maps:
            if m.ndim == 4:
                out.append(tokens_from_map(m))
            else:  # NLC tokens of a model without an NCHW output format
                out.append(Features(m.mean(1), m, _token_grid(self.model, x, m.shape[1])))
        return [*out, self._features_of(final, x)]

    def _intermediates(self, x: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        import inspect

        params = inspect.signature(self.model.forward_intermediates).parameters
        kwargs: dict = {"indices": indices, "intermediates_only": False}
        if "output_fmt" in params:
            kwargs["output_fmt"] = "NCHW"
        if "stop_early" in params:  # Hiera stops early by default: the final output needs every block
            kwargs["stop_early"] = False
        if "norm" in params and getattr(self, "_norm_levels", True):
            try:
                return self.model.forward_intermediates(x, norm=True, **kwargs)
            except AssertionError as e:  # timm's hiera_*, sam2_hiera_*: "normalization ... not supported"
                if "norm" not in str(e):
                    raise
                self._norm_levels = False
        return self.model.forward_intermediates(x, **kwargs)

    def layer_groups(self) -> list[list[str]]:
        from timm.models import group_parameters

        groups = group_parameters(self.model, self.model.group_matcher(coarse=False))
        return [[f"model.{n}" for n in groups[k]] for k in sorted(groups)]


def _token_grid(model: nn.Module, x: torch.Tensor, n: int) -> tuple[int, int]:
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "dynamic_feat_size"):
        grid = tuple(pe.dynamic_feat_size(tuple(x.shape[-2:])))
    elif pe is not None and getattr(pe, "grid_size", None) is not None:
        grid = tuple(pe.grid_size)
    else:
        grid = (0, 0)
    if grid[0] * grid[1] == n:
        return grid
    # flat tokens of a hierarchical model (timm's hiera_*: the last stage, row-major): one stride for both sides
    h, w = x.shape[-2:]
    stride = max(1, round(math.sqrt(h * w / n)))
    return (h // stride, w // stride) if (h // stride) * (w // stride) == n else (1, n)


def _create_model(name: str, *, pretrained: bool, img_size: tuple[int, int], kwargs: dict):
    import timm

    base = dict(pretrained=pretrained, num_classes=0, **kwargs)
    try:
        return timm.create_model(name, img_size=img_size, **base)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(name, **base)  # CNNs take any size without being told


def _load_file(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str, name: str) -> None:
    """Load a local weights file into ``model`` strictly, after timm's own conversion for the architecture.

    timm's loader (``pretrained_cfg_overlay``) drops the classifier of a model built with ``num_classes=0``
    and then loads with ``strict=False``, logging missing keys at INFO only: a file lacking a block, or
    with every key under a prefix, left those weights at random init without an error. Here the model's
    ``checkpoint_filter_fn`` (official formats, position-embedding resampling) runs as timm would run it,
    the classifier is dropped, and any other missing or unexpected key is an error.
    """
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        state_dict = filter_fn(dict(state_dict), model)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    own = model.state_dict()
    state_dict = {k: v for k, v in state_dict.items()
                  if k in own or not any(k.startswith(c + ".") for c in classifiers)}  # fmt: skip
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights file {path!r} does not fit timm:{name}: {len(missing)} of the model's tensors are not in it "
            f"{missing[:4]}, and {len(result.unexpected_keys)} of its tensors are not in the model "
            f"{result.unexpected_keys[:4]}; give a checkpoint of this architecture (keys as in timm, or the "
            "official release format timm converts)"
        )


def _cifar_stem(model: nn.Module, name: str) -> None:
    """The 28-px stem of the MedMNIST v2 ResNets (CIFAR style): 3x3 stride-1 conv1 and no max-pool."""
    if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
        raise ConfigError(f"stem=cifar applies to timm ResNets, not to timm:{name}")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    log.info("timm:%s: CIFAR-style stem (3x3 stride-1 conv1, no max-pool)", name)


def _torch_default_init(model: nn.Module, name: str) -> None:
    """Re-initialise every layer with PyTorch's defaults instead of timm's scheme (``init=torch``).

    That is how the official MedMNIST v2 ResNets start: convolutions kaiming-uniform with a = sqrt(5) (about
    2.4x smaller than timm's kaiming fan-out), every batch norm at weight 1 (timm zeroes the last one of each
    block), and linear layers likewise at PyTorch's defaults.
    """
    n = 0
    for module in model.modules():
        if module is not model and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            n += 1
    log.info("timm:%s: %d layers re-initialised with PyTorch's defaults (init=torch)", name, n)


def _check_name(name: str) -> None:
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ConfigError(
            f"timm has no model {arch!r}; similar: {close}. See `medadapt list backbones` or timm.list_models()"
        )


def create(
    address: BackboneAddress,
    *,
    pretrained: bool,
    weights: str | None,
    img_size: tuple[int, int],
    data_chans: int,
    channel_mode: str,
) -> TimmBackbone:
    _check_name(address.name)
    kwargs = dict(address.kwargs)
    stem, init = kwargs.pop("stem", None), kwargs.pop("init", None)
    if stem not in (None, "cifar"):
        raise ConfigError(f"stem={stem!r} is not valid; the only stem option is stem=cifar (28-px ResNets)")
    if init not in (None, "torch"):
        raise ConfigError(
            f"init={init!r} is not valid; the only init option is init=torch (PyTorch's defaults)"
        )
    if stem and (pretrained or weights):
        raise ConfigError(
            "stem=cifar replaces the pretrained stem; use it with --no-pretrained (strategy scratch)"
        )
    if init and (pretrained or weights):
        raise ConfigError(
            "init=torch re-initialises every weight; use it with --no-pretrained (strategy scratch)"
        )
    try:
        model = _create_model(
            address.name,
            pretrained=pretrained and weights is None,
            img_size=img_size,
            kwargs=kwargs,
        )
        if weights is not None:
            _load_file(model, load_state_dict_file(weights), weights, address.name)
    except (RuntimeError, OSError, ValueError) as e:
        if weights is not None:
            raise WeightsError(
                f"weights file {weights!r} does not fit timm:{address.name}: {brief(e)}"
            ) from e
        if not pretrained:
            raise
        raise WeightsError(_offline_message(address) + f" ({type(e).__name__}: {e})") from e
    if stem:
        _cifar_stem(model, address.name)
    if init:
        _torch_default_init(model, address.name)
    cfg = model.pretrained_cfg
    mean, std = address.stats(cfg["mean"], cfg["std"])
    in_chans, mean, std, mode = adapt_channels(
        model, data_chans=data_chans, channel_mode=channel_mode, mean=mean, std=std
    )
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = int(patch[0]) if isinstance(patch, (tuple, list)) else patch
    if patch and (img_size[0] % patch or img_size[1] % patch):
        log.warning(
            "input %s is not a multiple of the patch size %d: the border is not seen", img_size, patch
        )
    spec = BackboneSpec(
        address=str(address),
        source="timm",
        num_features=int(getattr(model, "head_hidden_size", None) or model.num_features),
        input_size=img_size,
        mean=mean,
        std=std,
        in_chans=in_chans,
        data_chans=data_chans,
        channel_mode=mode,
        patch_size=patch,
        pretrained=f"file:{weights}"
        if weights
        else (f"hub:{cfg.get('hf_hub_id') or address.name}" if pretrained else None),
        license=cfg.get("license"),
    )
    return TimmBackbone(model, spec)


def _offline_message(address: BackboneAddress) -> str:
    import timm

    cfg = timm.models.get_pretrained_cfg(address.name) if "." in address.name else None
    cfg = cfg or timm.models.get_pretrained_cfg(address.name.split(".")[0])
    repo = (cfg.hf_hub_id if cfg and cfg.hf_hub_id else f"timm/{address.name}").split("@")[0]
    return hub_hint(f"timm:{address.name}", repo, "model.safetensors")
