"""The Kvasir-SEG table of docs/results/segmentation_kvasir.md, from the run folders that scripts/kvasir_runs.sh
writes: test Dice, IoU and HD95 per method with 95% bootstrap intervals over the 120 test images
(``medadapt compare``), the small-polyp Dice (the ``object_size_band`` subgroup), cost, and each method's
overlay figure copied beside the page.

    python scripts/kvasir_table.py --runs runs/kvasir --figures docs/results/segmentation_kvasir
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image

from medadapt.reporting.compare import compare
from medadapt.reporting.sources import load_sources

#: Run folder -> the method's name in the table (in table order).
METHODS = {
    "unet_scratch": "U-Net (SMP, ResNet-34 encoder), from scratch",
    "vit_probe_linear": "ViT-S/14 frozen, linear probe (1×1 conv)",
    "vit_probe_multiscale": "ViT-S/14 frozen, multiscale probe (last 4 blocks)",
    "vit_differential": "ViT-S/14 differential LR + 1×1 conv head",
    "vit_lora": "ViT-S/14 LoRA (r=8) + 1×1 conv head",
}


def _interval(row: pd.Series, digits: int) -> str:
    return f"{row['mean']:.{digits}f} [{row['boot_low']:.{digits}f}, {row['boot_high']:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="runs/kvasir")
    parser.add_argument("--figures", default=None, help="copy each method's overlay figure here")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    runs = Path(args.runs)
    folders = {name: runs / name for name in METHODS if (runs / name / "results.csv").exists()}
    sources = load_sources(list(folders.values()))
    method_of = {}  # compare's method name -> our folder name
    for name, folder in folders.items():
        rows = sources.table[sources.table["run_path"].astype(str).str.startswith(str(folder.resolve()))]
        method_of.update(dict.fromkeys(rows["method"].unique(), name))
    table = {name: {"Method": label} for name, label in METHODS.items() if name in folders}
    labels = {"dice": "Dice [95% CI]", "iou": "IoU [95% CI]", "hd95": "HD95, px [95% CI]"}
    for metric, digits in (("dice", 3), ("iou", 3), ("hd95", 1)):
        result = compare(sources, metric=metric, n_resamples=args.resamples,
                         subgroup="object_size_band" if metric == "dice" else None)  # fmt: skip
        for _, row in result.summary.iterrows():
            table[method_of[row["method"]]][labels[metric]] = _interval(row, digits)
        if metric == "dice" and result.subgroups is not None:
            small = result.subgroups[
                (result.subgroups["metric"] == "dice") & result.subgroups["group"].str.startswith("small")
            ]
            for _, row in small.iterrows():
                table[method_of[row["method"]]]["Dice, small polyps (n=13)"] = (
                    f"{row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
                )
    cost = sources.table[sources.table["split"] == "cost"]
    for method, rows in cost.groupby("method"):
        values = rows.set_index("metric")["value"]
        table[method_of[method]]["Trainable params"] = f"{int(values['trainable_params']):,}"
        table[method_of[method]]["Wall (min)"] = f"{values['wall_seconds'] / 60:.1f}"
    frame = pd.DataFrame(list(table.values()))
    print(frame.to_markdown(index=False))
    if args.figures:
        out = Path(args.figures)
        out.mkdir(parents=True, exist_ok=True)
        for name, folder in folders.items():
            found = sorted(folder.rglob("overlays_test.png"))
            if found:  # a 256-colour copy: a third of the size, the same figure to the eye
                Image.open(found[0]).convert("RGB").quantize(256).save(out / f"overlays_{name}.png", optimize=True)


if __name__ == "__main__":
    main()
