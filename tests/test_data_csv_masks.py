"""csv: datasets with a mask_path column: segmentation with segfolder's mask rules (tiny generated files)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from synthetic import mask_blob

from medadapt.data import load_dataset
from medadapt.data.masks import SegmentationDataset, mask_classes, object_size, scan_masks
from medadapt.data.tables import ImageFileDataset
from medadapt.errors import BadRowsError, ConfigError, DataError


def _pair(root: Path, stem: str, mask: np.ndarray | Image.Image, *, ext: str = "png", hw=None) -> dict:
    """Write ``img/STEM.jpg`` and ``msk/STEM.EXT`` under ``root``; the CSV row (paths relative to root)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    h, w = hw or (mask.size[::-1] if isinstance(mask, Image.Image) else mask.shape)
    pixels = np.random.default_rng(len(stem)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "img" / f"{stem}.jpg")
    im = mask if isinstance(mask, Image.Image) else Image.fromarray(mask)
    im.save(root / "msk" / f"{stem}.{ext}", **({"quality": 100} if ext == "jpg" else {}))
    return {"path": f"img/{stem}.jpg", "mask_path": f"msk/{stem}.{ext}"}


def _csv(root: Path, rows: list[dict], name: str = "labels.csv") -> Path:
    pd.DataFrame(rows).to_csv(root / name, index=False)
    return root / name


def _binary(root: Path, n: int, *, patients: int | None = None, split: bool = False) -> Path:
    rows = []
    for i in range(n):
        row = _pair(root, f"s{i:02d}", mask_blob(12, 16, i if i % 5 else -1) * (255 if i % 2 else 1))
        row["patient_id"] = f"p{i // (n // patients)}" if patients else f"p{i}"
        row["site"] = f"site{i % 3}"
        if split:
            row["split"] = "test" if i < 4 else "train"
        rows.append(row)
    return _csv(root, rows)


# ------------------------------------------------------------------------------------------------ contract


def test_binary_png_masks_sample_contract_and_metadata(tmp_path: Path) -> None:
    csv = _binary(tmp_path, 8, split=True)  # masks saved as 0/1 and as 0/255; rows 0 (and 5) empty
    ds = load_dataset(f"csv:{csv}", "test")
    assert isinstance(ds, SegmentationDataset) and ds.task == "segmentation" and ds.n_channels == 3
    assert ds.classes == ["background", "foreground"] and ds.num_outputs == 2 and len(ds) == 4
    sample = ds[1]
    assert set(sample) == {"image", "mask", "label", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 12, 16)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (12, 16)
    expected = mask_blob(12, 16, 1)
    assert np.array_equal(sample["mask"].numpy(), expected)  # 0/255 read as 0/1
    assert ds.labels.tolist() == [[0], [1], [1], [1]]  # "has foreground" flags
    meta = ds.metadata
    assert {
        "path",
        "mask_path",
        "patient_id",
        "site",
        "row",
        "foreground",
        "object_size",
        "object_size_band",
    } <= set(meta.columns)
    assert meta["row"].tolist() == [0, 1, 2, 3] and ds.patient_col == "patient_id"
    assert meta["foreground"][0] == 0 and meta["foreground"][1] == pytest.approx(expected.mean())
    assert meta["object_size"][0] == 0 and meta["object_size"][1] == pytest.approx(expected.mean())
    assert meta["object_size_band"].tolist()[:2] == ["small (<5%)", "medium (5-20%)"]  # 0 and 20 / 192
    assert ds.mask_paths[1] == str(tmp_path / "msk" / "s01.png") and ds.skipped == []


def test_object_size_is_the_largest_region_box() -> None:
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0:2, 0:5] = 1  # a 10-pixel box
    mask[5:8, 5:7] = 2  # 6 pixels, another class
    mask[9, 0] = 1
    assert object_size(mask) == pytest.approx(0.10) and object_size(np.zeros((4, 4))) == 0
    diagonal = np.eye(4, dtype=np.uint8)  # 8-connected: one region, its box the whole mask
    assert object_size(diagonal) == 1.0


