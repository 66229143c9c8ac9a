"""What a distillation run reports: the comparison table with its paired test, the ablation, the figures.

All tables are pure functions of the tidy results table (so they can be rebuilt from ``results.csv``); the
distilled arm compared with the student is the one with the best mean validation AUC, never chosen on test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._device import autocast_context
from .._io import atomic_write
from ..data.base import MedicalDataset
from ..data.transforms import make_loader
from ..evaluation.stats import format_mean_std, paired_test
from ..tasks import get_task

__all__ = ["comparison_table", "ablation_table", "best_distilled_arm", "soft_target_table", "write_report"]

log = logging.getLogger(__name__)

STUDENT, TEACHER = "student", "teacher"
_LABELS = {TEACHER: "teacher", STUDENT: "student alone"}


def _per_seed(table: pd.DataFrame, run: str, split: str, metric: str) -> pd.Series:
    rows = table[(table["run"] == run) & (table["split"] == split) & (table["metric"] == metric)]
    return rows.groupby("seed")["value"].mean()


def best_distilled_arm(table: pd.DataFrame) -> str | None:
    """The distilled arm with the highest mean validation AUC over seeds (``None`` when there is none)."""
    arms = sorted(r for r in table["run"].unique() if r not in (STUDENT, TEACHER))
    if not arms:
        return None
    return max(arms, key=lambda r: np.nan_to_num(_per_seed(table, r, "val", "auc").mean(), nan=-np.inf))


def comparison_table(
    table: pd.DataFrame, metrics: tuple[str, ...] = ("auc", "acc")
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Teacher, student alone and the selected distilled student: test metrics mean ± std over seeds; and the
    paired test (distilled − student alone, seed by seed) per metric.
    """
    distilled = best_distilled_arm(table)
    runs = [r for r in (TEACHER, STUDENT, distilled) if r is not None and r in set(table["run"])]
    rows = []
    for run in runs:
        row: dict[str, Any] = {"model": _LABELS.get(run, f"distilled ({run})"), "seeds": 0}
        for metric in metrics:
            values = _per_seed(table, run, "test", metric)
            row[f"test {metric.upper()}"] = format_mean_std(values.to_numpy()) if len(values) else "—"
            row["seeds"] = max(row["seeds"], len(values))
        rows.append(row)
    tests = []
    if distilled is not None and STUDENT in runs:
        for metric in metrics:
            d, s = _per_seed(table, distilled, "test", metric), _per_seed(table, STUDENT, "test", metric)
            # seeds where both have a finite score (a metric is NaN when, e.g., the test split lacks a class)
            seeds = sorted(i for i in set(d.index) & set(s.index) if np.isfinite(d[i]) and np.isfinite(s[i]))
            if len(seeds) < 2:
                continue
            res = paired_test(d.loc[seeds].to_numpy(), s.loc[seeds].to_numpy())
            tests.append({"metric": f"test {metric.upper()}", "distilled − student": res["mean_diff"],
                          "95% CI": f"[{res['ci_low']:+.3f}, {res['ci_high']:+.3f}]", "p (paired t)": res["p_value"],
                          "p (Wilcoxon)": res["wilcoxon_p"], "seeds": res["n"]})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(tests)


def soft_target_table(
    logits: dict[str, torch.Tensor], *, task: str, temperatures: list[float], near: float = 0.99
) -> pd.DataFrame:
    """How soft the teacher's targets are, per split and temperature: the mean probability of the top class,
    the mean entropy (nats) and the share of samples whose top class has at least ``near``.

    Multi-label tasks count each label as its own Bernoulli (top class: the likelier of 0 and 1), averaged
    over labels; other tasks take the softmax at temperature ``t``, as the distillation loss does.
    """
    rows = []
    for split, z in logits.items():
        z = z.float()
        for t in temperatures:
            top, entropy = get_task(task).confidence(z / t)
            rows.append(
                {
                    "split": split,
                    "t": t,
                    "top-class probability": float(top.mean()),
                    "entropy (nats)": float(entropy.mean()),
                    f"share ≥ {near:g}": float((top >= near).float().mean()),
                }
            )
    return pd.DataFrame(rows)


def ablation_table(table: pd.DataFrame, *, split: str = "val", metric: str = "auc") -> pd.DataFrame:
    """Mean ``split`` ``metric`` over seeds per distilled arm, rows temperature, columns alpha."""
    rows = table[
        table["run"].str.startswith("distill-") & (table["split"] == split) & (table["metric"] == metric)
    ]
    if rows.empty:
        return pd.DataFrame()
    grid = rows.groupby(["temperature", "alpha"])["value"].mean().unstack("alpha")
    grid.index.name, grid.columns.name = "t", "alpha"
    return grid


