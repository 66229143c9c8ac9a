"""Helpers shared by the benchmarks: datasets (real MedMNIST, a prefix of one, synthetic), tables, verdicts.

Benchmarks are scripts, not tests: each prints a markdown table and a one-line PASS/FAIL verdict against its
target, and writes both to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medadapt.data import MedicalDataset, load_dataset

SYNTHETIC = "synthetic"


# ------------------------------------------------------------------------------------------------ datasets
class SyntheticDataset(MedicalDataset):
    """Binary-labelled gray images generated on the fly from ``(seed, index)``: memory does not grow with ``n``.

    Only the ``[n, 1]`` int64 label array is stored (8 bytes per image).
    """

    def __init__(self, n: int, *, size: int = 28, channels: int = 1, seed: int = 0, split: str = "train"):
        self.n, self.size, self.seed = n, size, seed
        self.name, self.split, self.task = f"synthetic:n={n}&size={size}&seed={seed}", split, "binary"
        self.classes, self.n_channels = ["0", "1"], channels
        self.labels = (np.arange(n, dtype=np.int64) % 2)[:, None]
        self.metadata = pd.DataFrame({"index": np.arange(n)})

    def image(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, int(i)))
        image = rng.integers(0, 256, size=(self.n_channels, self.size, self.size), dtype=np.uint8)
        return torch.from_numpy(image)


class Prefix(MedicalDataset):
    """The first ``n`` samples of ``base`` (keeping its batched ``__getitems__`` fast path when it has one)."""

    def __init__(self, base: MedicalDataset, n: int):
        self.base, n = base, min(n, len(base))
        self.name, self.split, self.task = f"{base.name}[:{n}]", base.split, base.task
        self.classes, self.n_channels = base.classes, base.n_channels
        self.labels = base.labels[:n]
        self.metadata = base.metadata.iloc[:n]
        if hasattr(base, "__getitems__"):
            self.__getitems__ = base.__getitems__  # indices are < n by construction

    def image(self, i: int) -> torch.Tensor:
        return self.base.image(i)


def add_data_args(
    parser: argparse.ArgumentParser,
    *,
    dataset: str = "breastmnist",
    train_limit: bool = False,
    synthetic: bool = True,
) -> None:
    """``--dataset`` and ``--data-root`` (and ``--limit``); ``synthetic=False`` for benches of real data only."""
    also = f" or {SYNTHETIC!r}" if synthetic else ""
    parser.add_argument(
        "--dataset",
        default=dataset,
        help=f"MedMNIST flag (28 px files in --data-root){also} (default: %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("MEDADAPT_DATA"),
        help="folder holding the MedMNIST .npz files (default: $MEDADAPT_DATA)",
    )
    if train_limit:
        parser.add_argument(
            "--limit", type=int, default=0, help="first N train images; 0 = all (default: %(default)s)"
        )


def load_split(
    dataset: str, split: str, *, data_root: str | None, limit: int = 0, synthetic_n: int = 1024
) -> MedicalDataset:
    """One split of a MedMNIST set (first ``limit`` images when ``limit > 0``), or a synthetic one."""
    if dataset == SYNTHETIC:
        n = limit if limit > 0 else synthetic_n
        return SyntheticDataset(n, seed={"train": 0, "val": 1, "test": 2}[split], split=split)
    ds = load_dataset(f"medmnist:{dataset}", split, root=data_root, download=False)
    return Prefix(ds, limit) if 0 < limit < len(ds) else ds


# ------------------------------------------------------------------------------------------------- output
def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of equal keys as a GitHub markdown table (``|`` escaped); floats get 4 decimals below 10, else 1."""
    cols = list(rows[0])
    cells = [[_fmt(r[c]).replace("|", "\\|") for c in cols] for r in rows]
    lines = [
        "| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def machine() -> str:
    """One line describing where the numbers come from."""
    cpu = platform.machine()
    try:
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def report(title: str, table: str, verdict: str, out: str | None, notes: Sequence[str] = ()) -> None:
    """Print the table and verdict; also write them (as markdown) to ``out`` when given."""
    text = "\n".join([f"### {title}", "", table, "", *notes, *([""] if notes else []), verdict, ""])
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--no-autocast`` and ``--threads``, shared by every benchmark."""
    parser.add_argument("--device", default="cpu", help="(default: %(default)s)")
    parser.add_argument(
        "--no-autocast", action="store_true", help="disable bf16 autocast (a no-op where not native)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 0 = torch's default. 1 keeps numbers stable on a shared machine: with "
        "more threads than free cores, every op waits on descheduled threads (default: %(default)s)",
    )


def apply_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 keeps torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def prepend_command(path: str | Path) -> None:
    """Put the command that made a results file at its top."""
    path = Path(path)
    command = shlex.join([".venv/bin/python", *sys.argv])
    path.write_text(f"Command: `{command}`\n\n{path.read_text()}")


@contextlib.contextmanager
def scratch_folder(path: str | None) -> Iterator[Path]:
    """``path`` (made if missing, kept afterwards), or a temporary folder removed afterwards."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="medadapt-bench-") as tmp:
        yield Path(tmp)
