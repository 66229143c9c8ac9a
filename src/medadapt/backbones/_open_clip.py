"""open_clip source: ``open_clip:NAME[@TAG][?vision_cfg_key=value&...]`` or ``open_clip:hf-hub:ORG/REPO``.

Only the image tower is built (``open_clip.model._build_vision_tower``), so a CLIP whose text tower needs a
transformers checkpoint (BiomedCLIP's PubMedBERT) loads without it; the ``visual.*`` part of the checkpoint
is loaded strictly. Three tower kinds are adapted:

* open_clip ``VisionTransformer`` (CLIP, CoCa): tokens = patch tokens after the final norm; global = the
  tower's own pooling **before the projection** ([CLS] or average, then ``ln_post``), so embedding and
  tokens share the width ``D`` (as in the CLIP paper's linear probes). CoCa's attentional pooler maps the
  tokens to a different width and feeds the captioning decoder; it is dropped and the global embedding is
  the mean of the patch tokens (train an attention-pool head on the tokens for CoCa's own protocol).
  The projection (and CoCa's pooler) are removed from the module, so every parameter left is used.
  Other input sizes: the absolute position embedding is resampled (bicubic, timm's
  ``resample_abs_pos_embed``) once at load time.
* ``TimmModel`` (BiomedCLIP, ``timm_model_name`` configs): its timm trunk is used as a timm backbone
  (pre-projection pooled features, prefix tokens dropped; ``set_input_size`` for other sizes).
* ``ModifiedResNet`` (RN50 CLIP): the last feature map, mean-pooled (the attention pool is dropped).

Weights: ``@TAG`` (open_clip's pretrained table) or ``hf-hub:`` repos, fetched from the HF cache first and
downloaded only when missing; or ``--weights DIR`` holding ``open_clip_config.json`` and a weights file (the
layout of an ``hf-hub:`` repo, e.g. a ``huggingface-cli download``), or ``--weights FILE`` (safetensors or a
``weights_only`` pickle, with or without the ``visual.`` prefix) for an architecture open_clip knows (built
in, cached ``hf-hub:`` config, or registered with ``open_clip.add_model_config``). Query keys override
fields of ``vision_cfg`` (``CLIPVisionCfg``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._optional import require
from ..errors import ConfigError, UnknownNameError, WeightsError
from ._factory import BackboneAddress, adapt_channels, catalog_license
from ._hf import fetch_hub_file, is_offline
from ._timm import TimmBackbone
from ._weights import load_state_dict_file
from .base import Backbone, BackboneSpec, Features, groups_from_modules, tokens_from_map

__all__ = ["create", "OpenClipViTBackbone", "OpenClipResNetBackbone"]

log = logging.getLogger(__name__)

_HF_PREFIX = "hf-hub:"
_CONFIG_NAME = "open_clip_config.json"
_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pth",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class OpenClipViTBackbone(Backbone):
    """An open_clip ``VisionTransformer`` (CLIP, CoCa) as a backbone, features before the projection."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, *, pool: str, norm_after_pool: bool) -> None:
        super().__init__(model, spec)
        self.pool = pool  # "tok" ([CLS]), "avg" or "avg_raw" (CoCa: mean of the un-normed patch tokens)
        self.norm_after_pool = norm_after_pool

    def _forward_features(self, x: torch.Tensor) -> Features:
        v = self.model
        x = v.conv1(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        h = v.transformer(v.ln_pre(x))
        if self.pool == "avg_raw":
            tokens = h[:, 1:]
            return Features(tokens.mean(1), tokens, grid)
        tokens = v.ln_post(h[:, 1:])
        if self.norm_after_pool:
            embedding = v.ln_post(h[:, 0] if self.pool == "tok" else h[:, 1:].mean(1))
        else:
            embedding = v.ln_post(h[:, 0]) if self.pool == "tok" else tokens.mean(1)
        return Features(embedding, tokens, grid)

    def layer_groups(self) -> list[list[str]]:
        v = self.model
        stem = nn.ModuleList([v.conv1, v.ln_pre])  # class/position embeddings join the first group
        return groups_from_modules(self, [stem, *v.transformer.resblocks, v.ln_post])


class OpenClipResNetBackbone(Backbone):
    """An open_clip ``ModifiedResNet`` as a backbone: the last feature map, mean-pooled."""

    def _forward_features(self, x: torch.Tensor) -> Features:
        v = self.model
        return tokens_from_map(v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x))))))

    def layer_groups(self) -> list[list[str]]:
        v = self.model
        stem = nn.ModuleList([v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3])
        return groups_from_modules(self, [stem, v.layer1, v.layer2, v.layer3, v.layer4])


