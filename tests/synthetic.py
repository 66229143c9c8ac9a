"""Tiny generated datasets for tests (never the real files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from medmnist import INFO


def write_fake_medmnist(root: Path, monkeypatch, *, flag: str = "breastmnist", size: int = 28,
                        n: tuple[int, int, int] = (48, 16, 16), seed: int = 0) -> Path:  # fmt: skip
    """A learnable fake ``{flag}.npz`` (class 1 has a bright square) whose md5 INFO is patched to expect."""
    rng = np.random.default_rng(seed)
    arrays = {}
    channels = INFO[flag]["n_channels"]
    n_classes = len(INFO[flag]["label"])
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % n_classes
        rng.shuffle(labels)
        shape = (count, size, size) + ((3,) if channels == 3 else ())
        images = rng.integers(0, 100, size=shape, dtype=np.uint8)
        for i, y in enumerate(labels):
            s = size // 4
            images[i, s * (y % 3) : s * (y % 3) + s, s : 2 * s] = 255
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    key = "MD5" if size == 28 else f"MD5_{size}"
    monkeypatch.setitem(INFO[flag], key, hashlib.md5(path.read_bytes()).hexdigest())
    return path


def mask_blob(h: int, w: int, seed: int, n_classes: int = 2) -> np.ndarray:
    """A mask with a rectangle of each foreground class (empty when ``seed`` is negative)."""
    mask = np.zeros((h, w), dtype=np.uint8)
    if seed >= 0:
        rng = np.random.default_rng(seed)
        for c in range(1, n_classes):
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y : y + h // 3, x : x + w // 3] = c
    return mask


def write_square_masks(root: Path) -> Path:
    """A segfolder dataset of 24 gray 32x32 images where a bright square is the object: 18 listed in
    ``splits/train.txt``, 6 in ``splits/val.txt`` (the test set, by the Kvasir-SEG rule)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(24):
        img, mask = rng.integers(0, 80, (32, 32), dtype=np.uint8), np.zeros((32, 32), np.uint8)
        r, c = rng.integers(0, 16, 2)
        img[r : r + 14, c : c + 14], mask[r : r + 14, c : c + 14] = 250, 1
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(f"im{i}" for i in range(18)))
    (root / "splits" / "val.txt").write_text("\n".join(f"im{i}" for i in range(18, 24)))
    return root
