"""Real-data probe table for the README: MedMNIST BreastMNIST and PneumoniaMNIST, random-init backbones.

No pretrained weights are reachable on the machine this ran on, so every backbone is randomly initialised
(``--no-pretrained``): the numbers show the pipeline end to end, not what foundation models achieve.

    MEDADAPT_DATA=../shared/data/medmnist python scripts/probe_table.py --out runs/readme_probe
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import medadapt

BACKBONES = {"ResNet-18": "timm:resnet18", "ViT-S/14 (DINOv2 arch.)": "timm:vit_small_patch14_dinov2"}
HEADS = ("linear", "knn", "attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/readme_probe")
    parser.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--img-size", type=int, default=56, help="a multiple of the ViT's patch size 14")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    args = parser.parse_args()
    for head in args.heads:  # the cheap heads first, for every dataset
        for flag in args.datasets:
            for address in BACKBONES.values():
                out = Path(args.out) / flag / f"{address.split(':')[1]}_{head}"
                if (out / "results.csv").exists():
                    continue  # resumable: finished runs are kept
                medadapt.probe(
                    dataset=f"medmnist:{flag}",
                    backbone=address,
                    pretrained=False,
                    head=head,
                    img_size=args.img_size,
                    seeds=args.seeds,
                    epochs=args.epochs,
                    out=str(out),
                )
    print(summarise(Path(args.out)))


def summarise(root: Path) -> str:
    table = pd.concat(pd.read_csv(p) for p in sorted(root.glob("*/*/results.csv")))
    table["backbone"] = table["backbone"].map({v: k for k, v in BACKBONES.items()})
    table = table[(table["split"] == "test") & table["metric"].isin(["auc", "acc"])]
    stats = table.groupby(["dataset", "backbone", "head", "metric"])["value"].agg(["mean", "std", "count"])
    stats["cell"] = stats.apply(lambda r: f"{r['mean']:.3f} ± {r['std']:.3f}", axis=1)
    wide = stats["cell"].unstack("metric")[["auc", "acc"]].reset_index()
    return wide.to_markdown(index=False)


if __name__ == "__main__":
    main()
