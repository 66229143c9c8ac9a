"""Tiny replicas of CheXpert, ISIC 2019 and APTOS 2019 in their distributed folder and CSV structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medadapt.data.chexpert import FINDINGS
from medadapt.data.isic import CLASSES


def write_image(path: Path, *, rgb: bool, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if rgb else (8, 8)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)


# -------------------------------------------------------------------------------------------- CheXpert

#: train.csv row 0: Cardiomegaly uncertain, Edema positive, Pleural Effusion negative, the rest blank.
CHEXPERT_ROW0 = {"Cardiomegaly": -1.0, "Edema": 1.0, "Pleural Effusion": 0.0}


def _chexpert_row(prefix: str, part: str, patient: int, view: int, labels: dict, full: bool = True) -> dict:
    side = "frontal" if view == 1 else "lateral"
    row = {"Path": f"{prefix}/{part}/patient{patient:05d}/study1/view{view}_{side}.jpg"}
    if full:
        row |= {"Sex": "Female" if patient % 2 else "Male", "Age": 40 + patient % 50,
                "Frontal/Lateral": side.capitalize(), "AP/PA": ("AP" if patient % 3 else "PA") if view == 1 else ""}  # fmt: skip
    return row | {f: labels.get(f, "") for f in FINDINGS}


def _chexpert_labels(patient: int) -> dict:
    rng = np.random.default_rng(patient)
    return {
        f: float(v) for f, v in zip(FINDINGS, rng.choice([1.0, 0.0, -1.0, np.nan], len(FINDINGS))) if v == v
    }


def chexpert(tmp: Path, name: str = "CheXpert-v1.0-small", *, n_train: int = 20, test: bool = False) -> Path:
    """FOLDER with train.csv (patients 1..n_train: a frontal view each, a lateral one for odd patients),
    valid.csv (patients 64541-64544, frontal and lateral, 0/1 labels) and, with ``test``, test_labels.csv."""
    folder = _mkdir(tmp / name)
    rows = []
    for p in range(1, n_train + 1):
        for view in (1, 2) if p % 2 else (1,):
            rows.append(
                _chexpert_row(name, "train", p, view, CHEXPERT_ROW0 if p == 1 else _chexpert_labels(p))
            )
    valid = [_chexpert_row(name, "valid", p, v, {f: float((p + k) % 2) for k, f in enumerate(FINDINGS)})
             for p in range(64541, 64545) for v in (1, 2)]  # fmt: skip
    tables = {"train.csv": rows, "valid.csv": valid}
    if test:  # the test release: paths relative to the dataset folder, no demographic columns
        tables["test_labels.csv"] = [_chexpert_row(name, "test", p, 1, {f: 1.0 for f in FINDINGS}, full=False)
                                     for p in range(64741, 64744)]  # fmt: skip
        for row in tables["test_labels.csv"]:
            row["Path"] = row["Path"].split("/", 1)[1]
    for file, table in tables.items():
        pd.DataFrame(table).to_csv(folder / file, index=False)
        for i, row in enumerate(table):
            parts = row["Path"].split("/")
            write_image(folder.joinpath(*(parts[1:] if parts[0] == name else parts)), rgb=False, seed=i)
    return folder


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -------------------------------------------------------------------------------------------- ISIC 2019


def isic_row(image: str, label: str) -> dict:
    return {"image": image, **{c: float(c == label) for c in [*CLASSES, "UNK"]}}


def isic(tmp: Path, *, n: int = 24, nested: bool = False, test: bool = False) -> Path:
    """ROOT with n training images (class k % 8; images 2j and 2j+1 share a lesion for k < 16, the rest have
    no lesion_id) and, with ``test``, 5 test images plus one UNK test image (ISIC_9000005)."""
    root = _mkdir(tmp / "isic2019")
    parts = [("Training", [f"ISIC_{k:07d}" for k in range(n)])]
    if test:
        parts.append(("Test", [f"ISIC_{9000000 + k:07d}" for k in range(6)]))
    for part, images in parts:
        truth = [
            isic_row(im, CLASSES[k % 8] if part == "Training" or k < 5 else "UNK")
            for k, im in enumerate(images)
        ]
        meta = [{"image": im, "age_approx": 30 + 5 * (k % 9), "anatom_site_general": ["head/neck", "torso", ""][k % 3],
                 "lesion_id": f"HAM_{k // 2:07d}" if part == "Training" and k < 16 else "",
                 "sex": ["male", "female"][k % 2]} for k, im in enumerate(images)]  # fmt: skip
        pd.DataFrame(truth).to_csv(root / f"ISIC_2019_{part}_GroundTruth.csv", index=False)
        pd.DataFrame(meta).to_csv(root / f"ISIC_2019_{part}_Metadata.csv", index=False)
        folder = root / f"ISIC_2019_{part}_Input"
        folder = folder / folder.name if nested else folder
        for k, im in enumerate(images):
            write_image(folder / f"{im}.jpg", rgb=True, seed=k)
    return root


# ------------------------------------------------------------------------------------------ APTOS 2019


def aptos(tmp: Path, n: int = 20) -> Path:
    """ROOT with train.csv (id k: grade k % 5), train_images/ and an unlabelled test.csv."""
    root = _mkdir(tmp / "aptos2019-blindness-detection")
    ids = [f"{k:03x}a1b2c3d4" for k in range(n)]
    pd.DataFrame({"id_code": ids, "diagnosis": [k % 5 for k in range(n)]}).to_csv(
        root / "train.csv", index=False
    )
    pd.DataFrame({"id_code": ["ffff00001111"]}).to_csv(root / "test.csv", index=False)
    for k, i in enumerate(ids):
        write_image(root / "train_images" / f"{i}.png", rgb=True, seed=k)
    write_image(root / "test_images" / "ffff00001111.png", rgb=True)
    return root
