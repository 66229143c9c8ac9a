"""Typed run configuration: defaults < preset < YAML (``--config run.yaml``) < CLI flags.

A preset's (or config's) ``arms`` are variants of the run: a later layer's training settings reach every
arm, and a later ``--lr`` replaces an earlier LR search (``lrs``); a later ``--strategy`` / ``--head`` /
``--option`` that arms set themselves is refused rather than silently lost.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ._choices import CHANNEL_MODES, INTERPOLATIONS, RESIZE_MODES
from ._validate import check_alpha_temperature, choice
from ._yaml import load as load_yaml_text
from .errors import ConfigError

__all__ = [
    "RunConfig",
    "ProbeConfig",
    "FinetuneConfig",
    "DistillConfig",
    "load_yaml",
    "merge_config",
    "names_checked_later",
    "load_preset",
    "preset_names",
]

#: What an entry of ``arms`` may set; everything else (data, backbone, image size, seeds) the arms share.
ARM_KEYS = ("name", "strategy", "head", "strategy_options", "head_kwargs", "train", "lrs")
#: Arm keys that a later layer (``--config``, flags) may not change under arms that set them: the arm's name
#: says what it is, so a silent override would mislabel its results (the flag in the message).
_ARM_IDENTITY = {"strategy": "--strategy", "head": "--head", "strategy_options": "--option",
                 "head_kwargs": "head_kwargs"}  # fmt: skip
#: How a saved teacher meets the student's seeds: every model found as one ensemble, or the models of the
#: student's seed.
TEACHER_PAIRINGS = ("ensemble", "seed")


def _heads(*, trainable: bool = False) -> list[str]:
    """Head names from the registry (``trainable``: those a fine-tuning run can train, not kNN)."""
    from .heads import HEADS

    def can_train(
        name: str,
    ) -> bool:  # lazy entries say it in their meta; a class registered directly, itself
        meta = HEADS.meta(name)
        return meta["trainable"] if "trainable" in meta else HEADS.get(name).trainable

    return [n for n in HEADS if not trainable or can_train(n)]


def _segmentation_heads(*, trainable: bool = False) -> list[str]:
    """Segmentation head names: those a probe on cached tokens trains, or (``trainable``) every one a
    fine-tuning run can train end to end, with ``native`` (the decoder an ``smp:`` backbone brings)."""
    if trainable:
        from .heads import NATIVE_HEAD, SEGMENTATION_HEADS

        return [*SEGMENTATION_HEADS, NATIVE_HEAD]
    from .heads import SEGMENTATION_HEADS  # a probe on cached tokens trains every one of them

    return list(SEGMENTATION_HEADS)


def _positive(value: Any, flag: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


def _kinds(cfg: Any, *, lists: tuple[str, ...] = (), dicts: tuple[str, ...] = ()) -> None:
    """A YAML scalar where a list or mapping belongs (``seeds: 3``) is an error here, not a crash later."""
    for name, kind, example in [(n, list, "[0, 1, 2]") for n in lists] + [
        (n, dict, "{key: value}") for n in dicts
    ]:
        value = getattr(cfg, name)
        if not isinstance(value, kind):
            raise ConfigError(
                f"{name} must be a {kind.__name__} (e.g. {name}: {example} in YAML), got {value!r}"
            )


def _unique(values: list, flag: str) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ConfigError(
            f"{flag} repeats {repeated}: each would train twice into one folder; give each once"
        )


@dataclass
class RunConfig:
    """What every run shares: the data, the backbone, how images reach it, seeds and where results go.

    ``size`` picks the dataset's stored resolution (MedMNIST 28/64/128/224); ``img_size`` is what the
    backbone sees (default: ``size``), reached by ``resize_mode`` ``resize`` (interpolation), ``pad``
    (centred on a black canvas) or ``pad_mean`` (on a canvas of the normalisation mean, as the MedMNIST+
    reference code).
    """

    dataset: str
    backbone: str
    out: str = "runs/run"
    head: str = "linear"
    size: int | None = None
    img_size: int | None = None
    resize_mode: str = "resize"
    interpolation: str = "bicubic"
    channel_mode: str = "sum"
    pretrained: bool = True
    weights: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    autocast: bool = True
    data_root: str | None = None
    num_workers: int = 0
    skip_bad_rows: bool = False
    head_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # values first, then names: the registries the names come from import torch, so a bad value (or
        # flag, or YAML) is reported in a fraction of a second; inside names_checked_later() the caller
        # runs check_names() itself (the CLI checks the dataset and its files in between)
        self._check_values()
        if not _NAMES_LATER.get():
            self._check_names()

    def check_names(self) -> None:
        """The registry checks (heads, strategies, ...) deferred by :func:`names_checked_later`."""
        self._check_names()

    def _check_names(self) -> None:
        """Checks against the registries (heads, strategies, ...), which import torch."""

    def _check_values(self) -> None:
        """Checks that need no registry: types, ranges, fixed choices, files."""
        choice(self.resize_mode, RESIZE_MODES, "--resize-mode")
        choice(self.interpolation, INTERPOLATIONS, "--interpolation")
        choice(self.channel_mode, CHANNEL_MODES, "--channel-mode")
        _positive(self.size, "--size", allow_none=True)
        _positive(self.img_size, "--img-size", allow_none=True)
        _kinds(self, lists=("seeds",), dicts=("head_kwargs",))
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError(f"--seeds must be one or more integers, got {self.seeds!r}")
        _unique(self.seeds, "--seeds")
        if self.weights is not None and not Path(self.weights).expanduser().exists():
            raise ConfigError(
                f"--weights {self.weights!r} does not exist; give the path of a local weights file"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def out_dir(self) -> Path:
        """``out`` as a path, ``~`` expanded."""
        return Path(self.out).expanduser()


@dataclass
class ProbeConfig(RunConfig):
    """A frozen-probe run: cached features, a grid of linear / attention / kNN heads."""

    out: str = "runs/probe"
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-4, 1e-4, 3e-5, 1e-5])
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    epochs: int = 30
    batch_size: int = 256
    weight_decay: float = 1e-4
    extract_batch_size: int = 64
    cache_dir: str | None = None
    #: the seed the backbone is drawn from (a random init differs per seed); ``None``: the run's seed
    backbone_seed: int | None = None
    #: extract patch tokens for any head (a grid does, so a linear and an attention probe share one extraction)
    with_tokens: bool = False

    def _check_names(self) -> None:
        super()._check_names()
        choice(self.head, tuple(dict.fromkeys([*_heads(), *_segmentation_heads()])), "--head")

    def _check_values(self) -> None:
        super()._check_values()
        if self.backbone_seed is not None and (
            not isinstance(self.backbone_seed, int) or self.backbone_seed < 0
        ):
            raise ConfigError(f"backbone_seed must be a non-negative integer, got {self.backbone_seed!r}")
        _kinds(self, lists=("lrs", "ks"))
        for name in ("epochs", "batch_size", "extract_batch_size"):
            _positive(getattr(self, name), f"--{name.replace('_', '-')}")
        if not self.lrs or not all(isinstance(x, (int, float)) and x > 0 for x in self.lrs):
            raise ConfigError(f"--lrs must be positive numbers, got {self.lrs!r}")
        if not self.ks or not all(isinstance(k, int) and k > 0 for k in self.ks):
            raise ConfigError(f"--ks must be positive integers, got {self.ks!r}")


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run: a strategy (what trains, at which LRs) and a training recipe (``train``).

    ``train`` holds :class:`~medadapt.training.loop.TrainConfig` fields (optimizer, lr, epochs, schedule,
    ...); ``strategy_options`` the strategy's own (e.g. LoRA ``r``). ``arms`` runs several variants side by
    side, each a mapping of overrides with a ``name`` (presets use it).
    """

    out: str = "runs/finetune"
    strategy: str = "full"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    arms: list[dict[str, Any]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    resume: bool = False
    batch_size_eval: int = 256

    def _check_values(self) -> None:
        super()._check_values()
        _kinds(self, lists=("lrs", "arms"), dicts=("train", "strategy_options"))
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in self.lrs):
            raise ConfigError(f"--lrs must be positive numbers, got {self.lrs!r}")
        _unique(self.lrs, "--lrs")
        self.arms = [_arm(a) for a in self.arms]
        _unique([a["name"] for a in self.arms], "arms (names)")

    def _check_names(self) -> None:
        super()._check_names()
        choice(self.head, tuple(dict.fromkeys([*_heads(trainable=True), *_segmentation_heads(trainable=True)])),
               "--head")  # fmt: skip
        from .strategies import STRATEGIES
        from .training.config import TrainConfig

        choice(self.strategy, tuple(STRATEGIES), "--strategy")
        unknown = sorted(set(self.train) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise ConfigError(
                f"unknown training setting(s) {unknown}; valid: {sorted(f.name for f in fields(TrainConfig))}"
            )
        TrainConfig(**self.train)  # validate now, before any work
        if not self.arms:
            from .strategies import create_strategy

            create_strategy(self.strategy, **self.strategy_options)  # its options checked before any work
        self.arm_configs()  # and every arm's, likewise

    def arm_configs(self) -> list[tuple[str, FinetuneConfig]]:
        """``(name, config)`` per arm (its keys over the run's; ``train`` merged); without ``arms`` the run
        itself is the one arm, named ``STRATEGY-HEAD``."""
        if not self.arms:
            return [(f"{self.strategy}-{self.head}", self)]
        arms = []
        for arm in self.arms:
            name, keys = str(arm["name"]), {k: v for k, v in arm.items() if k != "name"}
            keys["train"] = {**self.train, **keys.get("train", {})}
            try:
                arms.append((name, dataclasses.replace(self, **keys, arms=[])))
            except ConfigError as e:
                raise ConfigError(f"arm {name!r}: {e}") from e
        return arms


def _arm(arm: Any) -> dict[str, Any]:
    """An entry of ``arms`` with its keys checked (dashes read as underscores, as in YAML configs)."""
    if not isinstance(arm, dict) or "name" not in arm:
        raise ConfigError(f"every entry of arms needs a name, got {arm!r}")
    arm = {str(k).replace("-", "_"): v for k, v in arm.items()}
    unknown = sorted(set(arm) - set(ARM_KEYS))
    if unknown:
        raise ConfigError(
            f"arm {arm['name']!r} sets {unknown}, which every arm shares with the run (data, backbone, image "
            f"size, seeds, output); an arm may set {list(ARM_KEYS)}"
        )
    if not isinstance(arm.get("train", {}), dict):
        raise ConfigError(
            f"arm {arm['name']!r}: train must be a mapping of training settings, got {arm['train']!r}"
        )
    return arm


@dataclass
class DistillConfig(FinetuneConfig):
    """A distillation run: a frozen ``teacher`` into a student ``backbone`` trained as :class:`FinetuneConfig`.

    ``teacher`` lists run directories / saved-model folders (every model found joins one ensemble, or with
    ``teacher_pairing="seed"`` only the models of the student's seed) or one backbone address, whose linear
    probe is trained first per seed (``teacher_*`` settings). The student
    trains alone (``baseline``) and distilled at ``alpha`` / ``temperature``; ``alphas`` / ``temperatures``
    make an ablation grid instead (one distilled arm per pair).
    """

    backbone: str = "timm:resnet18"
    out: str = "runs/distill"
    strategy: str = "scratch"
    teacher: list[str] = field(default_factory=list)
    teacher_pretrained: bool = True
    teacher_weights: str | None = None
    teacher_img_size: int | None = None
    teacher_channel_mode: str = "sum"
    teacher_pairing: str = "ensemble"
    alpha: float = 0.2
    temperature: float = 2.0
    alphas: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    baseline: bool = True
    figures: bool = True
    gradcam_images: int = 8
    tsne_points: int = 2000
    cache_dir: str | None = None

    def _check_values(self) -> None:
        if self.arms:
            with_arms = [n for n in preset_names() if load_preset(n).get("arms")]
            names = [a.get("name") if isinstance(a, dict) else a for a in self.arms]
            raise ConfigError(
                f"distill trains one student recipe, but the configuration has arms {names} (as the presets "
                f"{with_arms} do, for finetune); use a preset without arms (medmnist_v2) or give --strategy "
                "and the training flags"
            )
        super()._check_values()
        _kinds(self, lists=("alphas", "temperatures"))
        if isinstance(self.teacher, str):
            self.teacher = [self.teacher]
        if not self.teacher:
            raise ConfigError(
                "--teacher is required: a probe / finetune run directory, or a backbone address whose linear "
                "probe is trained first (e.g. --teacher timm:vit_base_patch14_dinov2.lvd142m)"
            )
        choice(self.teacher_channel_mode, CHANNEL_MODES, "--teacher-channel-mode")
        choice(self.teacher_pairing, TEACHER_PAIRINGS, "--teacher-pairing")
        _positive(self.teacher_img_size, "--teacher-img-size", allow_none=True)
        _positive(self.gradcam_images, "--gradcam-images")
        _positive(self.tsne_points, "--tsne-points")
        if self.teacher_weights is not None and not Path(self.teacher_weights).expanduser().exists():
            raise ConfigError(f"--teacher-weights {self.teacher_weights!r} does not exist")
        for t, a in self.grid():
            check_alpha_temperature(a, t)

    def grid(self) -> list[tuple[float, float]]:
        """The distilled arms' ``(temperature, alpha)`` pairs, temperature-major."""
        temps = self.temperatures or [self.temperature]
        alphas = self.alphas or [self.alpha]
        return [(float(t), float(a)) for t in temps for a in alphas]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of config keys (the dataclass field names; dashes allowed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--config {str(p)!r} does not exist")
    try:
        data = load_yaml_text(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {str(p)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {str(p)!r} must hold a mapping of keys to values, got {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


_NAMES_LATER: contextvars.ContextVar[bool] = contextvars.ContextVar("medadapt_names_later", default=False)


@contextlib.contextmanager
def names_checked_later() -> Iterator[None]:
    """Configs built inside check their values only; call ``cfg.check_names()`` after (it imports torch)."""
    token = _NAMES_LATER.set(True)
    try:
        yield
    finally:
        _NAMES_LATER.reset(token)


def merge_config(cls: type, *layers: dict[str, Any]):
    """Build ``cls`` from dicts applied in order (later wins; ``None`` values in a layer are ignored)."""
    valid = {f.name for f in fields(cls)}
    mappings = {f.name for f in fields(cls) if f.default_factory is dict}
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = sorted(set(layer) - valid)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}")
        for k in mappings & set(layer):  # checked here: a later layer's mapping would hide the bad value
            if layer[k] is not None and not isinstance(layer[k], dict):
                raise ConfigError(
                    f"{k} must be a mapping (e.g. {k}: {{key: value}} in YAML), got {layer[k]!r}"
                )
        train = layer.get("train") if isinstance(layer.get("train"), dict) else {}
        if "lr" in train and layer.get("lrs") is None and merged.get("lrs"):
            merged["lrs"] = []  # one LR asked for over an earlier layer's LR search: the search is dropped
        if isinstance(merged.get("arms"), list) and layer.get("arms") is None:
            merged["arms"] = _over_arms(merged["arms"], layer, train)
        for k, v in layer.items():
            if v is None:
                continue
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    missing = [
        f.name
        for f in fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in merged
    ]  # noqa: E501
    if missing:
        raise ConfigError(
            f"missing required setting(s): {', '.join('--' + m.replace('_', '-') for m in missing)}"
        )
    return cls(**merged)


def _over_arms(arms: list, layer: dict[str, Any], train: dict[str, Any]) -> list:
    """Arms of an earlier layer (a preset) under a later one: its training settings and LRs win over the
    arms' own; what names an arm (strategy, head, options) it may not change where an arm sets it."""
    arms = [{str(k).replace("-", "_"): v for k, v in a.items()} if isinstance(a, dict) else a for a in arms]
    clash = {k: flag for k, flag in _ARM_IDENTITY.items()
             if layer.get(k) not in (None, {}) and any(isinstance(a, dict) and k in a for a in arms)}  # fmt: skip
    if clash:
        names = [a.get("name") for a in arms if isinstance(a, dict)]
        raise ConfigError(
            f"{', '.join(clash.values())} would not reach the arms {names} of the preset (or an earlier "
            f"--config): they set {', '.join(clash)} themselves. Drop it, or list your own arms in a --config "
            "YAML (arms: [{name: ..., strategy: ..., head: ...}])"
        )
    sets_lr = layer.get("lrs") is not None or "lr" in train
    over = []
    for arm in arms:
        if isinstance(arm, dict):
            arm = dict(arm)
            if isinstance(arm.get("train"), dict):
                arm["train"] = {k: v for k, v in arm["train"].items() if k not in train}
            if sets_lr:
                arm.pop("lrs", None)
        over.append(arm)
    return over


def preset_names() -> list[str]:
    """The protocol presets shipped in ``medadapt/configs/*.yaml``."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("medadapt").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))  # fmt: skip


def _preset_file(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid: {names}")
    text = resources.files("medadapt").joinpath(f"configs/{name}.yaml").read_text()
    return load_yaml_text(text) or {}


def preset_description(name: str) -> str:
    """What the preset ``name`` reproduces and how it differs from its reference (its ``description``)."""
    return " ".join(str(_preset_file(name).get("description", "")).split())


def load_preset(name: str) -> dict[str, Any]:
    """A protocol preset by name (see :func:`preset_names`), as a config layer."""
    data = _preset_file(name)
    data.pop("description", None)
    data.pop("reference", None)
    return {str(k).replace("-", "_"): v for k, v in data.items()}
