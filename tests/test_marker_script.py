"""scripts/make_marker_breastmnist.py: BreastMNIST as a csv: dataset with a marker shortcut (synthetic npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from script_loader import load_script

from medadapt.data import load_dataset

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def script():
    return load_script("make_marker_breastmnist")


def write_npz(path: Path, n: tuple[int, int, int] = (40, 12, 16), *, size: int = 12, seed: int = 0) -> Path:
    """A MedMNIST-like npz: gray uint8 images below 200 (so a 255 marker always shows), labels [N, 1]."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(SPLITS, n):
        arrays[f"{split}_images"] = rng.integers(0, 200, size=(count, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (
            (np.arange(count) % 2)[rng.permutation(count)].reshape(-1, 1).astype(np.uint8)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def _run(script, npz: Path, out: Path, *extra: str) -> int:
    return script.main(["--npz", str(npz), "--out", str(out), *extra])


def _png(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel))


def test_marker_pixels_are_exactly_where_the_marker_column_says(script, tmp_path):
    npz = write_npz(tmp_path / "breastmnist.npz")
    out = tmp_path / "out"
    assert _run(script, npz, out, "--position", "1", "4", "--size", "2", "--p-benign", "0.5") == 0
    table = pd.read_csv(out / "labels.csv")
    source = np.load(npz)
    square = np.zeros((12, 12), dtype=bool)
    square[1:3, 4:6] = True
    assert set(table["marker"]) == {"yes", "no"}
    for row in table.itertuples():
        written, original = _png(out, row.path), source[f"{row.split}_images"][row.source_index]
        assert written.dtype == np.uint8 and written.shape == original.shape
        if row.marker == "yes":
            assert (written[square] == 255).all() and (written[~square] == original[~square]).all()
        else:
            assert (written == original).all()


def test_proportions_follow_the_rule_in_every_split(script, tmp_path):
    npz = write_npz(tmp_path / "breastmnist.npz", (1600, 800, 800), size=6)
    out = tmp_path / "out"
    assert _run(script, npz, out, "--p-malignant", "0.7", "--p-benign", "0.2", "--size", "1") == 0
    table = pd.read_csv(out / "labels.csv")
    rate = table.assign(yes=table["marker"] == "yes").groupby(["split", "label"])["yes"].mean()
    for split in SPLITS:  # 400-800 draws per cell: 4 standard deviations are below 0.1
        assert rate[(split, "malignant")] == pytest.approx(0.7, abs=0.1)
        assert rate[(split, "benign")] == pytest.approx(0.2, abs=0.1)
    assert table["marker"].eq("yes").groupby(table["label"]).mean()["malignant"] == pytest.approx(
        0.7, abs=0.04
    )
    assert table["marker"].eq("yes").groupby(table["label"]).mean()["benign"] == pytest.approx(0.2, abs=0.04)
    counts = (out / "README.txt").read_text()
    assert "0.7 if malignant and 0.2 if benign" in counts and "% marked" in counts


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_identical_files(script, tmp_path):
    npz = write_npz(tmp_path / "data" / "breastmnist.npz")
    assert _run(script, npz, tmp_path / "a", "--seed", "3") == 0
    assert _run(script, npz, tmp_path / "b", "--seed", "3") == 0
    assert _run(script, npz, tmp_path / "c", "--seed", "4") == 0
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 40 + 12 + 16 + 2
    assert a["labels.csv"] != c["labels.csv"]  # another seed marks other images


def test_malignant_is_class_1_when_loaded_and_splits_match_the_npz(script, tmp_path):
    npz = write_npz(tmp_path / "breastmnist.npz")
    out = tmp_path / "out"
    assert _run(script, npz, out) == 0
    source = np.load(npz)
    for split in SPLITS:
        ds = load_dataset(f"csv:{out / 'labels.csv'}", split)
        assert ds.classes == ["benign", "malignant"] and ds.task == "binary"
        assert len(ds) == len(source[f"{split}_labels"])
        assert set(ds.metadata["split"]) == {split}
        assert list(ds.metadata["source_index"]) == list(range(len(ds)))
        assert list(ds.metadata["patient_id"]) == [f"breast-{split}-{i}" for i in range(len(ds))]
        # BreastMNIST 0 = malignant, 1 = benign; loaded, malignant is 1 (the positive class)
        assert (ds.labels[:, 0] == 1 - source[f"{split}_labels"][:, 0]).all()
        assert (ds.labels[:, 0] == (ds.metadata["label"] == "malignant")).all()
        assert set(ds.metadata["marker"]) <= {"yes", "no"}
        assert ds[0]["image"].shape == (1, 12, 12)


def test_the_npz_folder_comes_from_medadapt_data(script, tmp_path, monkeypatch):
    write_npz(tmp_path / "data" / "breastmnist.npz")
    monkeypatch.setenv("MEDADAPT_DATA", str(tmp_path / "data"))
    assert script.main(["--out", str(tmp_path / "out")]) == 0
    assert _run(script, tmp_path / "data", tmp_path / "out2") == 0  # --npz also takes the folder
    assert _files(tmp_path / "out") == _files(tmp_path / "out2")


def test_overwrite_replaces_an_earlier_output(script, tmp_path):
    npz = write_npz(tmp_path / "breastmnist.npz", (20, 4, 4))
    small = write_npz(tmp_path / "small" / "breastmnist.npz", (6, 2, 2))
    out = tmp_path / "out"
    assert _run(script, npz, out) == 0
    assert _run(script, small, out, "--overwrite") == 0
    assert len(list((out / "images").rglob("*.png"))) == 10  # no stale images of the first run
    assert len(pd.read_csv(out / "labels.csv")) == 10


def _bad_npz(tmp_path: Path) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing file", "no BreastMNIST file"),
        ("folder without the file", "no BreastMNIST file"),
        ("not an npz", "cannot read"),
        ("keys missing", "has no val_images"),
        ("p-malignant above 1", "--p-malignant 1.5 is not a probability"),
        ("p-benign below 0", "--p-benign -0.1 is not a probability"),
        ("marker outside the image", "does not fit 12x12 images"),
        ("out not empty", "is not empty"),
    ],
)
def test_errors_exit_2_with_one_line(script, tmp_path, capsys, case, message):
    npz = write_npz(tmp_path / "breastmnist.npz")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.npz").write_text("not a zip")
    npz_arg, out, extra = str(npz), tmp_path / "out", []
    if case == "missing file":
        npz_arg = str(tmp_path / "nowhere.npz")
    elif case == "folder without the file":
        npz_arg = str(tmp_path / "empty")
    elif case == "not an npz":
        npz_arg = str(tmp_path / "text.npz")
    elif case == "keys missing":
        npz_arg = str(_bad_npz(tmp_path))
    elif case == "p-malignant above 1":
        extra = ["--p-malignant", "1.5"]
    elif case == "p-benign below 0":
        extra = ["--p-benign", "-0.1"]
    elif case == "marker outside the image":
        extra = ["--position", "10", "0"]
    else:
        out = tmp_path / "full"
    assert script.main(["--npz", npz_arg, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("make_marker_breastmnist: error: ") and message in err
    assert "Traceback" not in err
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "out").exists()  # nothing is written before the checks pass


def test_the_control_has_the_same_marker_column_and_unchanged_images(script, tmp_path):
    npz = write_npz(tmp_path / "breastmnist.npz")
    assert _run(script, npz, tmp_path / "burned") == 0
    assert _run(script, npz, tmp_path / "control", "--no-burn") == 0
    burned, control = (
        pd.read_csv(tmp_path / "burned" / "labels.csv"),
        pd.read_csv(tmp_path / "control" / "labels.csv"),
    )
    assert burned.equals(control) and (control["marker"] == "yes").any()
    source = np.load(npz)
    for row in control.itertuples():
        assert (_png(tmp_path / "control", row.path) == source[f"{row.split}_images"][row.source_index]).all()
