"""Test scores of the selected epoch beside those of the last epoch, from ``medadapt finetune`` run folders.

The MedMNIST v2 protocol keeps the weights of the epoch with the best validation AUC. The official training
script returned the last epoch's weights instead until May 2023: ``best_model = model`` kept a reference, not
a copy (MedMNIST/experiments issue 8). Its maintainers answered there that the papers used the best
validation AUC; a user reproducing PathMNIST found the paper's number at the last epoch (issue 5). This shows
what the rule changes. For every seed folder with its final checkpoint (``checkpoint.pt`` holds the weights
after the last epoch trained), it scores the selected model (``model.safetensors``) and the last epoch's
weights on the same splits, with the run's own preprocessing and autocast setting.

A diagnostic, not a selection rule: choosing between the two by these test numbers would be choosing on the
test split. (``--select-on last`` trains a run that keeps the last epoch from the start.)

    python scripts/checkpoint_rule.py runs/v2_breast runs/v2_pneumonia --data-root ../shared/data/medmnist
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

from medadapt.api import load_splits
from medadapt.config import RunConfig
from medadapt.evaluation.metrics import compute_metrics
from medadapt.reporting import read_results
from medadapt.saved import load_classifier
from medadapt.training.checkpoint import CHECKPOINT_NAME
from medadapt.training.loop import predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_table import mean_std, selected_parts  # noqa: E402


def seed_rows(
    seed_dir: Path, splits: dict, *, autocast: bool, names: list[str], checkpoint_path: Path | None = None
) -> list[dict]:
    """AUC / ACC of the selected and the last epoch's weights of one seed folder, one row per split.

    ``checkpoint_path``: the selected LR's checkpoint of an LR search (default ``seed_dir/checkpoint.pt``).
    """
    model, preprocess, info = load_classifier(seed_dir)
    checkpoint_path = checkpoint_path or seed_dir / CHECKPOINT_NAME
    checkpoint = torch.load(checkpoint_path, weights_only=True, map_location="cpu")
    weights = {
        "selected": (checkpoint["best"]["epoch"], None),
        "last": (checkpoint["epoch"], checkpoint["model"]),
    }
    rows = []
    for which, (epoch, state) in weights.items():
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as e:  # an exported model that is not the trained one (LoRA merged, ...)
                raise SystemExit(
                    f"{seed_dir}: the checkpoint's weights do not fit the saved model ({info.strategy}): this "
                    "script compares strategies whose saved model is the trained model itself"
                ) from e
        for name in names:
            scores = predict(model, splits[name], preprocess=preprocess, device=torch.device("cpu"),
                             autocast=autocast)  # fmt: skip
            metrics = compute_metrics(info.task, splits[name].labels, scores, names=["auc", "acc"])
            rows.append({"arm": seed_dir.parent.name, "seed": info.seed, "weights": which, "epoch": epoch,
                         "split": name, **metrics})  # fmt: skip
    return rows


def run_rows(run: Path, data_root: str | None, names: list[str]) -> list[dict]:
    """The rows of every finished seed folder of one finetune output folder (``run/ARM/seedS``)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    cfg = RunConfig(dataset=config["dataset"], backbone=config["backbone"], size=config.get("size"),
                    data_root=data_root or config.get("data_root"),
                    skip_bad_rows=config.get("skip_bad_rows", False))  # fmt: skip
    splits = load_splits(cfg)
    chosen_lrs = _selected_lrs(run)
    rows = []
    for seed_dir in sorted(p for p in run.glob("*/seed*") if p.is_dir()):
        if not (seed_dir / "model.json").exists():  # still training: no selected model yet
            print(f"skipped {seed_dir}: not finished (no model.json)", file=sys.stderr)
            continue
        checkpoint = seed_dir / CHECKPOINT_NAME
        if not checkpoint.exists():  # an LR search: the selected LR's folder
            lr = chosen_lrs.get((seed_dir.parent.name, seed_dir.name.removeprefix("seed")))
            checkpoint = seed_dir / f"lr{lr}" / CHECKPOINT_NAME
            if lr is None or not checkpoint.exists():
                print(f"skipped {seed_dir}: no checkpoint of its selected LR ({lr})", file=sys.stderr)
                continue
        for row in seed_rows(seed_dir, splits, autocast=config.get("autocast", True), names=names,
                             checkpoint_path=checkpoint):  # fmt: skip
            rows.append({"run": run.name, "dataset": config["dataset"], **row})
    return rows


def _selected_lrs(run: Path) -> dict[tuple[str, str], str]:
    """``(arm, seed) -> "0.001"``: the LR each seed selected (``selected`` = ``lr=0.001;epoch=14``), as its
    folder ``lr0.001`` spells it."""
    if not (run / "results.csv").exists():
        return {}
    table = read_results(run / "results.csv")
    test = table[table["split"] == "test"]
    chosen = {
        (str(r), str(int(s))): selected_parts(t).get("lr")
        for r, s, t in zip(test["run"], test["seed"], test["selected"])
    }
    return {key: lr for key, lr in chosen.items() if lr is not None}


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (run, arm, weights, split), with the epochs."""
    out = []
    for (run, arm, split, which), g in rows.groupby(["run", "arm", "split", "weights"], sort=False):
        out.append({"run": run, "arm": arm, "split": split, "weights": which, "seeds": len(g),
                    "epochs": "/".join(str(e) for e in g["epoch"]), "AUC": mean_std(g["auc"]),
                    "ACC": mean_std(g["acc"])})  # fmt: skip
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="medadapt finetune output folders")
    parser.add_argument("--data-root", help="MedMNIST folder (default: the run's own data_root)")
    parser.add_argument("--splits", nargs="+", default=["test"], choices=["train", "val", "test"])
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = pd.DataFrame([r for run in args.runs for r in run_rows(run, args.data_root, args.splits)])
    if rows.empty:
        raise SystemExit(f"no seed folder with a {CHECKPOINT_NAME} under {[str(r) for r in args.runs]}")
    per_seed = rows.round({"auc": 4, "acc": 4}).to_markdown(index=False)
    table = summary(rows).to_markdown(index=False)
    print(per_seed, "", table, sep="\n")
    if args.out is not None:
        args.out.write_text(f"{table}\n\nPer seed:\n\n{per_seed}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
