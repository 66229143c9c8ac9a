"""The grid file: datasets × backbones × methods × seeds × folds, validated whole before any work.

```yaml
datasets: [medmnist:breastmnist]                    # addresses, or {address, name, size, img_size, ...}
backbones:                                          # addresses / aliases, or {address, name, img_size, ...}
  - timm:resnet18
  - {address: "timm:vit_small_patch16_224?embed_dim=96", name: vit-tiny, img_size: 28}
methods:                                            # a head (probe), a strategy (finetune), or a mapping
  - linear
  - {name: lora-r8, finetune: lora, options: {r: 8}, train: {epochs: 5}}
seeds: [0, 1]                                       # or a count: 2
folds: 5                                            # official, K, or {k: 5, seed: 0, val_folds: 8};
                                                    # a dataset entry may set its own folds
settings: {pretrained: false, size: 28}             # every cell (a cell's own entries win)
include: [{backbone: vit-*}]                        # optional glob filters over cell names
exclude: [{method: knn, fold: 3}]
executor: {kind: local, workers: 2}                 # or {kind: slurm, partition: gpu, gpus: 1, ...}
```

A cell's config is ``settings`` < its dataset's entry < its backbone's < its method's, as ProbeConfig or
FinetuneConfig. Every error names the key (``methods[2].train``) and is raised before any work.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._yaml import load as load_yaml_text
from ..errors import ConfigError, MedadaptError
from .methods import GRID_METHODS, Variant, shorthand

__all__ = ["Grid", "CellSpec", "FoldSpec", "load_grid", "parse_grid", "TOP_KEYS"]

TOP_KEYS = ("name", "datasets", "backbones", "methods", "seeds", "folds", "settings", "include", "exclude",
            "executor")  # fmt: skip
#: What a dataset / backbone entry may set besides ``address`` and ``name`` (config fields).
DATASET_KEYS = ("size", "img_size", "resize_mode", "interpolation", "skip_bad_rows", "data_root", "folds")
BACKBONE_KEYS = (
    "img_size",
    "weights",
    "pretrained",
    "channel_mode",
    "resize_mode",
    "interpolation",
    "init_seed",
)
#: Config fields that ``settings`` may not set: the grid's axes set them, cell by cell.
_AXES = ("dataset", "backbone", "seeds", "out", "head", "strategy", "arms", "resume")
#: Recorded settings that do not change a cell's result (a grid resumed elsewhere may change them).
_NOT_HASHED = ("out", "seeds", "resume", "data_root", "num_workers", "cache_dir", "extract_batch_size",
               "with_tokens", "device")  # fmt: skip
FILTER_KEYS = ("dataset", "backbone", "method", "seed", "fold")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class FoldSpec:
    """``k=None``: the dataset's official splits; else ``k`` patient-grouped folds (``seed``, ``val_folds``)."""

    k: int | None = None
    seed: int = 0
    val_folds: int = 8

    @property
    def folds(self) -> list[int | None]:
        return [None] if self.k is None else list(range(self.k))


@dataclass
class CellSpec:
    """One cell, everything a worker needs to run it (plain values: it travels to other processes)."""

    key: str
    folder: str
    dataset: str
    backbone: str
    method: str
    seed: int
    fold: int | None
    driver: str
    config_class: str
    config: dict[str, Any]
    folds: dict[str, Any]
    depends: str | None = None  # the key of the cell that must finish first (a distillation's teacher)
    depends_folder: str | None = None
    settings_hash: str = ""

    def __post_init__(self) -> None:
        if not self.settings_hash:
            blob = json.dumps({"driver": self.driver, "config": self.hashed_settings(), "fold": self.fold,
                               "folds": self.folds, "seed": self.seed}, sort_keys=True, default=str)  # fmt: skip
            self.settings_hash = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def hashed_settings(self) -> dict[str, Any]:
        """The settings the cell's result depends on, leaving out those at their default: a setting that a
        later medadapt adds, at its default, does not make a finished cell's settings differ."""
        from .. import config as configs

        defaults = _defaults(getattr(configs, self.config_class))
        plain = _plain({k: v for k, v in self.config.items() if k not in _NOT_HASHED})
        return {k: v for k, v in plain.items() if not (k in defaults and v == defaults[k])}


