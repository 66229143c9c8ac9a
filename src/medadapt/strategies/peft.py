"""Parameter-efficient strategies: ``lora`` and ``ia3`` (through peft), ``ln_tune`` (norm tuning).

Adapters go into the backbone only (``peft.inject_adapter_in_model``, in place, so parameter names keep
their ``backbone.`` prefix and the backbone's ``forward_features`` is untouched); the head always trains
fully. :meth:`export` returns a copy with the adapters merged into the base weights: the same modules and
parameter names as the plain classifier, the same outputs, no peft modules left.

Default targets, found by module name and type in any source (timm, HF, open_clip):

=========  ===============================================================================================
scope      modules (suffixes of module names)
=========  ===============================================================================================
``qkv``    attention input projections: timm's fused ``qkv``; HF ``q_proj``/``k_proj``/``v_proj`` (DINOv2 in
           transformers 5, SigLIP, DINOv3; also timm EVA) or ``query``/``key``/``value`` (DINOv2 in 4.x);
           timm's attention-pool head (SigLIP MAP) ``attn_pool.q``/``attn_pool.kv``
``attn``   ``qkv`` plus the attention output: ``attn.proj`` (timm), ``o_proj`` / ``out_proj`` (HF DINOv2,
           DINOv3, SigLIP), ``attention.output.dense`` (DINOv2 in transformers 4.x), ``attn_pool.proj``
``all``    ``attn`` plus the MLP: ``fc1``/``fc2`` (timm, DINOv2, SigLIP), ``c_fc``/``c_proj`` (open_clip),
           ``up_proj``/``gate_proj``/``down_proj`` (DINOv3), ``weights_in``/``weights_out`` (SwiGLU)
=========  ===============================================================================================

Backbones without attention (ResNet, ConvNeXt) get adapters on every ``nn.Conv2d`` (not grouped: peft cannot
merge depthwise convolutions) and ``nn.Linear``, whatever the scope. open_clip ViTs use
``nn.MultiheadAttention``, whose projections are not modules peft can wrap cleanly (its LoRA for them merges
and unmerges the weights around every forward, so the frozen weights drift by rounding errors and are new
``Parameter`` objects at each step): their default targets are the MLP layers (``c_fc``, ``c_proj``) whatever
the scope; ``target_modules=["attn"]`` still asks for peft's version. ``target_modules`` (name suffixes, as
in peft) overrides all of this; a list that matches nothing raises a :class:`ConfigError` showing the
module names that exist. Modules the classifier's output does not depend on (a pooling head beside an
attention head, which reads the patch tokens) get no adapters.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .._optional import require
from ..errors import ConfigError

if TYPE_CHECKING:  # a strategy's options are checked without torch; its methods import it
    from torch import nn

from ._params import (
    check_number,
    check_training_args,
    classifier_parts,
    head_names,
    select,
    unreachable_names,
)
from .base import Strategy

__all__ = ["IA3", "LoRA", "NormTune", "adapter_modules", "merge_adapters", "resolve_targets"]

log = logging.getLogger(__name__)

# timm's attention-pool head (SigLIP's MAP, ``attn_pool``) has its own ``q``, ``kv`` and ``proj``
_ATTN_IN = ("qkv", "query", "key", "value", "q_proj", "k_proj", "v_proj", "attn_pool.q", "attn_pool.kv")
_ATTN_KV = ("qkv", "key", "value", "k_proj", "v_proj", "attn_pool.kv")  # IA3: keys and values (qkv: all)
_ATTN_OUT = ("attn.proj", "attention.output.dense", "out_proj", "o_proj", "attn_pool.proj")
_MLP_IN = ("fc1", "fc1_g", "fc1_x", "c_fc", "up_proj", "gate_proj", "weights_in", "w12")
_MLP_OUT = ("fc2", "c_proj", "down_proj", "weights_out", "w3")
SCOPES = {"qkv": _ATTN_IN, "attn": _ATTN_IN + _ATTN_OUT, "all": _ATTN_IN + _ATTN_OUT + _MLP_IN + _MLP_OUT}


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _adaptable(module: nn.Module, *, attention: bool) -> bool:
    """Linear, ungrouped Conv2d (peft cannot merge grouped ones) and, if asked, MultiheadAttention."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    if attention and isinstance(module, nn.MultiheadAttention):
        return bool(module._qkv_same_embed_dim)
    return isinstance(module, nn.Linear)


