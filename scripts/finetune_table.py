"""Markdown tables for the README from the ``results.csv`` of ``medadapt finetune`` runs.

``--mode accuracy`` (default): one row per (dataset, arm): test AUC / ACC and val AUC as mean ± std over
seeds, and with ``--reference CSV --method NAME`` the published numbers beside them. ``--mode cost``: one row
per arm: what trains, accuracy, parameters, peak memory, time, throughput and the selected LR / epoch.

    python scripts/finetune_table.py runs/breast_strategies \\
        --reference ../shared/reference/medmnist_v2_benchmark.csv --method "ResNet-18 (28)"
    python scripts/finetune_table.py runs/breast_strategies --mode cost

Both tables are pure functions of the tidy results table (:func:`accuracy_table`, :func:`cost_table`).
Standard deviations are over seeds (sample std, ddof=1); a single seed shows the mean alone; a seed whose
score is NaN (a diverged run) makes the cell ``nan``, so it is never averaged away. Several RUN_DIRs are
kept apart: an arm is a (dataset, folder, arm name), since one arm name (``scratch-linear``) in two folders
is usually two experiments; the ``folder`` column appears when the table holds more than one.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medadapt.errors import DataError
from medadapt.evaluation import format_mean_std
from medadapt.reporting import read_results

FOLDER = "folder"  # the RUN_DIR a row came from (added by load_runs)
ARM_KEYS = ["dataset", "run"]
ID_KEYS = ["dataset", "run", "seed", "fold", "split", "metric"]
COST_FOOTNOTE = (
    "¹ Peak memory: `torch.cuda.max_memory_allocated` of the run on a GPU; on CPU the peak RSS while the run "
    "trained (Linux: reset at the start of each run), which includes what the process already held (libraries, "
    "data). Largest value over seeds."
)


# ---------------------------------------------------------------------------------------------- formatting
def mean_std(values: Iterable[float]) -> str:
    """``"0.912 ± 0.011"`` (3 decimals, sample std over seeds); the mean alone for a single value; ``nan``
    when a seed's value is NaN; empty without values."""
    values = pd.Series(list(values), dtype=float).to_numpy()
    return format_mean_std(values) if len(values) else ""


def human_count(n: float) -> str:
    """``11.2M``, ``27.1K``, ``512``."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def percent(part: float, whole: float) -> str:
    """``100%``, ``3.5%``, ``0.5%``, ``0.036%``."""
    pct = 100 * part / whole
    if pct >= 10:
        return f"{pct:.0f}%"
    return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def human_bytes(n: float) -> str:
    """``1.6 GiB`` from 1 GiB up, else ``812 MiB``."""
    if math.isnan(n):
        return ""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def minutes_seconds(seconds: float) -> str:
    """``2:05`` (min:s)."""
    if math.isnan(seconds):
        return ""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def number(value: float, decimals: int = 1) -> str:
    """Whole numbers without decimals (``1,234``), others with ``decimals`` (``17.3``)."""
    if math.isnan(value):
        return ""
    return f"{value:,.{0 if float(value).is_integer() else decimals}f}"


def selected_parts(text: object) -> dict[str, str]:
    """``lr=0.001;epoch=14`` -> ``{"lr": "0.001", "epoch": "14"}`` (``{}`` for an empty cell)."""
    if not isinstance(text, str):
        return {}
    return {key: value for key, _, value in (item.partition("=") for item in text.split(";") if item)}


def selected_summary(values: Iterable[str]) -> str:
    """``lr=0.001;epoch=14`` per seed -> ``lr=0.001; epoch=14/9/17``: one value where constant across seeds."""
    parts: dict[str, list[str]] = {}
    for text in values:
        for key, value in selected_parts(text).items():
            parts.setdefault(key, []).append(value)
    cells = []
    for key, seen in parts.items():
        unique = list(dict.fromkeys(seen))
        cells.append(f"{key}={unique[0] if len(unique) == 1 else '/'.join(seen)}")
    return "; ".join(cells)


# ------------------------------------------------------------------------------------------- reference
def reference_dataset(address: str) -> str:
    """Our dataset address in the reference's naming: ``medmnist:breastmnist?size=28`` -> ``breastmnist``."""
    return address.split(":", 1)[-1].split("?", 1)[0].strip().lower()


