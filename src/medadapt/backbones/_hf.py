"""transformers source: ``hf:ORG/NAME[@REVISION][?config_field=value&...]``.

Vision models on the Hugging Face hub in transformers' own format: DINOv2 (``facebook/dinov2-*``,
``microsoft/rad-dino``), DINOv2 with registers, DINOv3 ViT and SigLIP (``google/medsiglip-448``; only the
vision tower of a text+vision checkpoint is built and loaded). Other ViT-like families load too, with the
[CLS] token (or mean-pooled tokens) as the global embedding.

* Global embedding: the model's ``pooler_output`` for the families listed in ``_POOLER_FAMILIES`` (DINOv2/v3:
  [CLS] after the final layernorm; SigLIP: its attention-pooling head), else [CLS] or mean-pooled tokens.
* Tokens: patch tokens only; the [CLS] and register tokens in front of them are dropped.
* Multi-level features (``forward_levels``, for the ``multiscale`` segmentation head): the last layers'
  hidden states (``output_hidden_states=True``), patch tokens only, each through the final norm; DINOv2
  (with registers), DINOv3 and SigLIP (``_FINAL_NORMS``), other families raise a ConfigError.
* Any input size: DINOv2 interpolates its position embeddings itself, SigLIP is called with
  ``interpolate_pos_encoding=True``, DINOv3 uses RoPE.
* Mean/std come from the repo's ``preprocessor_config.json`` (read as JSON, so no image-processor
  dependencies are needed), else from per-family defaults.
* Query keys override fields of the (vision) config, e.g. ``hf:facebook/dinov2-small?num_hidden_layers=2``.

Hub files are looked up in the HF cache first and downloaded only when missing (and ``HF_HUB_OFFLINE`` is
not set), so a cached model loads without touching the network.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._optional import require
from ..errors import ConfigError, WeightsError
from ._factory import BackboneAddress, adapt_channels, catalog_license
from .base import Backbone, BackboneSpec, Features, groups_from_modules

__all__ = ["create", "HFBackbone", "fetch_hub_file", "is_offline"]

log = logging.getLogger(__name__)

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: Normalisation used when a repo has no preprocessor_config.json, by config ``model_type``.
_DEFAULT_STATS = {"siglip_vision_model": _HALF, "siglip2_vision_model": _HALF}
#: Families whose ``pooler_output`` is the global embedding ([CLS] after the final norm, or SigLIP's head).
_POOLER_FAMILIES = {"dinov2", "dinov2_with_registers", "dinov3_vit", "siglip_vision_model"}
#: The final norm (on the vision tower) of the families whose layers ``forward_levels`` returns, by model_type.
_FINAL_NORMS = {
    "dinov2": "layernorm",
    "dinov2_with_registers": "layernorm",
    "dinov3_vit": "norm",
    "siglip_vision_model": "post_layernorm",
}
#: Parameters a checkpoint may lack without harm (used only for masked-image-modelling pretraining).
_BENIGN_MISSING = ("mask_token",)
_TRUE = ("1", "ON", "YES", "TRUE")
#: The file name transformers expects for a single weights file, by suffix.
_WEIGHT_NAMES = {
    ".safetensors": "model.safetensors",
    ".bin": "pytorch_model.bin",
    ".pt": "pytorch_model.bin",
    ".pth": "pytorch_model.bin",
}


_NO_DECAY_EMBEDDINGS = (
    "cls_token",
    "mask_token",
    "register_tokens",
    "distillation_token",
    "position_embedding",
)


class HFBackbone(Backbone):
    """A transformers vision model as a backbone (see the module docstring for what it returns)."""

    def __init__(self, model: nn.Module, spec: BackboneSpec, *, pool: str) -> None:
        super().__init__(model, spec)
        self.pool = pool
        params = inspect.signature(model.forward).parameters
        self._call_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}

    def _forward_features(self, x: torch.Tensor) -> Features:
        return self._features(self.model(pixel_values=x, **self._call_kwargs), x)

    def _features(self, out: Any, x: torch.Tensor) -> Features:
        hidden = out.last_hidden_state
        p = self.spec.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        tokens = hidden[:, hidden.shape[1] - grid[0] * grid[1] :]  # [CLS] and registers come first
        if self.pool == "pooler" and out.pooler_output is not None:
            embedding = out.pooler_output
        elif self.pool == "cls":
            embedding = hidden[:, 0]
        else:
            embedding = tokens.mean(1)
        return Features(embedding, tokens, grid)

    @property
    def num_levels(self) -> int | None:
        """The transformer layers, for the families whose final norm is known (:data:`_FINAL_NORMS`)."""
        return int(self.model.config.num_hidden_layers) if self._final_norm() is not None else None

    def _final_norm(self) -> nn.Module | None:
        name = _FINAL_NORMS.get(self.model.config.model_type)
        core = getattr(self.model, "vision_model", self.model)
        return getattr(core, name, None) if name else None

    def _forward_levels(self, x: torch.Tensor, levels: int) -> list[Features]:
        """``output_hidden_states=True``: the last ``levels`` layers' outputs, [CLS] and registers dropped, each
        through the model's final norm (as DINOv2's multi-layer probes); the last is ``forward_features``."""
        out = self.model(pixel_values=x, output_hidden_states=True, **self._call_kwargs)
        last = self._features(out, x)
        norm = self._final_norm()
        n = last.grid[0] * last.grid[1]
        levels_out = []
        for hidden in out.hidden_states[-levels:-1] if levels > 1 else ():
            tokens = norm(hidden[:, hidden.shape[1] - n :])
            levels_out.append(Features(tokens.mean(1), tokens, last.grid))
        return [*levels_out, last]

    def layer_groups(self) -> list[list[str]]:
        return groups_from_modules(self, _ordered_modules(self.model))

    def no_weight_decay(self) -> set[str]:
        """The [CLS] / mask / register tokens and position embeddings: what timm's and open_clip's ViTs exempt
        from weight decay (transformers models list nothing), so a model decays alike from every source."""
        return {n for n, _ in self.named_parameters() if any(k in n for k in _NO_DECAY_EMBEDDINGS)}


def _ordered_modules(model: nn.Module) -> list[nn.Module]:
    """``[embeddings, layer_0, ..., layer_{L-1}, final norm (+ head)]`` of a transformers vision model."""
    core = getattr(model, "vision_model", model)  # transformers 4.x nests SigLIP's tower one level deeper
    n_layers = model.config.num_hidden_layers
    children = list(core.named_children())
    for i, (_, child) in enumerate(children):
        blocks = _find_blocks(child, n_layers)
        if blocks is not None:
            before = nn.ModuleList([m for _, m in children[:i]])
            after = nn.ModuleList([m for _, m in children[i + 1 :]])
            return [before, *blocks, after]
    raise ConfigError(f"cannot find the {n_layers} transformer layers of {type(model).__name__}")


def _find_blocks(module: nn.Module, n_layers: int) -> nn.ModuleList | None:
    for m in module.modules():
        if isinstance(m, nn.ModuleList) and len(m) == n_layers:
            return m
    return None


def is_offline() -> bool:
    """Whether hub downloads are disabled (``HF_HUB_OFFLINE``), read at call time."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cache_first(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a hub loader on the HF cache only, then (unless offline) allowing downloads."""
    try:
        return fn(*args, local_files_only=True, cache_dir=_cache_dir(), **kwargs)
    except (OSError, ValueError):
        if is_offline():
            raise
    return fn(*args, cache_dir=_cache_dir(), **kwargs)


