"""MedMNIST v2: the twelve 2D sets at 28, 64, 128 and 224 pixels, as in-memory uint8 datasets.

Flags, label names, tasks, channel counts, URLs and md5s all come from the installed ``medmnist.INFO``;
nothing is restated here. Files are the ones ``medmnist`` itself downloads (``{flag}.npz`` at 28 px,
``{flag}_{size}.npz`` otherwise) in the data root: the ``root`` argument, else ``$MEDADAPT_DATA``, else
``~/.medmnist`` (medmnist's own default, so existing downloads are reused).

A file's md5 is checked once; a record (md5, byte size, mtime) in the cache (``$MEDADAPT_CACHE/.md5/``, never
the data folder, which may be read-only or shared) lets later runs skip the hashing, and any change to the
file makes it run again. A data path that is a folder or unreadable is reported as such, never downloaded
over; a download into a read-only folder is refused before it starts. Each split is read
from the ``.npz`` on its own (train, val and test never re-read each other's arrays) and kept in a small
in-process cache, so loading the same split again costs nothing.

Example:
    >>> from medadapt.data import load_dataset
    >>> ds = load_dataset("medmnist:breastmnist?size=64", "train")  # doctest: +SKIP
    >>> ds.name, ds.task, ds[0]["image"].shape
    ('medmnist:breastmnist?size=64', 'binary', torch.Size([1, 64, 64]))
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._io import atomic_write, cache_home
from ..errors import ConfigError, DataError, UnknownNameError
from .base import DATASETS, SPLITS, DatasetAddress, MedicalDataset, path_problem

if TYPE_CHECKING:
    import torch

__all__ = [
    "SIZES",
    "MedMNISTDataset",
    "clear_cache",
    "default_data_root",
    "ensure_file",
    "file_name",
    "flags",
    "load_medmnist",
]

log = logging.getLogger(__name__)

#: Image sizes MedMNIST+ publishes for the 2D sets.
SIZES = (28, 64, 128, 224)
DEFAULT_SIZE = 28
#: ``INFO[flag]["task"]`` -> medadapt task name.
_TASK_NAMES = {
    "binary-class": "binary",
    "multi-class": "multiclass",
    "multi-label, binary-class": "multilabel",
    "ordinal-regression": "ordinal",
}
_ADDRESS_OPTIONS = ("size",)
_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, bytes, mtime_ns, md5) checked in this process


# ---------------------------------------------------------------------------------------------- INFO


def _info() -> dict[str, dict[str, Any]]:
    """``medmnist.INFO``, imported lazily. ``import medmnist.info`` runs the package's ``__init__``, which
    imports torch (seconds): when medmnist is not imported yet, its ``info`` module alone is loaded under its
    own name, so that ``medmnist`` reuses it later and a bad flag is reported before torch is imported."""
    module = sys.modules.get("medmnist.info")
    if module is None:
        spec = importlib.util.find_spec("medmnist")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("the medmnist package is not installed; pip install medmnist")
        info = Path(next(iter(spec.submodule_search_locations))) / "info.py"
        loaded = importlib.util.spec_from_file_location("medmnist.info", info)
        module = importlib.util.module_from_spec(loaded)
        sys.modules["medmnist.info"] = module
        try:
            loaded.loader.exec_module(module)
        except BaseException:
            del sys.modules["medmnist.info"]
            raise
    return module.INFO


@functools.cache
def flags() -> tuple[str, ...]:
    """The 2D MedMNIST flags of the installed ``medmnist``, in ``INFO`` order (its 3D sets' classes end in
    ``3D``: ``OrganMNIST3D``, ...)."""
    return tuple(flag for flag, info in _info().items() if not info["python_class"].endswith("3D"))


def _check_flag(location: str) -> str:
    flag = location.strip().lower()
    if flag in flags():
        return flag
    if flag in _info():
        raise ConfigError(f"{flag!r} is a 3D MedMNIST set; medadapt loads the 2D sets: {', '.join(flags())}")
    close = difflib.get_close_matches(flag, flags(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(f"unknown MedMNIST flag {location!r}{hint} (valid: {', '.join(flags())})")


def _check_size(flag: str, size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, str)) or not str(size).strip().isdigit():
        raise ConfigError(f"MedMNIST size {size!r} is not an integer; choose one of {list(SIZES)}")
    value = int(size)
    if value not in SIZES or ("url" if value == DEFAULT_SIZE else f"url_{value}") not in _info()[flag]:
        raise ConfigError(
            f"MedMNIST size {value} is not available for {flag}; choose one of {list(SIZES)} "
            f"(address option ?size=, e.g. medmnist:{flag}?size=64)"
        )
    return value


def _remote(flag: str, size: int) -> tuple[str, str]:
    """``(url, md5)`` of a file as recorded in ``INFO`` (keys ``url``/``MD5`` at 28 px, else ``url_64``...)."""
    suffix = "" if size == DEFAULT_SIZE else f"_{size}"
    info = _info()[flag]
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def file_name(flag: str, size: int = DEFAULT_SIZE) -> str:
    """The file name medmnist downloads: ``breastmnist.npz`` at 28 px, ``breastmnist_64.npz`` at 64."""
    return f"{flag}.npz" if size == DEFAULT_SIZE else f"{flag}_{size}.npz"


def default_data_root() -> Path:
    """``$MEDADAPT_DATA`` if set, else ``~/.medmnist`` (where ``medmnist`` itself downloads)."""
    env = os.environ.get("MEDADAPT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".medmnist"


# ------------------------------------------------------------------------------------ files and md5


def ensure_file(
    flag: str, size: int = DEFAULT_SIZE, *, root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Return the md5-verified path of a MedMNIST file, downloading it first if missing and allowed.

    Example:
        >>> ensure_file("breastmnist", 28, root="/data/medmnist", download=False)  # doctest: +SKIP
        PosixPath('/data/medmnist/breastmnist.npz')
    """
    flag = _check_flag(flag)
    size = _check_size(flag, size)
    folder = Path(root).expanduser() if root is not None else default_data_root()
    path = folder / file_name(flag, size)
    url, md5 = _remote(flag, size)
    problem = path_problem(path)
    if problem and path.exists():  # a folder or an unreadable file there: never replaced or downloaded over
        raise DataError(
            f"MedMNIST file {path} {problem}; medadapt never replaces it: fix it, or point --data-root (or "
            "MEDADAPT_DATA) at the folder that holds the real file"
        )
    if problem:
        if not download:
            raise DataError(_missing_message(path, url, md5, "download=False"))
        _check_writable(folder, path, url, md5)
        _download(url, path, md5)
    _verify_md5(path, md5, url)
    return path