def read_reference(path: str | Path) -> pd.DataFrame:
    """The published benchmark (``dataset, method, metric, value``; ``#`` lines are comments)."""
    table = pd.read_csv(path, comment="#")
    missing = {"dataset", "method", "metric", "value"} - set(table.columns)
    if missing:
        raise DataError(
            f"{path} lacks the columns {sorted(missing)}; expected dataset, method, metric, value"
        )
    return table


def _published(reference: pd.DataFrame, method: str) -> pd.DataFrame:
    """``dataset x {auc, acc}`` of ``method``."""
    rows = reference[reference["method"] == method]
    if rows.empty:
        methods = sorted(reference["method"].unique())
        raise ValueError(f"method {method!r} is not in the reference; it has {methods}")
    wide = rows.pivot_table(index="dataset", columns="metric", values="value", aggfunc="first")
    return wide.reindex(columns=["auc", "acc"])


def versus(values: pd.Series, published: float) -> str:
    """``yes`` when the mean (as shown, 3 decimals) reaches ``published``; ``no (within 1 std)``; ``no``."""
    if pd.isna(published) or values.empty or values.isna().any():
        return ""
    mean, std = round(values.mean(), 3), values.std()
    if mean >= published:
        return "yes"
    return "no (within 1 std)" if not pd.isna(std) and mean + std >= published else "no"


# ---------------------------------------------------------------------------------------------- tables
def _values(group: pd.DataFrame, split: str, metric: str) -> pd.Series:
    rows = group[(group["split"] == split) & (group["metric"] == metric)]
    return rows["value"].astype(float)


def _first_seen(values: pd.Series) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values.dropna()))


def _arms(results: pd.DataFrame):
    """``((dataset, folder, arm), rows)`` per arm, in order of first appearance (folder ``""`` without one)."""
    keys = [ARM_KEYS[0], FOLDER, ARM_KEYS[1]] if FOLDER in results else ARM_KEYS
    for key, group in results.groupby(keys, sort=False, dropna=False):
        yield (key if FOLDER in results else (key[0], "", key[1])), group


def _with_folders(table: pd.DataFrame) -> pd.DataFrame:
    """The ``folder`` column only when the arms come from more than one folder."""
    return table if table[FOLDER].nunique() > 1 else table.drop(columns=FOLDER)


def accuracy_table(
    results: pd.DataFrame, reference: pd.DataFrame | None = None, method: str | None = None
) -> pd.DataFrame:
    """One row per (dataset, arm): backbone, seeds, test AUC / ACC and val AUC (mean ± std over seeds).

    With ``reference`` (``dataset, method, metric, value``) and ``method``, the published AUC / ACC of that
    method on the dataset follow, and whether our mean reaches them (``yes``, ``no (within 1 std)``, ``no``).
    Arms keep the order in which they first appear.
    """
    if (reference is None) != (method is None):
        raise ValueError("give both reference and method, or neither")
    published = _published(reference, method) if reference is not None else None
    rows = []
    for (dataset, folder, arm), group in _arms(results):
        auc, acc = _values(group, "test", "auc"), _values(group, "test", "acc")
        row = {
            "dataset": dataset,
            FOLDER: folder,
            "arm": arm,
            "backbone": _first_seen(group["backbone"]),
            "seeds": group.loc[group["split"] == "test", "seed"].nunique(),
            "test AUC": mean_std(auc),
            "test ACC": mean_std(acc),
            "val AUC": mean_std(_values(group, "val", "auc")),
        }
        if published is not None:
            name = reference_dataset(dataset)
            ref = published.loc[name] if name in published.index else pd.Series({"auc": None, "acc": None})
            row |= {
                "published AUC": _fmt(ref["auc"]),
                "published ACC": _fmt(ref["acc"]),
                "AUC ≥ published?": versus(auc, ref["auc"]),
                "ACC ≥ published?": versus(acc, ref["acc"]),
            }
        rows.append(row)
    return _with_folders(pd.DataFrame(rows))


