"""The run driver's shared parts: the method registry, a cell's context, data, features and records.

A *cell* is one (dataset, backbone, method, seed, fold). A *method* is a registered kind of run (``probe``,
``finetune``, ...: :data:`METHODS`), called as ``method(cfg, ctx, name=..., seed=...)``; it trains in
``ctx.run_dir`` and writes there its predictions (``predictions/{val,test}.npz``), its model (``model.json``
and weights, where it has one) and its per-epoch ``history.csv``, and returns the cell's tidy result rows
(val and test metrics, and a ``cost`` split). ``medadapt probe / finetune / distill`` and every cell of a
benchmark grid run through :func:`run_cell`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._device import resolve_device
from .._io import atomic_write
from .._registry import Registry
from ..backbones._factory import resolve_alias
from ..config import RunConfig
from ..data import SPLITS, MedicalDataset, load_dataset
from ..data.folds import RowView, patient_ids
from ..data.transforms import Preprocess
from ..errors import BadRowsError, ConfigError, DataError
from ..features import FeatureSet, extract_features
from ..reporting.results import environment_info, save_predictions, write_environment, write_run_config
from ..saved import ModelInfo, weights_path
from ..tasks import get_task

__all__ = [
    "METHODS",
    "CellContext",
    "run_cell",
    "load_splits",
    "start_run",
    "recorded",
    "image_size",
    "preprocess_for",
    "model_info",
    "features_of",
    "write_history",
    "save_split_predictions",
    "probe_ids",
    "epoch_bar",
    "HISTORY_FILE",
]

log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"

#: Kinds of run a cell may be (a grid's ``methods`` name them): ``name -> method(cfg, ctx, *, name, seed,
#: **extra) -> rows``. Adding one is a module in :mod:`medadapt.driver` and its ``METHODS.register`` line.
METHODS: Registry[Callable[..., list[dict[str, Any]]]] = Registry("method")


@dataclass
class CellContext:
    """What one cell runs on: its splits (a fold's views or the official ones), where its files go, and a
    per-process ``memo`` that cells sharing a worker use to build a backbone and read its features once."""

    splits: dict[str, MedicalDataset]
    img_size: int
    device: torch.device
    run_dir: Path
    fold: int | None = None
    show_progress: bool = False
    memo: dict[Any, Any] | None = field(default=None, repr=False)


def run_cell(
    cfg: RunConfig, ctx: CellContext, *, method: str, name: str, seed: int, **extra: Any
) -> list[dict]:
    """Run one cell with the registered ``method``; returns its tidy result rows (val, test and cost).

    A method runs the task kinds its registration names (``kinds``, default classification only): another
    kind is a clear error before any work."""
    run = METHODS.get(method)
    kind = get_task(ctx.splits["train"].task).kind
    kinds = METHODS.meta(method).get("kinds", ("classification",))
    if kind not in kinds:
        able = [m for m in METHODS if kind in METHODS.meta(m).get("kinds", ("classification",))]
        raise ConfigError(
            f"{cfg.dataset} is a {kind} dataset, and the {method!r} method runs {' and '.join(kinds)} tasks only; "
            f"a {kind} dataset runs with: {', '.join(able) or 'no method yet'}"
        )
    return run(cfg, ctx, name=name, seed=seed, **extra)


# ------------------------------------------------------------------------------------------------- data
def load_splits(cfg: RunConfig) -> dict[str, MedicalDataset]:
    """The train / val / test splits of ``cfg.dataset``."""
    opts: dict[str, Any] = {"root": cfg.data_root, "skip_bad": cfg.skip_bad_rows}
    if cfg.size is not None:
        opts["size"] = cfg.size
    splits, problems = {}, []
    for split in SPLITS:  # every split is checked, so one error lists the bad rows of all of them
        try:
            splits[split] = load_dataset(cfg.dataset, split, **opts)
        except BadRowsError as e:  # any other error (a missing file) is the same for every split: raised
            problems.append(str(e))
    if problems:
        raise BadRowsError("; also ".join(problems))
    return splits


def require_rows(splits: dict[str, MedicalDataset], dataset: str) -> None:
    """A single run trains on train, selects on val and reports test: none of them may be empty (cross-
    validation pools the splits, so there an empty one is fine and this is not called)."""
    empty = [name for name, ds in splits.items() if len(ds) == 0]
    if empty:
        sizes = ", ".join(f"{name} {len(ds)}" for name, ds in splits.items())
        raise DataError(
            f"{dataset}: the {' and '.join(empty)} split(s) are empty ({sizes} rows); a run needs rows in each: "
            "give the dataset's split column rows for it, or change the split fractions (address option "
            "fractions=, e.g. 0.6,0.2,0.2)"
        )


def image_size(cfg: RunConfig, train: MedicalDataset) -> int:
    """The backbone's input size: ``img_size``, else ``size``, else the first training image's larger side."""
    if cfg.img_size is not None:
        return cfg.img_size
    if cfg.size is not None:
        return cfg.size
    return int(max(train[0]["image"].shape[-2:]))


def recorded(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as run records keep it, with ``backbone_address``: an alias names whatever the catalogue says
    now, the record what this run built."""
    return {**cfg.to_dict(), "backbone_address": resolve_alias(cfg.backbone)}


def start_run(cfg: RunConfig) -> tuple[Path, torch.device, dict[str, MedicalDataset], int]:
    """Load the data, resolve the device and image size, write ``config.yaml`` and ``env.json``."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    splits = load_splits(cfg)
    require_rows(splits, cfg.dataset)
    size = image_size(cfg, splits["train"])
    written = write_run_config({**recorded(cfg), "img_size": size}, out)
    write_environment(environment_info(seed=written["seeds"], device=str(device)), out)
    return out, device, splits, size


def preprocess_for(cfg: RunConfig, backbone, img_size: int) -> Preprocess:
    """Preprocessing derived from the backbone's spec, never restated by hand."""
    return Preprocess.for_backbone(
        backbone.spec, (img_size, img_size), mode=cfg.resize_mode, interpolation=cfg.interpolation
    )


def model_info(cfg: RunConfig, model, train: MedicalDataset, preprocess: Preprocess, *, img_size: int, seed: int,
               strategy: str, stored: str) -> ModelInfo:  # fmt: skip
    """How to rebuild ``model`` later (see :mod:`medadapt.saved`)."""
    return ModelInfo(
        backbone=resolve_alias(cfg.backbone),  # the address: an alias may name another model later
        head=cfg.head,
        num_outputs=train.num_outputs,
        task=train.task,
        img_size=img_size,
        data_chans=train.n_channels,
        channel_mode=cfg.channel_mode,
        preprocess=dataclasses.asdict(preprocess),
        stored=stored,
        pretrained=bool(model.backbone.spec.pretrained),
        weights=weights_path(cfg.weights),
        head_kwargs=dict(cfg.head_kwargs),
        dataset=cfg.dataset,
        strategy=strategy,
        seed=seed,
        classes=[str(c) for c in train.classes],
    )


# --------------------------------------------------------------------------------------------- features
def features_of(ds: MedicalDataset, extract: Callable[[MedicalDataset], FeatureSet]) -> FeatureSet:
    """Features of ``ds`` from ``extract`` (the feature cache); a :class:`~medadapt.data.folds.RowView` (a
    cross-validation fold) takes its rows from its sources' features, so every fold of a dataset shares one
    extraction of the official splits."""
    if not isinstance(ds, RowView):
        return extract(ds)
    parts = []
    for p, (source, _) in enumerate(ds.parts):
        rows = ds.rows[ds.sources == p]
        parts.append(_take(extract(source), rows))
    return _concat(parts)


def _take(fs: FeatureSet, rows: np.ndarray) -> FeatureSet:
    tokens = None if fs.tokens is None else np.asarray(fs.tokens[rows])  # rows sorted: local memmap reads
    levels = None
    if fs.levels is not None:  # the last level is the tokens: read once
        levels = [(tokens if t is fs.tokens else np.asarray(t[rows]), g) for t, g in fs.levels]
    return FeatureSet(embeddings=fs.embeddings[rows], labels=fs.labels[rows], tokens=tokens, grid=fs.grid,
                      levels=levels)  # fmt: skip


def _concat(parts: list[FeatureSet]) -> FeatureSet:
    if len(parts) == 1:
        return parts[0]
    tokens = None if any(p.tokens is None for p in parts) else np.concatenate([p.tokens for p in parts])
    levels = None
    if all(p.levels is not None for p in parts):
        levels = []
        for i, (t, g) in enumerate(parts[0].levels):
            last = t is parts[0].tokens and tokens is not None  # the last level is the tokens: joined once
            levels.append((tokens if last else np.concatenate([p.levels[i][0] for p in parts]), g))
    return FeatureSet(embeddings=np.concatenate([p.embeddings for p in parts]),
                      labels=np.concatenate([p.labels for p in parts]), tokens=tokens, grid=parts[0].grid,
                      levels=levels)  # fmt: skip


def extractor(cfg, backbone, preprocess, device, *, with_tokens: bool, show_progress: bool,
              memo: dict | None = None, memo_key: Any = None,
              levels: int | None = None) -> Callable[[MedicalDataset], FeatureSet]:  # fmt: skip
    """``dataset -> FeatureSet`` through the feature cache (and ``memo``: a worker reads each once);
    ``levels``: also the backbone's last ``levels`` levels (``FeatureSet.levels``, the multiscale head)."""

    def extract(ds: MedicalDataset) -> FeatureSet:
        key = (memo_key, ds.name, ds.split, len(ds), with_tokens, levels)
        if memo is not None and memo_key is not None and key in memo:
            return memo[key]
        bar = tqdm(total=len(ds), desc=f"features {ds.split}", unit="img", disable=not show_progress)
        try:
            fs = extract_features(backbone, ds, preprocess, cache_dir=cfg.cache_dir, with_tokens=with_tokens,
                                  levels=levels, batch_size=cfg.extract_batch_size, device=device, autocast=cfg.autocast,
                                  num_workers=cfg.num_workers, progress=lambda done, total: bar.update(done - bar.n))  # fmt: skip
        finally:
            bar.close()
        if memo is not None and memo_key is not None:
            memo[key] = fs
        return fs

    return extract


# ---------------------------------------------------------------------------------------------- records
def probe_ids(
    cfg, ctx: CellContext, *, name: str, seed: int, backbone, best: dict[str, Any]
) -> dict[str, Any]:
    """The result ids of a frozen-probe cell (classification or segmentation): names, fold, the backbone's
    weights, and the setting its validation selected (``lr=...;epoch=...``)."""
    return dict(run=name, dataset=cfg.dataset, backbone=cfg.backbone, strategy="frozen", head=cfg.head, seed=seed,
                fold=ctx.fold, pretrained=backbone.spec.pretrained or "random-init", img_size=ctx.img_size,
                selected=";".join(f"{k}={v}" for k, v in best.items()))  # fmt: skip


#: Metadata columns every dataset has (a row number, the official split a fold's row came from): no subgroups.
_PLAIN_METADATA = {"index", "source_split"}


def save_split_predictions(run_dir: Path, split: str, ds: MedicalDataset, labels, scores) -> Path:
    """``run_dir/predictions/{split}.npz`` with the task and the rows' patient ids, and the dataset's metadata
    (sex, site, a confounder column, ...) as ``{split}.meta.csv`` where it has more than row numbers: what
    ``medadapt compare`` needs for cluster bootstraps and subgroups without the dataset at hand."""
    meta = ds.metadata if set(ds.metadata.columns) - _PLAIN_METADATA else None
    return save_predictions(run_dir, split, labels=labels, scores=scores, task=ds.task,
                            groups=patient_ids(ds), metadata=meta)  # fmt: skip


def write_history(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """``run_dir/history.csv``: one row per record (per epoch, and per setting of a grid), nested dicts
    flattened to ``name.key`` columns (``lr.head``), atomically."""
    table = pd.json_normalize(records, sep=".") if records else pd.DataFrame(columns=["epoch"])
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return atomic_write(Path(run_dir) / HISTORY_FILE, buffer.getvalue())


def epoch_bar(epochs: int, desc: str, *, resume: bool = False):
    """An epoch progress bar; with ``resume`` it appears after the first epoch run, at that epoch (so that its
    rate and time left count only the epochs run in this process)."""
    bar = None if resume else tqdm(total=epochs, desc=desc, unit="epoch")

    def progress(epoch: int, epochs: int, record: dict) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=epochs, initial=epoch, desc=desc, unit="epoch")
        bar.update(epoch - bar.n)
        bar.refresh()  # epochs are long: show each at once (tqdm skips prints within its mininterval)
        if epoch == epochs:
            bar.close()

    return progress