@dataclass
class _Source:
    """What the address and ``--weights`` resolve to."""

    model_cfg: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    quick_gelu: bool = False
    checkpoint: Path | None = None
    label: str | None = None


def _hub_message(name: str, repo: str, *, pretrained: bool, weight_files: list[str] | None = None) -> str:
    """What is missing from where. ``weight_files``: a built-in tag's own files (its architecture is known, so
    no config is needed); else an hf-hub: model, which needs its config and (pretrained) the weights."""
    from huggingface_hub.constants import HF_HUB_CACHE

    if weight_files is not None:
        files, way = " or ".join(weight_files), "or pass --weights FILE with that file"
    else:
        weights = f" and {' or '.join(_HUB_WEIGHTS)}" if pretrained else ""
        files = _CONFIG_NAME + weights
        way = (f"or pass --weights DIR with a folder holding {_CONFIG_NAME} and the weights file (such a "
               "download), or --weights FILE where the architecture is known (open_clip built-ins, or configs "
               "added with open_clip.add_model_config)")  # fmt: skip
    return (
        f"open_clip:{name} needs {files} from Hugging Face repo {repo!r}, which are neither in the HF cache "
        f"{HF_HUB_CACHE} nor downloadable (offline or no access). Download them on a machine with internet "
        f"(`huggingface-cli download {repo}`) into that cache (or set HF_HOME), {way}"
    )


def _defaults() -> tuple[tuple[float, ...], tuple[float, ...]]:
    oc = require("open_clip", extra="open_clip", package="open_clip_torch")
    return tuple(oc.OPENAI_DATASET_MEAN), tuple(oc.OPENAI_DATASET_STD)


def _from_config_file(path: str | Path) -> _Source:
    """A source from an ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    pre = data.get("preprocess_cfg", {})
    mean, std = _defaults()
    return _Source(
        model_cfg=data.get("model_cfg", data),
        mean=tuple(pre.get("mean", mean)),
        std=tuple(pre.get("std", std)),
        quick_gelu=bool(data.get("model_cfg", data).get("quick_gelu", False)),
    )


def _builtin(name: str, tag: str | None) -> _Source:
    """A built-in (or ``add_model_config``-registered) architecture, with its tag's preprocessing."""
    oc = require("open_clip", extra="open_clip", package="open_clip_torch")
    model_cfg = oc.get_model_config(name)
    if model_cfg is None:
        import difflib

        close = difflib.get_close_matches(name, oc.list_models(), n=5, cutoff=0.5)
        raise UnknownNameError(
            f"open_clip has no model {name!r}; did you mean {close}? See open_clip.list_models(), or write "
            "open_clip:hf-hub:ORG/REPO for a hub model"
        )
    pcfg: dict[str, Any] = {}
    if tag:
        pcfg = oc.get_pretrained_cfg(name, tag)
        if not pcfg:
            raise ConfigError(
                f"open_clip model {name!r} has no pretrained tag {tag!r}; valid: "
                f"{oc.list_pretrained_tags_by_model(name)}"
            )
    mean, std = _defaults()
    quick_gelu = bool(model_cfg.get("quick_gelu", False) or pcfg.get("quick_gelu", False))
    if quick_gelu and not model_cfg.get("quick_gelu", False):
        log.info("open_clip:%s@%s was trained with QuickGELU: building the tower with it", name, tag)
    return _Source(model_cfg, tuple(pcfg.get("mean", mean)), tuple(pcfg.get("std", std)), quick_gelu)


