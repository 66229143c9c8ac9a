"""MedMNIST loader on tiny fake ``.npz`` files written to ``tmp_path`` (the real files only in an opt-in test)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist.info import INFO

import medadapt.data.medmnist as mm
from medadapt.data import load_dataset
from medadapt.data.base import DatasetAddress
from medadapt.errors import ConfigError, DataError, UnknownNameError

COUNTS = {"train": 6, "val": 3, "test": 4}
TASKS = {"binary-class": "binary", "multi-class": "multiclass"}
TASKS |= {"multi-label, binary-class": "multilabel", "ordinal-regression": "ordinal"}


def fake_arrays(flag: str, size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays with the official keys, shapes and dtypes of ``flag`` at ``size``."""
    rng = np.random.default_rng(seed)
    info, arrays = INFO[flag], {}
    channels, n_classes = info["n_channels"], len(info["label"])
    for split, n in COUNTS.items():
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        multilabel = info["task"].startswith("multi-label")
        width, high = (n_classes, 2) if multilabel else (1, n_classes)
        arrays[f"{split}_labels"] = rng.integers(0, high, (n, width), dtype=np.uint8)
    return arrays


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def md5_key(size: int) -> str:
    return "MD5" if size == 28 else f"MD5_{size}"


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MEDADAPT_DATA", raising=False)
    mm.clear_cache()
    mm._VERIFIED.clear()
    yield
    mm.clear_cache()
    mm._VERIFIED.clear()