# ------------------------------------------------------------------------------------------------ writing
def write_report(
    cfg,
    table: pd.DataFrame,
    out: Path,
    *,
    splits: dict[str, MedicalDataset],
    teacher_of: Callable[[int], tuple[Any, dict[str, tuple[torch.Tensor, np.ndarray]]]],
    device: torch.device,
) -> dict[str, list[str]]:
    """Write the tables and figures of a finished run; returns (and saves as ``outputs.json``) what it wrote."""
    from .run import write_outputs

    files: dict[str, list[str]] = {"tables": ["results.csv"], "figures": []}
    comparison, tests = comparison_table(table)
    text = "### Teacher, student alone, distilled student (test, mean ± std over seeds)\n\n"
    text += comparison.to_markdown(index=False)
    if len(tests):
        text += "\n\nPaired across seeds (distilled − student alone):\n\n" + tests.to_markdown(
            index=False, floatfmt=".4f"
        )
    seed = cfg.seeds[0]
    targets = soft_target_table(
        {split: z for split, (z, _) in teacher_of(seed)[1].items() if split in ("train", "val")},
        task=splits["train"].task,
        temperatures=sorted({1.0, *(t for t, _ in cfg.grid())}),
    )
    targets.to_csv(out / "teacher_targets.csv", index=False)
    files["tables"].append("teacher_targets.csv")
    text += (
        f"\n\nTeacher soft targets (seed {seed}): how far from one-hot they are on the images the student "
        "trains on (train) and on unseen ones (val). Near one-hot targets on train say little beyond the "
        "labels.\n\n" + targets.to_markdown(index=False, floatfmt=".3f")
    )
    atomic_write(out / "comparison.md", text + "\n")
    comparison.to_csv(out / "comparison.csv", index=False)
    files["tables"] += ["comparison.md", "comparison.csv"]
    if len(tests):
        tests.to_csv(out / "paired_test.csv", index=False)
        files["tables"].append("paired_test.csv")
    if len(cfg.grid()) > 1:
        files["tables"] += ["ablation.csv", "ablation.md"]
        _ablation(table, out, files, figures=cfg.figures)
    if cfg.figures:
        try:
            _figures(cfg, table, out, splits, teacher_of, device, files)
        except ImportError as e:  # matplotlib / grad-cam are optional extras
            log.warning("figures skipped: %s (pip install 'medadapt[plots]')", e)
    write_outputs(out, files)
    return files


def _ablation(table: pd.DataFrame, out: Path, files: dict[str, list[str]], *, figures: bool) -> None:
    val, test = ablation_table(table, split="val"), ablation_table(table, split="test")
    long = val.stack().rename("val_auc").to_frame().join(test.stack().rename("test_auc"))
    long.reset_index().to_csv(out / "ablation.csv", index=False)
    text = "".join(
        f"### Distillation ablation: mean {name} AUC over seeds (rows t, columns alpha)\n\n"
        f"{grid.to_markdown(floatfmt='.3f')}\n\n"
        for name, grid in (("val", val), ("test", test))
    )
    atomic_write(out / "ablation.md", text + "Select on val; test is shown, not used to choose.\n")
    if figures:
        from ..reporting.figures import plot_heatmap

        for name, grid in (("val", val), ("test", test)):
            path = out / "figures" / f"ablation_{name}_auc.png"
            plot_heatmap(grid, path, title=f"KD ablation: mean {name} AUC",
                         xlabel="alpha (weight of the label loss)", ylabel="temperature t")  # fmt: skip
            files["figures"].append(str(path.relative_to(out)))


def _figures(cfg, table, out, splits, teacher_of, device, files) -> None:
    from ..reporting.figures import plot_gradcam, plot_tsne
    from ..saved import load_classifier

    seed, test = cfg.seeds[0], splits["test"]
    _, logits = teacher_of(seed)
    distilled = best_distilled_arm(table)
    models = {}
    for run, label in ((STUDENT, "student alone"), (distilled, "distilled student")):
        folder = out / str(run) / f"seed{seed}"
        if run is not None and (folder / "model.json").is_file():
            models[label] = load_classifier(folder)
    embeddings = {"teacher": logits["test"][1]}
    for label, (model, preprocess, _) in models.items():
        embeddings[label] = _embeddings(model, test, preprocess, device, cfg.autocast)
    path = out / "figures" / "tsne.png"
    plot_tsne(
        embeddings, test.labels, path, class_names=list(test.classes), seed=seed, max_points=cfg.tsne_points
    )
    files["figures"].append(str(path.relative_to(out)))
    picks = _pick_images(test.labels, cfg.gradcam_images, seed)
    images = torch.stack([test[i]["image"] for i in picks])
    for label, (model, preprocess, _) in models.items():
        path = out / "figures" / f"gradcam_{label.split()[0]}.png"
        plot_gradcam(model, images, path, preprocess=preprocess, labels=test.labels[picks],
                     class_names=list(test.classes), title=f"Grad-CAM: {label} (seed {seed})")  # fmt: skip
        files["figures"].append(str(path.relative_to(out)))


@torch.no_grad()
def _embeddings(
    model, ds: MedicalDataset, preprocess, device, autocast: bool, batch_size: int = 256
) -> np.ndarray:
    """The global embeddings ``[N, D]`` of a trained classifier's backbone on ``ds``."""
    model.eval().to(device)
    out = []
    for batch in make_loader(ds, batch_size=batch_size, fit=preprocess.fit_one):
        with autocast_context(device, autocast):
            out.append(
                model.backbone.forward_features(preprocess(batch["image"].to(device))).embedding.float().cpu()
            )
    model.to("cpu")
    return torch.cat(out).numpy()


def _pick_images(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` test images, classes taken in turn (a seeded draw within each), so every class is shown."""
    rng = np.random.default_rng(seed)
    y = labels[:, 0] if labels.shape[1] == 1 else labels.argmax(1)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in np.unique(y)]
    picks: list[int] = []
    while len(picks) < min(n, len(y)):
        for pool in pools:
            if pool and len(picks) < n:
                picks.append(int(pool.pop()))
    return np.array(sorted(picks))
