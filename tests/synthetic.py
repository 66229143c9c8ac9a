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