def test_a_csv_object_size_column_is_kept(tmp_path: Path) -> None:
    rows = [
        {**_pair(tmp_path, f"s{i}", mask_blob(12, 16, i)), "object_size": s}
        for i, s in enumerate((0.01, 0.5))
    ]
    meta = load_dataset(f"csv:{_csv(tmp_path, rows)}?fractions=1,0,0", "train").metadata
    assert meta["object_size"].tolist() == [0.01, 0.5]
    assert meta["object_size_band"].tolist() == ["small (<5%)", "large (>20%)"]


# --------------------------------------------------------------------------------------------- mask files


def test_index_png_with_three_classes_names_from_option_or_file(tmp_path: Path) -> None:
    rows = [_pair(tmp_path, f"s{i}", mask_blob(12, 16, i, n_classes=3)) for i in range(3)]
    csv = _csv(tmp_path, rows)
    with pytest.raises(
        BadRowsError, match=r"row 0 \(line 2\): mask .*s0\.png has values 2 outside the 2 classes"
    ):
        load_dataset(f"csv:{csv}?fractions=1,0,0", "train")
    ds = load_dataset(f"csv:{csv}?fractions=1,0,0&classes=bg,liver,tumour", "train")
    assert ds.classes == ["bg", "liver", "tumour"] and ds.num_outputs == 3
    assert np.array_equal(ds.mask(2).numpy(), mask_blob(12, 16, 2, n_classes=3))
    (tmp_path / "names.txt").write_text("background\n# comment\nliver\ntumour\n")
    named = load_dataset(f"csv:{csv}?fractions=1,0,0&classes_file=names.txt", "train")
    assert named.classes == ["background", "liver", "tumour"]
    (tmp_path / "names.txt").rename(tmp_path / "classes.txt")  # found beside the CSV without the option
    assert load_dataset(f"csv:{csv}?fractions=1,0,0", "train").classes == ["background", "liver", "tumour"]
    with pytest.raises(DataError, match="classes_file .*nope.txt' does not exist"):
        load_dataset(f"csv:{csv}?classes_file=nope.txt", "train")
    with pytest.raises(ConfigError, match="two or more"):
        load_dataset(f"csv:{csv}?classes=bg", "train")


def test_palette_png_by_index_or_by_colour(tmp_path: Path) -> None:
    index = mask_blob(10, 10, 1, n_classes=3)
    im = Image.frombytes("P", (10, 10), index.tobytes())
    im.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0])  # index 1 is green, 2 is red
    csv = _csv(tmp_path, [_pair(tmp_path, "a", im)])
    ds = load_dataset(f"csv:{csv}?fractions=1,0,0&classes=bg,green,red", "train")
    assert np.array_equal(ds.mask(0).numpy(), index)
    by_colour = load_dataset(
        f"csv:{csv}?fractions=1,0,0&classes=bg,red,green&palette=000000,ff0000,0-255-0", "train"
    )
    assert np.array_equal(by_colour.mask(0).numpy(), np.array([0, 2, 1])[index])
    with pytest.raises(ConfigError, match="palette has 2 colours but there are 3 classes"):
        load_dataset(f"csv:{csv}?classes=bg,red,green&palette=000000,ff0000", "train")


def test_jpeg_masks_are_thresholded(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:16, :16], mask[16:, 16:] = 255, 180  # blocks aligned to JPEG's 8x8 grid
    csv = _csv(tmp_path, [_pair(tmp_path, "a", mask, ext="jpg")])
    default = load_dataset(f"csv:{csv}?fractions=1,0,0", "train").mask(0).numpy()
    assert default[2:14, 2:14].all() and default[18:30, 18:30].all() and not default[18:30, 2:14].any()
    strict = load_dataset(f"csv:{csv}?fractions=1,0,0&threshold=200", "train").mask(0).numpy()
    assert strict[2:14, 2:14].all() and not strict[18:30, 18:30].any()
    with pytest.raises(
        BadRowsError, match=r"row 0 \(line 2\): mask .*a\.jpg is a JPEG.*save multi-class masks as PNG"
    ):
        load_dataset(f"csv:{csv}?fractions=1,0,0&classes=a,b,c", "train")
    with pytest.raises(ConfigError, match="threshold=300"):
        load_dataset(f"csv:{csv}?threshold=300", "train")


