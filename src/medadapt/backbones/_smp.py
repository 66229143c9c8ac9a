"""segmentation_models_pytorch source: ``smp:ARCH[?encoder=NAME&weights=TAG&kwarg=value&...]``.

Supervised end-to-end segmentation baselines (U-Net, U-Net++, FPN, DeepLabV3+, SegFormer, ...; every
architecture of :func:`list_architectures`) addressed like any other backbone, e.g.
``smp:unet?encoder=resnet34`` or ``smp:segformer?encoder=mit_b0``.

Design: an SMP model is an encoder, a decoder and a segmentation head. :func:`create` builds the whole
model once (``smp.create_model(arch, encoder_name=..., in_channels=3, classes=1, **options)``) and splits it:

* the **encoder** is the backbone (``backbone.model``): ``parameters()``, ``state_dict()``, freezing, LoRA,
  layer groups and saved checkpoints see the encoder alone, so an SMP encoder also serves as a frozen
  backbone for probes (:meth:`SmpBackbone.forward_features` reads its deepest stage);
* the **decoder** and segmentation head are kept aside, not registered as submodules;
  :meth:`SmpBackbone.native_head` returns a copy of them with a fresh classifier of ``num_classes``
  outputs, an :class:`SmpDecoderHead` that reads the encoder's feature list
  (:meth:`SmpBackbone.forward_pyramid`, ``input_key = "pyramid"``).

Address options: ``encoder`` (default ``resnet34``; ``mit_b0`` for SegFormer, SMP's ViT for DPT), any
SMP encoder name or ``tu-<timm model>``; ``weights``, the SMP pretrained tag fetched with ``pretrained``
(default ``imagenet``); ``mean``/``std`` as for every source; every other option is an argument of the
architecture's constructor (``encoder_depth=3&decoder_channels=[32,16,8]``; list values are YAML lists) or,
for ``tu-`` encoders, of ``timm.create_model``.

Weights: with ``pretrained``, SMP encoders load ``model.safetensors`` of SMP's Hugging Face repo
(``smp-hub/<encoder>.<tag>``) and ``tu-`` encoders timm's pretrained weights. A local ``weights`` file holds
the encoder's state dict (that ``model.safetensors``, or keys ``encoder.*`` of a whole SMP model); for a
``tu-`` encoder it may also be timm's checkpoint of the model. Decoder and head always start at random.

Channels follow the other sources (:func:`~medadapt.backbones._factory.adapt_channels`): gray images fold
the RGB normalisation into the encoder's first convolution (``sum``/``mean``/``first``) or are repeated to
three channels in the data (``repeat``). Input sizes are checked at creation: architectures that need it
take sizes divisible by the encoder's output stride (32 at ``encoder_depth=5``), and the whole model runs
once at ``img_size`` so a decoder that cannot take the size fails with a :class:`ConfigError` there.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .._optional import require
from ..errors import ConfigError, WeightsError, brief
from ._factory import BackboneAddress, adapt_channels
from ._hf import fetch_hub_file
from ._weights import hub_hint, load_state_dict_file
from .base import Backbone, BackboneSpec, Features, tokens_from_map

__all__ = ["create", "list_architectures", "SmpBackbone", "SmpDecoderHead"]

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: Encoders used when the address names none (SMP's own default is resnet34 for every architecture).
DEFAULT_ENCODERS = {"segformer": "mit_b0", "dpt": "tu-vit_base_patch16_224.augreg_in21k"}
DEFAULT_ENCODER = "resnet34"

#: ``smp.create_model`` arguments medadapt sets itself, with what to write instead.
_SET_HERE = {
    "encoder_name": "write encoder=NAME",
    "encoder_weights": "write weights=TAG (fetched with pretrained) or pass --weights FILE",
    "in_channels": "it follows the data's channels and --channel-mode",
    "classes": "the task's number of classes sets it (native_head)",
    "activation": "the head returns logits; the task's loss applies sigmoid/softmax",
    "aux_params": "the auxiliary classification head is not used",
}


def _smp():
    return require("segmentation_models_pytorch", extra="seg", package="segmentation-models-pytorch")


def list_architectures() -> list[str]:
    """Architecture names ``smp.create_model`` knows (``unet``, ``fpn``, ``segformer``, ...), sorted."""
    return sorted(_smp().MODEL_ARCHITECTURES_MAPPING)


@dataclass
class _HeadTemplate:
    """The decoder and segmentation head of the built model, kept out of the backbone's submodules."""

    decoder: nn.Module
    segmentation_head: nn.Module
    prefix_split: int | None  # DPT: number of feature maps before the prefix tokens in the pyramid