def _hub_config(name: str, repo: str, *, pretrained: bool) -> _Source:
    path = fetch_hub_file(repo, _CONFIG_NAME)
    if path is None:
        raise WeightsError(_hub_message(name, repo, pretrained=pretrained))
    return _from_config_file(path)


def _tag_checkpoint(name: str, tag: str) -> tuple[Path, str]:
    """Weights of a pretrained tag: its hub repo (safetensors preferred) or, for old tags, its URL."""
    oc = require("open_clip", extra="open_clip", package="open_clip_torch")
    pcfg = oc.get_pretrained_cfg(name, tag)
    if pcfg.get("hf_hub"):
        repo, filename = os.path.split(pcfg["hf_hub"])  # "org/repo/" means the default file names
        files = (
            [str(Path(filename).with_suffix(".safetensors")), filename] if filename else list(_HUB_WEIGHTS)
        )
        return _hub_checkpoint(f"{name}@{tag}", repo, files), repo
    url = pcfg.get("url", "")  # tags of older open_clip releases without a hub copy
    try:
        if is_offline():
            raise OSError("HF_HUB_OFFLINE is set")
        return Path(oc.download_pretrained_from_url(url)), url
    except Exception as e:  # noqa: BLE001 - any download failure is reported with the URL and the way out
        raise WeightsError(
            f"could not fetch pretrained weights of open_clip:{name}@{tag} from {url} ({type(e).__name__}: "
            f"{e}); download the file on a machine with internet and pass --weights FILE"
        ) from e


def _hub_checkpoint(name: str, repo: str, filenames: list[str]) -> Path:
    for filename in filenames:
        path = fetch_hub_file(repo, filename)
        if path is not None:
            return Path(path)
    raise WeightsError(_hub_message(name, repo, pretrained=True, weight_files=filenames))


def _find_checkpoint(folder: Path) -> Path:
    for name in _DIR_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if len(found) != 1:
        raise WeightsError(
            f"--weights {str(folder)!r} should hold one weights file (e.g. {_DIR_WEIGHTS[0]}); found "
            f"{[p.name for p in found]}"
        )
    return found[0]


def _named_source(name: str, tag: str | None, *, pretrained: bool) -> _Source:
    if name.startswith(_HF_PREFIX):
        return _hub_config(name, name[len(_HF_PREFIX) :], pretrained=pretrained)
    return _builtin(name, tag)


def _resolve(name: str, tag: str | None, *, pretrained: bool, weights: str | None) -> _Source:
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            config = path / _CONFIG_NAME
            src = (
                _from_config_file(config) if config.is_file() else _named_source(name, tag, pretrained=False)
            )
            return dataclasses.replace(src, checkpoint=_find_checkpoint(path), label=f"file:{path}")
        if not path.is_file():
            raise WeightsError(f"--weights {weights!r} does not exist; give a weights file or a folder")
        return dataclasses.replace(
            _named_source(name, tag, pretrained=False), checkpoint=path, label=f"file:{path}"
        )
    src = _named_source(name, tag, pretrained=pretrained)
    if not pretrained:
        return src
    if name.startswith(_HF_PREFIX):
        repo = name[len(_HF_PREFIX) :]
        return dataclasses.replace(
            src, checkpoint=_hub_checkpoint(name, repo, list(_HUB_WEIGHTS)), label=f"hub:{repo}"
        )
    if not tag:
        oc = require("open_clip", extra="open_clip", package="open_clip_torch")
        raise ConfigError(
            f"open_clip:{name} names no pretrained weights; write open_clip:{name}@TAG with TAG one of "
            f"{oc.list_pretrained_tags_by_model(name)}, pass --weights, or use --no-pretrained"
        )
    checkpoint, where = _tag_checkpoint(name, tag)
    return dataclasses.replace(src, checkpoint=checkpoint, label=f"hub:{where}")


