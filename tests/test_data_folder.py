"""The csv: and folder: dataset kinds: formats, modes, labels, splits, bad rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medadapt.data import load_dataset
from medadapt.errors import ConfigError, DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid  # noqa: E402


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.set_pixel_data(pixels, photometric, 12)
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)


def _gray(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _write_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """One file per format and mode; returns name -> (channels in the file, H, W)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_gray(8, 8)).save(folder / "gray.png")
    Image.fromarray(np.dstack([_gray(6, 10)] * 3 + [_gray(6, 10, 1)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.dstack([_gray(12, 12, s) for s in range(3)])).save(folder / "rgb.jpg")
    Image.fromarray(_gray(5, 7)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.dstack([_gray(9, 4)] * 2), "LA").save(folder / "la.png")
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 200 + 1000).save(folder / "deep.tif")
    Image.fromarray(np.arange(6, dtype=np.uint16).reshape(2, 3) * 4000).save(folder / "deep.png")
    _dicom(folder / "mono2.dcm", np.arange(20, dtype=np.uint16).reshape(4, 5) * 100)
    _dicom(folder / "mono1.dcm", np.arange(20, dtype=np.uint16).reshape(4, 5) * 100, "MONOCHROME1")
    return {
        "gray.png": (1, 8, 8),
        "rgba.png": (3, 6, 10),
        "rgb.jpg": (3, 12, 12),
        "palette.png": (3, 5, 7),
        "la.png": (1, 9, 4),
        "deep.tif": (1, 3, 4),
        "deep.png": (1, 2, 3),
        "mono2.dcm": (1, 4, 5),
        "mono1.dcm": (1, 4, 5),
    }


def _csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict]:
    files = _write_images(tmp_path / "img")
    rows = [
        {"path": f"img/{name}", "label": "a" if i % 2 else "b", "split": "train", "site": f"s{i}"}
        for i, name in enumerate(files)
    ]
    return _csv(tmp_path / "labels.csv", rows), files


def test_formats_modes_and_sizes(mixed: tuple[Path, dict]) -> None:
    csv, files = mixed
    ds = load_dataset(f"csv:{csv}", "train")
    assert (ds.task, ds.classes, ds.n_channels, len(ds)) == ("binary", ["a", "b"], 3, len(files))
    for i, (_, h, w) in enumerate(files.values()):
        sample = ds[i]
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, h, w)
        assert sample["label"].shape == (1,) and sample["index"] == i
    gray = load_dataset(f"csv:{csv}?channels=1", "train")
    assert gray.n_channels == 1 and all(gray[i]["image"].shape[0] == 1 for i in range(len(gray)))
    assert list(ds.metadata["site"]) == [f"s{i}" for i in range(len(files))]
    assert list(ds.metadata["row"]) == list(range(len(files)))


def test_gray_only_dataset_has_one_channel(mixed: tuple[Path, dict]) -> None:
    csv, files = mixed
    gray_names = [name for name, (c, _, _) in files.items() if c == 1]
    _csv(csv, [{"path": f"img/{n}", "label": i % 2, "split": "train"} for i, n in enumerate(gray_names)])
    ds = load_dataset(f"csv:{csv}", "train")
    assert ds.n_channels == 1 and ds.classes == ["0", "1"]
    images = {name: ds.image(i)[0] for i, name in enumerate(gray_names)}
    # 16-bit files are scaled by their bit depth (one scale for the whole dataset), DICOM without a window
    # by its stored range (12 bits here); MONOCHROME1 is the inverse of MONOCHROME2
    deep = np.arange(6).reshape(2, 3) * 4000
    assert images["deep.png"].tolist() == np.rint(deep * 255 / 65535).astype(int).tolist()
    assert (
        images["deep.tif"].tolist()
        == np.rint((np.arange(12).reshape(3, 4) * 200 + 1000) * 255 / 65535).tolist()
    )
    assert torch.equal(images["mono1.dcm"], 255 - images["mono2.dcm"])
    assert (
        images["mono2.dcm"].flatten().tolist()
        == np.rint(np.arange(20) * 100 * 255 / 4095).astype(int).tolist()
    )
    minmax = load_dataset(f"csv:{csv}?voi=minmax", "train")  # each image by its own min/max, on request
    deep_png = minmax.image(gray_names.index("deep.png"))[0]
    assert deep_png.tolist() == [[0, 51, 102], [153, 204, 255]]


def _multilabel_rows(tmp_path: Path) -> list[dict]:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "x.png")
    sets = [["effusion"], ["mass", "effusion"], ["normal"], ["mass"]]
    return [{"path": "x.png", "finding": "|".join(s), "split": "test"} for s in sets]


