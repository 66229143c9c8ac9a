"""Grid methods: how an entry of a grid file's ``methods`` becomes cells of a driver method.

A grid method is registered in :data:`GRID_METHODS` under the key that names it in a method entry
(``probe: linear``, ``finetune: lora``, ``preset: natural_fm_finetune``); it says which keys such an entry
may set and turns the entry into one or more ``(name, driver method, config layer)`` variants. Adding one is
a class here (or in its own module) and its ``GRID_METHODS.register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._registry import Registry
from ..errors import ConfigError

__all__ = ["GRID_METHODS", "GridMethod", "Variant", "shorthand"]


@dataclass(frozen=True)
class Variant:
    """One method of the grid: its name, the driver method that runs it and its config class and layer."""

    name: str
    driver: str  # a name in medadapt.driver.METHODS
    config: str  # ProbeConfig or FinetuneConfig (a name in medadapt.config)
    layer: dict[str, Any]


class GridMethod:
    """Base of the grid methods: ``keys`` an entry may set besides ``name`` and the method's own key."""

    keys: ClassVar[tuple[str, ...]] = ()

    def variants(
        self, name: str | None, value: Any, entry: dict[str, Any]
    ) -> list[Variant]:  # pragma: no cover
        raise NotImplementedError


GRID_METHODS: Registry[GridMethod] = Registry("grid method")


class Probe(GridMethod):
    """``probe: HEAD``: a frozen backbone and a probe head (linear, attention, knn; on a segmentation dataset
    linear, multiscale, decoder) on cached features."""

    keys = ("lrs", "ks", "epochs", "batch_size", "weight_decay", "head_kwargs", "extract_batch_size")

    def variants(self, name, value, entry):
        from ..heads import HEADS, SEGMENTATION_HEADS

        if str(value) not in SEGMENTATION_HEADS:
            HEADS.get(str(value))  # "did you mean" for a typo
        return [Variant(name or str(value), "probe", "ProbeConfig", {"head": str(value), **entry})]


class Finetune(GridMethod):
    """``finetune: STRATEGY``: backbone + head trained under a strategy (options, head, train recipe, lrs)."""

    keys = ("head", "options", "train", "lrs", "head_kwargs", "batch_size_eval")

    def variants(self, name, value, entry):
        from ..strategies import STRATEGIES

        STRATEGIES.get(str(value))
        layer = {"strategy": str(value), **_renamed(entry)}
        default = str(value) if entry.get("head", "linear") == "linear" else f"{value}-{entry['head']}"
        return [Variant(name or default, "finetune", "FinetuneConfig", layer)]


class Preset(GridMethod):
    """``preset: NAME``: a fine-tuning protocol preset; a preset with arms gives one method per arm
    (``NAME/ARM``), with the entry's ``train`` / ``lrs`` over the preset's."""

    keys = ("train", "lrs", "head", "options")

    def variants(self, name, value, entry):
        from ..config import FinetuneConfig, load_preset, merge_config

        preset = load_preset(str(value))
        base = name or str(value)
        cfg = merge_config(FinetuneConfig, {"dataset": "-", "backbone": "-"}, preset, _renamed(entry))
        if not cfg.arms:
            return [Variant(base, "finetune", "FinetuneConfig", {**preset, **_renamed(entry)})]
        out = []
        for arm_name, arm in cfg.arm_configs():
            layer = {
                k: getattr(arm, k)
                for k in ("strategy", "head", "strategy_options", "head_kwargs", "train", "lrs")
            }
            layer.update({k: v for k, v in preset.items() if k not in ("arms", *layer)})
            out.append(Variant(f"{base}/{arm_name}", "finetune", "FinetuneConfig", layer))
        return out


class Distill(GridMethod):
    """``distill: METHOD``: a student (``student``, default ``timm:resnet18``; strategy ``scratch``) trained on
    labels and the soft targets of METHOD's model in the same (dataset, backbone, fold, seed): its cell runs
    after that one. ``alpha`` weighs the label loss, ``temperature`` softens both sides."""

    keys = ("student", "alpha", "temperature", "strategy", "options", "train", "lrs", "head", "img_size",
            "channel_mode")  # fmt: skip

    def variants(self, name, value, entry):
        layer = {"backbone": entry.pop("student", "timm:resnet18"), "strategy": entry.pop("strategy", "scratch"),
                 "teacher": [TEACHER_OF + str(value)], "figures": False, **_renamed(entry)}  # fmt: skip
        return [Variant(name or f"distill-{value}", "distill", "DistillConfig", layer)]


#: How a distill variant's ``teacher`` names the grid method whose cells teach it (resolved per cell).
TEACHER_OF = "grid-method:"


def _renamed(entry: dict[str, Any]) -> dict[str, Any]:
    """Grid spelling to config fields: ``options`` are the strategy's options."""
    return {("strategy_options" if k == "options" else k): v for k, v in entry.items()}


GRID_METHODS.register("probe", Probe())
GRID_METHODS.register("finetune", Finetune())
GRID_METHODS.register("preset", Preset())
GRID_METHODS.register("distill", Distill())


def shorthand(text: str) -> tuple[str, str]:
    """A method given as a bare name: a probe head (``linear``) or a strategy (``lora``); ``(key, value)``."""
    from ..heads import HEADS
    from ..strategies import STRATEGIES

    if text in HEADS:
        return "probe", text
    if text in STRATEGIES:
        return "finetune", text
    names = [*HEADS, *STRATEGIES]
    raise ConfigError(
        f"methods: {text!r} is neither a probe head nor a strategy ({HEADS.unknown_message(text, names)}); "
        f"or give a mapping with one of {GRID_METHODS.list()}"
    )