def _build_tower(src: _Source, overrides: dict[str, Any]) -> nn.Module:
    oc = require("open_clip", extra="open_clip", package="open_clip_torch")
    from open_clip.model import _build_vision_tower  # the one constructor CLIP, CustomTextCLIP and CoCa share

    vision_cfg = dict(src.model_cfg["vision_cfg"])
    valid = {f.name for f in dataclasses.fields(oc.CLIPVisionCfg)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"open_clip address keys {unknown} are not vision_cfg fields; valid: {sorted(valid)}"
        )
    vision_cfg.update(overrides)
    vision_cfg["timm_model_pretrained"] = False  # weights come from the CLIP checkpoint, never silently
    if vision_cfg.get("patch_dropout"):
        log.info(
            "open_clip: patch_dropout=%s disabled (it would break the token grid)",
            vision_cfg["patch_dropout"],
        )
        vision_cfg["patch_dropout"] = 0.0
    tower = _build_vision_tower(src.model_cfg["embed_dim"], vision_cfg, quick_gelu=src.quick_gelu)
    return tower.float().eval()


def _visual_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The image tower's part of a CLIP checkpoint (keys ``visual.*``), or the whole file if it is a tower."""
    sd = load_state_dict_file(path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    visual = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    return visual or sd


def _fit_pos_embed(sd: dict[str, torch.Tensor], tower: nn.Module) -> None:
    """Resample a ViT checkpoint's position embedding to the tower's grid (e.g. a fine-tune at another size)."""
    pe, own = sd.get("positional_embedding"), getattr(tower, "positional_embedding", None)
    if pe is None or own is None or pe.shape == own.shape:
        return
    from timm.layers import resample_abs_pos_embed

    old = int(round((pe.shape[0] - 1) ** 0.5))
    if old * old + 1 != pe.shape[0]:
        return  # not a square grid: leave it to load_state_dict to report the mismatch
    new = resample_abs_pos_embed(
        pe[None], new_size=list(tower.grid_size), old_size=[old, old], num_prefix_tokens=1
    )
    sd["positional_embedding"] = new[0]
    log.info("resampled checkpoint position embedding %s -> %s", tuple(pe.shape), tuple(new[0].shape))


def _load_weights(tower: nn.Module, path: Path) -> None:
    sd = _visual_state_dict(path)
    _fit_pos_embed(sd, tower)
    try:
        missing, unexpected = tower.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:600]
        raise WeightsError(f"weights {str(path)!r} do not fit the open_clip image tower: {detail}") from e
    if missing or unexpected:
        raise WeightsError(
            f"weights {str(path)!r} do not fit the open_clip image tower: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}; check that they belong to this architecture"
        )