def _missing_message(path: Path, url: str, md5: str, reason: str) -> str:
    return (
        f"MedMNIST file {path.name} is not in {path.parent} ({reason}). Download it from {url} "
        f"(md5 {md5}) and put it in {path.parent}, or point --data-root (or the MEDADAPT_DATA environment "
        "variable) at the folder that already holds it"
    )


def _check_writable(folder: Path, path: Path, url: str, md5: str) -> None:
    """Refuse a download where it cannot be written (the nearest existing parent of ``folder`` decides)."""
    parent = next(p for p in (folder, *folder.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not a folder" if not parent.is_dir() else "is read-only"
        raise DataError(_missing_message(path, url, md5, f"cannot download: {parent} {why}"))


def _download(url: str, path: Path, md5: str) -> None:
    """Download to a hidden ``.part`` file, check its md5, then move it into place."""
    part = path.with_name(f".{path.name}.part")
    log.info("downloading %s to %s", url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _fetch(url, part)
        digest = _md5(part)
    except Exception as e:  # network, HTTP or disk: every failure means "get the file by hand"
        part.unlink(missing_ok=True)
        raise DataError(_missing_message(path, url, md5, f"download failed: {e}")) from e
    if digest != md5:
        part.unlink(missing_ok=True)
        raise DataError(_missing_message(path, url, md5, f"the download has md5 {digest}, not {md5}"))
    os.replace(part, path)
    _remember(path, md5)


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` (following redirects, as Zenodo's ``?download=1`` links need) into ``dest``."""
    request = urllib.request.Request(url, headers={"User-Agent": "medadapt"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path, md5: str) -> dict[str, Any]:
    st = path.stat()
    return {"md5": md5, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sidecar(path: Path) -> Path:
    """The cache's record of a verified file (keyed by its resolved path)."""
    key = hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()[:16]
    return cache_home() / ".md5" / f"{path.name}.{key}.json"


def _stamp_key(path: Path, stamp: dict[str, Any]) -> tuple[str, int, int, str]:
    return (str(path.resolve()), stamp["bytes"], stamp["mtime_ns"], stamp["md5"])


def _verify_md5(path: Path, md5: str, url: str) -> None:
    """Check ``path`` against ``md5`` unless this process or a sidecar already did for this exact file."""
    stamp = _stamp(path, md5)
    if _stamp_key(path, stamp) in _VERIFIED or _read_sidecar(path) == stamp:
        _VERIFIED.add(_stamp_key(path, stamp))
        return
    log.info("checking the md5 of %s", path)
    digest = _md5(path)
    if digest != md5:
        raise DataError(
            f"{path} has md5 {digest} but medmnist expects {md5}: the file is incomplete, corrupt or from "
            f"another MedMNIST version. Delete it and download it again from {url}"
        )
    _remember(path, md5)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None


def _remember(path: Path, md5: str) -> None:
    """Record a successful check in this process and, where the folder is writable, in the sidecar."""
    stamp = _stamp(path, md5)
    _VERIFIED.add(_stamp_key(path, stamp))
    side = _sidecar(path)
    try:
        atomic_write(side, json.dumps(stamp))
    except OSError as e:  # a read-only cache: the in-process record still holds
        log.debug("could not write %s (%s)", side, e)


# ------------------------------------------------------------------------------------- reading


def clear_cache() -> None:
    """Drop the arrays cached by :func:`load_medmnist` (datasets still alive keep theirs)."""
    _read_split_cached.cache_clear()


def _read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    st = path.stat()
    return _read_split_cached(str(path.resolve()), st.st_size, st.st_mtime_ns, split)


@functools.lru_cache(maxsize=6)
def _read_split_cached(path: str, nbytes: int, mtime_ns: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``({split}_images, {split}_labels)``; keyed by size and mtime so a replaced file is read anew."""
    keys = (f"{split}_images", f"{split}_labels")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path} has no {' or '.join(missing)} (it holds {sorted(npz.files)}); it is not a "
                    "MedMNIST file: delete it and download it again"
                )
            return npz[keys[0]], npz[keys[1]]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(
            f"cannot read {path} ({type(e).__name__}: {e}); the file is truncated or corrupt: delete it "
            "and download it again"
        ) from e


def _check_arrays(images: np.ndarray, labels: np.ndarray, *, path: Path, split: str, flag: str, size: int):
    """Raise DataError unless the arrays are what ``INFO`` promises for ``flag`` at ``size``."""
    info = _info()[flag]
    channels, n_classes = int(info["n_channels"]), len(info["label"])
    shape = (size, size) if channels == 1 else (size, size, channels)
    where = f"{path} ({split} split)"
    if images.dtype != np.uint8 or images.shape[1:] != shape:
        raise DataError(
            f"{where}: images are {images.dtype} {images.shape}, expected uint8 (N, {', '.join(map(str, shape))})"
            f" for {flag} at {size} px; the file is not the right MedMNIST file"
        )
    width = n_classes if _task(flag) == "multilabel" else 1
    if labels.ndim != 2 or labels.shape != (len(images), width):
        raise DataError(f"{where}: labels are {labels.shape}, expected ({len(images)}, {width})")
    high = 1 if _task(flag) == "multilabel" else n_classes - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise DataError(f"{where}: label values span {labels.min()}..{labels.max()}, expected 0..{high}")


def _task(flag: str) -> str:
    task = _info()[flag]["task"]
    if task not in _TASK_NAMES:
        raise DataError(f"MedMNIST task {task!r} of {flag} is not supported (known: {list(_TASK_NAMES)})")
    return _TASK_NAMES[task]


# ------------------------------------------------------------------------------------- dataset


class MedMNISTDataset(MedicalDataset):
    """One split of a 2D MedMNIST set held in memory as uint8; task and classes come from ``INFO``."""

    def __init__(self, *, name: str, split: str, flag: str, images: np.ndarray, labels: np.ndarray) -> None:
        info = _info()[flag]
        self.name, self.split, self.flag = name, split, flag
        self.task = _task(flag)
        self.classes = [info["label"][k] for k in sorted(info["label"], key=int)]
        self.n_channels = int(info["n_channels"])
        self.labels = labels.astype(np.int64)
        self.metadata = pd.DataFrame({"index": np.arange(len(labels))})
        import torch  # here, not at the top: the dataset layer imports without torch (fast errors)

        # [N, C, H, W] views of the arrays: gray gains a channel axis, RGB (N, H, W, 3) is permuted; no copy
        arr = torch.from_numpy(images)
        self._images = arr.unsqueeze(1) if arr.ndim == 3 else arr.permute(0, 3, 1, 2)

    def image(self, i: int) -> torch.Tensor:
        """uint8 ``[C, H, W]``, a fresh contiguous copy."""
        import torch

        return self._images[i].clone(memory_format=torch.contiguous_format)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of samples gathered with one indexing op (used by ``torch.utils.data.DataLoader``)."""
        idx = np.asarray(indices, dtype=np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} samples: {indices}")
        import torch

        images = self._images[torch.from_numpy(idx)].contiguous()
        labels = torch.from_numpy(self.labels[idx])
        return [{"image": images[k], "label": labels[k], "index": int(i)} for k, i in enumerate(idx)]

    def __repr__(self) -> str:
        shape = "x".join(map(str, self._images.shape[1:]))
        return f"MedMNISTDataset({self.name!r}, split={self.split!r}, n={len(self)}, image={shape}, task={self.task!r})"


def _pick_size(address: DatasetAddress, size: int | None) -> Any:
    option = address.options.get("size")
    if size is not None and option is not None and str(size) != str(option):
        log.warning("size=%s overrides ?size=%s in %s", size, option, address)
    return size if size is not None else option if option is not None else DEFAULT_SIZE


@DATASETS.register(
    "medmnist",
    examples=lambda: [f"medmnist:{f}" for f in flags()],
    check=lambda address: _check_flag(address.location),
)
def load_medmnist(
    address: DatasetAddress,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    size: int | None = None,
    download: bool = True,
    **ignored: Any,
) -> MedMNISTDataset:
    """Load one split of a 2D MedMNIST set, e.g. ``medmnist:breastmnist?size=64``.

    ``size`` (argument, else the address option, else 28) picks the file; ``root`` the folder (else
    :func:`default_data_root`). Other keyword arguments of the generic loader are ignored.

    Example:
        >>> ds = load_medmnist(DatasetAddress.parse("medmnist:pathmnist"), "val")  # doctest: +SKIP
        >>> ds[0]["image"].shape, ds.classes[:2]
        (torch.Size([3, 28, 28]), ['adipose', 'background'])
    """
    unknown = sorted(set(address.options) - set(_ADDRESS_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} in {address}; MedMNIST takes {list(_ADDRESS_OPTIONS)}"
        )
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not valid; choose one of {list(SPLITS)}")
    flag = _check_flag(address.location)
    size = _check_size(flag, _pick_size(address, size))
    path = ensure_file(flag, size, root=root, download=download)
    images, labels = _read_split(path, split)
    _check_arrays(images, labels, path=path, split=split, flag=flag, size=size)
    name = str(DatasetAddress(address.kind, flag, {**address.options, "size": size}))
    return MedMNISTDataset(name=name, split=split, flag=flag, images=images, labels=labels)