def _layers(backbone: nn.Module, *, attention: bool, exclude: Collection[str] = ()) -> dict[str, nn.Module]:
    """Modules an adapter can wrap, by name; never the children of an ``nn.MultiheadAttention``, nor the
    modules in ``exclude`` (those the output does not depend on).

    ``MultiheadAttention`` calls its ``out_proj`` weights functionally, so an adapter on it would be ignored.
    """
    from torch import nn

    mha = [n for n, m in backbone.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return {
        n: m
        for n, m in backbone.named_modules()
        if n
        and n not in exclude
        and _adaptable(m, attention=attention)
        and not any(n.startswith(p + ".") for p in mha)
    }


def unreachable_modules(model: nn.Module) -> set[str]:
    """Names (relative to the backbone) of the backbone's modules with parameters, none of which the
    classifier's output depends on (:func:`~medadapt.strategies._params.unreachable_names`)."""
    dead = unreachable_names(model)
    backbone, _ = classifier_parts(model)
    out = set()
    for name, module in backbone.named_modules():
        own = [f"backbone.{name}.{n}" if name else f"backbone.{n}" for n, _ in module.named_parameters()]
        if own and all(n in dead for n in own):
            out.add(name)
    return out


def _name_sample(names: Sequence[str], limit: int = 16) -> list[str]:
    """Distinct module names with block indices folded to ``*``: a readable summary of a model."""
    folded = dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names)
    return list(folded)[:limit]


def resolve_targets(
    backbone: nn.Module,
    *,
    scope: str = "qkv",
    target_modules: Sequence[str] | None = None,
    multihead_attention: bool = False,
    roles: Sequence[str] | None = None,
    exclude: Collection[str] = (),
) -> list[str]:
    """Full names (relative to ``backbone``) of the modules that get adapters.

    Args:
        scope: ``qkv``, ``attn`` or ``all`` (see the module docstring); ignored with ``target_modules``.
        target_modules: name suffixes chosen by the user (``["attn.qkv", "mlp.fc2"]``).
        multihead_attention: whether ``target_modules`` may name an ``nn.MultiheadAttention`` (peft's LoRA
            wraps them; IA3 cannot).
        roles: the suffixes that define the scope (overrides ``scope``; IA3 uses keys, values and MLP out).
        exclude: module names never adapted: those the classifier's output does not depend on (a pooling
            head beside an attention head that reads the tokens; see :func:`unreachable_modules`).

    Example:
        >>> resolve_targets(backbone, scope="qkv")  # doctest: +SKIP
        ['model.blocks.0.attn.qkv', 'model.blocks.1.attn.qkv']
    """
    from torch import nn

    if target_modules is not None:
        layers = _layers(backbone, attention=multihead_attention)
        return _user_targets(backbone, layers, target_modules, exclude)
    layers = _layers(backbone, attention=False, exclude=exclude)
    mha = any(isinstance(m, nn.MultiheadAttention) for m in backbone.modules())
    if not mha and not any(_matches(n, _ATTN_IN) for n in layers):  # a CNN: every conv and linear layer
        log.info("no attention layers: adapters on all %d conv/linear layers", len(layers))
        found = list(layers)
    else:
        suffixes = tuple(roles) if roles is not None else SCOPES[scope]
        found = [n for n in layers if _matches(n, suffixes)]
        if not found and mha:
            log.info("attention is nn.MultiheadAttention (open_clip): adapters on the MLP layers instead")
            found = [n for n in layers if _matches(n, _MLP_IN + _MLP_OUT)]
    if not found:
        raise ConfigError(
            f"found no default adapter targets in {type(backbone).__name__}; pass target_modules, e.g. from "
            f"{_name_sample(list(layers), 8)}"
        )
    return found


def _user_targets(
    backbone: nn.Module, layers: dict[str, nn.Module], suffixes: Sequence[str], exclude: Collection[str]
) -> list[str]:
    matched = [n for n, _ in backbone.named_modules() if n and _matches(n, suffixes)]
    if not matched:
        raise ConfigError(
            f"target_modules {list(suffixes)} match no module of the backbone; module names that can be "
            f"targeted (write a suffix, e.g. 'attn.qkv'): {_name_sample(list(layers))}"
        )
    unused = [n for n in matched if n in exclude]
    if unused and len(unused) == len(matched):
        raise ConfigError(
            f"target_modules {list(suffixes)} match only modules the head's input does not depend on "
            f"({_name_sample(unused, 4)}: the attention head reads the patch tokens, not the pooled "
            "embedding); target the encoder's blocks instead"
        )
    if unused:
        log.info("not adapting %d matched modules the head's input does not depend on: %s",
                 len(unused), _name_sample(unused, 4))  # fmt: skip
        matched = [n for n in matched if n not in exclude]
    unsupported = [n for n in matched if n not in layers]
    if unsupported:
        kinds = {n: type(backbone.get_submodule(n)).__name__ for n in unsupported[:5]}
        raise ConfigError(
            f"target_modules {list(suffixes)} match modules an adapter cannot wrap: {kinds}; "
            f"target linear / conv layers instead, e.g. {_name_sample(list(layers), 8)}"
        )
    return matched