def fetch_hub_file(repo: str, filename: str, *, revision: str | None = None) -> str | None:
    """Path of ``filename`` of hub ``repo`` from the HF cache or a download; ``None`` when unavailable."""
    from huggingface_hub import hf_hub_download

    try:
        return _cache_first(hf_hub_download, repo, filename, revision=revision)
    except Exception as e:  # noqa: BLE001 - any hub failure means "not available"; callers raise with context
        log.debug("could not fetch %s from %s: %s", filename, repo, e)
        return None


def _short(e: BaseException) -> str:
    """An exception as one line, for messages the CLI prints on one line."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text[:400]}{'...' if len(text) > 400 else ''}"


def _parse_name(name: str) -> tuple[str, str | None]:
    repo, _, revision = name.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(
            f"hf backbone {name!r} is not a hub repo id; write hf:ORG/NAME (e.g. hf:microsoft/rad-dino)"
        )
    return repo, revision or None


def _hub_message(repo: str, *, pretrained: bool) -> str:
    files = "config.json, model.safetensors" if pretrained else "config.json"
    alternative = "" if pretrained else " (a random init still needs the architecture's config)"
    return (
        f"hf:{repo} needs {files} from Hugging Face repo {repo!r}{alternative}, which are neither in the HF "
        f"cache {_cache_dir()} nor downloadable (offline or no access). Download them on a machine with internet "
        f"(`huggingface-cli download {repo}`) into that cache (or set HF_HOME), or pass --weights DIR with a "
        "folder as save_pretrained writes it (config.json + model.safetensors)"
    )


def _load_config(
    source: str | Path, revision: str | None, overrides: dict[str, Any], *, pretrained: bool = False
) -> Any:
    """The vision config of a repo or local folder, with the address's overrides applied."""
    transformers = require("transformers", extra="hf")
    if isinstance(source, Path):
        if not (source / "config.json").is_file():
            raise WeightsError(
                f"--weights {str(source)!r} has no config.json; give a folder as save_pretrained writes it "
                "(config.json + model.safetensors), or a single weights file"
            )
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    else:
        try:
            config = _cache_first(transformers.AutoConfig.from_pretrained, source, revision=revision)
        except (OSError, ValueError) as e:
            raise WeightsError(_hub_message(source, pretrained=pretrained) + f" ({_short(e)})") from e
    config = getattr(config, "vision_config", None) or config
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(
                f"hf address key {key!r} is not a field of {type(config).__name__}; "
                f"valid keys include {sorted(k for k in config.to_dict() if not k.startswith('_'))[:20]}"
            )
        setattr(config, key, value)
    return config