def test_multilabel_both_syntaxes_agree(tmp_path: Path) -> None:
    rows = _multilabel_rows(tmp_path)
    piped = load_dataset(f"csv:{_csv(tmp_path / 'a.csv', rows)}?label_col=finding", "test")
    classes = ["effusion", "mass", "normal"]
    wide = [
        {"path": r["path"], "split": "test", **{c: int(c in r["finding"].split("|")) for c in classes}}
        for r in rows
    ]
    columns = load_dataset(f"csv:{_csv(tmp_path / 'b.csv', wide)}?label_cols=effusion,mass,normal", "test")
    assert piped.task == columns.task == "multilabel" and piped.classes == columns.classes == classes
    np.testing.assert_array_equal(piped.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(piped.labels, columns.labels)
    assert piped.num_outputs == 3 and piped[1]["label"].tolist() == [1, 1, 0]


def test_task_inference_and_class_order(tmp_path: Path) -> None:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "x.png")
    rows = [{"path": "x.png", "label": g, "split": "val"} for g in (10, 2, 0, 1, 2)]
    csv = _csv(tmp_path / "l.csv", rows)
    ordinal = load_dataset(f"csv:{csv}?task=ordinal", "val")
    assert ordinal.task == "ordinal" and ordinal.classes == ["0", "1", "2", "10"]
    assert ordinal.labels[:, 0].tolist() == [3, 2, 0, 1, 2] and ordinal.labels.dtype == np.int64
    assert load_dataset(f"csv:{csv}", "val").task == "multiclass"
    custom = load_dataset(f"csv:{csv}?classes=10,2,1,0", "val")
    assert custom.classes == ["10", "2", "1", "0"] and custom.labels[:, 0].tolist() == [0, 1, 3, 2, 1]


def _patients(tmp_path: Path, n_patients: int = 12) -> Path:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "x.png")
    rows = [
        {"path": "x.png", "label": ["neg", "pos"][p % 2], "patient_id": f"p{p}", "age": 40 + p}
        for p in range(n_patients)
        for _ in range(1 + p % 3)
    ]
    return _csv(tmp_path / "l.csv", rows)


def test_auto_split_groups_patients_and_is_deterministic(tmp_path: Path) -> None:
    csv = _patients(tmp_path)
    parts = {
        s: load_dataset(f"csv:{csv}?seed=1&fractions=0.5,0.25,0.25", s) for s in ("train", "val", "test")
    }
    patients = {s: set(ds.metadata["patient_id"]) for s, ds in parts.items()}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    rows = sorted(r for ds in parts.values() for r in ds.metadata["row"])
    assert rows == list(range(len(pd.read_csv(csv))))
    again = load_dataset(f"csv:{csv}?seed=1&fractions=0.5,0.25,0.25", "train")
    assert list(again.metadata["row"]) == list(parts["train"].metadata["row"])
    assert (
        parts["train"].metadata["age"] == 40 + parts["train"].metadata["patient_id"].str[1:].astype(int)
    ).all()


def test_split_column_is_used(tmp_path: Path) -> None:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "x.png")
    csv = _csv(
        tmp_path / "l.csv",
        [
            {"path": "x.png", "label": i % 2, "split": s}
            for i, s in enumerate(["train", "val", "test", "Validation"])
        ],
    )
    assert list(load_dataset(f"csv:{csv}", "val").metadata["row"]) == [1, 3]


def _with_bad_rows(tmp_path: Path) -> Path:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [{"path": "ok.png", "label": "a", "split": "train", "site": f"s{i}"} for i in range(8)]
    rows[2]["path"] = "missing.png"
    rows[4]["path"] = "broken.png"
    rows[5]["label"] = None
    rows[6]["split"] = "tset"
    return _csv(tmp_path / "l.csv", rows)