def _check_targets(strategy: str, targets: Any, option: str = "target_modules") -> list[str] | None:
    if targets is None:
        return None
    if isinstance(targets, str):  # --option target_modules=qkv,fc1 (as dataset options take lists)
        targets = [t.strip() for t in targets.split(",")]
    if (
        not isinstance(targets, (list, tuple))
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise ConfigError(
            f"{strategy} option {option!r} must be a non-empty list of module-name suffixes "
            f"(e.g. ['attn.qkv']) or null for the per-family default, got {targets!r}"
        )
    return list(targets)


def _tuner_layer_type() -> type:
    require("peft", extra="peft")
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def adapter_modules(module: nn.Module) -> list[str]:
    """Names of the outermost peft adapter layers inside ``module``."""
    tuner = _tuner_layer_type()
    names = [n for n, m in module.named_modules() if isinstance(m, tuner)]
    return [n for n in names if not any(n.startswith(p + ".") for p in names)]


def _inject(backbone: nn.Module, config: Any) -> None:
    peft = require("peft", extra="peft")
    if adapter_modules(backbone):
        raise ConfigError("the backbone already has peft adapters: configure a freshly built classifier")
    try:
        peft.inject_adapter_in_model(config, backbone)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"peft could not add {type(config).__name__} adapters: {e}") from e
    backbone.__dict__.pop("peft_config", None)  # peft's bookkeeping; the strategy is the record


def merge_adapters(module: nn.Module) -> nn.Module:
    """Merge every peft adapter in ``module`` into its base layer and remove it, in place.

    What peft's ``merge_and_unload`` does on a ``PeftModel``, for adapters injected into a plain module.
    """
    for name in adapter_modules(module):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        layer = getattr(parent, child)
        if hasattr(layer, "unload_and_optionally_merge_module"):  # nn.MultiheadAttention
            base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            layer.merge()
            base = layer.get_base_layer()
        setattr(parent, child, base)
    return module


