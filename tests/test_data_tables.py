"""Awkward tables: declared classes, blank patient ids, splits that cannot work, paths of the wrong kind."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medadapt.cli import main
from medadapt.data import load_dataset
from medadapt.data.base import path_problem
from medadapt.errors import BadRowsError, ConfigError, DataError

TINY_VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"


def _table(root: Path, labels: list[str], *, patients: list[str] | None = None, **cols) -> Path:
    """``root/labels.csv`` over one 8x8 gray PNG per row."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(len(labels)):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    table = {"path": [f"img/{i}.png" for i in range(len(labels))], "label": labels, **cols}
    if patients is not None:
        table["patient_id"] = patients
    pd.DataFrame(table).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_small_csv_automatic_split_that_empties_a_split_names_fractions_that_work(tmp_path):
    """Eight rows under 0.7/0.1/0.2 left val empty and crashed later with an IndexError."""
    csv = _table(tmp_path, ["a", "b"] * 4)
    with pytest.raises(DataError) as e:
        load_dataset(f"csv:{csv}", "train")
    message = str(e.value)
    assert "fractions=0.7,0.1,0.2 (seed=0, 8 rows in 8 patient groups) leaves" in message
    assert "fractions that work for these rows (seed=0): " in message
    works = message.split("(seed=0): ")[1].split(" or ")[0]
    parts = [load_dataset(f"csv:{csv}?fractions={works}", s) for s in ("train", "val", "test")]
    assert all(set(p.labels[:, 0]) == {0, 1} for p in parts)  # every class in every split


def test_a_class_absent_from_a_split_is_an_error_before_any_work(tmp_path):
    csv = _table(tmp_path, ["a"] * 18 + ["b"] * 2)  # two rows of b cannot reach three splits
    with pytest.raises(DataError, match=r"leaves class 'b' out of the (val|test|train) split; no usual"):
        load_dataset(f"csv:{csv}", "train")
    # a zero fraction asks for no split there: nothing to check
    assert len(load_dataset(f"csv:{csv}?fractions=0.5,0,0.5", "test")) > 0