class SmpDecoderHead(nn.Module):
    """SMP's decoder + segmentation head on the encoder's feature list: ``forward(pyramid, out_size)`` gives
    float32 logits ``[B, num_classes, *out_size]``.

    The decoder follows autocast; the segmentation head (a classifier conv, with SMP's own upsampling:
    x4 for SegFormer) and the final bilinear resize to ``out_size`` run in float32.
    """

    input_key: ClassVar[str] = "pyramid"
    outputs: ClassVar[str] = "logits"
    trainable: ClassVar[bool] = True
    multiscale: ClassVar[bool] = False

    def __init__(
        self, decoder: nn.Module, segmentation_head: nn.Module, *, prefix_split: int | None = None
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.prefix_split = prefix_split

    def forward(self, pyramid: Sequence[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        features = list(pyramid)
        if self.prefix_split is None:
            decoded = self.decoder(features)
        else:  # DPT's decoder also reads the ViT's prefix ([CLS]) tokens, one per feature map or None
            n = self.prefix_split
            decoded = self.decoder(features[:n], features[n:] or [None] * n)
        size = (int(out_size[0]), int(out_size[1]))
        with torch.autocast(decoded.device.type, enabled=False):
            logits = self.segmentation_head(decoded.float())
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SmpBackbone(Backbone):
    """The encoder of an SMP model as a backbone; its decoder comes back from :meth:`native_head`.

    ``levels`` are the indices of the encoder's outputs that are feature maps of its own (SMP encoders
    also return the input itself and, for transformer-style encoders, an empty stride-2 placeholder);
    ``prefix_split`` is set for encoders that return ``(feature maps, prefix tokens)`` (DPT).
    """

    def __init__(
        self, model: nn.Module, spec: BackboneSpec, *, levels: Sequence[int], prefix_split: int | None
    ):
        super().__init__(model.encoder, spec)
        self._template = _HeadTemplate(model.decoder, model.segmentation_head, prefix_split)
        self._levels = tuple(levels)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.model(x)
        return list(out[0] if self._template.prefix_split is not None else out)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature list, as SMP's decoder takes it (DPT: feature maps, then prefix tokens)."""
        out = self.model(x)
        if self._template.prefix_split is None:
            return list(out)
        features, prefix = out
        return [*features, *(p for p in prefix if p is not None)]

    def _forward_features(self, x: torch.Tensor) -> Features:
        return tokens_from_map(self._encode(x)[-1])

    @property
    def num_levels(self) -> int:
        return len(self._levels)

    def _forward_levels(self, x: torch.Tensor, levels: int) -> list[Features]:
        features = self._encode(x)
        return [tokens_from_map(features[i]) for i in self._levels[-levels:]]

    def native_head(self, num_classes: int) -> SmpDecoderHead:
        """A copy of the architecture's decoder (as initialised at creation) with a fresh classifier of
        ``num_classes`` outputs, on the encoder's device; every call returns a new module."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"native_head needs a positive number of classes, got {num_classes!r}")
        head = copy.deepcopy(self._template.segmentation_head)
        _replace_classifier(head, num_classes)
        decoder = copy.deepcopy(self._template.decoder)
        native = SmpDecoderHead(decoder, head, prefix_split=self._template.prefix_split)
        return native.to(next(self.model.parameters()).device)

    def layer_groups(self) -> list[list[str]]:
        """Encoder parameters grouped by the first stage output they reach, input to output.

        SMP encoders share no module layout (torchvision ResNets, MiT blocks per stage, timm feature
        wrappers), so the stages are read from autograd: one pass on zeros at the input size, and stage
        ``k`` holds the parameters the ``k``-th feature map depends on that no earlier one does. Parameters
        no feature map uses (layers past ``encoder_depth``) join the last group.
        """
        named = list(self.named_parameters())
        params = [p for _, p in named]
        flags = [p.requires_grad for p in params]
        modes = {m: m.training for m in self.modules()}
        stage_of: dict[str, int] = {}
        try:
            self.eval()  # no BatchNorm statistics update, no dropout
            for p in params:
                p.requires_grad_(True)
            like = {"device": params[0].device, "dtype": params[0].dtype}
            x = torch.zeros(1, self.spec.in_chans, *self.spec.input_size, **like)
            with torch.inference_mode(False), torch.enable_grad():
                features = self._encode(x)
                stages = [features[i] for i in self._levels]
                for k, fmap in enumerate(stages):
                    grads = torch.autograd.grad(
                        fmap.float().sum(), params, allow_unused=True, retain_graph=k < len(stages) - 1
                    )
                    for (name, _), g in zip(named, grads):
                        if g is not None:
                            stage_of.setdefault(name, k)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            for module, training in modes.items():
                module.training = training
        groups: list[list[str]] = [[] for _ in self._levels]
        for name, _ in named:
            groups[stage_of.get(name, len(groups) - 1)].append(name)
        return [g for g in groups if g]


def _replace_classifier(head: nn.Module, num_classes: int) -> None:
    """Swap the head's last convolution (SMP's classifier, built for one class) for a fresh one."""
    name, conv = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Conv2d)][-1]
    new = nn.Conv2d(
        conv.in_channels,
        num_classes,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    nn.init.xavier_uniform_(new.weight)  # SMP's initialize_head
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_name, _, attr = name.rpartition(".")
    setattr(head.get_submodule(parent_name) if parent_name else head, attr, new)


# --- creation ------------------------------------------------------------------------------------------


def _did_you_mean(name: str, names: list[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for the names close to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _check_arch(name: str) -> str:
    archs = list_architectures()
    arch = name.lower()
    if arch not in archs:
        hint = _did_you_mean(arch, archs)
        raise ConfigError(
            f"segmentation_models_pytorch has no architecture {name!r}{hint} (valid: {', '.join(archs)}); "
            "write smp:ARCH?encoder=NAME, e.g. smp:unet?encoder=resnet34"
        )
    return arch


def _check_encoder(smp: Any, arch: str, encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        base = encoder[3:].split(".")[0]
        if not timm.is_model(base):
            close = timm.list_models(f"*{base.split('_')[0]}*")[:8]
            raise ConfigError(f"timm has no model {base!r} for encoder={encoder}; similar: {close}")
        return
    if arch == "dpt":
        raise ConfigError(
            f"DPT takes timm ViT encoders only: write encoder=tu-NAME (e.g. {DEFAULT_ENCODERS['dpt']}), "
            f"not encoder={encoder}"
        )
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        hint = _did_you_mean(encoder, names)
        raise ConfigError(
            f"segmentation_models_pytorch has no encoder {encoder!r}{hint}; see "
            "smp.encoders.get_encoder_names(), or write encoder=tu-NAME for any timm model"
        )


def _check_options(smp: Any, arch: str, encoder: str, options: dict[str, Any]) -> None:
    for key, instead in _SET_HERE.items():
        if key in options:
            raise ConfigError(f"{key} cannot be set in an smp address: {instead}")
    if encoder.startswith("tu-"):
        return  # options the architecture does not take go to timm.create_model, which checks them
    own = _arch_parameters(smp, arch)
    unknown = sorted(set(options) - own)
    if unknown:
        hint = _did_you_mean(unknown[0], sorted(own - set(_SET_HERE)))
        raise ConfigError(
            f"smp:{arch} takes no option {', '.join(unknown)}{hint} (valid: encoder, weights, mean, std, "
            f"{', '.join(sorted(own - set(_SET_HERE)))})"
        )


def _arch_parameters(smp: Any, arch: str) -> set[str]:
    sig = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch].__init__)
    return {n for n, p in sig.parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD}


def _hub_settings(smp: Any, encoder: str, tag: str) -> dict[str, Any]:
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    if tag not in settings:
        raise ConfigError(
            f"smp encoder {encoder!r} has no pretrained weights {tag!r}; valid: weights="
            f"{' / '.join(settings) or '(none: use --no-pretrained)'}"
        )
    return settings[tag]


def _build(smp: Any, arch: str, encoder: str, options: dict[str, Any], encoder_weights: Any) -> nn.Module:
    return smp.create_model(
        arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3, classes=1, **options
    )


def _mismatch(encoder: nn.Module, state_dict: dict[str, torch.Tensor], error: RuntimeError) -> str:
    """What does not match, in a line (torch's message lists every key)."""
    own = encoder.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    if not missing and not unexpected:  # same keys, other shapes
        text = brief(error, 2)
        return text[:400] + ("..." if len(text) > 400 else "")
    return (
        f"{len(missing)} of the encoder's tensors are not in it {missing[:4]}, and {len(unexpected)} of its "
        f"tensors are not in the encoder {unexpected[:4]}"
    )


def _timm_checkpoint(timm_name: str, state_dict: dict, path: str, timm_options: dict[str, Any]) -> dict:
    """A timm checkpoint of a ``tu-`` encoder's model, converted and checked strictly the way the timm source
    loads files (:func:`medadapt.backbones._timm._load_file`), as a state dict of the plain timm model."""
    import timm

    from ._timm import _load_file

    plain = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_options)
    _load_file(plain, state_dict, path, timm_name)
    return plain.state_dict()


def _load_file_weights(
    smp: Any, model: nn.Module, arch: str, encoder: str, options: dict[str, Any], path: str, what: str
) -> nn.Module:
    """The model with the encoder weights of ``path`` (rebuilt through timm for a timm checkpoint)."""
    state_dict = load_state_dict_file(path)
    if any(k.startswith("encoder.") for k in state_dict) and not any(
        k.startswith("encoder.") for k in model.encoder.state_dict()
    ):  # a whole SMP model: its encoder's part
        state_dict = {
            k.removeprefix("encoder."): v for k, v in state_dict.items() if k.startswith("encoder.")
        }
    try:
        # strict, through the encoder's own loader as SMP loads its hub weights (which drops classifier
        # tensors of the source checkpoint and renames old key formats)
        model.encoder.load_state_dict(dict(state_dict))
        return model
    except RuntimeError as e:
        if not encoder.startswith("tu-"):
            raise WeightsError(
                f"weights file {path!r} does not fit {what}: {_mismatch(model.encoder, state_dict, e)}; give the "
                "encoder's state dict (model.safetensors of its smp-hub repo, keys as in "
                "model.encoder.state_dict()) or a whole SMP model's (keys encoder.*)"
            ) from e
    timm_options = {k: v for k, v in options.items() if k not in _arch_parameters(smp, arch)}
    checkpoint = _timm_checkpoint(encoder[3:], state_dict, path, timm_options)
    # timm maps the plain model's weights onto its feature-extraction wrapper (renamed modules) itself
    overlay = {"pretrained_cfg_overlay": {"state_dict": checkpoint}}
    return _build(smp, arch, encoder, {**options, **overlay}, True)


def _timm_stats(timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name) or timm.models.get_pretrained_cfg(timm_name.split(".")[0])
    if cfg is None:
        return _IMAGENET_MEAN, _IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


def _hub_stats(repo: str, revision: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation in an smp-hub repo's ``config.json``; ImageNet's where it has none."""
    path = fetch_hub_file(repo, "config.json", revision=revision)
    if path is not None:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        if len(cfg.get("mean", ())) == 3 and len(cfg.get("std", ())) == 3:
            return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return _IMAGENET_MEAN, _IMAGENET_STD


def _timm_repo(timm_name: str) -> str:
    """The Hugging Face repo timm fetches ``timm_name``'s pretrained weights from."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name) or timm.models.get_pretrained_cfg(timm_name.split(".")[0])
    return (cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{timm_name}").split("@")[0]


def _valid_sizes(size: int, stride: int) -> str:
    lower, upper = size // stride * stride, math.ceil(size / stride) * stride
    return " or ".join(str(s) for s in dict.fromkeys((lower, upper)) if s > 0)


def _probe(
    model: nn.Module, address: str, in_chans: int, img_size: tuple[int, int]
) -> tuple[list[int], int | None]:
    """Run the whole model once at ``img_size``; returns the encoder's level indices and DPT's split."""
    stride = int(model.encoder.output_stride)
    h, w = img_size
    if getattr(model, "requires_divisible_input_shape", True) and (h % stride or w % stride):
        raise ConfigError(
            f"{address} takes image sizes divisible by its encoder's output stride {stride}, got "
            f"--img-size {h}x{w}; use height {_valid_sizes(h, stride)} and width {_valid_sizes(w, stride)}"
        )
    x = torch.zeros(1, in_chans, h, w)
    model.eval()  # no BatchNorm statistics update
    try:
        with torch.inference_mode():
            out = model.encoder(x)
            prefixed = isinstance(out, tuple)
            features = out[0] if prefixed else out
            model.segmentation_head(model.decoder(*out) if prefixed else model.decoder(out))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"{address} cannot run on {h}x{w} inputs ({type(e).__name__}: {brief(e, 2)}); choose another "
            f"--img-size (a multiple of {stride}, large enough for the decoder)"
        ) from e
    finally:
        model.train()
    levels = [i for i, f in enumerate(features) if f is not x and f.shape[1] > 0]
    return levels, (len(features) if prefixed else None)


def create(
    address: BackboneAddress,
    *,
    pretrained: bool,
    weights: str | None,
    img_size: tuple[int, int],
    data_chans: int,
    channel_mode: str,
) -> SmpBackbone:
    smp = _smp()
    arch = _check_arch(address.name)
    options = dict(address.kwargs)
    encoder = str(options.pop("encoder", DEFAULT_ENCODERS.get(arch, DEFAULT_ENCODER)))
    tag = options.pop("weights", None)
    _check_encoder(smp, arch, encoder)
    _check_options(smp, arch, encoder, options)
    timm_encoder = encoder.startswith("tu-")
    if timm_encoder and tag is not None:
        raise ConfigError(
            f"weights={tag} does not apply to tu- encoders: timm's pretrained tag is part of the name, e.g. "
            "encoder=tu-convnext_tiny.fb_in22k"
        )
    if arch == "dpt":
        options.setdefault("img_size", img_size)  # timm ViTs are built for one input size
    # the address as run: the default encoder written out, so the record does not depend on this module
    written = {"encoder": encoder, **address.kwargs}
    recorded = str(BackboneAddress(address.source, arch, written, address.mean, address.std))
    what = f"smp encoder {encoder!r}"

    hub_file, settings = None, None
    if pretrained and weights is None and not timm_encoder:
        settings = _hub_settings(smp, encoder, str(tag or "imagenet"))
        hub_file = fetch_hub_file(settings["repo_id"], "model.safetensors", revision=settings.get("revision"))
        if hub_file is None:
            raise WeightsError(hub_hint(recorded, settings["repo_id"], "model.safetensors (and config.json)"))
    if pretrained and weights is None and timm_encoder:
        try:
            model = _build(smp, arch, encoder, options, True)
        except (RuntimeError, OSError, ValueError) as e:
            hint = hub_hint(recorded, _timm_repo(encoder[3:]), "model.safetensors")
            raise WeightsError(f"{hint} ({type(e).__name__}: {brief(e)})") from e
    else:
        model = _build(smp, arch, encoder, options, None)
    local = weights if weights is not None else hub_file
    if local is not None:
        try:
            model = _load_file_weights(smp, model, arch, encoder, options, local, what)
        except (RuntimeError, ValueError) as e:  # tensor shapes that do not match
            raise WeightsError(f"weights file {local!r} does not fit {what}: {brief(e)}") from e

    if timm_encoder:
        mean, std = _timm_stats(encoder[3:])
    elif settings is not None:
        mean, std = _hub_stats(settings["repo_id"], settings.get("revision"))
    else:
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    mean, std = address.stats(mean, std)
    in_chans, mean, std, mode = adapt_channels(
        model.encoder, data_chans=data_chans, channel_mode=channel_mode, mean=mean, std=std
    )
    levels, prefix_split = _probe(model, recorded, in_chans, img_size)
    if weights is not None:
        source = f"file:{weights}"
    elif settings is not None:
        source = f"hub:{settings['repo_id']}"
    else:
        source = f"hub:{_timm_repo(encoder[3:])}" if pretrained else None
    spec = BackboneSpec(
        address=recorded,
        source="smp",
        num_features=int(model.encoder.out_channels[-1]),
        input_size=img_size,
        mean=mean,
        std=std,
        in_chans=in_chans,
        data_chans=data_chans,
        channel_mode=mode,
        patch_size=None,
        pretrained=source,
        license=None,
    )
    log.info("smp:%s with encoder %s (%s)", arch, encoder, source or "random init")
    return SmpBackbone(model, spec, levels=levels, prefix_split=prefix_split)
