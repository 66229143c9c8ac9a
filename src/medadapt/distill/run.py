"""``medadapt distill``: teacher, student alone and distilled student(s), side by side over seeds.

For every seed: the teacher's val / test metrics (from its cached logits), then each arm, trained by the
fine-tuning loop in ``out/ARM/seedS/``: ``student`` (labels only) and one distilled arm per ``(t, alpha)``
(``distill-t2-a0.2``). Afterwards the run writes ``comparison.md`` (teacher / student / distilled, mean ±
std, paired test across seeds), ``ablation.csv`` and its heatmap when a grid ran, and the figures (t-SNE,
Grad-CAM); ``outputs.json`` lists every file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._io import atomic_write
from ..config import DistillConfig
from ..data.base import MedicalDataset
from ..errors import ConfigError, MedadaptError
from ..evaluation.metrics import compute_metrics
from ..reporting.results import (
    RUN_DIR,
    read_results,
    record_arm_configs,
    results_rows,
    save_predictions,
    write_results,
)
from ..training.probe import to_scores
from .objective import DistillObjective
from .teacher import Teacher

__all__ = ["distill", "arm_name"]

log = logging.getLogger(__name__)

STUDENT, TEACHER = "student", "teacher"


def arm_name(temperature: float, alpha: float) -> str:
    return f"distill-t{temperature:g}-a{alpha:g}"


#: Settings that do not change what an arm trains: the grid (each arm has its own t and alpha) and the report.
_NOT_ARM_SETTINGS = ("alpha", "temperature", "alphas", "temperatures", "baseline", "figures", "gradcam_images",
                "tsne_points")  # fmt: skip


def distill(
    config: DistillConfig | None = None, /, *, show_progress: bool = False, **kwargs: Any
) -> pd.DataFrame:
    """Distil ``teacher`` into the student ``backbone``; returns this run's rows of the results table.

    Example:
        >>> medadapt.distill(dataset="medmnist:breastmnist", teacher=["runs/v2_breast"],
        ...                  backbone="timm:resnet18", pretrained=False, seeds=[0, 1, 2])  # doctest: +SKIP
    """
    from ..driver import CellContext, recorded, run_cell, start_run

    cfg = replace(config, **kwargs) if config is not None else DistillConfig(**kwargs)
    arms: list[tuple[str, tuple[float, float] | None]] = [(STUDENT, None)] if cfg.baseline else []
    arms += [(arm_name(t, a), (t, a)) for t, a in cfg.grid()]
    # each arm's settings (its own t and alpha, not the grid's or the report's): a seed added later with
    # other settings is refused before anything runs, since results.csv pools an arm's seeds by its name
    shared = {k: v for k, v in recorded(cfg).items() if k not in _NOT_ARM_SETTINGS}
    student = {k: v for k, v in shared.items() if not k.startswith("teacher")}  # it learns from labels alone
    record_arm_configs({name: {**shared, "temperature": setting[0], "alpha": setting[1]} if setting else student
                        for name, setting in arms}, cfg.out_dir)  # fmt: skip
    out, device, splits, img_size = start_run(cfg)
    augmented = cfg.train.get("augment", "none") != "none"
    teachers: dict[Any, tuple[Teacher, dict[str, tuple[torch.Tensor, np.ndarray]]]] = {}
    frames = []
    for seed in cfg.seeds:
        teacher, logits = _teacher_for_seed(cfg, seed, splits, out, device, teachers, show_progress)
        rows = _teacher_rows(cfg, teacher, logits, splits, seed=seed, out=out)
        for name, setting in arms:
            if setting is None:
                objective = None
            else:
                t, a = setting
                source = {"teacher": teacher} if augmented else {"cached": logits["train"][0]}
                objective = DistillObjective(task=teacher.task, alpha=a, temperature=t, autocast=cfg.autocast,
                                             **source)  # fmt: skip
            ctx = CellContext(splits=splits, img_size=img_size, device=device, run_dir=out / name / f"seed{seed}",
                              show_progress=show_progress)  # fmt: skip
            arm_rows = run_cell(cfg, ctx, method="finetune", name=name, seed=seed, objective=objective)
            t, a = setting if setting is not None else (None, 1.0)
            rows += [{**r, "temperature": t, "alpha": a, RUN_DIR: f"{name}/seed{seed}"} for r in arm_rows]
            # after every arm, so finished runs survive a later failure; a resumed run replaces its rows
            write_results(rows, out / "results.csv", replace=("run", "seed"))
        frames.append(pd.DataFrame(rows))
    table = pd.concat(frames, ignore_index=True)
    from .report import write_report

    # the report covers every seed in out/results.csv, so runs of separate seeds into one --out add up
    write_report(cfg, read_results(out / "results.csv"), out, splits=splits,
                 teacher_of=lambda s: teachers[_teacher_key(cfg, s)], device=device)  # fmt: skip
    return table


# ------------------------------------------------------------------------------------------------ teacher
def _teacher_key(cfg: DistillConfig, seed: int) -> Any:
    """Saved teachers are one (ensemble) model for every seed unless paired by seed (``teacher_pairing``); a
    backbone teacher's probe is trained per seed."""
    return seed if _is_backbone_address(cfg) or cfg.teacher_pairing == "seed" else "saved"


