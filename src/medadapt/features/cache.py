"""Extract frozen features once per (backbone + weights, preprocessing, dataset, split, version) and cache them.

Layout of one cache entry ``CACHE/<key>/``: ``embeddings.npy`` ``[N, D]`` float32, ``tokens.npy`` ``[N, T, D]``
float16 (opened memory-mapped), ``labels.npy`` and ``meta.json``. Extraction streams batches into
preallocated ``.npy`` files inside ``CACHE/<key>.partial/`` with positional writes (through the page cache,
never mapped into the process, so resident memory stays flat however large the token array grows) and writes
a ``progress.json`` every few batches, so a killed run resumes where it stopped; the directory is renamed
into place only when complete (atomic), and an entry whose files do not match its ``meta.json`` is treated
as corrupt and rebuilt.

Multi-level entries (``levels=k``, for the ``multiscale`` segmentation head): one forward pass per batch
through :meth:`~medadapt.backbones.base.Backbone.forward_levels` writes the ``k - 1`` levels before the last
to ``tokens_l0.npy`` ... ``tokens_l{k-2}.npy`` (``[N, T_i, D_i]`` float16, input to output) and the last
level to ``tokens.npy``, which is what ``forward_features`` gives (so the entry serves every one-level
head too, and ``embeddings.npy`` is the usual embedding); ``meta.json`` lists each level's ``file``,
``grid`` and ``shape`` under ``"levels"``. ``levels`` enters the cache key only when given, so entries
without levels keep their keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._device import autocast_context, runs_bf16
from .._io import atomic_write, cache_home, exclusive_lock
from ..backbones.base import Backbone
from ..data.base import MedicalDataset
from ..data.transforms import Preprocess, make_loader
from .featureset import FeatureSet

__all__ = ["extract_features", "cache_key", "state_digest", "default_cache_dir"]

log = logging.getLogger(__name__)

# bump when the on-disk layout or how features are computed changes (2: mixed sizes fitted per image)
_FORMAT = 2
_SAVE_EVERY = 20  # batches between progress checkpoints


def default_cache_dir() -> Path:
    """``$MEDADAPT_CACHE``, else ``~/.cache/medadapt/features``."""
    return cache_home()


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes, bytes): identifies the weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _dataset_fingerprint(dataset: MedicalDataset) -> str:
    """Cheap content fingerprint: labels plus the first, middle and last images."""
    h = hashlib.sha256(np.ascontiguousarray(dataset.labels).tobytes())
    n = len(dataset)
    for i in sorted({0, n // 2, n - 1} if n else set()):
        h.update(_image(dataset, i).numpy().tobytes())
    return h.hexdigest()[:16]


def _image(dataset: MedicalDataset, i: int) -> torch.Tensor:
    """Image ``i`` alone (a segmentation dataset's item would also decode its mask)."""
    return dataset.image(i) if hasattr(dataset, "image") else dataset[i]["image"]


def cache_key(
    backbone: Backbone,
    preprocess: Preprocess,
    dataset: MedicalDataset,
    *,
    autocast: bool,
    levels: int | None = None,
) -> str:
    parts: dict[str, Any] = {
        "format": _FORMAT,
        "version": __version__,
        "backbone": backbone.spec.to_dict(),
        "weights": state_digest(backbone),
        "preprocess": dataclasses.asdict(preprocess),
        "dataset": [dataset.name, dataset.split, len(dataset), _dataset_fingerprint(dataset)],
        "autocast": autocast,
    }
    if levels is not None:  # only then: entries without levels keep the keys they had
        parts["levels"] = levels
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def extract_features(
    backbone: Backbone,
    dataset: MedicalDataset,
    preprocess: Preprocess,
    *,
    cache_dir: str | Path | None = None,
    with_tokens: bool = False,
    levels: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast: bool = True,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """Frozen features of ``dataset`` (cached; see module doc). ``progress(done, total)`` is called per batch.

    ``levels``: also the last ``levels`` levels of the backbone (:meth:`Backbone.forward_levels`) as
    ``FeatureSet.levels``, memory-mapped (``tokens`` is then their last one, so ``with_tokens`` is implied).

    Example:
        >>> fs = extract_features(bb, ds, Preprocess(size=(64, 64), mean=bb.spec.mean, std=bb.spec.std))  # doctest: +SKIP
        >>> fs.embeddings.shape
        (546, 384)
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if levels is not None:
        backbone.check_levels(levels)  # a ConfigError for a source without levels, or too many
        with_tokens = True  # the last level is the tokens
    # the key records the precision the features are computed in, not the request: autocast is a no-op
    # without native bf16, so a CPU's float32 features and a GPU's bf16 ones never share an entry
    key = cache_key(backbone, preprocess, dataset, autocast=runs_bf16(str(device), autocast), levels=levels)
    final = root / key
    cached = _open_entry(final, need_tokens=with_tokens, need_levels=levels)
    if cached is not None:
        log.info("feature cache hit %s (%s %s)", key, dataset.name, dataset.split)
        return cached
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    # one writer per entry: runs in parallel (e.g. one per seed) that need the same features take turns,
    # and the later ones read what the first wrote (lock files are kept: removing one races a waiter)
    with exclusive_lock(root / ".locks" / key):
        cached = _open_entry(final, need_tokens=with_tokens, need_levels=levels)
        if cached is not None:
            return cached
        return _write_entry(root, key, backbone, dataset, preprocess, with_tokens=with_tokens, levels=levels,
                            batch_size=batch_size, device=device, autocast=autocast, num_workers=num_workers,
                            progress=progress)  # fmt: skip


def _write_entry(root: Path, key: str, backbone, dataset, preprocess, *, with_tokens, levels, batch_size, device,
                 autocast, num_workers, progress) -> FeatureSet:  # fmt: skip
    final = root / key
    _extract_into(
        root / f"{key}.partial",
        backbone,
        dataset,
        preprocess,
        with_tokens=with_tokens,
        levels=levels,
        batch_size=batch_size,
        device=torch.device(device),
        autocast=autocast,
        num_workers=num_workers,
        progress=progress,
        meta={"key": key, "dataset": dataset.name, "split": dataset.split, "backbone": backbone.spec.address},
    )
    if final.exists():  # a corrupt or token-less entry being replaced
        shutil.rmtree(final)
    os.replace(root / f"{key}.partial", final)
    entry = _open_entry(final, need_tokens=with_tokens, need_levels=levels)
    assert entry is not None, f"freshly written cache entry {final} does not validate"
    return entry


def _open_entry(path: Path, *, need_tokens: bool, need_levels: int | None = None) -> FeatureSet | None:
    """The cached FeatureSet at ``path``, or None if absent, incomplete, corrupt or lacking tokens / levels."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        emb = np.load(path / "embeddings.npy")
        labels = np.load(path / "labels.npy")
        tokens = np.load(path / "tokens.npy", mmap_mode="r") if meta["tokens"] else None
        levels = None
        if meta.get("levels"):
            levels = [
                (
                    tokens if lv["file"] == "tokens.npy" else np.load(path / lv["file"], mmap_mode="r"),
                    tuple(lv["grid"]),
                )
                for lv in meta["levels"]
            ]
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        if path.exists():
            log.warning("feature cache entry %s is incomplete or corrupt; rebuilding it", path)
        return None
    shapes_ok = list(emb.shape) == meta["embeddings_shape"] and len(labels) == meta["n"]
    if tokens is not None:
        shapes_ok = shapes_ok and list(tokens.shape) == meta["tokens_shape"]
    if levels is not None:
        shapes_ok = shapes_ok and all(
            arr is not None
            and list(arr.shape) == lv["shape"]
            and arr.dtype == np.float16
            and lv["grid"][0] * lv["grid"][1] == arr.shape[1]
            for (arr, _), lv in zip(levels, meta["levels"])
        )
    if not shapes_ok:
        log.warning("feature cache entry %s does not match its meta.json; rebuilding it", path)
        return None
    if need_tokens and tokens is None:
        return None
    if need_levels is not None and (levels is None or len(levels) != need_levels):
        return None
    return FeatureSet(emb, labels, tokens, tuple(meta["grid"]) if meta.get("grid") else None, levels=levels)


def _extract_into(
    work: Path,
    backbone: Backbone,
    dataset: MedicalDataset,
    preprocess: Preprocess,
    *,
    with_tokens: bool,
    levels: int | None = None,
    batch_size: int,
    device: torch.device,
    autocast: bool,
    num_workers: int,
    progress: Callable[[int, int], None] | None,
    meta: dict[str, Any],
) -> None:
    n = len(dataset)
    backbone = backbone.eval().to(device)
    grid, dims, level_shapes = _probe_shapes(backbone, dataset, preprocess, device, levels)
    d_emb, n_tok, d_tok = dims
    done = _resume_point(work, meta, with_tokens, levels)
    work.mkdir(parents=True, exist_ok=True)
    if done:
        log.info("resuming feature extraction of %s %s at %d/%d", dataset.name, dataset.split, done, n)
    subset = _ImagesOnly(dataset, done)
    loader = make_loader(subset, batch_size=batch_size, num_workers=num_workers, fit=preprocess.fit_one)
    row = done
    with contextlib.ExitStack() as files:
        emb = files.enter_context(
            _RowWriter(work / "embeddings.npy", np.float32, (n, d_emb), resume=bool(done))
        )
        tok = None
        if with_tokens:
            shape = (n, n_tok, d_tok)
            tok = files.enter_context(_RowWriter(work / "tokens.npy", np.float16, shape, resume=bool(done)))
        # the levels before the last (the last one is ``tok``)
        lvl = [files.enter_context(_RowWriter(work / _level_file(i), np.float16, (n, t, d), resume=bool(done)))
               for i, (_, (t, d)) in enumerate(level_shapes[:-1])]  # fmt: skip
        writers = [w for w in (emb, tok, *lvl) if w is not None]
        with torch.inference_mode(), autocast_context(device, autocast):
            for step, batch in enumerate(loader):
                x = preprocess(batch["image"].to(device, non_blocking=True))
                if levels is None:
                    feats = backbone.forward_features(x)
                else:
                    *before, feats = backbone.forward_levels(x, levels)
                    for writer, level in zip(lvl, before):
                        writer.write(row, level.tokens.to(torch.float16).cpu().numpy())
                emb.write(row, feats.embedding.float().cpu().numpy())
                if tok is not None:
                    tok.write(row, feats.tokens.to(torch.float16).cpu().numpy())
                row += x.shape[0]
                if (step + 1) % _SAVE_EVERY == 0:
                    _save_progress(work, meta, with_tokens, levels, row, writers)
                if progress is not None:
                    progress(row, n)
        for writer in writers:
            writer.flush()
    np.save(work / "labels.npy", dataset.labels)
    full = {
        **meta,
        "n": n,
        "tokens": with_tokens,
        "grid": list(grid),
        "embeddings_shape": [n, d_emb],
        "tokens_shape": [n, n_tok, d_tok] if with_tokens else None,
        "levels": [
            {
                "file": _level_file(i) if i < len(level_shapes) - 1 else "tokens.npy",
                "grid": list(g),
                "shape": [n, t, d],
            }
            for i, (g, (t, d)) in enumerate(level_shapes)
        ]
        or None,
        "backbone_spec": backbone.spec.to_dict(),
        "preprocess": dataclasses.asdict(preprocess),
    }
    (work / "meta.json").write_text(json.dumps(full, indent=1, default=str))
    (work / "progress.json").unlink(missing_ok=True)


class _ImagesOnly(torch.utils.data.Dataset):
    """Rows ``start:`` of ``dataset`` as extraction reads them: its items without a segmentation mask.

    Extraction runs the backbone on images only; a segmentation dataset's items also decode and resize a
    mask, which the training that needs it reads on its own (2 to 5 s of a 140 s extraction of Kvasir-SEG's
    1,000 images on a 2-core CPU).
    """

    def __init__(self, dataset: MedicalDataset, start: int = 0) -> None:
        self.dataset, self.start = dataset, start
        self.masked = hasattr(dataset, "mask") and hasattr(dataset, "image")

    def __len__(self) -> int:
        return len(self.dataset) - self.start

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.start + i
        if not self.masked:
            return self.dataset[row]
        return {"image": self.dataset.image(row), "label": torch.from_numpy(self.dataset.labels[row]),
                "index": row}  # fmt: skip


class _RowWriter:
    """Rows of a preallocated ``.npy`` file, written in place with ``seek`` + ``write``.

    Unlike a writable ``np.memmap``, whose every touched page stays in the process's resident set until it
    is unmapped, the written rows only pass through the OS page cache, so peak memory does not grow with
    the number of rows. ``resume=True`` opens an existing file (same dtype and shape) to continue it.
    """

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...], *, resume: bool) -> None:
        if resume:
            header = np.load(path, mmap_mode="r")  # reads the header; maps the data without touching it
            if header.dtype != np.dtype(dtype) or header.shape != shape:
                raise ValueError(f"{path} holds {header.dtype} {header.shape}, expected {dtype} {shape}")
        else:  # header + sparse file of the full size; no page of the data is touched
            header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.dtype, self.shape = header.offset, header.dtype, header.shape
        del header
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self.file = open(path, "r+b")  # closed by __exit__

    def write(self, row: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        assert block.shape[1:] == self.shape[1:] and row + len(block) <= self.shape[0], (block.shape, row)
        self.file.seek(self.offset + row * self.row_bytes)
        self.file.write(memoryview(block).cast("B"))

    def flush(self) -> None:
        """Make the rows written so far durable (what ``np.memmap.flush`` did)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def __enter__(self) -> _RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _level_file(i: int) -> str:
    return f"tokens_l{i}.npy"


def _probe_shapes(backbone, dataset, preprocess, device, levels: int | None = None):
    """``(grid, (D_emb, T, D), [(grid_i, (T_i, D_i)) per level])`` of one image (no levels: ``[]``)."""
    with torch.inference_mode():
        x = preprocess(_image(dataset, 0)[None].to(device))
        if levels is None:
            f, shapes = backbone.forward_features(x), []
        else:
            feats = backbone.forward_levels(x, levels)
            f = feats[-1]
            shapes = [(tuple(g.grid), (g.tokens.shape[1], g.tokens.shape[2])) for g in feats]
    return tuple(f.grid), (f.embedding.shape[1], f.tokens.shape[1], f.tokens.shape[2]), shapes


def _resume_point(work: Path, meta: dict, with_tokens: bool, levels: int | None = None) -> int:
    """Rows already extracted by a killed run with the same key (0 if none or unusable)."""
    try:
        state = json.loads((work / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        if work.exists():
            shutil.rmtree(work)
        return 0
    if state.get("key") != meta["key"] or state.get("tokens") != with_tokens or state.get("levels") != levels:
        shutil.rmtree(work)
        return 0
    return int(state["rows"])


def _save_progress(
    work: Path, meta: dict, with_tokens: bool, levels: int | None, rows: int, writers: list[_RowWriter]
) -> None:
    for writer in writers:
        writer.flush()
    state = {"key": meta["key"], "tokens": with_tokens, "rows": rows}
    if levels is not None:
        state["levels"] = levels
    atomic_write(work / "progress.json", json.dumps(state))
