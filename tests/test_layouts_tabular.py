"""The chexpert:, isic2019: and aptos2019: layouts on tiny replicas of the distributed files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import layout_replicas as replicas
import numpy as np
import pandas as pd
import pytest
import torch

from medadapt.data import aptos, chexpert, isic  # noqa: F401  (register the kinds)
from medadapt.data.base import load_dataset
from medadapt.data.chexpert import COMPETITION_FINDINGS, FINDINGS
from medadapt.errors import BadRowsError, ConfigError, DataError

# ------------------------------------------------------------------------------------------------ helpers


def _load_all(address: str) -> dict:
    return {s: load_dataset(address, s) for s in ("train", "val", "test")}


def _no_crossing(splits: dict, column: str) -> None:
    ids = {s: set(ds.metadata[column].dropna()) - {""} for s, ds in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]


def _set_cell(csv: Path, row: int, column: str, value: object) -> None:
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(csv, index=False)


# ---------------------------------------------------------------------------------------------- CheXpert


@pytest.fixture
def cx(tmp_path: Path) -> Path:
    return replicas.chexpert(tmp_path)


def test_chexpert_classes_labels_and_default_policies(cx: Path) -> None:
    train = load_dataset(f"chexpert:{cx}?val_fraction=0", "train")
    assert train.task == "multilabel" and train.classes == FINDINGS and train.n_channels == 1
    assert train.labels.dtype == np.float32 and train.labels.shape == (20, 14)  # frontal views only
    row0 = train.labels[train.metadata["row"].tolist().index(0)]
    expected = np.zeros(14, np.float32)
    expected[FINDINGS.index("Edema")], expected[FINDINGS.index("Cardiomegaly")] = 1, np.nan  # -1 -> nan
    np.testing.assert_array_equal(row0, expected)  # blank -> 0
    sample = train[0]
    assert sample["image"].shape == (1, 8, 8) and sample["label"].dtype == torch.float32


@pytest.mark.parametrize("policy, value", [("ignore", np.nan), ("zeros", 0.0), ("ones", 1.0)])
def test_chexpert_uncertain_policies(cx: Path, policy: str, value: float) -> None:
    ds = load_dataset(f"chexpert:{cx}?uncertain={policy}&val_fraction=0&findings=cardiomegaly,Edema", "train")
    assert ds.classes == ["Cardiomegaly", "Edema"]
    np.testing.assert_array_equal(ds.labels[ds.metadata["row"] == 0][0], [value, 1.0])
    raw = pd.read_csv(cx / "train.csv")
    uncertain = (raw.loc[ds.metadata["row"], "Cardiomegaly"] == -1).to_numpy()
    assert uncertain.sum() > 1 and np.array_equal(
        ds.labels[uncertain, 0], np.full(uncertain.sum(), value), equal_nan=True
    )


def test_chexpert_findings_option(cx: Path) -> None:
    assert load_dataset(f"chexpert:{cx}?findings=competition", "test").classes == COMPETITION_FINDINGS
    with pytest.raises(ConfigError, match="did you mean 'Pleural Effusion'"):
        load_dataset(f"chexpert:{cx}?findings=Pleural_Efusion", "test")


@pytest.mark.parametrize("view, n_test, views", [("frontal", 4, {"frontal"}), ("lateral", 4, {"lateral"}),
                                                 ("all", 8, {"frontal", "lateral"})])  # fmt: skip
def test_chexpert_view_filter(cx: Path, view: str, n_test: int, views: set) -> None:
    test = load_dataset(f"chexpert:{cx}?view={view}", "test")
    assert len(test) == n_test and set(test.metadata["view"]) == views
    train = load_dataset(f"chexpert:{cx}?view={view}&val_fraction=0", "train")
    assert len(train) == {"frontal": 20, "lateral": 10, "all": 30}[view]


def test_chexpert_splits_patients_and_metadata(cx: Path) -> None:
    splits = _load_all(f"chexpert:{cx}?view=all")
    assert len(splits["val"]) > 0 and len(splits["train"]) + len(splits["val"]) == 30
    assert set(splits["test"].metadata["patient_id"]) == {
        f"patient{p}" for p in range(64541, 64545)
    }  # valid.csv
    _no_crossing(splits, "patient_id")
    meta = splits["test"].metadata
    assert {"row", "path", "patient_id", "study", "sex", "age", "view", "ap_pa"} <= set(meta.columns)
    first = meta.iloc[0]
    assert (
        first["study"] == "patient64541/study1"
        and first["sex"] == "Female"
        and first["age"] == 40 + 64541 % 50
    )
    assert all(ds.patient_col == "patient_id" for ds in splits.values())


def test_chexpert_renamed_folder_and_full_size_name(tmp_path: Path) -> None:
    folder = replicas.chexpert(tmp_path, name="CheXpert-v1.0")
    moved = folder.rename(tmp_path / "chexpert")  # paths in the CSV still say CheXpert-v1.0/...
    assert len(load_dataset(f"chexpert:{moved}", "test")) == 4


def test_chexpert_official_test_release(tmp_path: Path) -> None:
    folder = replicas.chexpert(tmp_path, test=True)
    splits = _load_all(f"chexpert:{folder}")
    assert (
        len(splits["test"]) == 3 and splits["test"].metadata["patient_id"].str.startswith("patient647").all()
    )
    assert set(splits["val"].metadata["patient_id"]) == {f"patient{p}" for p in range(64541, 64545)}
    assert len(splits["train"]) == 20  # all of train.csv's frontal views
    assert len(load_dataset(f"chexpert:{folder}?test=valid", "test")) == 4
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset(f"chexpert:{folder}?val_fraction=0.2", "train")


def test_chexpert_official_test_missing(cx: Path) -> None:
    with pytest.raises(DataError, match=r"test_labels.csv.*missing.*stanfordmlgroup"):
        load_dataset(f"chexpert:{cx}?test=official", "test")


def test_chexpert_bad_rows(cx: Path) -> None:
    _set_cell(cx / "valid.csv", 2, "Edema", "2")  # row 2 is a frontal view (rows alternate frontal/lateral)
    (cx / "valid" / "patient64542" / "study1" / "view1_frontal.jpg").unlink()  # row 2 too: one reason
    (cx / "valid" / "patient64543" / "study1" / "view1_frontal.jpg").unlink()  # row 4
    with pytest.raises(BadRowsError, match=r"2 bad row.*row 2 \(line 4\): file not found.*row 4 \(line 6\)"):
        load_dataset(f"chexpert:{cx}", "test")
    _set_cell(cx / "valid.csv", 6, "Edema", "yes")
    ds = load_dataset(f"chexpert:{cx}?skip_bad=true", "test")
    assert len(ds) == 1 and [r for r, _ in ds.skipped] == [2, 4, 6]
    assert "column 'Edema' has 'yes'" in ds.skipped[2][1]


@pytest.mark.parametrize("name", ["train.csv", "valid.csv"])
def test_chexpert_missing_files(cx: Path, name: str) -> None:
    (cx / name).unlink()
    with pytest.raises(
        DataError, match=rf"'{name}' is missing; it should be at {cx / name}.*stanfordmlgroup"
    ):
        load_dataset(f"chexpert:{cx}", "train")


def test_chexpert_parent_folder_given(cx: Path) -> None:
    with pytest.raises(DataError, match=f"give that folder, chexpert:{cx}"):
        load_dataset(f"chexpert:{cx.parent}", "train")


def test_chexpert_nan_labels_through_loader_loss_metrics_and_probe(cx: Path) -> None:
    from medadapt.data.transforms import make_loader
    from medadapt.evaluation.metrics import auc
    from medadapt.features.featureset import FeatureSet
    from medadapt.tasks import get_task
    from medadapt.training.probe import train_probe

    ds = load_dataset(f"chexpert:{cx}?findings=competition&val_fraction=0", "train")
    assert np.isnan(ds.labels).any()
    batch = next(iter(make_loader(ds, batch_size=32)))
    assert batch["label"].shape == (20, 5) and torch.isnan(batch["label"]).any()
    loss = get_task("multilabel").loss(torch.zeros(20, 5, requires_grad=True), batch["label"])
    assert torch.isfinite(loss) and np.isclose(loss.item(), np.log(2))
    rng = np.random.default_rng(0)
    labels = np.tile(ds.labels, (3, 1))
    labels[:4] = [[1, 0, 0, 0, 0], [0, 1, 1, 1, 1]] * 2  # every label has both values among the known ones
    features = FeatureSet(rng.standard_normal((len(labels), 8)).astype(np.float32), labels)
    result = train_probe(
        features, features, head="linear", task="multilabel", num_outputs=5, epochs=2, lrs=(1e-3,)
    )
    assert all(np.isfinite(v) for v in result.val_loss_by_setting.values())
    assert np.isfinite(auc("multilabel", labels, result.predict(features)))


def test_chexpert_unknown_labels_with_the_knn_head(cx: Path) -> None:
    from medadapt.features.featureset import FeatureSet
    from medadapt.training.probe import train_probe

    ds = load_dataset(f"chexpert:{cx}?findings=competition&val_fraction=0", "train")
    labels = np.tile(ds.labels, (3, 1))
    labels[:4] = [[1, 0, 0, 0, 0], [0, 1, 1, 1, 1]] * 2
    features = FeatureSet(
        np.random.default_rng(0).standard_normal((len(labels), 8)).astype(np.float32), labels
    )
    result = train_probe(features, features, head="knn", task="multilabel", num_outputs=5, ks=(5,))
    assert np.isfinite(result.predict(features)).all()
    assert all(np.isfinite(v) for v in result.val_loss_by_setting.values())


def test_chexpert_through_the_registry(cx: Path) -> None:
    ds = load_dataset(f"chexpert:{cx}", "train")
    assert ds.split == "train" and ds.name == f"chexpert:{cx}" and len(ds) > 0


# --------------------------------------------------------------------------------------------- ISIC 2019


def test_isic_classes_labels_metadata(tmp_path: Path) -> None:
    root = replicas.isic(tmp_path, n=80)  # ten of each class: every class can reach every split
    splits = _load_all(f"isic2019:{root}")
    assert sum(len(ds) for ds in splits.values()) == 80
    ds = splits["train"]
    assert ds.task == "multiclass" and ds.classes == isic.CLASSES and ds.n_channels == 3
    np.testing.assert_array_equal(ds.labels[:, 0], ds.metadata["row"] % 8)  # row k has class k % 8
    assert {"row", "image", "age", "site", "sex", "lesion_id"} <= set(ds.metadata.columns)
    assert ds.patient_col == "lesion_id" and ds.metadata["age"].dtype == float
    _no_crossing(splits, "lesion_id")


def test_isic_missing_lesion_ids_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = replicas.isic(tmp_path, n=80)
    with caplog.at_level(logging.WARNING):
        load_dataset(f"isic2019:{root}", "train")
    assert "64 of 80 training images have no lesion_id" in caplog.text


def test_isic_nested_input_folder(tmp_path: Path) -> None:
    root = replicas.isic(tmp_path, n=80, nested=True)
    assert len(load_dataset(f"isic2019:{root}?fractions=0.5,0.25,0.25", "test")) > 0


def test_isic_official_test(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = replicas.isic(tmp_path, test=True)
    with caplog.at_level(logging.INFO):
        splits = _load_all(f"isic2019:{root}?val_fraction=0.25")
    assert splits["test"].metadata["image"].tolist() == [
        f"ISIC_{9000000 + k:07d}" for k in range(5)
    ]  # no UNK
    assert "1 images whose diagnosis is UNK" in caplog.text
    assert len(splits["train"]) + len(splits["val"]) == 24 and len(splits["val"]) > 0
    with pytest.raises(ConfigError, match="fractions= does not apply"):
        load_dataset(f"isic2019:{root}?fractions=0.8,0.1,0.1", "train")
    (root / "ISIC_2019_Test_Metadata.csv").unlink()
    with pytest.raises(DataError, match="'ISIC_2019_Test_Metadata.csv' is missing.*isic-archive"):
        load_dataset(f"isic2019:{root}", "train")


def test_isic_bad_rows(tmp_path: Path) -> None:
    root = replicas.isic(tmp_path)
    csv = root / "ISIC_2019_Training_GroundTruth.csv"
    _set_cell(csv, 3, "MEL", "1.0")  # AK and MEL
    _set_cell(csv, 5, "DF", "0.0")  # nothing
    (root / "ISIC_2019_Training_Input" / "ISIC_0000007.jpg").unlink()
    address = f"isic2019:{root}?fractions=0,0,1"
    with pytest.raises(
        BadRowsError, match=r"row 3 \(line 5\): not one-hot over the 8 diagnoses: MEL=1.0, AK=1.0"
    ):
        load_dataset(address, "test")
    ds = load_dataset(address + "&skip_bad=true", "test")
    assert len(ds) == 21 and dict(ds.skipped).keys() == {3, 5, 7}
    assert "no diagnosis" in dict(ds.skipped)[5] and "file not found" in dict(ds.skipped)[7]


@pytest.mark.parametrize("missing", ["ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv",
                                     "ISIC_2019_Training_Input"])  # fmt: skip
def test_isic_missing_files(tmp_path: Path, missing: str) -> None:
    root = replicas.isic(tmp_path)
    path = root / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DataError, match=rf"'{missing}' is missing; it should be at {path}.*isic-archive"):
        load_dataset(f"isic2019:{root}", "train")


# -------------------------------------------------------------------------------------------- APTOS 2019


def test_aptos_classes_labels_splits(tmp_path: Path) -> None:
    root = replicas.aptos(tmp_path, n=50)  # ten of each grade: every grade can reach every split
    splits = _load_all(f"aptos2019:{root}?fractions=0.6,0.2,0.2")
    assert [len(ds) for ds in splits.values()] == [30, 10, 10]
    ds = splits["test"]
    assert ds.task == "ordinal" and ds.classes == ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]
    np.testing.assert_array_equal(ds.labels[:, 0], ds.metadata["row"] % 5)
    assert ds.patient_col == "id_code" and "ffff00001111" not in set(
        ds.metadata["id_code"]
    )  # test.csv unused
    assert (ds.metadata[["width", "height"]] == 8).all().all()
    _no_crossing(splits, "id_code")


def test_aptos_bad_rows(tmp_path: Path) -> None:
    root = replicas.aptos(tmp_path)
    _set_cell(root / "train.csv", 1, "diagnosis", "7")
    _set_cell(root / "train.csv", 2, "diagnosis", "")
    (root / "train_images" / f"{3:03x}a1b2c3d4.png").unlink()
    with pytest.raises(BadRowsError, match=r"row 1 \(line 3\): diagnosis '7' is not a grade 0-4"):
        load_dataset(f"aptos2019:{root}?fractions=0,0,1", "test")
    ds = load_dataset(f"aptos2019:{root}?fractions=0,0,1&skip_bad=true", "test")
    assert len(ds) == 17 and [r for r, _ in ds.skipped] == [1, 2, 3]


@pytest.mark.parametrize("missing", ["train.csv", "train_images"])
def test_aptos_missing_files(tmp_path: Path, missing: str) -> None:
    root = replicas.aptos(tmp_path)
    path = root / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DataError, match=rf"'{missing}' is missing; it should be at {path}.*kaggle.com"):
        load_dataset(f"aptos2019:{root}", "train")


# ------------------------------------------------------------------------------------------ all three


@pytest.mark.parametrize("kind, option, hint", [("chexpert", "veiw", "view"), ("isic2019", "val_fractoin", "val_fraction"),
                                                ("aptos2019", "seeds", "seed"), ("chexpert", "fractions", "val_fraction")])  # fmt: skip
def test_unknown_options_refused(tmp_path: Path, kind: str, option: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown option '{option}' for {kind}.*did you mean '{hint}'"):
        load_dataset(f"{kind}:{tmp_path}?{option}=1", "train")


@pytest.mark.parametrize("kind", ["chexpert", "isic2019", "aptos2019"])
def test_missing_dataset_folder(tmp_path: Path, kind: str) -> None:
    with pytest.raises(DataError, match=f"dataset folder '{tmp_path / 'nope'}' does not exist.*https://"):
        load_dataset(f"{kind}:{tmp_path / 'nope'}", "train")


@pytest.mark.parametrize("address", ["chexpert:X?uncertain=maybe", "chexpert:X?view=side", "isic2019:X?val_fraction=0.33",
                                     "aptos2019:X?channels=2"])  # fmt: skip
def test_bad_option_values(address: str) -> None:
    with pytest.raises(ConfigError):
        load_dataset(address, "train")