def test_relative_mask_paths_start_at_the_csv_folder_or_mask_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [_pair(data, f"s{i}", mask_blob(12, 16, i)) for i in range(2)]
    rows[1]["mask_path"] = str(data / rows[1]["mask_path"])  # absolute paths stay as they are
    ds = load_dataset(f"csv:{_csv(data, rows)}?fractions=1,0,0", "train")
    assert ds.mask_paths == [str(data / "msk" / "s0.png"), str(data / "msk" / "s1.png")]
    assert ds.metadata["mask_path"][0] == "msk/s0.png"  # the CSV's value stays in the metadata
    flat = [{"path": r["path"], "mask_path": Path(r["mask_path"]).name} for r in rows]
    address = f"csv:{_csv(data, flat, 'flat.csv')}?fractions=1,0,0"
    with pytest.raises(BadRowsError, match=r"row 0 \(line 2\): mask file not found: .*s0\.png.*mask_root="):
        load_dataset(address, "train")
    assert len(load_dataset(f"{address}&mask_root={data / 'msk'}", "train")) == 2
    image_root = [{"path": f"img/s{i}.jpg", "mask_path": f"msk/s{i}.png"} for i in range(2)]
    (tmp_path / "elsewhere").mkdir()
    moved = _csv(tmp_path / "elsewhere", image_root)  # masks follow image_root unless mask_root is given
    assert len(load_dataset(f"csv:{moved}?fractions=1,0,0&image_root={data}", "train")) == 2


# -------------------------------------------------------------------------------------------------- splits