def _resample_vit(tower: nn.Module, img_size: tuple[int, int]) -> None:
    """Resize an open_clip ViT to ``img_size`` in place: position embedding (bicubic), grid and image size."""
    patch = tower.patch_size
    grid = (img_size[0] // patch[0], img_size[1] // patch[1])
    if tuple(grid) == tuple(tower.grid_size):
        return
    from timm.layers import resample_abs_pos_embed

    pe = tower.positional_embedding
    new = resample_abs_pos_embed(
        pe.detach()[None], new_size=list(grid), old_size=list(tower.grid_size), num_prefix_tokens=1
    )
    tower.positional_embedding = nn.Parameter(new[0], requires_grad=pe.requires_grad)
    log.info("open_clip ViT: position embedding grid %s -> %s for %s inputs", tower.grid_size, grid, img_size)
    tower.grid_size, tower.image_size = grid, tuple(img_size)


def _strip_vit(tower: nn.Module) -> tuple[str, bool]:
    """Drop the projection (and CoCa's attentional pooler): returns ``(pool, norm_after_pool)``."""
    tower.proj = None
    if getattr(tower, "attn_pool", None) is not None:
        tower.attn_pool, tower.attn_pool_contrastive, tower.ln_post = None, None, nn.Identity()
        log.info("open_clip: dropped CoCa's attentional pooler; global embedding = mean of patch tokens")
        return "avg_raw", False
    pool = tower.pool_type if tower.pool_type in ("tok", "avg") else "avg"
    return pool, bool(tower.final_ln_after_pool)


def _wrap(
    tower: nn.Module, spec_kwargs: dict[str, Any], img_size: tuple[int, int], timm_pool: str
) -> Backbone:
    """Adapt the tower to ``img_size`` and wrap it in the backbone class of its kind."""
    kind = type(tower).__name__
    if kind == "TimmModel":
        trunk = tower.trunk
        if timm_pool in ("abs_attn", "rot_attn"):
            trunk.reset_classifier(0, global_pool="avg")
        elif getattr(trunk, "num_classes", 0):  # timm_proj null: the trunk's head is the (unused) projection
            trunk.reset_classifier(0)
        if hasattr(trunk, "pos_embed") and hasattr(trunk, "set_input_size"):
            trunk.set_input_size(img_size=img_size)
        return TimmBackbone(trunk, BackboneSpec(num_features=int(trunk.num_features), **spec_kwargs))
    if kind == "ModifiedResNet":
        tower.attnpool = None
        width = tower.layer4[-1].bn3.num_features
        return OpenClipResNetBackbone(tower, BackboneSpec(num_features=int(width), **spec_kwargs))
    if kind == "VisionTransformer":
        _resample_vit(tower, img_size)
        pool, norm_after = _strip_vit(tower)
        spec = BackboneSpec(num_features=int(tower.class_embedding.shape[-1]), **spec_kwargs)
        return OpenClipViTBackbone(tower, spec, pool=pool, norm_after_pool=norm_after)
    raise ConfigError(
        f"open_clip image tower {kind} is not supported (supported: VisionTransformer, TimmModel, ModifiedResNet)"
    )


def _patch_size(tower: nn.Module) -> int | None:
    patch = getattr(tower, "patch_size", None)
    trunk = getattr(tower, "trunk", None)
    if patch is None and trunk is not None:
        patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", None)
    return int(patch[0]) if isinstance(patch, (tuple, list)) else patch


def create(
    address: BackboneAddress,
    *,
    pretrained: bool,
    weights: str | None,
    img_size: tuple[int, int],
    data_chans: int,
    channel_mode: str,
) -> Backbone:
    """Build ``open_clip:NAME[@TAG]`` / ``open_clip:hf-hub:ORG/REPO`` (see the module docstring)."""
    require("open_clip", extra="open_clip", package="open_clip_torch")
    name, _, tag = address.name.partition("@")
    if name.startswith("local-dir:"):
        raise ConfigError(
            f"write open_clip:NAME with --weights {name[len('local-dir:') :]!r} instead of {name!r}"
        )
    src = _resolve(name, tag or None, pretrained=pretrained, weights=weights)
    tower = _build_tower(src, address.kwargs)
    if src.checkpoint is not None:
        _load_weights(tower, src.checkpoint)
    mean, std = address.stats(src.mean, src.std)
    in_chans, mean, std, mode = adapt_channels(
        tower, data_chans=data_chans, channel_mode=channel_mode, mean=mean, std=std
    )
    spec_kwargs = dict(
        address=str(address),
        source="open_clip",
        input_size=img_size,
        mean=mean,
        std=std,
        in_chans=in_chans,
        data_chans=data_chans,
        channel_mode=mode,
        patch_size=_patch_size(tower),
        pretrained=src.label,
        license=catalog_license(address),
    )
    timm_pool = src.model_cfg["vision_cfg"].get("timm_pool", "avg")
    return _wrap(tower, spec_kwargs, img_size, timm_pool)