class _AdapterStrategy(Strategy):
    """Shared configure/export of the peft strategies; subclasses build the peft config."""

    def _peft_config(self, backbone: nn.Module, exclude: set[str]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        backbone, _ = classifier_parts(model)
        _inject(backbone, self._peft_config(backbone, unreachable_modules(model)))
        adapters = [n for n, _ in model.named_parameters() if self._marker in n]
        sizes = {n: p.numel() for n, p in backbone.named_parameters()}
        n_adapter = sum(v for n, v in sizes.items() if self._marker in n)
        n_base = sum(sizes.values()) - n_adapter
        log.info(
            "%s: %d adapter parameters (%.2f%% of the backbone)",
            self.name,
            n_adapter,
            100 * n_adapter / n_base,
        )
        parts = [("adapters", adapters, lr), ("head", head_names(model), lr)]
        return select(model, parts, weight_decay=weight_decay)

    def export(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the adapters merged in (``model`` itself keeps them and can train on)."""
        return merge_adapters(copy.deepcopy(model))


@dataclass
class LoRA(_AdapterStrategy):
    """Low-rank adapters on the backbone's attention (and optionally MLP) layers, through peft.

    Args:
        r: rank of the update.
        alpha: scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter's input.
        scope: default targets, ``qkv``, ``attn`` or ``all`` (see the module docstring).
        target_modules: module-name suffixes to adapt instead of the scope's defaults.
    """

    name: ClassVar[str] = "lora"
    _marker: ClassVar[str] = "lora_"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    scope: str = "qkv"
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        check_number(self.name, "r", self.r, low=1, integer=True)
        check_number(self.name, "alpha", self.alpha, low=0.0)
        check_number(self.name, "dropout", self.dropout, low=0.0, high=1.0)
        if self.alpha == 0 or self.dropout == 1:
            raise ConfigError(
                f"{self.name} needs alpha > 0 and dropout < 1, got {self.alpha}, {self.dropout}"
            )
        if self.scope not in SCOPES:
            raise ConfigError(
                f"{self.name} option 'scope' must be one of {sorted(SCOPES)}, got {self.scope!r}"
            )
        self.target_modules = _check_targets(self.name, self.target_modules)

    def _peft_config(self, backbone: nn.Module, exclude: set[str]) -> Any:
        from torch import nn

        peft = require("peft", extra="peft")
        targets = resolve_targets(
            backbone,
            scope=self.scope,
            target_modules=self.target_modules,
            multihead_attention=True,
            exclude=exclude,
        )
        if any(isinstance(backbone.get_submodule(n), nn.MultiheadAttention) for n in targets):
            log.warning(
                "lora on nn.MultiheadAttention: peft merges and unmerges its weights around every forward, "
                "so the frozen attention weights drift by rounding errors; prefer the MLP targets"
            )
        log.info(
            "lora: r=%d alpha=%g on %d modules: %s", self.r, self.alpha, len(targets), _name_sample(targets)
        )
        return peft.LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets, bias="none"
        )


@dataclass
class IA3(_AdapterStrategy):
    """(IA)^3: learned vectors rescaling keys, values and the MLP's hidden activations (Liu et al. 2022).

    By default: the key and value projections (timm's fused ``qkv`` is rescaled as a whole) and the MLP's
    output layer, whose *input* (the hidden activations) is rescaled (peft's ``feedforward_modules``).
    open_clip's ``nn.MultiheadAttention`` cannot take IA3, so its towers get the MLP vectors only; CNNs get
    vectors on every conv / linear output.

    Args:
        target_modules: module-name suffixes to adapt instead of the defaults.
        feedforward_modules: which of them rescale their input; default: those that are MLP output layers.
    """

    name: ClassVar[str] = "ia3"
    _marker: ClassVar[str] = "ia3_"
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None

    def __post_init__(self) -> None:
        self.target_modules = _check_targets(self.name, self.target_modules)
        self.feedforward_modules = _check_targets(self.name, self.feedforward_modules, "feedforward_modules")

    def _peft_config(self, backbone: nn.Module, exclude: set[str]) -> Any:
        peft = require("peft", extra="peft")
        targets = resolve_targets(
            backbone, target_modules=self.target_modules, roles=_ATTN_KV + _MLP_OUT, exclude=exclude
        )
        ff_suffixes = self.feedforward_modules or _MLP_OUT
        feedforward = [n for n in targets if _matches(n, ff_suffixes)]
        if self.feedforward_modules and not feedforward:
            raise ConfigError(
                f"ia3 option 'feedforward_modules' {self.feedforward_modules} matches none of the targets "
                f"{_name_sample(targets)}"
            )
        log.info(
            "ia3: %d modules (%d feed-forward): %s", len(targets), len(feedforward), _name_sample(targets)
        )
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward)


@functools.cache
def _norm_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase) + (
        (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
    )


#: Class names of norms outside torch.nn (timm ``RmsNorm``/``LayerNorm2d``, HF ``*RMSNorm``, ...).
_NORM_NAME = re.compile(r"(Norm|Norm[123]d|NormFp32)$")


def _is_norm(module: nn.Module, *, batchnorm: bool) -> bool:
    from torch import nn

    if isinstance(module, nn.modules.batchnorm._NormBase) or "BatchNorm" in type(module).__name__:
        return batchnorm
    return isinstance(module, _norm_types()) or bool(_NORM_NAME.search(type(module).__name__))


def norm_parameters(backbone: nn.Module, *, batchnorm: bool = True) -> list[str]:
    """Names of the affine parameters (1-D) of the backbone's normalization layers."""
    names = []
    for prefix, module in backbone.named_modules():
        if _is_norm(module, batchnorm=batchnorm):
            names += [f"{prefix}.{n}" for n, p in module.named_parameters(recurse=False) if p.ndim == 1]
    return names


@dataclass
class NormTune(Strategy):
    """Train only the backbone's normalization layers (weights and biases) and the head.

    LayerNorm tuning for ViTs; for CNNs the BatchNorm/GroupNorm affine parameters (``batchnorm=False``
    keeps BatchNorm frozen). Note that BatchNorm running statistics still update whenever the model is in
    train mode.

    Args:
        batchnorm: also tune BatchNorm layers.
    """

    name: ClassVar[str] = "ln_tune"
    batchnorm: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.batchnorm, bool):
            raise ConfigError(f"{self.name} option 'batchnorm' must be true or false, got {self.batchnorm!r}")

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        backbone, _ = classifier_parts(model)
        norms = [f"backbone.{n}" for n in norm_parameters(backbone, batchnorm=self.batchnorm)]
        if not norms:
            raise ConfigError(
                f"{self.name}: the backbone has no normalization layers to tune"
                + ("" if self.batchnorm else " (batchnorm=False excludes BatchNorm)")
            )
        parts = [("norms", norms, lr), ("head", head_names(model), lr)]
        return select(model, parts, weight_decay=weight_decay)