def _is_backbone_address(cfg: DistillConfig) -> bool:
    """One teacher that is no existing path but a backbone address (``timm:...``) or catalogue alias."""
    from ..backbones._factory import resolve_alias

    first = cfg.teacher[0]
    if len(cfg.teacher) != 1 or Path(first).expanduser().exists():
        return False
    return ":" in first or resolve_alias(first) != first


def _teacher_for_seed(cfg, seed, splits, out, device, teachers, show_progress):
    key = _teacher_key(cfg, seed)
    if key not in teachers:
        if _is_backbone_address(cfg):
            paths = [_train_probe_teacher(cfg, seed, out, show_progress)]
        else:
            paths = cfg.teacher
        teacher = Teacher.from_paths(paths, seed=seed if cfg.teacher_pairing == "seed" else None)
        teacher.check_dataset(splits["train"])
        log.info("teacher for seed %d: %s", seed, teacher.describe())
        logits = {
            split: teacher.dataset_logits(
                ds, cache_dir=cfg.cache_dir, device=device, autocast=cfg.autocast, num_workers=cfg.num_workers
            )  # fmt: skip
            for split, ds in splits.items()
        }
        teacher.to("cpu")
        teachers[key] = (teacher, logits)
    return teachers[key]


def _train_probe_teacher(cfg: DistillConfig, seed: int, out: Path, show_progress: bool) -> Path:
    """Frozen backbone + linear probe (the MedAlmighty teacher), trained by ``medadapt probe`` into ``out/teacher``."""
    from ..api import probe, probe_dir
    from ..config import ProbeConfig, RunConfig

    where = out / TEACHER
    head = "linear"  # the MedAlmighty teacher
    model_dir = probe_dir(where, head, seed)
    if (model_dir / "model.json").is_file():
        _check_saved_teacher(cfg, model_dir)
    else:
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig)}  # data, device, ...
        teacher = dict(backbone=cfg.teacher[0], out=str(where), head=head, head_kwargs={}, seeds=[seed],
                       img_size=cfg.teacher_img_size or cfg.img_size, channel_mode=cfg.teacher_channel_mode,
                       pretrained=cfg.teacher_pretrained, weights=cfg.teacher_weights)  # fmt: skip
        try:
            probe(ProbeConfig(**{**shared, **teacher}, cache_dir=cfg.cache_dir), show_progress=show_progress)
        except MedadaptError as e:  # a message about the backbone names the flags of `medadapt probe`
            message = _TEACHER_FLAGS.sub(r"--teacher-\1", str(e))
            raise type(e)(f"teacher {cfg.teacher[0]}: {message}") from e
    return model_dir


#: Flags of a backbone's settings that ``distill`` spells ``--teacher-...`` for the teacher.
_TEACHER_FLAGS = re.compile(r"(?<![\w-])--(weights|no-pretrained|img-size|channel-mode)\b")


def _check_saved_teacher(cfg: DistillConfig, model_dir: Path) -> None:
    """A probe teacher trained by an earlier invocation is reused only if it is the one asked for now."""
    from ..backbones._factory import resolve_alias
    from ..saved import read_info, weights_path

    info = read_info(model_dir)
    weights = weights_path(cfg.teacher_weights)  # as the probe teacher's model.json records it
    asked = {"backbone": resolve_alias(cfg.teacher[0]), "channel_mode": cfg.teacher_channel_mode,
             "pretrained": cfg.teacher_pretrained or weights is not None, "weights": weights}  # fmt: skip
    saved = {"backbone": resolve_alias(info.backbone), "channel_mode": info.channel_mode,
             "pretrained": info.pretrained, "weights": info.weights}  # fmt: skip
    img_size = cfg.teacher_img_size or cfg.img_size
    if img_size is not None:
        asked["img_size"], saved["img_size"] = img_size, info.img_size
    differ = sorted(k for k in asked if asked[k] != saved[k])
    if differ:
        detail = ", ".join(f"{k}: {saved[k]!r} there, {asked[k]!r} asked" for k in differ)
        raise ConfigError(
            f"{model_dir} holds a teacher probe made with other settings ({detail}); use another --out, or "
            f"delete {model_dir.parent.parent} to train the teacher again"
        )


def _teacher_rows(cfg, teacher: Teacher, logits, splits: dict[str, MedicalDataset], *, seed: int, out: Path):
    """The teacher's val / test metrics (scores from its cached logits), saved predictions included."""
    rows: list[dict[str, Any]] = []
    ids = dict(run=TEACHER, dataset=cfg.dataset, backbone=teacher.describe(), strategy="frozen",
               head=teacher.members[0].info.head, seed=seed, fold=None, temperature=None, alpha=None,
               selected=";".join(m.source for m in teacher.members))  # fmt: skip
    for split in ("val", "test"):
        ds = splits[split]
        scores = to_scores(teacher.task, logits[split][0]).numpy()
        save_predictions(out / TEACHER / f"seed{seed}", split, labels=ds.labels, scores=scores)
        rows += results_rows(metrics=compute_metrics(teacher.task, ds.labels, scores), split=split, **ids)
    return [{**r, RUN_DIR: f"{TEACHER}/seed{seed}"} for r in rows]


def write_outputs(out: Path, files: dict[str, list[str]]) -> Path:
    """``outputs.json``: the run's tables and figures, relative to ``out``."""
    return atomic_write(out / "outputs.json", json.dumps(files, indent=2))