def test_the_cli_reports_an_unusable_split_in_one_line_without_torch_work(tmp_path, capsys):
    csv = _table(tmp_path, ["a", "b"] * 4)
    code = main(["probe", "--dataset", f"csv:{csv}", "--backbone", TINY_VIT, "--no-pretrained",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "leaves the" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.csv").exists()


def test_an_empty_split_from_the_split_column_stops_a_run_with_a_clear_error(tmp_path, capsys):
    csv = _table(tmp_path, ["a", "b"] * 4, split=["train"] * 6 + ["test"] * 2)
    code = main(["probe", "--dataset", f"csv:{csv}", "--backbone", TINY_VIT, "--no-pretrained",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "the val split(s) are empty (train 6, val 0, test 2 rows)" in err
    assert "Traceback" not in err and "IndexError" not in err


def test_blank_patient_ids_get_a_warning_saying_what_is_done(tmp_path, caplog):
    patients = [f"p{i // 2}" for i in range(20)]
    patients[3], patients[7] = "", "  "
    csv = _table(tmp_path, ["a", "b"] * 10, patients=patients)
    with caplog.at_level(logging.WARNING, logger="medadapt.data.folder"):
        ds = load_dataset(f"csv:{csv}?fractions=0.5,0.25,0.25", "train")
    assert "2 row(s) have a blank patient_id (rows 3, 7); each is treated as its own patient" in caplog.text
    assert "" not in set(ds.metadata["patient_id"].fillna("").str.strip()) or len(ds) > 0


@pytest.mark.parametrize("how", ["classes.txt", "classes_file", "option"])
def test_a_declared_class_list_is_enforced(tmp_path, how):
    """A typo label ("bengin") used to become a third class without a word."""
    labels = ["benign", "malignant"] * 9 + ["bengin", "benign"]
    csv = _table(tmp_path, labels, split=["train"] * 12 + ["val"] * 4 + ["test"] * 4)
    address = f"csv:{csv}"
    if how == "classes.txt":
        (tmp_path / "classes.txt").write_text("benign\nmalignant\n")
    elif how == "classes_file":
        (tmp_path / "names.txt").write_text("# the two classes\nbenign\nmalignant\n")
        address += "?classes_file=names.txt"
    else:
        address += "?classes=benign,malignant"
    with pytest.raises(BadRowsError, match=r"row 18 \(line 20\): label 'bengin' is not one of the classes"):
        load_dataset(address, "test")
    ds = load_dataset(address, "test", skip_bad=True)
    assert ds.classes == ["benign", "malignant"] and ds.skipped[0][0] == 18
    assert load_dataset(address, "train").classes == ["benign", "malignant"]


def test_folder_classes_txt_is_enforced(tmp_path):
    for i, cls in enumerate(["normal", "tumor", "tumour"] * 3):
        folder = tmp_path / "split" / ["train", "val", "test"][i // 3] / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(folder / f"{i}.png")
    assert load_dataset(f"folder:{tmp_path / 'split'}", "train").classes == ["normal", "tumor", "tumour"]
    (tmp_path / "split" / "classes.txt").write_text("normal\ntumor\n")
    with pytest.raises(BadRowsError, match="class folder 'tumour' is not one of the classes"):
        load_dataset(f"folder:{tmp_path / 'split'}", "train")
    with pytest.raises(ConfigError, match="either classes= or classes_file="):
        load_dataset(f"folder:{tmp_path / 'split'}?classes=a,b&classes_file=x.txt", "train")


def test_skipping_every_row_of_a_split_is_an_error_not_an_empty_dataset(tmp_path):
    csv = _table(tmp_path, ["a", "b"] * 3, split=["train", "train", "val", "val", "test", "test"])
    for i in (4, 5):
        (tmp_path / "img" / f"{i}.png").unlink()
    with pytest.raises(BadRowsError, match="Fix them: skipping would leave the split empty"):
        load_dataset(f"csv:{csv}", "test", skip_bad=True)


def test_paths_of_the_wrong_kind_are_named_as_such(tmp_path):
    (tmp_path / "labels.csv").mkdir()
    with pytest.raises(DataError, match=r"CSV file '.*labels.csv' is a folder, not a file"):
        load_dataset(f"csv:{tmp_path / 'labels.csv'}", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"dataset folder '.*file' is a file, not a folder"):
        load_dataset(f"folder:{tmp_path / 'file'}", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}", "train")
    csv = _table(tmp_path / "t", ["a", "b"] * 3, split=["train"] * 2 + ["val"] * 2 + ["test"] * 2)
    (tmp_path / "t" / "img" / "0.png").unlink()
    (tmp_path / "t" / "img" / "0.png").mkdir()
    with pytest.raises(BadRowsError, match=r"row 0 \(line 2\): image file .*0.png is a folder, not a file"):
        load_dataset(f"csv:{csv}", "train")


def test_path_problem_tells_unreadable_apart(tmp_path, monkeypatch):
    import os

    (tmp_path / "f").write_text("x")
    assert path_problem(tmp_path / "f") is None and path_problem(tmp_path, folder=True) is None
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    assert path_problem(tmp_path / "f") == "is not readable (permission denied)"


def test_cross_validation_pools_the_splits_so_the_automatic_split_is_not_checked(tmp_path):
    """A grid with folds pools train/val/test: a val split without class b does not matter there."""
    from medadapt.data.tables import pooled_splits

    csv = _table(tmp_path, ["a"] * 18 + ["b"] * 2)
    with pooled_splits():
        parts = [load_dataset(f"csv:{csv}", s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 20
    with pytest.raises(DataError, match="leaves class 'b' out"):  # outside, the check is back
        load_dataset(f"csv:{csv}", "train")


def test_a_file_that_fails_to_decode_late_names_its_row(tmp_path):
    """The header probe passes a PNG whose pixel data is cut; reading it during training names the row."""
    csv = _table(tmp_path, ["a", "b"] * 3, split=["train"] * 2 + ["val"] * 2 + ["test"] * 2)
    png = tmp_path / "img" / "1.png"
    png.write_bytes(png.read_bytes()[:60])  # header intact, image data truncated
    ds = load_dataset(f"csv:{csv}", "train")
    with pytest.raises(DataError, match=r"\(train split\), row 1 \(add verify=true.*1.png"):
        ds[1]
    with pytest.raises(BadRowsError, match=r"row 1 \(line 3\): unreadable image .*1.png"):
        load_dataset(f"csv:{csv}?verify=true", "train")