def _defaults(cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class Grid:
    name: str
    cells: list[CellSpec]
    datasets: dict[str, str]  # name -> address
    folds: dict[str, FoldSpec]  # dataset name -> its folds
    executor: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# ------------------------------------------------------------------------------------------------ loading
def load_grid(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid file (``overrides``: ``settings`` from the command line, e.g. data_root)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"grid file {str(p)!r} does not exist")
    try:
        data = load_yaml_text(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"grid file {str(p)!r} is not valid YAML: {e}") from e
    return parse_grid(data, source=str(p), overrides=overrides)


def parse_grid(data: Any, *, source: str = "<grid>", overrides: dict[str, Any] | None = None) -> Grid:
    """Validate a grid mapping and expand it into cells (include / exclude applied)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a grid file is a mapping with the keys {list(TOP_KEYS)}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    _unknown(data, TOP_KEYS, "the grid file")
    for key in ("datasets", "backbones", "methods"):
        if not data.get(key):
            raise ConfigError(f"{key}: the grid needs at least one entry (e.g. {key}: [{_EXAMPLE[key]}])")
        if not isinstance(data[key], list):
            raise ConfigError(f"{key} must be a list (e.g. {key}: [{_EXAMPLE[key]}]), got {data[key]!r}")
    settings = _mapping(data.get("settings", {}), "settings")
    settings = {
        str(k).replace("-", "_"): v for k, v in {**settings, **(overrides or {})}.items() if v is not None
    }
    bad = sorted(set(settings) & set(_AXES))
    if bad:
        raise ConfigError(
            f"settings: {bad} are set by the grid's axes (datasets, backbones, methods, seeds), not here"
        )
    _unknown(settings, _setting_keys(), "settings")
    datasets = _entries(data["datasets"], "datasets", DATASET_KEYS, _dataset_name, check=_check_dataset)
    backbones = _entries(data["backbones"], "backbones", BACKBONE_KEYS, lambda a: a, check=_check_backbone)
    variants = _methods(data["methods"])
    seeds = _seeds(data.get("seeds", [0]))
    default_folds = _folds(data.get("folds", "official"), "folds")
    folds = {n: _folds(e.pop("folds"), f"datasets[{i}].folds") if "folds" in e else default_folds
             for i, (n, e) in enumerate(datasets.items())}  # fmt: skip
    keep = _filters(data, datasets, backbones, variants)
    cells = []
    for dname, dentry in datasets.items():
        for bname, bentry in backbones.items():
            tokens = any(v.driver == "probe" and _reads_tokens(v.layer["head"]) for v in variants)
            for variant in variants:
                config = _resolve(settings, dentry, bentry, variant, where=f"{dname} × {bname} × {variant.name}",
                                  with_tokens=tokens)  # fmt: skip
                for fold in folds[dname].folds:
                    for seed in seeds:
                        names = {"dataset": dname, "backbone": bname, "method": variant.name, "seed": seed,
                                 "fold": "official" if fold is None else fold}  # fmt: skip
                        if keep(names):
                            cells.append(_cell(names, variant, config, seed, fold, folds[dname]))
    if not cells:
        raise ConfigError(
            "the grid has no cells: include / exclude left none (check their names and patterns)"
        )
    _link_teachers(cells, variants)
    executor = _mapping(data.get("executor", {}), "executor")
    return Grid(name=str(data.get("name", Path(source).stem)), cells=cells,
                datasets={n: e["address"] for n, e in datasets.items()}, folds=folds, executor=executor,
                source=source)  # fmt: skip


_EXAMPLE = {"datasets": "medmnist:breastmnist", "backbones": "timm:resnet18", "methods": "linear"}


def _unknown(mapping: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(mapping) - set(valid))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; valid: {list(valid)}")


def _setting_keys() -> tuple[str, ...]:
    """What ``settings`` may hold: any field of a probe or fine-tuning config but the axes' (a probe cell
    takes ``epochs`` / ``lrs``, a fine-tuning cell ``train`` / ``lrs``)."""
    from ..config import FinetuneConfig, ProbeConfig

    names = {f.name for cls in (ProbeConfig, FinetuneConfig) for f in dataclasses.fields(cls)}
    return tuple(sorted(names - set(_AXES) - {"backbone_seed", "with_tokens"}))


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping (e.g. {key}: {{key: value}}), got {value!r}")
    return value


def _dataset_name(address: str) -> str:
    """``medmnist:breastmnist?size=64`` -> ``breastmnist``; other kinds keep their address."""
    kind, _, rest = address.partition(":")
    return rest.split("?")[0] if kind == "medmnist" else address


def _check_dataset(address: str) -> None:
    """The kind (and what the kind checks without reading files, e.g. a MedMNIST flag) of a dataset address."""
    from ..data.base import check_dataset

    check_dataset(address, location=False)


def _check_backbone(address: str) -> None:
    from ..backbones._factory import BackboneAddress

    BackboneAddress.parse(address)


def _entries(
    items: list, key: str, allowed: tuple[str, ...], default_name, *, check
) -> dict[str, dict[str, Any]]:
    """``{name: {"address": ..., **options}}`` from strings or mappings, names unique (as their folder names)."""
    out: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"address": item}
        if not isinstance(item, dict) or not isinstance(item.get("address"), str) or not item["address"]:
            raise ConfigError(f"{where}: give an address string or a mapping with an address, got {item!r}")
        item = {str(k).replace("-", "_"): v for k, v in item.items()}
        _unknown(item, ("address", "name", *allowed), where)
        try:
            check(item["address"])
        except MedadaptError as e:  # an unknown kind or name: the message with the entry that has it
            raise type(e)(f"{where}: {e}") from e
        name = str(item.pop("name", None) or default_name(item["address"]))
        _add_unique(out, name, item, where)
    return out


def _add_unique(out: dict, name: str, value: Any, where: str) -> None:
    if name in out:
        raise ConfigError(f"{where}: the name {name!r} is used twice; give each entry its own name")
    clash = [n for n in out if _slug(n) == _slug(name)]
    if clash:
        raise ConfigError(f"{where}: the names {clash[0]!r} and {name!r} give one folder name; rename one")
    out[name] = value


def _methods(items: list) -> list[Variant]:
    variants: dict[str, Variant] = {}
    for i, item in enumerate(items):
        where = f"methods[{i}]"
        if isinstance(item, str):
            key, value = shorthand(item)
            item = {key: value}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: give a head or strategy name, or a mapping, got {item!r}")
        item = {str(k).replace("-", "_"): v for k, v in item.items()}
        kinds = [k for k in item if k in GRID_METHODS]
        if len(kinds) != 1:
            raise ConfigError(
                f"{where}: a method mapping needs exactly one of {GRID_METHODS.list()} (e.g. probe: linear, "
                f"finetune: lora), got {sorted(item)}"
            )
        kind = kinds[0]
        method = GRID_METHODS.get(kind)
        name = item.pop("name", None)
        value = item.pop(kind)
        _unknown(item, method.keys, f"{where} ({kind})")
        try:
            found = method.variants(None if name is None else str(name), value, item)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        for v in found:
            _add_unique(variants, v.name, v, where)
    return list(variants.values())


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):  # fmt: skip
        raise ConfigError(
            f"seeds must be a list of non-negative integers or a count (seeds: 3), got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"seeds repeats a seed: {value!r}")
    return list(value)


def _folds(value: Any, where: str) -> FoldSpec:
    if value == "official":
        return FoldSpec()
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"k": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where} must be 'official', a number K >= 2 or {{k: K, seed: 0, val_folds: 8}}, got {value!r}"
        )
    _unknown(value, ("k", "seed", "val_folds"), where)
    if "k" not in value:
        raise ConfigError(
            f"{where} needs k (the number of folds), e.g. folds: {{k: 5, seed: 0}}, got {value!r}"
        )
    spec = FoldSpec(**value)
    for name, low in (("k", 2), ("seed", 0), ("val_folds", 2)):
        v = getattr(spec, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"{where}.{name} must be an integer >= {low}, got {v!r}")
    return spec


def _filters(data, datasets, backbones, variants):
    """A predicate over a cell's names: kept if it matches an ``include`` (when given) and no ``exclude``."""
    rules = {}
    known = {"dataset": list(datasets), "backbone": list(backbones), "method": [v.name for v in variants]}
    for key in ("include", "exclude"):
        items = data.get(key, [])
        if not isinstance(items, list) or not all(isinstance(r, dict) and r for r in items):
            raise ConfigError(f"{key} must be a list of mappings such as {{method: knn, backbone: 'vit-*'}}")
        for i, rule in enumerate(items):
            _unknown(rule, FILTER_KEYS, f"{key}[{i}]")
            for axis, pattern in rule.items():
                if axis in known and not any(fnmatch.fnmatchcase(n, str(pattern)) for n in known[axis]):
                    raise ConfigError(f"{key}[{i}].{axis}: {pattern!r} matches none of {known[axis]}")
        rules[key] = items

    def matches(rule: dict, names: dict) -> bool:
        return all(fnmatch.fnmatchcase(str(names[k]), str(v)) for k, v in rule.items())

    def keep(names: dict) -> bool:
        if rules["include"] and not any(matches(r, names) for r in rules["include"]):
            return False
        return not any(matches(r, names) for r in rules["exclude"])

    return keep