def _model_class(config: Any) -> type:
    transformers = require("transformers", extra="hf")
    try:
        return transformers.MODEL_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(f"transformers has no base model for config {type(config).__name__}") from None


def _check_loaded(info: dict[str, Any], where: str) -> None:
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith(_BENIGN_MISSING))
    mismatched = sorted(info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise WeightsError(
            f"weights from {where} do not fit the model: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, mismatched {mismatched[:8]}; check that the weights belong "
            "to this architecture (and that no address override changes its shape)"
        )


def _from_pretrained(
    source: str | Path, config: Any, *, revision: str | None, unavailable: str, where: str | None = None
) -> nn.Module:
    """Load weights into the model ``config`` describes; ``unavailable`` prefixes the error if that fails."""
    cls = _model_class(config)
    kwargs = dict(config=config, output_loading_info=True)
    try:
        if isinstance(source, Path):
            model, info = cls.from_pretrained(source, local_files_only=True, **kwargs)
        else:
            model, info = _cache_first(cls.from_pretrained, source, revision=revision, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{unavailable} ({_short(e)})") from e
    _check_loaded(info, where or str(source))
    return model


def _stage_weights_file(path: Path, config: Any, folder: Path) -> Path:
    """A save_pretrained-style folder holding ``config`` and a link to (or copy of) the weights file."""
    name = _WEIGHT_NAMES.get(path.suffix)
    if name is None:
        raise WeightsError(
            f"weights file {str(path)!r} has an unknown suffix; valid: {sorted(_WEIGHT_NAMES)}"
        )
    config.save_pretrained(folder)
    try:
        (folder / name).symlink_to(path.resolve())
    except OSError:
        shutil.copyfile(path, folder / name)
    return folder


def _load_model(
    repo: str, revision: str | None, overrides: dict[str, Any], *, pretrained: bool, weights: str | None
) -> tuple[nn.Module, str | None, str | Path]:
    """``(model, pretrained label, where the preprocessing config lives)``."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            config = _load_config(path, None, overrides)
            model = _from_pretrained(
                path, config, revision=None, unavailable=f"could not load --weights {path}"
            )
            return model, f"file:{path}", path
        if not path.is_file():
            raise WeightsError(
                f"--weights {weights!r} does not exist; give a save_pretrained folder or a file"
            )
        config = _load_config(repo, revision, overrides)
        with tempfile.TemporaryDirectory(prefix="medadapt-hf-") as tmp:
            folder = _stage_weights_file(path, config, Path(tmp))
            model = _from_pretrained(
                folder, config, revision=None, unavailable=f"could not load --weights {path}", where=str(path)
            )
        return model, f"file:{path}", repo
    config = _load_config(repo, revision, overrides, pretrained=pretrained)
    if not pretrained:
        return require("transformers", extra="hf").AutoModel.from_config(config), None, repo
    message = _hub_message(repo, pretrained=True)
    model = _from_pretrained(repo, config, revision=revision, unavailable=message)
    return model, f"hub:{repo}" + (f"@{revision}" if revision else ""), repo


def _preprocessor(source: str | Path, revision: str | None) -> dict[str, Any]:
    if isinstance(source, Path):
        path = source / "preprocessor_config.json"
        path = str(path) if path.is_file() else None
    else:
        path = fetch_hub_file(source, "preprocessor_config.json", revision=revision)
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_stats(
    pre: dict[str, Any], model_type: str, where: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if "image_mean" in pre and "image_std" in pre:
        mean, std = pre["image_mean"], pre["image_std"]
        mean = [mean] * 3 if isinstance(mean, (int, float)) else mean
        std = [std] * 3 if isinstance(std, (int, float)) else std
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    mean, std = _DEFAULT_STATS.get(model_type, _IMAGENET)
    log.info("no preprocessor_config.json for %s: using %s mean/std %s/%s", where, model_type, mean, std)
    return mean, std


def _native_size(pre: dict[str, Any], config: Any) -> Any:
    crop, size = pre.get("crop_size"), pre.get("size")
    return crop if pre.get("do_center_crop") and crop else size or getattr(config, "image_size", None)


def _pool_kind(model: nn.Module) -> str:
    config = model.config
    if config.model_type in _POOLER_FAMILIES and getattr(config, "vision_use_head", True):
        return "pooler"
    embeddings = getattr(getattr(model, "vision_model", model), "embeddings", None)
    has_cls = any(hasattr(embeddings, a) for a in ("cls_token", "class_embedding"))
    if config.model_type not in _POOLER_FAMILIES:
        log.warning(
            "hf model type %r is not one medadapt knows; using %s pooling",
            config.model_type,
            "cls" if has_cls else "mean",
        )
    return "cls" if has_cls else "mean"


def _patch_size(config: Any) -> int:
    p = config.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def create(
    address: BackboneAddress,
    *,
    pretrained: bool,
    weights: str | None,
    img_size: tuple[int, int],
    data_chans: int,
    channel_mode: str,
) -> HFBackbone:
    """Build ``hf:ORG/NAME`` (see the module docstring); called through ``create_backbone``."""
    require("transformers", extra="hf")
    repo, revision = _parse_name(address.name)
    model, label, pre_source = _load_model(
        repo, revision, address.kwargs, pretrained=pretrained, weights=weights
    )
    model = model.float().eval()
    config = model.config
    pre = _preprocessor(pre_source, revision)
    mean, std = address.stats(*_image_stats(pre, config.model_type, str(pre_source)))
    in_chans, mean, std, mode = adapt_channels(
        model, data_chans=data_chans, channel_mode=channel_mode, mean=mean, std=std
    )
    config.num_channels = in_chans
    patch = _patch_size(config)
    log.info("hf:%s: native input size %s, running at %s", repo, _native_size(pre, config), img_size)
    spec = BackboneSpec(
        address=str(address),
        source="hf",
        num_features=int(config.hidden_size),
        input_size=img_size,
        mean=mean,
        std=std,
        in_chans=in_chans,
        data_chans=data_chans,
        channel_mode=mode,
        patch_size=patch,
        pretrained=label,
        license=catalog_license(address),
    )
    return HFBackbone(model, spec, pool=_pool_kind(model))