def _fmt(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.3f}"


def cost_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: strategy, head, test AUC / ACC, parameters, peak memory, time, images/s, selection.

    Cost cells are means over seeds (peak memory: the largest); ``dataset`` is a column only when the table
    holds more than one dataset.
    """
    rows = []
    for (dataset, folder, arm), group in _arms(results):
        cost = group[group["split"] == "cost"].groupby("metric")["value"]
        mean, peak = cost.mean(), cost.max()
        trainable, total = mean.get("trainable_params", math.nan), mean.get("total_params", math.nan)
        params = "" if math.isnan(total) else f"{human_count(trainable)} / {human_count(total)} "
        rows.append(
            {
                "dataset": dataset,
                FOLDER: folder,
                "arm": arm,
                "strategy": _first_seen(group["strategy"]),
                "head": _first_seen(group["head"]),
                "test AUC": mean_std(_values(group, "test", "auc")),
                "test ACC": mean_std(_values(group, "test", "acc")),
                "trainable / total params": params + (f"({percent(trainable, total)})" if params else ""),
                "peak memory¹": human_bytes(peak.get("peak_memory_bytes", math.nan)),
                "train time / run": minutes_seconds(mean.get("train_seconds", math.nan)),
                "train images/s": number(mean.get("train_images_per_second", math.nan), decimals=0),
                "epochs": number(mean.get("epochs", math.nan)),
                "selected": selected_cell(group),
            }
        )
    table = _with_folders(pd.DataFrame(rows))
    return table.drop(columns="dataset") if table["dataset"].nunique() <= 1 else table


def selected_cell(group: pd.DataFrame) -> str:
    if "selected" not in group:
        return ""
    per_run = group[group["split"] == "test"].drop_duplicates(subset=["seed", "fold"]).sort_values("seed")
    return selected_summary(per_run["selected"])


# ------------------------------------------------------------------------------------------------- main
def load_runs(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The results of every ``RUN_DIR/results.csv`` with its ``folder``; a row repeated within a folder (by a
    resumed run) counts once (the last)."""
    frames = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.csv"
        if not path.is_file():
            raise DataError(f"{path} does not exist: RUN_DIR must be the --out folder of `medadapt finetune`")
        frames.append(read_results(path).assign(**{FOLDER: str(run_dir).rstrip("/")}))
    table = pd.concat(frames, ignore_index=True)
    repeated = table.duplicated(subset=[FOLDER, *ID_KEYS], keep="last")
    if repeated.any():
        print(
            f"note: {int(repeated.sum())} repeated result rows (resumed runs?); keeping the last",
            file=sys.stderr,
        )
    return table[~repeated]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="--out folders of medadapt finetune")
    parser.add_argument("--mode", choices=("accuracy", "cost"), default="accuracy")
    parser.add_argument("--reference", help="published benchmark CSV (dataset, method, metric, value)")
    parser.add_argument("--method", help='the reference method to compare with, e.g. "ResNet-18 (28)"')
    args = parser.parse_args(argv)
    if (args.reference is None) != (args.method is None):
        parser.error("--reference and --method go together")
    try:
        results = load_runs(args.run_dirs)
        if args.mode == "cost":
            print(cost_table(results).to_markdown(index=False, disable_numparse=True))
            print(f"\n{COST_FOOTNOTE}")
            return 0
        reference = read_reference(args.reference) if args.reference else None
        print(accuracy_table(results, reference, args.method).to_markdown(index=False, disable_numparse=True))
    except (DataError, ValueError, OSError) as e:
        parser.error(str(e))
    if args.method:
        print(f"\nPublished: {args.method}, {Path(args.reference).name} (test split).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
