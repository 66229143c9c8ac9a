"""MedMNIST v2 protocol accuracy: the official baseline's loop vs ``medadapt finetune --preset medmnist_v2``.

Where medadapt's ResNet-18 (28) falls short of a published MedMNIST v2 number, is it medadapt or the protocol?
This runs the faithful re-implementation of the official loop from ``medmnist_v2_speed.py`` (PIL dataset,
``Normalize(.5, .5)``, the MedMNIST CIFAR-style ResNet-18 with PyTorch's default initialisation, Adam 1e-3,
batch 128, x0.1 at 50% / 75%, the first epoch of the highest val AUC) for the full protocol, one seed after
the other, and prints its test AUC / ACC (mean ± std over seeds) beside medadapt's run of the same preset
(``--medadapt RUN_DIR``, a ``medadapt finetune --preset medmnist_v2`` output folder) and the published number.

Its results go to ``--out``/results.csv, one seed at a time: run seeds in parallel processes into one
``--out`` and re-run to finish; finished seeds are skipped. The per-epoch evaluation of the train split is
skipped (it is only logged, and changes nothing), and test is scored at every new best val AUC as the
official loop does. The official loop also scores test after the last epoch, whose weights its script
returned until May 2023 (MedMNIST/experiments#8): those rows are the arm ``official-reference-last``, a
diagnostic beside the protocol's rule (the comparison with medadapt uses the best-val rows only).

    MEDADAPT_DATA=/path/to/medmnist python bench/medmnist_v2_accuracy.py --dataset breastmnist \\
        --seeds 0 1 2 --out runs/official_breast --medadapt runs/accept_breast
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from _common import add_data_args, apply_threads, machine, markdown_table, report
from medmnist_v2_speed import PROTOCOL_EPOCHS, official_run, preset_config
from scipy import stats

from medadapt._device import resolve_device
from medadapt.api import load_splits
from medadapt.reporting import environment_info, read_results, results_rows, write_environment, write_results

# the README's accuracy table (mean ± std, the published number beside it) comes from scripts/finetune_table.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import finetune_table as ft  # noqa: E402

RUN = "official-reference"
RUN_LAST = f"{RUN}-last"  # the last epoch's weights (see the module docstring)
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "medmnist_v2_benchmark.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser, synthetic=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(default: %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=PROTOCOL_EPOCHS, help="the protocol's (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="the protocol's (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default")
    parser.add_argument("--out", required=True, help="folder of the reference runs' results.csv")
    parser.add_argument(
        "--medadapt", default=None, help="a `medadapt finetune --preset medmnist_v2` output folder to compare"
    )
    parser.add_argument(
        "--reference", default=str(REFERENCE), help="published benchmark CSV (default: %(default)s)"
    )
    parser.add_argument(
        "--method", default="ResNet-18 (28)", help="row of --reference (default: %(default)s)"
    )
    parser.add_argument("--table", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def run_seed(args: argparse.Namespace, seed: int, device: torch.device, task: str) -> list[dict]:
    start = time.perf_counter()
    run = official_run(argparse.Namespace(**{**vars(args), "seed": seed}), device, task, eval_train=False)
    ids = dict(dataset=f"medmnist:{args.dataset}", backbone="official CIFAR ResNet-18", seed=seed)
    rows = []
    for name, weights in ((RUN, run["best"]), (RUN_LAST, run["last"])):
        for split in ("val", "test"):
            loss, auc, acc = weights[split]
            rows += results_rows(metrics={"auc": auc, "acc": acc, "loss": loss}, split=split, run=name,
                                 selected=f"epoch={weights['epoch']}", **ids)  # fmt: skip
    seconds = {"wall_seconds": time.perf_counter() - start}
    rows += results_rows(
        metrics=seconds, split="train", run=RUN, selected=f"epoch={run['best']['epoch']}", **ids
    )
    return rows


def _test_values(table: pd.DataFrame, metric: str) -> list[float]:
    test = table[(table["split"] == "test") & (table["metric"] == metric)]
    return test.sort_values("seed")["value"].astype(float).tolist()


def compare(ours: pd.DataFrame, official: pd.DataFrame) -> str:
    """Test AUC / ACC of medadapt minus the official loop: difference of means, Welch's t-test and its 95% CI.

    The seeds of the two loops are independent runs (a seed does not give the same initialisation or
    batch order in both), hence the unpaired test with unequal variances.
    """
    parts = []
    for metric in ("auc", "acc"):
        a, b = _test_values(ours, metric), _test_values(official, metric)
        part = f"test {metric.upper()} {sum(a) / len(a) - sum(b) / len(b):+.3f}"
        if min(len(a), len(b)) >= 2:
            welch = stats.ttest_ind(a, b, equal_var=False)
            low, high = welch.confidence_interval(0.95)
            part += f" [{low:+.3f}, {high:+.3f}], Welch p = {welch.pvalue:.2f}"
        parts.append(part)
    seeds = f"{len(a)} vs {len(b)} seeds"
    return f"medadapt - official reference ({seeds}; mean difference, 95% CI): " + "; ".join(parts) + "."


def where(folder: Path) -> str:
    """Where the runs in ``folder`` were made, from its env.json (written by medadapt and by this bench)."""
    env = folder / "env.json"
    if not env.is_file():
        return "not recorded (no env.json)"
    info = json.loads(env.read_text())
    text = _environment(info)
    earlier = [_environment(e) for e in info.get("earlier", [])]
    return text + (f"; earlier invocations: {'; '.join(earlier)}" if earlier else "")


def _environment(info: dict) -> str:
    hardware = info.get("gpu") if str(info.get("device", "")).startswith("cuda") else info.get("cpu")
    torch_version = (info.get("packages") or {}).get("torch")
    dirty = " (dirty)" if info.get("git_dirty") else ""
    return (
        f"{info.get('device')} ({hardware}), torch {torch_version}, git {str(info.get('git_sha'))[:7]}{dirty}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_root:
        raise SystemExit(
            "pass --data-root (or set MEDADAPT_DATA) to the folder holding the MedMNIST .npz files"
        )
    apply_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    results = out / "results.csv"
    cfg = preset_config(argparse.Namespace(**{**vars(args), "seed": args.seeds[0]}), str(out))
    task = load_splits(cfg)["train"].task
    done = set()
    if results.exists():
        table = read_results(results)
        done = set(table.loc[table["dataset"] == f"medmnist:{args.dataset}", "seed"].astype(int))
    todo = [seed for seed in args.seeds if seed not in done]
    if len(todo) < len(args.seeds):
        print(f"seeds {sorted(done & set(args.seeds))}: already in {results}, skipped", file=sys.stderr)
    if todo:
        write_environment(environment_info(seed=todo, device=str(device)), out)
    for seed in todo:
        print(
            f"official reference loop: {args.dataset}, seed {seed}, {args.epochs} epochs ...", file=sys.stderr
        )
        write_results(run_seed(args, seed, device, task), results, replace=("run", "dataset", "seed"))

    dataset = f"medmnist:{args.dataset}"
    runs = {"official": read_results(results)}
    if args.medadapt:
        runs["medadapt"] = read_results(Path(args.medadapt) / "results.csv")
    runs = {name: t[t["dataset"] == dataset] for name, t in runs.items()}
    both = pd.concat(runs.values(), ignore_index=True)
    reference = ft.read_reference(args.reference) if Path(args.reference).is_file() else None
    table = ft.accuracy_table(both, reference, args.method if reference is not None else None)
    table["selected"] = [ft.selected_cell(g) for _, g in both.groupby(ft.ARM_KEYS, sort=False)]
    notes = [
        f"{dataset} 28 px, {args.epochs} epochs, batch {args.batch_size}. Mean ± sample std over seeds; the "
        "published number is one run.",
        f"Official loop runs: {where(out)}.",
    ]
    if todo:
        notes.append(f"This invocation ran seeds {todo} on {machine()}.")
    verdict = "no --medadapt run to compare"
    if "medadapt" in runs:
        notes.append(f"medadapt runs: {where(Path(args.medadapt))}.")
        official = runs["official"]
        verdict = compare(runs["medadapt"], official[official["run"] == RUN])
    report("MedMNIST v2 protocol accuracy: official loop vs medadapt", markdown_table(table.to_dict("records")),
           verdict, args.table, notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