@pytest.fixture
def write_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a fake ``{flag}[_{size}].npz`` and make INFO expect its md5; returns the path."""

    def write(flag: str = "breastmnist", size: int = 28, arrays: dict | None = None, folder: Path = tmp_path):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / mm.file_name(flag, size)
        np.savez_compressed(path, **(arrays if arrays is not None else fake_arrays(flag, size)))
        monkeypatch.setitem(INFO[flag], md5_key(size), md5_of(path))
        return path

    return write


def test_flags_are_the_twelve_2d_sets():
    flags = mm.flags()
    assert len(flags) == 12 and not any(f.endswith("3d") for f in flags)
    assert {"breastmnist", "pathmnist", "chestmnist", "retinamnist"} <= set(flags)


@pytest.mark.parametrize("flag", mm.flags())
def test_every_flag_loads_with_info_task_and_classes(flag, write_npz, tmp_path):
    arrays = fake_arrays(flag)
    write_npz(flag, arrays=arrays)
    info = INFO[flag]
    for split, n in COUNTS.items():
        ds = load_dataset(f"medmnist:{flag}", split, root=tmp_path, download=False)
        assert len(ds) == n and ds.split == split and ds.name == f"medmnist:{flag}?size=28"
        assert ds.task == TASKS[info["task"]] and ds.n_channels == info["n_channels"]
        assert ds.classes == [info["label"][str(i)] for i in range(len(info["label"]))]
        assert ds.labels.dtype == np.int64 and ds.labels.shape == arrays[f"{split}_labels"].shape
        sample = ds[1]
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (info["n_channels"], 28, 28)
        assert sample["index"] == 1 and torch.equal(sample["label"], torch.from_numpy(ds.labels[1]))
        assert list(ds.metadata["index"]) == list(range(n))


def test_rgb_images_are_permuted_to_chw(write_npz, tmp_path):
    arrays = fake_arrays("pathmnist")
    write_npz("pathmnist", arrays=arrays)
    ds = load_dataset("medmnist:pathmnist", "train", root=tmp_path, download=False)
    expected = torch.from_numpy(arrays["train_images"][2]).permute(2, 0, 1)
    assert torch.equal(ds.image(2), expected) and ds.image(2).is_contiguous()


def test_getitems_matches_getitem(write_npz, tmp_path):
    write_npz("dermamnist")
    ds = load_dataset("medmnist:dermamnist", "train", root=tmp_path, download=False)
    batch = ds.__getitems__([4, 0, -1])
    assert [s["index"] for s in batch] == [4, 0, 5]
    for s in batch:
        one = ds[s["index"]]
        assert torch.equal(s["image"], one["image"]) and torch.equal(s["label"], one["label"])
    with pytest.raises(IndexError):
        ds.__getitems__([6])


def test_image_is_a_copy(write_npz, tmp_path):
    write_npz()
    ds = load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    before = ds.image(0).clone()
    ds.image(0).zero_()
    assert torch.equal(ds.image(0), before)


def test_size_from_address_or_argument(write_npz, tmp_path):
    write_npz("breastmnist", 64)
    by_address = load_dataset("medmnist:breastmnist?size=64", "val", root=tmp_path, download=False)
    by_kwarg = load_dataset("medmnist:breastmnist", "val", root=tmp_path, size=64, download=False)
    for ds in (by_address, by_kwarg):
        assert ds.name == "medmnist:breastmnist?size=64" and ds[0]["image"].shape == (1, 64, 64)


@pytest.mark.parametrize(
    ("address", "error", "words"),
    [
        ("medmnist:breastmnist?size=32", ConfigError, ["32", "28", "224"]),
        ("medmnist:breastmnist?size=big", ConfigError, ["big"]),
        ("medmnist:breastmnist?colour=1", ConfigError, ["colour", "size"]),
        ("medmnist:brestmnist", UnknownNameError, ["brestmnist", "did you mean", "breastmnist"]),
        ("medmnist:organmnist3d", ConfigError, ["3D"]),
    ],
)
def test_bad_addresses(address, error, words, tmp_path):
    with pytest.raises(error) as info:
        load_dataset(address, "train", root=tmp_path, download=False)
    assert all(w in str(info.value) for w in words)


def test_data_root_from_environment(write_npz, tmp_path, monkeypatch):
    assert mm.default_data_root() == Path.home() / ".medmnist"
    folder = tmp_path / "env_root"
    write_npz(folder=folder)
    monkeypatch.setenv("MEDADAPT_DATA", str(folder))
    assert mm.default_data_root() == folder
    assert len(load_dataset("medmnist:breastmnist", "test", download=False)) == COUNTS["test"]


def test_md5_mismatch_is_a_data_error(write_npz, tmp_path, monkeypatch):
    write_npz()
    monkeypatch.setitem(INFO["breastmnist"], "MD5", "0" * 32)
    with pytest.raises(DataError, match="md5") as info:
        load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    assert "0" * 32 in str(info.value) and INFO["breastmnist"]["url"] in str(info.value)


def test_truncated_file_is_a_data_error(write_npz, tmp_path, monkeypatch):
    path = write_npz()
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="md5"):  # the md5 catches it first ...
        load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    monkeypatch.setitem(INFO["breastmnist"], "MD5", md5_of(path))  # ... and reading does if md5 agrees
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)


def test_missing_keys_and_wrong_shapes_are_data_errors(write_npz, tmp_path):
    arrays = fake_arrays("breastmnist")
    write_npz(arrays={k: v for k, v in arrays.items() if not k.startswith("val")})
    with pytest.raises(DataError, match="val_images"):
        load_dataset("medmnist:breastmnist", "val", root=tmp_path, download=False)
    write_npz("breastmnist", 64, arrays=arrays)  # 28 px arrays in the 64 px file
    with pytest.raises(DataError, match="expected uint8"):
        load_dataset("medmnist:breastmnist?size=64", "train", root=tmp_path, download=False)
    arrays["train_labels"][0] = 7
    write_npz(arrays=arrays)
    with pytest.raises(DataError, match="label values"):
        load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)


def assert_says_how_to_fix(message: str, folder: Path, size: int = 28):
    suffix = "" if size == 28 else f"_{size}"
    info = INFO["breastmnist"]
    for needed in (f"breastmnist{suffix}.npz", info[f"MD5{suffix}"], info[f"url{suffix}"], str(folder)):
        assert needed in message
    assert "MEDADAPT_DATA" in message and "--data-root" in message


def test_missing_file_without_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("medmnist:breastmnist?size=128", "train", root=tmp_path, download=False)
    assert_says_how_to_fix(str(info.value), tmp_path, 128)


def test_missing_file_with_failing_download(tmp_path, monkeypatch):
    def fail(url, dest):
        raise OSError("no route to zenodo")

    monkeypatch.setattr(mm, "_fetch", fail)
    with pytest.raises(DataError, match="no route to zenodo") as info:
        load_dataset("medmnist:breastmnist", "train", root=tmp_path / "new", download=True)
    assert_says_how_to_fix(str(info.value), tmp_path / "new")
    assert not list((tmp_path / "new").iterdir())  # no partial file left behind


def test_real_download_attempt_is_blocked_and_reported(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=True)


def test_download_moves_a_verified_file_into_place(tmp_path, monkeypatch):
    source = tmp_path / "source.npz"
    np.savez_compressed(source, **fake_arrays("breastmnist"))
    monkeypatch.setitem(INFO["breastmnist"], "MD5", md5_of(source))
    monkeypatch.setattr(mm, "_fetch", lambda url, dest: dest.write_bytes(source.read_bytes()))
    ds = load_dataset("medmnist:breastmnist", "train", root=tmp_path / "root")
    assert len(ds) == COUNTS["train"] and (tmp_path / "root" / "breastmnist.npz").is_file()
    monkeypatch.setitem(INFO["breastmnist"], "MD5_64", "0" * 32)
    with pytest.raises(DataError, match="the download has md5"):
        load_dataset("medmnist:breastmnist?size=64", "train", root=tmp_path / "root")
    assert not (tmp_path / "root" / "breastmnist_64.npz").exists()


def test_md5_sidecar_skips_rehashing_until_the_file_changes(write_npz, tmp_path, monkeypatch):
    path = write_npz()
    load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    sidecar = mm._sidecar(path)  # in the cache, never beside the data
    assert sidecar.is_relative_to(Path(os.environ["MEDADAPT_CACHE"])) and not list(tmp_path.glob(".*"))
    assert json.loads(sidecar.read_text())["md5"] == INFO["breastmnist"]["MD5"]

    real_md5 = mm._md5
    mm._VERIFIED.clear()  # a new process: only the sidecar remembers
    monkeypatch.setattr(mm, "_md5", lambda p: pytest.fail("re-hashed a verified file"))
    load_dataset("medmnist:breastmnist", "val", root=tmp_path, download=False)

    monkeypatch.setattr(mm, "_md5", real_md5)  # the file changes: the check runs again and fails
    np.savez_compressed(path, **fake_arrays("breastmnist", seed=1))
    os.utime(path, ns=(1, 1))
    with pytest.raises(DataError, match="md5"):
        load_dataset("medmnist:breastmnist", "val", root=tmp_path, download=False)


def test_splits_are_cached_within_the_process(write_npz, tmp_path):
    write_npz()
    a = load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    b = load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    assert a._images.data_ptr() == b._images.data_ptr()
    assert mm._read_split_cached.cache_info().hits >= 1


def test_loader_is_registered():
    assert DatasetAddress.parse("medmnist:breastmnist?size=64").options == {"size": 64}


def _real_root() -> Path | None:
    root = os.environ.get("MEDADAPT_DATA")
    return Path(root) if root and (Path(root) / "breastmnist.npz").is_file() else None


REAL_ROOT = _real_root()  # read before the autouse fixture clears MEDADAPT_DATA


@pytest.mark.skipif(REAL_ROOT is None, reason="set MEDADAPT_DATA to a folder holding breastmnist.npz")
def test_real_breastmnist_matches_medmnist(monkeypatch):
    import medmnist

    root = REAL_ROOT
    monkeypatch.setenv("MEDADAPT_DATA", str(root))
    for split, n in INFO["breastmnist"]["n_samples"].items():
        ds = load_dataset("medmnist:breastmnist", split, download=False)
        ref = medmnist.BreastMNIST(split=split, root=str(root))
        assert len(ds) == n and ds.task == "binary" and ds.classes == ["malignant", "normal, benign"]
        assert np.array_equal(ds.labels, ref.labels) and torch.equal(
            ds.image(5)[0], torch.from_numpy(ref.imgs[5])
        )


def test_a_folder_where_the_file_belongs_is_reported_never_downloaded_over(tmp_path, monkeypatch):
    (tmp_path / "breastmnist.npz").mkdir()
    monkeypatch.setattr(mm, "_fetch", lambda *a: pytest.fail("downloaded over a folder"))
    with pytest.raises(
        DataError, match=r"breastmnist.npz is a folder, not a file; medadapt never replaces it"
    ):
        load_dataset("medmnist:breastmnist", "train", root=tmp_path)
    assert (tmp_path / "breastmnist.npz").is_dir()


def test_unreadable_file_and_read_only_folder_are_named(write_npz, tmp_path, monkeypatch):
    """Permissions are faked through ``os.access`` (the tests may run as root, which ignores them)."""
    path = write_npz()
    ro = tmp_path / "ro"
    ro.mkdir()
    denied = {str(path), str(ro)}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) not in denied and real_access(p, mode))
    with pytest.raises(DataError, match="is not readable"):
        load_dataset("medmnist:breastmnist", "train", root=tmp_path, download=False)
    monkeypatch.setattr(mm, "_fetch", lambda *a: pytest.fail("tried to download into a read-only folder"))
    with pytest.raises(DataError, match=r"cannot download: .*ro is read-only"):
        load_dataset("medmnist:breastmnist", "train", root=ro)
