"""The tidy results table, saved predictions, the environment record and the atomic writers behind them.

Every result is one row of ``RESULT_COLUMNS`` (plus optional extra id columns such as ``lr`` or ``size``);
tables, plots and reports are pure functions of that table. Every file is written atomically (a temp file
in the same directory, fsync, ``os.replace``), so a crash never leaves a half-written table behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from numpy.typing import ArrayLike

from .._io import atomic_write, folder_lock
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "RESULT_COLUMNS",
    "RUN_DIR",
    "META_SUFFIX",
    "results_rows",
    "write_results",
    "read_results",
    "save_predictions",
    "load_predictions",
    "environment_info",
    "write_environment",
    "atomic_write",
    "write_json",
    "write_run_config",
    "record_arm_configs",
    "write_yaml",
]

RESULT_COLUMNS = (
    "run",
    "dataset",
    "backbone",
    "strategy",
    "head",
    "seed",
    "fold",
    "split",
    "metric",
    "value",
)
_ID_COLUMNS = RESULT_COLUMNS[:7]
_TEXT_COLUMNS = ("run", "dataset", "backbone", "strategy", "head", "split", "metric")
_PACKAGES = (
    "medadapt",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "medmnist",
    "transformers",
    "open_clip_torch",
    "peft",
)
#: An extra results column: the folder holding a row's ``predictions/`` and ``history.csv``, relative to the
#: folder of the results table (``HEAD/seed0``, ``ARM/seed1``, ``cells/DATASET/BACKBONE/METHOD/fold0/seed0``).
RUN_DIR = "run_dir"
#: The row-aligned metadata beside ``predictions/{split}.npz``.
META_SUFFIX = ".meta.csv"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
StrPath = str | os.PathLike


# ------------------------------------------------------------------------------------------ atomic writes
def _plain(obj: Any) -> Any:
    """Turn numpy values, paths, dataclasses and tuples into JSON/YAML types; anything else becomes str."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset, np.ndarray)):
        return [_plain(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    return str(obj)  # paths, torch.device, ...: a readable record beats losing the results


def write_json(obj: Any, path: StrPath) -> Path:
    """Write ``obj`` as indented JSON, atomically (numpy values, paths and dataclasses are converted)."""
    return atomic_write(path, json.dumps(_plain(obj), indent=2) + "\n")


def write_yaml(obj: Any, path: StrPath) -> Path:
    """Write ``obj`` as block-style YAML in insertion order, atomically."""
    return atomic_write(path, yaml.safe_dump(_plain(obj), sort_keys=False, allow_unicode=True))


#: Config keys that may differ between invocations writing one output folder: seeds run in parallel
#: (``--seeds 0`` and ``--seeds 1`` into one ``--out``), ``--resume``, and settings that do not change a
#: result (where the data lies, loader workers, how often checkpoints are written, how ``--out`` was spelled:
#: runs/x, ./runs/x/ or an absolute path).
_PER_INVOCATION = ("seeds", "resume", "out", "data_root", "num_workers", "train.checkpoint_every")


def _result_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` flattened one level (``train.lr``) without the :data:`_PER_INVOCATION` keys."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        items = {f"{k}.{kk}": vv for kk, vv in v.items()} if k == "train" and isinstance(v, dict) else {k: v}
        flat.update({kk: vv for kk, vv in items.items() if kk not in _PER_INVOCATION})
    return flat


def _differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys (``train.lr`` flattened) where two configs differ, other than the per-invocation ones."""
    a, b = _result_keys(old), _result_keys(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _keep_earlier(config: dict[str, Any], out: Path) -> Path:
    """Append ``config`` (being replaced) to ``out/config.earlier.yaml``, a list, oldest first."""
    earlier = out / "config.earlier.yaml"
    kept = (yaml.safe_load(earlier.read_text()) or []) if earlier.exists() else []
    write_yaml([*(kept if isinstance(kept, list) else [kept]), config], earlier)
    return earlier


def write_run_config(config: Mapping[str, Any], out: StrPath) -> dict[str, Any]:
    """Write ``out/config.yaml``; returns what was written.

    Seeds run by separate invocations into one folder (one process per seed) are recorded together: when
    the folder's ``config.yaml`` equals ``config`` but for the seeds and the other :data:`_PER_INVOCATION`
    keys, its seeds are kept and the new ones added (the other keys are this invocation's). A config that
    differs otherwise replaces it, with a warning, since ``results.csv`` then holds rows of both; the one it
    replaces is appended to ``config.earlier.yaml`` (a list, oldest first), so no record is lost.
    """
    out = Path(out)
    path = out / "config.yaml"
    new = _plain(dict(config))
    with folder_lock(out):
        old = yaml.safe_load(path.read_text()) if path.exists() else None
        if isinstance(old, dict) and "backbone_address" in new and "backbone_address" not in old:
            # written before config.yaml recorded the address: a backbone given as an address is its own;
            # an alias (whose meaning may have changed since) is left unknown, so the configs differ
            if ":" in str(old.get("backbone", "")):
                old["backbone_address"] = old["backbone"]
        if isinstance(old, dict) and not ("seeds" in old and "seeds" in new) and old != new:
            _keep_earlier(old, out)
        if isinstance(old, dict) and "seeds" in old and "seeds" in new:
            differ = _differing(old, new)
            if differ:
                earlier = _keep_earlier(old, out)
                log.warning(
                    "%s is replaced: the earlier run written there differs in %s, and results.csv holds rows "
                    "of both; its config is kept in %s; use a new --out to keep runs apart",
                    path,
                    differ,
                    earlier.name,
                )
            else:
                new["seeds"] = sorted({*old["seeds"], *new["seeds"]})
        write_yaml(new, path)
    return new


def record_arm_configs(configs: Mapping[str, Mapping[str, Any]], out: StrPath) -> None:
    """Keep each arm's settings in ``out/ARM/config.yaml``, or refuse an arm whose recorded settings differ.

    ``results.csv`` pools an arm's seeds by its name, so a seed trained with other settings (``--seeds 1
    --lr 1e-2`` into a folder whose arm trained seed 0 at 1e-3) would be averaged with them. Every arm is
    checked before any is written, so a refused run changes nothing; the :data:`_PER_INVOCATION` keys
    (seeds, where the data lies, ...) may differ, and the seeds are gathered.
    """
    out = Path(out)
    with folder_lock(out):
        records = {}
        for name, config in configs.items():
            path, new = out / name / "config.yaml", _plain(dict(config))
            old = yaml.safe_load(path.read_text()) if path.exists() else None
            if isinstance(old, dict):
                differ = _differing(old, new)
                if differ:
                    a, b = _result_keys(old), _result_keys(new)
                    changes = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in differ)
                    raise ConfigError(
                        f"arm {name!r} in {out} was trained with other settings ({changes}); results.csv "
                        "would pool its seeds: use another --out (or remove that arm's folder and its rows)"
                    )
                new["seeds"] = sorted({*old.get("seeds", []), *new.get("seeds", [])})
            records[path] = new
        for path, new in records.items():
            write_yaml(new, path)


# ------------------------------------------------------------------------------------------- results table
def results_rows(*, metrics: Mapping[str, float], split: str, **ids: Any) -> list[dict[str, Any]]:
    """One tidy row per metric: the ids (``run``, ``dataset``, ... and any extra columns), split, metric, value.

    Missing standard ids are left empty (``None``).

    Example:
        >>> rows = results_rows(metrics={"auc": 0.91, "acc": 0.85}, split="test", run="r1", seed=0, lr=1e-3)
        >>> rows[0]["metric"], rows[0]["value"], rows[0]["lr"]
        ('auc', 0.91, 0.001)
    """
    clash = sorted({"split", "metric", "value"} & set(ids))
    if clash:
        raise ConfigError(f"result ids may not be named {clash}: split, metric and value are filled in here")
    ids = {k: _scalar(k, v) for k, v in ids.items()}
    base = {c: ids.get(c) for c in _ID_COLUMNS}
    extras = {k: v for k, v in ids.items() if k not in _ID_COLUMNS}
    return [
        {**base, "split": split, "metric": name, "value": _value(name, value), **extras}
        for name, value in metrics.items()
    ]


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ConfigError(f"result id {name}={value!r} must be a str, int, float, bool or None")


def _value(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"metric {name!r} has value {value!r}; metric values must be numbers") from None


def _results_path(path: StrPath) -> Path:
    path = Path(path)
    return path / "results.csv" if path.is_dir() else path


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    extras = [c for c in table.columns if c not in RESULT_COLUMNS]
    return table.reindex(columns=[*RESULT_COLUMNS, *extras])


def write_results(rows: Iterable[Mapping[str, Any]], path: StrPath, *, replace: Sequence[str] = ()) -> Path:
    """Append ``rows`` to the results table at ``path`` (a CSV file, or a folder holding ``results.csv``).

    An existing table keeps its rows, except those that equal a new row on every ``replace`` column (e.g.
    ``("run", "seed")``: a resumed run replaces its earlier rows instead of repeating them); columns are the
    union, standard ones first. The file is rewritten atomically under a folder lock, so concurrent runs
    writing one table do not lose rows.
    """
    path = _results_path(path)
    new = pd.DataFrame([dict(r) for r in rows])
    missing = [c for c in ("metric", "value", *replace) if len(new) and c not in new.columns]
    if missing:
        raise ConfigError(f"result rows lack the {missing} columns; build them with results_rows()")
    with folder_lock(path.parent):
        old = read_results(path) if path.exists() else new.iloc[:0]
        if replace and len(old) and len(new):
            keys = {tuple(str(v) for v in k) for k in new[list(replace)].itertuples(index=False)}
            stale = [tuple(str(v) for v in k) in keys for k in old[list(replace)].itertuples(index=False)]
            old = old[~np.asarray(stale, dtype=bool)]
        frames = [t for t in (old, new) if len(t)]
        table = pd.concat(frames, ignore_index=True) if frames else new
        atomic_write(path, _ordered(table).to_csv(index=False))
    return path


def read_results(path: StrPath) -> pd.DataFrame:
    """Read a results table written by :func:`write_results` (a CSV file, or a folder with ``results.csv``)."""
    path = _results_path(path)
    if not path.is_file():
        raise DataError(f"no results table at {path}; write_results() creates it")
    try:
        table = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the results table {path}: {e}") from e
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path} is not a medadapt results table: it lacks the columns {missing}")
    return table


# ----------------------------------------------------------------------------------------------- predictions
def save_predictions(
    out_dir: StrPath,
    split: str,
    *,
    labels: ArrayLike,
    scores: ArrayLike,
    index: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    task: str | None = None,
    metadata: pd.DataFrame | None = None,
) -> Path:
    """Save row-aligned ``labels``, ``scores`` (and dataset ``index``, patient ``groups``, the ``task``) to
    ``out_dir/predictions/{split}.npz``, and a row-aligned ``metadata`` table (subgroup columns) beside it as
    ``{split}.meta.csv``, so that statistics over subgroups and patients need no dataset at hand."""
    if not isinstance(split, str) or not _SAFE_NAME.fullmatch(split):
        raise ConfigError(
            f"split {split!r} must be a plain file name such as 'test' (letters, digits, _ . -)"
        )
    arrays = {"labels": np.asarray(labels), "scores": np.asarray(scores)}
    if index is not None:
        arrays["index"] = np.asarray(index)
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=str)
    shapes = {k: v.shape for k, v in arrays.items()}
    if any(len(shape) == 0 for shape in shapes.values()) or len({shape[0] for shape in shapes.values()}) != 1:
        raise DataError(
            f"predictions must be row-aligned arrays with one row per sample, got shapes {shapes}"
        )
    if metadata is not None and len(metadata) != len(arrays["labels"]):
        raise DataError(f"metadata has {len(metadata)} rows for {len(arrays['labels'])} predictions")
    if task is not None:
        arrays["task"] = np.asarray(task)
    folder = Path(out_dir) / "predictions"
    if metadata is not None and len(metadata.columns):
        atomic_write(folder / f"{split}{META_SUFFIX}", metadata.to_csv(index=False))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write(folder / f"{split}.npz", buffer.getvalue())


def load_predictions(path: StrPath) -> dict[str, Any]:
    """Load a file written by :func:`save_predictions`: ``{"labels", "scores"[, "index", "groups"]}`` arrays,
    ``"task"`` (a str, where recorded) and ``"metadata"`` (a DataFrame, where a ``.meta.csv`` lies beside it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"no predictions file at {path}; save_predictions() writes OUT_DIR/predictions/SPLIT.npz"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays: dict[str, Any] = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the predictions file {path}: {e}") from e
    if not {"labels", "scores"} <= set(arrays):
        raise DataError(
            f"{path} is not a predictions file: it holds {sorted(arrays)}, expected labels and scores"
        )
    if "task" in arrays:
        arrays["task"] = str(arrays["task"])
    meta = path.with_name(path.name[: -len(".npz")] + META_SUFFIX)
    if meta.is_file():
        try:
            arrays["metadata"] = pd.read_csv(meta, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the predictions metadata {meta}: {e}") from e
    return arrays


# ----------------------------------------------------------------------------------------------- environment
def environment_info(*, seed: int | None, device: Any, repo_dir: StrPath | None = None) -> dict[str, Any]:
    """What produced a result: Python, platform, package versions, git state, seed, device and hardware.

    ``git_sha`` / ``git_dirty`` describe the git working tree holding ``repo_dir`` (default: the medadapt
    source), ``None`` outside a repository. Heavy packages are not imported: versions come from metadata.
    """
    git_dir = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    sha = _git(git_dir, "rev-parse", "HEAD")
    status = _git(git_dir, "status", "--porcelain", "--untracked-files=no") if sha else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "git_sha": sha,
        "git_dirty": None if status is None else bool(status),
        "seed": seed,
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": _gpu_name(device),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


#: env.json keys that differ between invocations of one run without changing what made it.
_ENV_PER_INVOCATION = ("seed", "timestamp", "earlier")


def write_environment(info: Mapping[str, Any], out: StrPath) -> dict[str, Any]:
    """Write ``out/env.json`` (an :func:`environment_info`); returns what was written.

    A folder filled by several invocations (one process per seed, a run resumed in a later session) keeps
    the environment of each: when the folder's ``env.json`` differs from ``info`` in more than
    :data:`_ENV_PER_INVOCATION` (another git commit, torch version or device), the earlier environments are
    kept under ``"earlier"``, oldest first, so the record never claims that all results came from the last.
    """
    path = Path(out) / "env.json"
    new = dict(info)
    with folder_lock(out):
        old = json.loads(path.read_text()) if path.exists() else None
        if isinstance(old, dict):
            earlier = list(old.get("earlier", []))
            same = {k: v for k, v in old.items() if k not in _ENV_PER_INVOCATION}
            if same != {k: v for k, v in new.items() if k not in _ENV_PER_INVOCATION}:
                earlier.append({k: v for k, v in old.items() if k != "earlier"})
            else:  # one environment: its seeds are gathered, as in config.yaml
                new["seed"] = sorted({*_seed_list(old.get("seed")), *_seed_list(new.get("seed"))})
            if earlier:
                new["earlier"] = earlier
        write_json(new, path)
    return new


def _seed_list(seed: Any) -> list[int]:
    if seed is None:
        return []
    return [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [int(seed)]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu_name(device: Any) -> str | None:
    """The CUDA device's name when torch is already imported and ``device`` is a CUDA device."""
    torch = sys.modules.get("torch")
    if torch is None or not str(device).startswith("cuda"):
        return None
    with contextlib.suppress(RuntimeError, AssertionError, ValueError):
        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(torch.device(device)))
    return None
