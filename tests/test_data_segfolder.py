"""The segfolder: dataset kind: layouts, splits, mask formats, resizing, bad pairs (tiny generated files)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from synthetic import mask_blob

from medadapt.cli import main
from medadapt.data import DATASETS, DatasetAddress, load_dataset
from medadapt.data.segfolder import SegmentationDataset, read_mask
from medadapt.data.transforms import resize
from medadapt.errors import BadRowsError, ConfigError, DataError


def _write(
    base: Path, stem: str, mask: np.ndarray, *, ext: str = "png", image_hw: tuple | None = None
) -> None:
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_hw or mask.shape
    pixels = np.random.default_rng(len(stem)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(base / "images" / f"{stem}.jpg")
    Image.fromarray(mask).save(base / "masks" / f"{stem}.{ext}")


def _flat(root: Path, n: int, *, ext: str = "png", scale: int = 1) -> list[str]:
    stems = [f"s{i:02d}" for i in range(n)]
    for i, stem in enumerate(stems):
        _write(root, stem, mask_blob(12, 16, i) * scale, ext=ext)
    return stems


def _lists(root: Path, **lists: list[str]) -> None:
    (root / "splits").mkdir(exist_ok=True)
    for name, stems in lists.items():
        (root / "splits" / f"{name}.txt").write_text("\n".join(stems) + "\n")


def _stems(ds: SegmentationDataset) -> set[str]:
    return set(ds.metadata["stem"])


# ------------------------------------------------------------------------------------------------ layouts


def test_split_lists_train_and_val_make_val_the_test_set(tmp_path: Path) -> None:
    stems = _flat(tmp_path, 25, ext="jpg", scale=255)
    _lists(tmp_path, train=stems[:20], val=stems[20:])
    address = f"segfolder:{tmp_path}?val_fraction=0.2"
    parts = {s: load_dataset(address, s) for s in ("train", "val", "test")}
    assert _stems(parts["test"]) == set(stems[20:])  # the published protocol: val.txt is the test set
    assert len(parts["val"]) == 4 and len(parts["train"]) == 16  # carved out of train.txt, seeded
    assert _stems(parts["train"]) | _stems(parts["val"]) == set(stems[:20])
    assert _stems(load_dataset(address, "val")) == _stems(parts["val"])
    assert _stems(load_dataset(address + "&seed=3", "val")) != _stems(parts["val"])

    kept = {s: load_dataset(f"segfolder:{tmp_path}?val_list=val", s) for s in ("train", "val", "test")}
    assert _stems(kept["val"]) == set(stems[20:]) and len(kept["train"]) == 20 and len(kept["test"]) == 0


def test_sample_contract(tmp_path: Path) -> None:
    stems = _flat(tmp_path, 4, ext="jpg", scale=255)
    _write(tmp_path, "empty", mask_blob(12, 16, -1))
    _lists(tmp_path, train=stems[1:], test=["empty", stems[0]])
    ds = load_dataset(f"segfolder:{tmp_path}", "test")
    assert isinstance(ds, SegmentationDataset) and ds.task == "segmentation" and ds.n_channels == 3
    assert ds.classes == ["background", "foreground"] and ds.num_outputs == 2
    sample = ds[1]
    assert set(sample) == {"image", "mask", "label", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 12, 16)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (12, 16)
    assert list(ds.metadata["stem"]) == ["empty", stems[0]]  # sorted by file name
    assert ds.labels.tolist() == [[0], [1]]  # "has foreground"
    assert {"stem", "path", "mask_path", "patient_id", "foreground"} <= set(ds.metadata.columns)
    assert ds.metadata["path"][1] == f"images/{stems[0]}.jpg" and ds.metadata["foreground"][0] == 0
    assert ds.metadata["patient_id"].tolist() == ["empty", stems[0]]  # every image its own patient
    # a fold's row view keeps the masks of its rows, one by one and batched
    from medadapt.data.folds import pooled

    splits = {s: load_dataset(f"segfolder:{tmp_path}", s) for s in ("train", "val", "test")}
    view = pooled(splits)
    last = len(view) - 1
    assert torch.equal(view[last]["mask"], ds.mask(1)) and torch.equal(
        view.__getitems__([last])[0]["mask"], ds.mask(1)
    )


def test_split_folders_and_carved_val(tmp_path: Path) -> None:
    for split, n in (("train", 10), ("Val", 3), ("test", 4)):
        for i in range(n):
            _write(tmp_path / split, f"{split}{i}", mask_blob(8, 8, i))
    assert [len(load_dataset(f"segfolder:{tmp_path}", s)) for s in ("train", "val", "test")] == [10, 3, 4]
    assert load_dataset(f"segfolder:{tmp_path}", "test").metadata["path"][0] == "test/images/test0.jpg"
    (tmp_path / "Val").rename(tmp_path / "unused")
    parts = [load_dataset(f"segfolder:{tmp_path}", s) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [9, 1, 4]  # no val folder: 10% of train becomes validation


def test_no_splits_seeded_patient_grouped_split(tmp_path: Path) -> None:
    stems = _flat(tmp_path, 40)
    pd.DataFrame({"stem": stems, "patient_id": [f"p{i // 4}" for i in range(40)]}).to_csv(
        tmp_path / "patients.csv", index=False
    )
    parts = {s: load_dataset(f"segfolder:{tmp_path}", s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 40 and all(len(p) for p in parts.values())
    patients = [set(p.metadata["patient_id"]) for p in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    again = load_dataset(f"segfolder:{tmp_path}", "test")
    assert _stems(again) == _stems(parts["test"])
    other = load_dataset(f"segfolder:{tmp_path}?seed=1", "test")
    assert _stems(other) != _stems(parts["test"])


# -------------------------------------------------------------------------------------------------- masks


def test_jpeg_masks_are_thresholded(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:16, :16], mask[16:, 16:] = 255, 180  # blocks aligned to JPEG's 8x8 grid
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=100)
    default = read_mask(tmp_path / "m.jpg", n_classes=2)
    assert default[2:14, 2:14].all() and default[18:30, 18:30].all() and not default[18:30, 2:14].any()
    strict = read_mask(tmp_path / "m.jpg", n_classes=2, threshold=200)
    assert strict[2:14, 2:14].all() and not strict[18:30, 18:30].any()
    with pytest.raises(DataError, match="JPEG.*binary"):
        read_mask(tmp_path / "m.jpg", n_classes=3)


def test_index_png_multiclass_and_0_255_binary(tmp_path: Path) -> None:
    mask = mask_blob(10, 10, 0, n_classes=4)
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png", n_classes=4), mask)
    with pytest.raises(DataError, match=r"m\.png has values 3 outside the 3 classes"):
        read_mask(tmp_path / "m.png", n_classes=3)
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp_path / "b.png")
    assert np.array_equal(read_mask(tmp_path / "b.png", n_classes=2), mask > 0)
    Image.fromarray(mask.astype(np.uint16) * 1000).save(tmp_path / "deep.png")  # mode I;16
    with pytest.raises(DataError, match="values 1000, 2000, 3000"):
        read_mask(tmp_path / "deep.png", n_classes=4)


def test_palette_png_index_by_default_colour_with_the_palette_option(tmp_path: Path) -> None:
    index = mask_blob(10, 10, 1, n_classes=3)
    im = Image.frombytes("P", (10, 10), index.tobytes())
    im.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0])  # index 1 is green, 2 is red
    im.save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png", n_classes=3), index)
    by_colour = read_mask(tmp_path / "m.png", n_classes=3, palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)))
    assert np.array_equal(by_colour, np.array([0, 2, 1])[index])
    with pytest.raises(DataError, match="colours 00ff00"):
        read_mask(tmp_path / "m.png", n_classes=3, palette=((0, 0, 0), (255, 0, 0), (0, 0, 255)))
    Image.fromarray(np.full((4, 4, 3), [0, 9, 0], dtype=np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="colour image"):
        read_mask(tmp_path / "c.png", n_classes=3)

    _write(tmp_path / "ds", "a", index)
    (tmp_path / "ds" / "masks" / "a.png").unlink()
    im.save(tmp_path / "ds" / "masks" / "a.png")
    ds = load_dataset(
        f"segfolder:{tmp_path / 'ds'}?classes=bg,red,green&palette=000000,255-0-0,00ff00&fractions=1,0,0",
        "train",
    )
    assert np.array_equal(ds.mask(0).numpy(), np.array([0, 2, 1])[index])


def test_resize_keeps_labels_and_never_interpolates_masks(tmp_path: Path) -> None:
    mask = mask_blob(13, 17, 2, n_classes=4)
    mask[::3, ::4] = 3  # fine detail that interpolation would blur into new values
    _write(tmp_path, "a", mask)
    before = set(np.unique(mask).tolist())
    full = load_dataset(f"segfolder:{tmp_path}?classes=a,b,c,d&fractions=1,0,0", "train")
    for size in (8, 32):
        ds = load_dataset(f"segfolder:{tmp_path}?classes=a,b,c,d&size={size}&fractions=1,0,0", "train")
        sample = ds[0]
        assert sample["image"].shape == (3, size, size) and sample["mask"].shape == (size, size)
        assert set(sample["mask"].unique().tolist()) <= before
        expected = resize(full.image(0)[None].float() / 255, (size, size), "bilinear")[0]
        assert (sample["image"].float() / 255 - expected).abs().max() <= 0.5 / 255 + 1e-6
    overridden = load_dataset(
        f"segfolder:{tmp_path}?classes=a,b,c,d&size=8&fractions=1,0,0", "train", size=16
    )
    assert overridden[0]["mask"].shape == (16, 16)


# ---------------------------------------------------------------------------------------------- bad pairs


def _bad_dataset(root: Path) -> list[str]:
    good = _flat(root, 3)
    (root / "masks" / "s00.png").unlink()  # missing mask
    _write(root, "small", mask_blob(12, 16, 0)[:6], image_hw=(12, 16))  # size mismatch
    _write(root, "three", mask_blob(12, 16, 0, n_classes=3))  # value 2 with two classes
    _write(root, "empty", mask_blob(12, 16, -1))
    _lists(root, train=[*good, "small", "three", "empty", "ghost"])
    return good


def test_bad_pairs_name_their_reason(tmp_path: Path) -> None:
    _bad_dataset(tmp_path)
    with pytest.raises(BadRowsError) as e:
        load_dataset(f"segfolder:{tmp_path}?empty=error&val_fraction=0", "train")
    message = str(e.value)
    assert "5 bad pair(s) for split 'train'" in message and "--skip-bad-rows" in message
    assert "pair 's00': no mask for images/s00.jpg" in message
    assert "pair 'small': image images/small.jpg is 16x12 but its mask is 16x6" in message
    assert "pair 'three': mask" in message and "has values 2 outside the 2 classes" in message
    assert "pair 'empty': mask masks/empty.png has no foreground" in message
    assert "pair 'ghost': listed in splits/train.txt but no image" in message
    assert (
        len(load_dataset(f"segfolder:{tmp_path}?val_fraction=0&skip_bad=true", "train")) == 3
    )  # empty allowed


def test_skip_bad_drops_pairs_with_one_warning(tmp_path: Path, caplog) -> None:
    good = _bad_dataset(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"segfolder:{tmp_path}?empty=error&val_fraction=0", "train", skip_bad=True)
    assert list(ds.metadata["stem"]) == good[1:] and len(ds.labels) == len(ds.paths) == 2
    assert [s for s, _ in ds.skipped] == ["empty", "s00", "small", "three", "ghost"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 5 bad pair(s)" in warnings[0].getMessage()
    assert ds[1]["mask"].shape == (12, 16)


# ------------------------------------------------------------------------------------ classes, metadata


def test_classes_from_file_address_and_boxes(tmp_path: Path) -> None:
    _write(tmp_path, "a", mask_blob(12, 16, 0, n_classes=3))
    with pytest.raises(BadRowsError, match="outside the 2 classes"):
        load_dataset(f"segfolder:{tmp_path}?fractions=1,0,0", "train")
    (tmp_path / "classes.txt").write_text("background\nliver\n# a comment\ntumour\n")
    assert load_dataset(f"segfolder:{tmp_path}?fractions=1,0,0", "train").classes == [
        "background",
        "liver",
        "tumour",
    ]
    assert load_dataset(f"segfolder:{tmp_path}?classes=x,y,z&fractions=1,0,0", "train").classes == [
        "x",
        "y",
        "z",
    ]
    (tmp_path / "classes.txt").unlink()
    _write(tmp_path, "a", mask_blob(12, 16, 0))
    boxes = {
        "a": {
            "height": 12,
            "width": 16,
            "bbox": [{"label": "polyp", "xmin": 0, "ymin": 0, "xmax": 4, "ymax": 4}],
        }
    }
    (tmp_path / "x_bboxes.json").write_text(json.dumps(boxes))
    assert load_dataset(f"segfolder:{tmp_path}?fractions=1,0,0", "train").classes == ["background", "polyp"]


def test_object_size_from_a_bboxes_json(tmp_path: Path) -> None:
    _flat(tmp_path, 3)
    box = {"label": "polyp", "xmin": 2, "ymin": 1, "xmax": 6, "ymax": 4}  # 12 px
    big = {"label": "polyp", "xmin": 0, "ymin": 0, "xmax": 8, "ymax": 6}  # 48 px
    boxes = {
        "s00": {"height": 12, "width": 16, "bbox": [box, big]},
        "s01": {"height": 12, "width": 16, "bbox": []},
    }
    (tmp_path / "kavsir_bboxes.json").write_text(json.dumps(boxes))
    _lists(tmp_path, test=["s00", "s01", "s02"])
    meta = load_dataset(f"segfolder:{tmp_path}", "test").metadata
    sizes = meta["object_size"].tolist()
    assert sizes[:2] == [48 / 192, 0.0] and np.isnan(sizes[2])
    assert meta["object_size_band"].tolist() == ["large (>20%)", "small (<5%)", ""]


# ---------------------------------------------------------------------------------------- registry, errors


def test_registry_and_list(tmp_path: Path, capsys) -> None:
    assert "segfolder" in DATASETS
    check = DATASETS.meta("segfolder")["check"]  # options are checked without reading files (grids)
    check(DatasetAddress.parse("segfolder:/nowhere?size=64&empty=error"))
    with pytest.raises(ConfigError, match="did you mean 'threshold'"):
        check(DatasetAddress.parse("segfolder:/nowhere?treshold=64"))
    assert main(["list", "datasets", "segfolder*"]) == 0
    assert "segfolder:DIR" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("query", "error", "match"),
    [
        ("threshold=300", ConfigError, "threshold=300"),
        ("empty=no", ConfigError, "allow or error"),
        ("val_fraction=0.13", ConfigError, "val_fraction"),
        ("val_list=test", ConfigError, "no val list"),
        ("palette=000000,ff0000,00ff00", ConfigError, "palette has 3 colours but there are 2 classes"),
        ("palette=black,white", ConfigError, "RRGGBB"),
        ("classes=bg", ConfigError, "two or more"),
        ("seed=x", ConfigError, "seed"),
    ],
)
def test_option_errors(tmp_path: Path, query: str, error: type, match: str) -> None:
    _flat(tmp_path, 2)
    with pytest.raises(error, match=match):
        load_dataset(f"segfolder:{tmp_path}?{query}", "train")


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"segfolder:{tmp_path / 'nope'}", "train")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="ROOT/images and ROOT/masks"):
        load_dataset(f"segfolder:{tmp_path}", "train")
    stems = _flat(tmp_path, 4)
    _lists(tmp_path, train=stems[:3], test=stems[2:])
    with pytest.raises(DataError, match="listed in both"):
        load_dataset(f"segfolder:{tmp_path}", "train")


def test_mask_suffix_pairs_suffixed_mask_names(tmp_path: Path) -> None:
    _flat(tmp_path, 2)
    for mask in (tmp_path / "masks").iterdir():
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    with pytest.raises(BadRowsError, match="no mask for images/s00.jpg"):
        load_dataset(f"segfolder:{tmp_path}?fractions=1,0,0", "train")
    ds = load_dataset(f"segfolder:{tmp_path}?mask_suffix=_mask&fractions=1,0,0", "train")
    assert list(ds.metadata["mask_path"]) == ["masks/s00_mask.png", "masks/s01_mask.png"]


def test_a_method_without_segmentation_refuses_it_naming_those_that_run_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medadapt.data import load_dataset
    from medadapt.driver.base import run_cell

    stems = _flat(tmp_path / "seg", 6)
    _lists(tmp_path / "seg", train=stems[:4], test=stems[4:])
    address = f"segfolder:{tmp_path / 'seg'}"
    ctx = SimpleNamespace(splits={"train": load_dataset(address, "train")})
    with pytest.raises(ConfigError, match=r"is a segmentation dataset, and the 'distill' method runs "
                       r"classification tasks only; a segmentation dataset runs with: .*finetune"):  # fmt: skip
        run_cell(SimpleNamespace(dataset=address), ctx, method="distill", name="d", seed=0)