def _resolve(settings, dentry, bentry, variant: Variant, *, where: str, with_tokens: bool) -> dict[str, Any]:
    """The cell's config: defaults < settings < dataset < backbone < method, validated by its config class."""
    from .. import config as configs

    cls = getattr(configs, variant.config)
    fields = {f.name for f in dataclasses.fields(cls)}
    backbone = {("backbone_seed" if k == "init_seed" else k): v for k, v in bentry.items() if k != "address"}
    layers = [{k: v for k, v in settings.items() if k in fields},  # each kind takes the settings it has
              {k: v for k, v in dentry.items() if k != "address"}, backbone,
              {"dataset": dentry["address"], "backbone": bentry["address"]}, variant.layer]  # fmt: skip
    if variant.driver == "probe":
        layers.insert(0, {"backbone_seed": 0, "with_tokens": with_tokens})
    else:
        backbone.pop("backbone_seed", None)
    try:
        cfg = configs.merge_config(cls, *layers)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return dataclasses.asdict(cfg)


def _link_teachers(cells: list[CellSpec], variants: list[Variant]) -> None:
    """A distill cell depends on its teacher method's cell of the same dataset, backbone, fold and seed."""
    from .methods import TEACHER_OF

    by_name = {v.name: v for v in variants}
    by_key = {c.key: c for c in cells}
    for cell in cells:
        if cell.driver != "distill":
            continue
        teacher = cell.config["teacher"][0].removeprefix(TEACHER_OF)
        source = by_name.get(teacher)
        if source is None or source.driver == "distill" or source.layer.get("head") == "knn":
            valid = [v.name for v in variants if v.driver != "distill" and v.layer.get("head") != "knn"]
            raise ConfigError(
                f"methods: {cell.method!r} distils {teacher!r}, which is not a method of this grid with a saved "
                f"model (kNN and distilled methods have none); valid teachers: {valid}"
            )
        key = "|".join([cell.dataset, cell.backbone, teacher, cell.key.split("|")[3], f"seed{cell.seed}"])
        if key not in by_key:
            raise ConfigError(
                f"cell {cell.key} needs its teacher cell {key}, which include / exclude removed"
            )
        cell.depends, cell.depends_folder = key, by_key[key].folder


def _reads_tokens(head: str) -> bool:
    """Whether a probe head reads patch tokens (segmentation heads all do; on a classification dataset a
    segmentation head's cell fails with its own error)."""
    from ..heads import HEADS, SEGMENTATION_HEADS

    if head in SEGMENTATION_HEADS and head not in HEADS:
        return True
    return HEADS.get(head).input_key == "tokens"


def _slug(name: str) -> str:
    return _SLUG.sub("_", name).strip("_.") or "_"


def _cell(
    names: dict, variant: Variant, config: dict, seed: int, fold: int | None, folds: FoldSpec
) -> CellSpec:
    fold_name = "official" if fold is None else f"fold{fold}"
    key = "|".join([names["dataset"], names["backbone"], variant.name, fold_name, f"seed{seed}"])
    folder = "/".join([_slug(names["dataset"]), _slug(names["backbone"]), _slug(variant.name), fold_name,
                       f"seed{seed}"])  # fmt: skip
    return CellSpec(key=key, folder=folder, dataset=names["dataset"], backbone=names["backbone"],
                    method=variant.name, seed=seed, fold=fold, driver=variant.driver, config_class=variant.config,
                    config={**config, "seeds": [seed]}, folds=dataclasses.asdict(folds))  # fmt: skip
