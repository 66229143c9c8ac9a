"""CBIS-DDSM and SIIM-ACR layouts on tiny replicas of the files as their owners distribute them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

from dicom_replicas import FULL_SHAPE, Abn, make_cbis, mask2rle, write_rle_csv, write_siim_image  # noqa: E402

import medadapt.data.cbis_ddsm  # noqa: E402,F401  (registers cbis-ddsm)
import medadapt.data.siim_acr  # noqa: E402,F401  (registers siim-acr)
from medadapt.data import DATASETS, SPLITS, DatasetAddress, load_dataset  # noqa: E402
from medadapt.data.siim_acr import decode_rle, rle_runs  # noqa: E402
from medadapt.errors import BadRowsError, ConfigError, DataError  # noqa: E402

# ------------------------------------------------------------------------------------------ CBIS-DDSM

MASS_TRAIN = [
    Abn("mass", "train", "P_00001", abn_id=1, box=(2, 2, 6, 6)),
    Abn("mass", "train", "P_00001", abn_id=2, pathology="MALIGNANT", box=(10, 10, 14, 20)),
    Abn("mass", "train", "P_00002", "RIGHT", "MLO", pathology="BENIGN_WITHOUT_CALLBACK", layout="exact"),
    Abn("mass", "train", "P_00003", pathology="MALIGNANT", layout="swapped"),
    Abn("mass", "train", "P_00004", "LEFT", "MLO", layout="same"),
    Abn("mass", "train", "P_00005", "RIGHT", "CC", pathology="MALIGNANT", layout="nodesc"),
    *(Abn("mass", "train", f"P_0001{k}", pathology=("BENIGN", "MALIGNANT")[k % 2]) for k in range(8)),
]
MASS_TEST = [
    Abn("mass", "test", "P_00020", pathology="MALIGNANT"),
    Abn("mass", "test", "P_00021", layout="exact"),
    Abn("mass", "test", "P_00022", layout="same"),
    Abn("mass", "test", "P_00023", pathology="MALIGNANT", layout="nodesc"),
]
CALC = [
    Abn("calc", "train", "P_00001", abn_id=1, box=(20, 4, 24, 8)),  # the mass copy's mammogram
    Abn("calc", "train", "P_00030", "RIGHT", "CC", pathology="MALIGNANT"),
    Abn("calc", "train", "P_00023", "RIGHT", "MLO"),  # P_00023 is in the mass test set too
    Abn("calc", "test", "P_00031"),
]
ALL = MASS_TRAIN + MASS_TEST + CALC


@pytest.fixture(scope="module")
def cbis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cbis(tmp_path_factory.mktemp("cbis"), ALL)


def _cbis_splits(root: Path, query: str = "abnormality=mass", **kwargs) -> dict:
    return {s: load_dataset(f"cbis-ddsm:{root}?{query}", s, **kwargs) for s in SPLITS}


def _patients_disjoint(splits: dict) -> None:
    sets = [set(ds.metadata[ds.patient_col]) for ds in splits.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_cbis_official_splits_labels_and_patients(cbis: Path) -> None:
    splits = _cbis_splits(cbis)
    ids = {s: set(ds.metadata["image_id"]) for s, ds in splits.items()}
    assert ids["test"] == {a.image_id for a in MASS_TEST}
    assert ids["train"] | ids["val"] == {a.image_id for a in MASS_TRAIN} and ids["val"]
    _patients_disjoint(splits)
    train = splits["train"]
    assert (train.task, train.classes, train.patient_col) == ("binary", ["benign", "malignant"], "patient_id")
    labels = {i: int(y) for ds in splits.values() for i, y in zip(ds.metadata["image_id"], ds.labels[:, 0])}
    assert labels["P_00001_LEFT_CC"] == 1  # one benign and one malignant mass: malignant
    assert labels["P_00002_RIGHT_MLO"] == 0  # BENIGN_WITHOUT_CALLBACK is benign
    assert labels["P_00023_LEFT_CC"] == 1 and labels["P_00021_LEFT_CC"] == 0


def test_cbis_resolves_csv_uid_paths_and_nbia_folders(cbis: Path) -> None:
    test = load_dataset(f"cbis-ddsm:{cbis}?abnormality=mass", "test")
    paths = dict(zip(test.metadata["image_id"], test.paths))
    assert paths["P_00021_LEFT_CC"].endswith("000000.dcm")  # exact CSV path exists
    assert "full mammogram images" in paths["P_00020_LEFT_CC"]  # NBIA folder found by the first component
    sample = test[0]
    assert sample["image"].shape == (1, *FULL_SHAPE) and str(sample["image"].dtype) == "torch.uint8"


def test_cbis_roi_images_are_the_cropped_ones(cbis: Path) -> None:
    splits = _cbis_splits(cbis, "abnormality=mass&image=roi")
    assert sum(len(ds) for ds in splits.values()) == len(MASS_TRAIN) + len(
        MASS_TEST
    )  # one row per abnormality
    for ds in splits.values():
        for i in range(len(ds)):  # exact, swapped, NBIA, one-folder-by-description and by-size layouts
            assert ds[i]["image"].shape == (1, 8, 6), ds.metadata["image_id"][i]
    _patients_disjoint(splits)


def test_cbis_segmentation_union_of_roi_masks_and_size(cbis: Path) -> None:
    splits = _cbis_splits(cbis, "abnormality=mass&target=segmentation")
    ds = next(d for d in splits.values() if "P_00001_LEFT_CC" in set(d.metadata["image_id"]))
    assert ds.task == "segmentation" and ds.classes == ["background", "lesion"]
    i = list(ds.metadata["image_id"]).index("P_00001_LEFT_CC")
    item = ds[i]
    assert item["image"].shape == (1, *FULL_SHAPE) and item["mask"].shape == FULL_SHAPE
    expected = MASS_TRAIN[0].mask() | MASS_TRAIN[1].mask()
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    assert ds.labels.tolist() == [[1]] * len(ds)
    small = load_dataset(f"cbis-ddsm:{cbis}?abnormality=mass&target=segmentation&size=16", "test")
    assert small[0]["image"].shape == (1, 16, 16) and small[0]["mask"].shape == (16, 16)
    assert set(small[0]["mask"].unique().tolist()) <= {0, 1}
    roi = load_dataset(f"cbis-ddsm:{cbis}?abnormality=mass&image=roi&size=4", "test")
    assert roi[0]["image"].shape == (1, 4, 4)


def test_cbis_all_merges_copies_and_keeps_patients_in_one_split(cbis: Path) -> None:
    splits = _cbis_splits(cbis, "abnormality=all&target=segmentation")
    _patients_disjoint(splits)
    meta = {s: ds.metadata.set_index("image_id") for s, ds in splits.items()}
    assert "P_00023_RIGHT_MLO" not in set().union(*(m.index for m in meta.values()))  # calc train row dropped
    ds, m = next((splits[s], meta[s]) for s in SPLITS if "P_00001_LEFT_CC" in meta[s].index)
    row = m.loc["P_00001_LEFT_CC"]
    assert row["abnormality_type"] == "calcification+mass" and row["n_abnormalities"] == 3
    assert row["pathology"] == "MALIGNANT" and row["abnormality_id"] == 2  # the leading abnormality
    i = list(ds.metadata["image_id"]).index("P_00001_LEFT_CC")
    expected = MASS_TRAIN[0].mask() | MASS_TRAIN[1].mask() | CALC[0].mask()
    np.testing.assert_array_equal(ds[i]["mask"].numpy(), expected)


def test_cbis_metadata_columns(cbis: Path) -> None:
    meta = load_dataset(f"cbis-ddsm:{cbis}?abnormality=calc&image=roi", "test").metadata
    for column in ("patient_id", "breast_density", "side", "view", "abnormality_type", "assessment", "subtlety",
                   "pathology", "calc_type", "calc_distribution", "csv", "row", "path"):  # fmt: skip
        assert column in meta.columns, column
    row = meta.iloc[0]
    assert (row["patient_id"], row["breast_density"], row["side"], row["view"]) == (
        "P_00031",
        3,
        "LEFT",
        "CC",
    )
    assert (row["assessment"], row["subtlety"], row["calc_type"]) == (4, 5, "PLEOMORPHIC")


def test_cbis_bad_rows_name_csv_row_and_skip(tmp_path: Path) -> None:
    abns = [*MASS_TRAIN, *MASS_TEST[:3], Abn("mass", "test", "P_00024", pathology="UNSURE")]
    root = make_cbis(tmp_path, abns)
    (root / "CBIS-DDSM" / "Mass-Test_P_00021_LEFT_CC").rename(root / "elsewhere")
    with pytest.raises(BadRowsError) as e:
        load_dataset(f"cbis-ddsm:{root}?abnormality=mass", "test")
    message = str(e.value)
    assert "mass_case_description_test_set.csv row 1 (P_00021_LEFT_CC)" in message and "not found" in message
    assert "row 3 (P_00024_LEFT_CC)" in message and "UNSURE" in message
    ds = load_dataset(f"cbis-ddsm:{root}?abnormality=mass&skip_bad=true", "test")
    assert set(ds.metadata["image_id"]) == {"P_00020_LEFT_CC", "P_00022_LEFT_CC"}
    assert [where for where, _ in ds.skipped] == [
        "mass_case_description_test_set.csv row 1 (P_00021_LEFT_CC)",
        "mass_case_description_test_set.csv row 3 (P_00024_LEFT_CC)",
    ]


def test_cbis_mask_size_mismatch_is_a_bad_row(tmp_path: Path) -> None:
    root = make_cbis(tmp_path, [*MASS_TRAIN, Abn("mass", "test", "P_00020")])
    roi = next((root / "CBIS-DDSM" / "Mass-Test_P_00020_LEFT_CC_1").rglob("*ROI mask images*/*.dcm"))
    from dicom_replicas import write_dicom

    write_dicom(roi, np.zeros((30, 24), np.uint8), 8, SeriesDescription="ROI mask images")
    with pytest.raises(BadRowsError, match=r"row 0 .*24x32 but its ROI mask .* is 24x30"):
        load_dataset(f"cbis-ddsm:{root}?abnormality=mass&target=segmentation", "test")


def test_cbis_missing_files_say_which_and_where_to_download(tmp_path: Path) -> None:
    root = make_cbis(tmp_path, [*MASS_TRAIN, *MASS_TEST])
    (root / "calc_case_description_test_set.csv").unlink()
    assert len(load_dataset(f"cbis-ddsm:{root}?abnormality=mass", "test")) == len(MASS_TEST)
    with pytest.raises(DataError, match="calc_case_description_test_set.csv is missing") as e:
        load_dataset(f"cbis-ddsm:{root}", "test")
    assert str(root / "calc_case_description_test_set.csv") in str(e.value)
    assert "cancerimagingarchive.net" in str(e.value)
    shutil.rmtree(root / "CBIS-DDSM")
    with pytest.raises(DataError, match="image folders .* missing"):
        load_dataset(f"cbis-ddsm:{root}?abnormality=mass", "test")
    with pytest.raises(
        DataError, match=r"CBIS-DDSM: the dataset folder '.*nowhere' does not exist .*cancerimagingarchive"
    ):
        load_dataset(f"cbis-ddsm:{tmp_path / 'nowhere'}", "test")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match=r"dataset folder '.*a_file' is a file, not a folder"):
        load_dataset(f"siim-acr:{tmp_path / 'a_file'}", "test")


def test_cbis_images_directly_in_root(tmp_path: Path) -> None:
    root = make_cbis(tmp_path, [*MASS_TRAIN, *MASS_TEST], nbia_folder=False)
    assert len(load_dataset(f"cbis-ddsm:{root}?abnormality=mass&image=roi", "test")) == len(MASS_TEST)


def test_cbis_options_are_checked(cbis: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'abnormality'"):
        load_dataset(f"cbis-ddsm:{cbis}?abnormalty=mass", "test")
    with pytest.raises(ConfigError, match="image=roi has no masks"):
        load_dataset(f"cbis-ddsm:{cbis}?target=segmentation&image=roi", "test")
    check = DATASETS.meta("cbis-ddsm")["check"]
    with pytest.raises(ConfigError, match="abnormality='both'"):
        check(DatasetAddress.parse("cbis-ddsm:/x?abnormality=both"))


def test_cbis_fractions_replace_the_official_split(cbis: Path) -> None:
    splits = _cbis_splits(cbis, "abnormality=mass&fractions=0.5,0.25,0.25&seed=1")
    _patients_disjoint(splits)
    ids = set().union(*(set(ds.metadata["image_id"]) for ds in splits.values()))
    assert ids == {a.image_id for a in MASS_TRAIN + MASS_TEST}


# ---------------------------------------------------------------------------------------------- SIIM-ACR


def rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The competition's ``mask_functions.rle2mask``, transcribed (used as ``rle2mask(...).T``)."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position : current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def test_decode_rle_hand_made_mask() -> None:
    expected = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]], np.uint8)  # column-major pixels 1-3, 11
    np.testing.assert_array_equal(decode_rle(["1 3 7 1"], 3, 4), expected)
    np.testing.assert_array_equal(decode_rle(["1 3", "11 1", "-1"], 3, 4), expected)  # union of regions
    np.testing.assert_array_equal(decode_rle(["1 3 7 1"], 3, 4) * 255, rle2mask("1 3 7 1", 4, 3).T)
    assert decode_rle(["-1"], 2, 2).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("shape", [(32, 32), (16, 24)])
def test_decode_rle_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    for _ in range(5):
        mask = (rng.random(shape) < 0.3).astype(np.uint8)
        rle = mask2rle(mask)
        np.testing.assert_array_equal(decode_rle([rle], *shape), mask)
        np.testing.assert_array_equal(decode_rle([rle], *shape) * 255, rle2mask(rle, shape[1], shape[0]).T)


@pytest.mark.parametrize(("rle", "match"), [("5", "pairs"), ("1 x", "not an integer"), ("0 4 1 1", "past"),
                                            ("2 0", "below 1")])  # fmt: skip
def test_bad_rle(rle: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        rle_runs(rle, 4)


def _image_ids(n: int) -> list[str]:
    return [f"1.2.276.0.7230010.3.1.4.8323329.{1000 + i}.1517875{i:03d}.{i}" for i in range(n)]


def _box(y0: int, x0: int, y1: int, x1: int, shape=(32, 32)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def make_siim(root: Path, *, stage: int = 1, n: int = 24) -> dict[str, np.ndarray]:
    """``n`` images (the first 12 of 6 patients); every third has a pneumothorax, the first two regions."""
    masks, rows = {}, []
    for i, image_id in enumerate(_image_ids(n)):
        write_siim_image(root, image_id, f"patient-{i // 2 if i < 12 else i}", age=str(20 + i),
                         sex="MF"[i % 2], view=("PA", "AP")[i % 2], stage=stage)  # fmt: skip
        regions = [_box(2, 2, 6 + i % 5, 9), _box(20, 20, 30, 31)][: 2 if i == 0 else 1] if i % 3 == 0 else []
        masks[image_id] = sum(regions, np.zeros((32, 32), np.uint8))
        rows += [(image_id, mask2rle(r)) for r in regions] or [(image_id, "-1")]
    write_rle_csv(root / ("train-rle.csv" if stage == 1 else "stage_2_train.csv"), rows, stage=stage)
    return masks


@pytest.fixture(scope="module")
def siim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("siim")
    return root, make_siim(root)


def test_siim_binary_through_the_registry(siim) -> None:
    root, masks = siim
    # 24 images: under 0.7/0.1/0.2 the val split would have no pneumothorax (an error); these fractions work
    splits = {s: load_dataset(f"siim-acr:{root}?fractions=0.6,0.2,0.2", s) for s in SPLITS}
    train = splits["train"]
    assert (train.task, train.classes, train.patient_col) == (
        "binary",
        ["no_pneumothorax", "pneumothorax"],
        "patient_id",
    )
    assert sum(len(ds) for ds in splits.values()) == len(masks) and all(len(ds) for ds in splits.values())
    _patients_disjoint(splits)
    for ds in splits.values():
        for image_id, label in zip(ds.metadata["image_id"], ds.labels[:, 0]):
            assert label == int(masks[image_id].any())
    meta = train.metadata.set_index("image_id")
    first = _image_ids(24)[1]
    ds = next(d for d in splits.values() if first in set(d.metadata["image_id"]))
    row = ds.metadata.set_index("image_id").loc[first]
    assert (row["patient_id"], row["age"], row["sex"], row["view"]) == ("patient-0", 21.0, "F", "AP")
    assert {"n_regions", "csv", "row", "path"} <= set(meta.columns)
    assert train[0]["image"].shape == (1, 32, 32)


def test_siim_segmentation_masks_are_the_decoded_union(siim) -> None:
    root, masks = siim
    seen = 0
    for split in SPLITS:
        ds = load_dataset(f"siim-acr:{root}?target=segmentation&fractions=0.6,0.2,0.2", split)
        assert ds.task == "segmentation" and ds.classes == ["background", "pneumothorax"]
        for i, image_id in enumerate(ds.metadata["image_id"]):
            item = ds[i]
            assert item["image"].shape == (1, 32, 32)
            np.testing.assert_array_equal(item["mask"].numpy(), masks[image_id])
            assert ds.metadata["foreground"][i] == pytest.approx(masks[image_id].mean())
            seen += 1
        assert "object_size_band" in ds.metadata.columns
    assert seen == len(masks)
    small = load_dataset(f"siim-acr:{root}?target=segmentation&fractions=0.6,0.2,0.2", "train", size=16)
    assert small[0]["image"].shape == (1, 16, 16) and small[0]["mask"].shape == (16, 16)


def test_siim_stage_2_files_and_rle_option(tmp_path: Path) -> None:
    masks = make_siim(tmp_path, stage=2, n=20)
    ds = load_dataset(f"siim-acr:{tmp_path}", "test")
    assert set(ds.metadata["csv"]) == {"stage_2_train.csv"} and "stage_2_images" in ds.paths[0]
    stage_1 = [(i, mask2rle(m)) for i, m in masks.items()]
    write_rle_csv(tmp_path / "train-rle.csv", stage_1)  # the stage 1 file wins by default...
    assert set(load_dataset(f"siim-acr:{tmp_path}", "test").metadata["csv"]) == {"train-rle.csv"}
    chosen = load_dataset(f"siim-acr:{tmp_path}?rle=stage_2_train.csv", "test")  # ... unless rle= names one
    assert set(chosen.metadata["csv"]) == {"stage_2_train.csv"}


def test_siim_bad_rows_name_csv_rows_and_skip(tmp_path: Path) -> None:
    masks = make_siim(tmp_path)
    csv = tmp_path / "train-rle.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ", 5"  # data row 2: odd RLE
    lines[6] = lines[6].split(",")[0] + ", 1020 5"  # data row 5: runs past the end
    csv.write_text("\n".join([*lines, "1.2.3.missing, -1"]) + "\n")
    found, skipped = [], []
    for split in SPLITS:
        try:
            load_dataset(f"siim-acr:{tmp_path}", split)
        except BadRowsError as e:
            found.append(str(e))
        skipped += load_dataset(f"siim-acr:{tmp_path}?skip_bad=true", split).skipped
    text = " ".join(found)
    assert "train-rle.csv row 2 (" in text and "pairs" in text
    assert "train-rle.csv row 5 (" in text and "past the image" in text
    assert f"train-rle.csv row {len(masks) + 1} (1.2.3.missing)" in text and "image not found" in text
    rows = {where.split(" (")[0] for where, _ in skipped}
    assert rows == {"train-rle.csv row 2", "train-rle.csv row 5", f"train-rle.csv row {len(masks) + 1}"}


def test_siim_missing_files_and_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train-rle.csv or stage_2_train.csv is missing.*kaggle.com"):
        load_dataset(f"siim-acr:{tmp_path}", "train")
    write_rle_csv(tmp_path / "train-rle.csv", [("a", "-1")])
    with pytest.raises(DataError, match=r"DICOM images .* missing"):
        load_dataset(f"siim-acr:{tmp_path}", "train")
    with pytest.raises(DataError, match="other.csv is missing"):
        load_dataset(f"siim-acr:{tmp_path}?rle=other.csv", "train")
    with pytest.raises(ConfigError, match="did you mean 'target'"):
        load_dataset(f"siim-acr:{tmp_path}?targt=binary", "train")
    with pytest.raises(ConfigError, match="target='pathology'"):
        DATASETS.meta("siim-acr")["check"](DatasetAddress.parse("siim-acr:/x?target=pathology"))


def test_siim_images_without_a_patient_id_are_warned_about(tmp_path: Path, caplog) -> None:
    import logging

    make_siim(tmp_path)
    image_id = _image_ids(24)[5]
    write_siim_image(tmp_path, image_id, "", age="30")  # the same file, its PatientID now blank
    with caplog.at_level(logging.WARNING, logger="medadapt.data.siim_acr"):
        ds = load_dataset(f"siim-acr:{tmp_path}?fractions=0.6,0.2,0.2", "train")
    assert "1 of 24 images have no PatientID in their DICOM header: each is its own patient" in caplog.text
    assert len(ds) > 0