def test_seeded_patient_grouped_split_without_a_split_column(tmp_path: Path) -> None:
    csv = _binary(tmp_path, 40, patients=10)
    parts = {s: load_dataset(f"csv:{csv}", s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 40 and all(len(p) for p in parts.values())
    patients = [set(p.metadata["patient_id"]) for p in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert list(load_dataset(f"csv:{csv}", "test").metadata["row"]) == list(parts["test"].metadata["row"])
    other = load_dataset(f"csv:{csv}?seed=1", "test")
    assert set(other.metadata["row"]) != set(parts["test"].metadata["row"])


def test_a_split_column_is_honoured_and_only_its_masks_are_read(tmp_path: Path) -> None:
    csv = _binary(tmp_path, 8, split=True)
    (tmp_path / "msk" / "s07.png").write_bytes(b"not a png")  # a train row
    test = load_dataset(f"csv:{csv}", "test")
    assert test.metadata["row"].tolist() == [0, 1, 2, 3]
    with pytest.raises(BadRowsError, match=r"row 7 \(line 9\): cannot read mask .*s07\.png"):
        load_dataset(f"csv:{csv}", "train")


# ----------------------------------------------------------------------------------------------- bad pairs


def _bad_csv(root: Path) -> Path:
    rows = [_pair(root, f"g{i}", mask_blob(12, 16, i)) for i in range(2)]
    rows.append(_pair(root, "missing", mask_blob(12, 16, 0)))
    (root / "msk" / "missing.png").unlink()
    rows.append({**_pair(root, "blank", mask_blob(12, 16, 0)), "mask_path": ""})
    rows.append(_pair(root, "small", mask_blob(6, 16, 0), hw=(12, 16)))
    rows.append(_pair(root, "three", mask_blob(12, 16, 0, n_classes=3)))
    rows.append(_pair(root, "empty", mask_blob(12, 16, -1)))
    return _csv(root, [{**r, "patient_id": f"p{i}", "split": "train"} for i, r in enumerate(rows)])


def test_bad_pairs_name_row_file_and_fix(tmp_path: Path) -> None:
    csv = _bad_csv(tmp_path)
    with pytest.raises(BadRowsError) as e:
        load_dataset(f"csv:{csv}?empty=error", "train")
    message = str(e.value)
    assert isinstance(e.value, DataError) and "5 bad row(s) for split 'train'" in message
    assert "skip_bad=True (CLI: --skip-bad-rows)" in message
    assert (
        f"row 2 (line 4): mask file not found: {tmp_path / 'msk' / 'missing.png'} (check mask_path" in message
    )
    assert "row 3 (line 5): mask_path is empty; give every row its mask file" in message
    assert (
        "row 4 (line 6): image img/small.jpg is 16x12 but its mask is 16x6 (msk/small.png); a mask must have its "
        "image's size" in message
    )
    assert "row 5 (line 7): mask" in message and "three.png has values 2 outside the 2 classes" in message
    assert "declare the classes (classes=" in message
    assert "row 6 (line 8): mask msk/empty.png has no foreground (empty=allow keeps such masks)" in message
    three_classes = load_dataset(
        f"csv:{csv}?classes=a,b,c", "train", skip_bad=True
    )  # empty allowed by default
    assert three_classes.metadata["row"].tolist() == [0, 1, 5, 6] and len(three_classes.skipped) == 3


def test_skip_bad_drops_and_counts(tmp_path: Path, caplog) -> None:
    csv = _bad_csv(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"csv:{csv}?empty=error", "train", skip_bad=True)
    assert (
        ds.metadata["row"].tolist() == [0, 1] and len(ds.labels) == len(ds.paths) == len(ds.mask_paths) == 2
    )
    assert [row for row, _ in ds.skipped] == [2, 3, 4, 5, 6]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 5 bad row(s)" in warnings[0].getMessage()
    assert ds[1]["mask"].shape == (12, 16)
    allowed = load_dataset(f"csv:{csv}?skip_bad=true", "train")  # empty masks are allowed by default
    assert allowed.metadata["row"].tolist() == [0, 1, 6] and allowed.labels.tolist() == [[1], [1], [0]]


# ------------------------------------------------------------------------------------------------ resizing


def test_images_and_masks_resize_together(tmp_path: Path) -> None:
    mask = mask_blob(13, 17, 2, n_classes=4)
    mask[::3, ::4] = 3  # fine detail that interpolation would blur into new values
    csv = _csv(tmp_path, [_pair(tmp_path, "a", mask)])
    before = set(np.unique(mask).tolist())
    for size in (8, 32):
        ds = load_dataset(f"csv:{csv}?fractions=1,0,0&classes=a,b,c,d&size={size}", "train")
        sample = ds[0]
        assert sample["image"].shape == (3, size, size) and sample["mask"].shape == (size, size)
        assert set(sample["mask"].unique().tolist()) <= before
    overridden = load_dataset(f"csv:{csv}?fractions=1,0,0&classes=a,b,c,d&size=8", "train", size=16)
    assert overridden[0]["mask"].shape == (16, 16) and overridden[0]["image"].shape == (3, 16, 16)
    assert load_dataset(f"csv:{csv}?fractions=1,0,0&classes=a,b,c,d", "train")[0]["mask"].shape == (13, 17)


# ------------------------------------------------------------------------------------ which kind of dataset


def test_mask_path_makes_segmentation_and_task_keeps_classification(tmp_path: Path) -> None:
    rows = [
        {**_pair(tmp_path, f"s{i}", mask_blob(12, 16, i)), "label": "ab"[i % 2], "grade": i} for i in range(4)
    ]
    csv = _csv(tmp_path, rows)
    seg = load_dataset(f"csv:{csv}?fractions=1,0,0", "train")
    assert seg.task == "segmentation" and seg.metadata["label"].tolist() == ["a", "b", "a", "b"]
    assert load_dataset(f"csv:{csv}?fractions=1,0,0&task=segmentation", "train").task == "segmentation"
    cls = load_dataset(f"csv:{csv}?fractions=1,0,0&task=binary", "train")
    assert isinstance(cls, ImageFileDataset) and cls.task == "binary" and not hasattr(cls, "mask")
    assert "mask_path" in cls.metadata.columns
    with pytest.raises(
        ConfigError, match="makes it a segmentation dataset, but label_col= asks for class labels"
    ):
        load_dataset(f"csv:{csv}?label_col=grade", "train")
    with pytest.raises(ConfigError, match="empty= applies to segmentation CSVs, but labels.csv is not one"):
        load_dataset(f"csv:{csv}?task=binary&empty=error", "train")


def test_classification_csvs_are_unchanged_and_mask_options_need_masks(tmp_path: Path) -> None:
    rows = [
        {"path": _pair(tmp_path, f"s{i}", mask_blob(12, 16, i))["path"], "label": "ab"[i % 2]}
        for i in range(4)
    ]
    csv = _csv(tmp_path, rows)
    ds = load_dataset(f"csv:{csv}?fractions=1,0,0", "train")
    assert isinstance(ds, ImageFileDataset) and ds.task == "binary" and ds.classes == ["a", "b"]
    assert set(ds[0]) == {"image", "label", "index"}
    assert ds[0]["image"].shape == (3, 12, 16)  # the size loader argument is not used here
    assert load_dataset(f"csv:{csv}?fractions=1,0,0", "train", size=8)[0]["image"].shape == (3, 12, 16)
    for query, match in (
        ("size=8", "size= applies to segmentation CSVs, but labels.csv is not one .it has no 'mask_path'"),
        ("mask_root=/x", "mask_root= applies"),
        ("task=segmentation", "no column 'mask_path'.*mask_col"),
        ("mask_col=seg", "no column 'seg'"),
    ):
        with pytest.raises((ConfigError, DataError), match=match):
            load_dataset(f"csv:{csv}?{query}", "train")
    with pytest.raises(ConfigError, match="did you mean 'mask_col'"):
        load_dataset(f"csv:{csv}?mask_cols=x", "train")
    with pytest.raises(
        ConfigError, match="folder: datasets cannot be segmentation; use a segfolder: dataset"
    ):
        load_dataset(f"folder:{tmp_path}?task=segmentation", "train")


def test_mask_col_and_reserved_columns(tmp_path: Path) -> None:
    rows = [
        {"path": r["path"], "seg": r["mask_path"]}
        for r in (_pair(tmp_path, f"s{i}", mask_blob(8, 8, i)) for i in range(2))
    ]
    csv = _csv(tmp_path, rows)
    assert load_dataset(f"csv:{csv}?mask_col=seg&fractions=1,0,0", "train").mask(1).shape == (8, 8)
    _csv(tmp_path, [{**r, "mask_path": r["seg"], "foreground": 1} for r in rows])
    with pytest.raises(
        DataError, match="column 'foreground', which medadapt computes from the masks; rename it"
    ):
        load_dataset(f"csv:{csv}", "train")


def test_shared_helpers(tmp_path: Path) -> None:
    assert mask_classes(None, tmp_path / "none.txt") == ["background", "foreground"]
    assert mask_classes(None, None, default="polyp") == ["background", "polyp"]
    _pair(tmp_path, "a", mask_blob(6, 6, 0))
    images, masks = [str(tmp_path / "img" / "a.jpg")], [str(tmp_path / "msk" / "a.png")]
    scan = scan_masks(images, masks, [0], lambda p: np.asarray(Image.open(p)), sizes=True)
    assert (
        scan.labels.tolist() == [[1]] and scan.errors == {} and scan.object_size[0] == pytest.approx(4 / 36)
    )
    assert np.isnan(scan_masks(images, masks, [], lambda p: None).foreground[0])  # rows not asked for: unread