def test_bad_rows_error_lists_row_numbers(tmp_path: Path) -> None:
    csv = _with_bad_rows(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{csv}?classes=a,b", "train")
    message = str(err.value)
    assert "4 bad row(s)" in message and "skip_bad=True" in message and "--skip-bad-rows" in message
    for text in (
        "row 2 (line 4): file not found",
        "row 4 (line 6): unreadable image",
        "row 5 (line 7): label is empty",
        "row 6 (line 8): split 'tset'",
    ):
        assert text in message


def test_one_error_lists_the_bad_rows_of_every_split(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from medadapt.api import load_splits

    Image.fromarray(_gray(4, 4)).save(tmp_path / "ok.png")
    rows = [
        {"path": "ok.png", "label": "ab"[i % 2], "split": s}
        for s in ("train", "val", "test")
        for i in range(4)
    ]
    rows[1]["path"], rows[9]["path"] = "gone1.png", "gone2.png"  # one in train, one in test
    cfg = SimpleNamespace(dataset=f"csv:{_csv(tmp_path / 'l.csv', rows)}", data_root=None, skip_bad_rows=False,
                          size=None)  # fmt: skip
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert "split 'train'" in message and "gone1.png" in message
    assert "split 'test'" in message and "gone2.png" in message and "split 'val'" not in message
    # any other error (a missing file, a download) is the same for every split: raised at the first
    import medadapt.driver.base

    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(medadapt.driver.base, "load_dataset", counted)
    with pytest.raises(DataError, match="does not exist"):
        load_splits(SimpleNamespace(dataset=f"csv:{tmp_path / 'none.csv'}", data_root=None, skip_bad_rows=False,
                                    size=None))  # fmt: skip
    assert len(calls) == 1


def test_skip_bad_drops_rows_and_keeps_metadata_aligned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = _with_bad_rows(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"csv:{csv}?classes=a,b", "train", skip_bad=True)
    assert "skipped 4 bad row(s)" in caplog.text
    assert [row for row, _ in ds.skipped] == [2, 4, 5, 6]
    assert list(ds.metadata["row"]) == [0, 1, 3, 7] and list(ds.metadata["site"]) == ["s0", "s1", "s3", "s7"]
    assert len(ds) == len(ds.labels) == len(ds.paths) == 4 and ds[3]["image"].shape == (1, 4, 4)


def test_verify_finds_truncated_files(tmp_path: Path) -> None:
    Image.fromarray(_gray(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    csv = _csv(
        tmp_path / "l.csv",
        [{"path": p, "label": i, "split": "val"} for i, p in enumerate(["full.png", "cut.png"])],
    )
    assert len(load_dataset(f"csv:{csv}", "val")) == 2  # headers alone look fine
    with pytest.raises(DataError, match=r"row 1 \(line 3\): unreadable image .*cut.png"):
        load_dataset(f"csv:{csv}?verify=true", "val")


def test_unknown_label_with_explicit_classes_names_the_row(tmp_path: Path) -> None:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "x.png")
    csv = _csv(
        tmp_path / "l.csv", [{"path": "x.png", "label": v, "split": "test"} for v in ("cat", "dog", "cow")]
    )
    with pytest.raises(
        DataError, match=r"row 2 \(line 4\): label 'cow' is not one of the classes \['cat', 'dog'\]"
    ):
        load_dataset(f"csv:{csv}?classes=cat,dog", "test")


def test_user_errors(tmp_path: Path) -> None:
    Image.fromarray(_gray(4, 4)).save(tmp_path / "x.png")
    csv = _csv(tmp_path / "l.csv", [{"file": "x.png", "label": 0}])
    with pytest.raises(DataError, match="no column 'path'.*path_col"):
        load_dataset(f"csv:{csv}", "train")
    with pytest.raises(ConfigError, match="did you mean 'label_col'"):
        load_dataset(f"csv:{csv}?labelcol=x", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}", "train")


def test_folder_kind(tmp_path: Path) -> None:
    for i, cls in enumerate(["normal", "normal", "tumor", "tumor", "tumor"]):
        (tmp_path / "flat" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gray(6, 5, i)).save(tmp_path / "flat" / cls / f"{i}.png")
        split = ["train", "val", "test", "train", "train"][i]
        (tmp_path / "split" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gray(6, 5, i)).save(tmp_path / "split" / split / cls / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path / 'split'}", "train")
    assert (ds.task, ds.classes, ds.n_channels, len(ds)) == ("binary", ["normal", "tumor"], 1, 3)
    assert ds.labels[:, 0].tolist() == [0, 1, 1] and ds[0]["image"].shape == (1, 6, 5)
    assert list(ds.metadata.columns) == ["path", "label", "split", "row"]
    for i in range(5, 10):  # ten images: every class can reach every split
        cls = ["normal", "tumor"][i % 2]
        Image.fromarray(_gray(6, 5, i)).save(tmp_path / "flat" / cls / f"{i}.png")
    flat = [
        load_dataset(f"folder:{tmp_path / 'flat'}?fractions=0.6,0.2,0.2", s) for s in ("train", "val", "test")
    ]
    assert sorted(p for d in flat for p in d.metadata["path"]) == sorted(
        str(p.relative_to(tmp_path / "flat")) for p in (tmp_path / "flat").rglob("*.png")
    )


def test_folder_split_names_take_the_aliases(tmp_path: Path) -> None:
    """CheXpert-, ISIC-style releases name the validation folder ``valid``; its images are not dropped."""
    for i, (split, cls) in enumerate(
        [("Train", "a"), ("Train", "b"), ("valid", "a"), ("valid", "b"), ("test", "a")]
    ):
        (tmp_path / "ds" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gray(6, 5, i)).save(tmp_path / "ds" / split / cls / f"{i}.png")
    sizes = [len(load_dataset(f"folder:{tmp_path / 'ds'}", s)) for s in ("train", "val", "test")]
    assert sizes == [2, 2, 1]
    (tmp_path / "ds" / "val" / "a").mkdir(parents=True)
    Image.fromarray(_gray(6, 5, 9)).save(tmp_path / "ds" / "val" / "a" / "9.png")
    with pytest.raises(DataError, match=r"several folders for the val split: \['val', 'valid'\]"):
        load_dataset(f"folder:{tmp_path / 'ds'}", "val")
