"""Kill a benchmark grid with SIGKILL at random moments, rerun it each time, and check that it ends with the
results of an uninterrupted run.

The grid runs once uninterrupted into ``OUT/ref``, timed. Then it runs into ``OUT/killed``. Each invocation
of ``medadapt benchmark`` is killed at a moment drawn uniformly from [0.5 s, 0.9 x the reference's time]
after its start. The kill is ``SIGKILL`` to its process group: the driver and its workers, with no clean-up.
The same command then runs again. After ``--kills`` kills it runs to the end. A grid that ends by itself
before then is one round: the next round starts afresh in ``OUT/killed2``, until the kills are made.

Each round's ``results.csv`` is compared with the reference's:
- val / test rows: every column, bitwise, in the same order;
- cost rows (wall time, peak memory, extraction time differ by nature): each metric once per cell, the same
  metrics as the reference;
- the store (``benchmark.sqlite``): every cell ``done``, with the rows of ``results.csv``.

Everything runs on the CPU, GPUs hidden, with ``OMP_NUM_THREADS=1`` in every process, so that float sums are
bitwise alike. Each output folder has its own feature cache (``OUT/NAME-cache``), so the killed grid extracts
its features itself (and is killed while it extracts). It prints one row per round and exits 1 if any
round differs:

    python scripts/grid_kill_check.py --grid configs/grid_kill_breast.yaml \\
        --data-root ../shared/data/medmnist --out runs/grid_kill_breast --kills 10 --seed 0

``tests/test_benchmark_kill.py`` runs the same functions on a tiny synthetic grid.
"""

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: The columns that name a cell in the tidy table.
CELL = ["dataset", "backbone", "run", "seed", "fold"]
SCORE_SPLITS = ("val", "test")


def benchmark_command(grid: Path, out: Path, *, workers: int = 2, data_root: str | None = None) -> list[str]:
    """``medadapt benchmark GRID --out OUT --workers N`` as a fresh Python process, on the CPU."""
    cmd = [sys.executable, "-m", "medadapt.cli", "benchmark", str(grid), "--out", str(out), "--workers", str(workers),
           "--device", "cpu"]  # fmt: skip
    return cmd + (["--data-root", str(data_root)] if data_root else [])


def benchmark_env(out: Path) -> dict[str, str]:
    """One thread per process (as the reference's), no GPU, and the output folder's own feature cache."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "MEDADAPT_CACHE": str(out.parent / f"{out.name}-cache")}  # fmt: skip


def run_grid(cmd: list[str], env: dict[str, str], *, kill_after: float | None = None, timeout: float = 3600) -> int | None:  # fmt: skip
    """Run ``cmd`` in a session (process group) of its own. With ``kill_after`` (seconds), SIGKILL the whole
    group then, unless it ended first. Returns the exit code, or ``None`` when it was killed. An uninterrupted
    run past ``timeout`` is killed and raises ``TimeoutError``; one that fails raises ``RuntimeError`` with
    its stderr."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout if kill_after is None else kill_after)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        if kill_after is None:
            raise TimeoutError(f"{' '.join(cmd)} ran past {timeout} s") from None
        return None
    if proc.returncode != 0:
        tail = "\n".join(err.replace("\r", "\n").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc.returncode


def kill_group(proc: subprocess.Popen, wait: float = 10.0) -> None:
    """SIGKILL the process group that ``proc`` leads (the driver and its workers), and wait until none of
    it runs: a process inside a system call dies when the call returns."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + wait
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (Linux: zombies awaiting their reaper do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def cell_count(out: Path) -> int:
    with sqlite3.connect(out / "benchmark.sqlite") as con:
        return con.execute("SELECT count(*) FROM cells").fetchone()[0]


def folder_state(out: Path) -> tuple[int, int]:
    """Cells with ``done.json``, and fine-tuning cells cut short (a checkpoint, no ``done.json`` yet)."""
    cells = out / "cells"
    if not cells.is_dir():
        return 0, 0
    done = sum(1 for _ in cells.rglob("done.json"))
    cut = sum(not (c.parent / "done.json").exists() for c in cells.rglob("checkpoint.pt"))
    return done, cut


@dataclass
class Round:
    """One output folder, killed until its grid has run to the end."""

    folder: Path
    runs: int = 0
    kills: int = 0
    partly: int = 0  # kills that left some of the cells done, not all
    cut: int = 0  # kills that left a fine-tuning cell between (or in) its epochs
    delays: list[float] = field(default_factory=list)

    @property
    def reruns(self) -> int:
        return self.runs - 1


def kill_rounds(cmd_for: Callable[[Path], list[str]], env_for: Callable[[Path], dict[str, str]], root: Path, *,
                length: float, kills: int, cells: int, seed: int = 0, min_delay: float = 0.5,
                fraction: float = 0.9, min_partly: int = 0, max_kills: int | None = None,
                log: Callable[[str], None] = print) -> list[Round]:  # fmt: skip
    """Kill the grid ``kills`` times in all, at moments uniform in [``min_delay``, ``fraction`` x ``length``]
    after each start (a seeded draw), rerunning it after each kill, and run it to the end after the last.
    Rounds go to ``root/killed``, ``root/killed2``, ...: a new one only when a grid ends before the kills
    are made. With ``min_partly``, the kills go on (up to ``max_kills``) until that many of them have left
    the grid partly done: a kill during the start-up of a process, before any cell ends, tests less."""
    rng = random.Random(seed)
    high = max(min_delay, fraction * length)
    max_kills = max(kills, max_kills or kills)
    rounds: list[Round] = []
    made = 0

    def more() -> bool:
        return made < kills or (sum(r.partly for r in rounds) < min_partly and made < max_kills)

    while not rounds or more():
        r = Round(root / ("killed" if not rounds else f"killed{len(rounds) + 1}"))
        rounds.append(r)
        while True:
            r.runs += 1
            delay = rng.uniform(min_delay, high) if more() else None
            t0 = time.monotonic()
            code = run_grid(cmd_for(r.folder), env_for(r.folder), kill_after=delay)
            done, cut = folder_state(r.folder)
            if code is not None:
                log(f"{r.folder.name} run {r.runs}: ended by itself after {time.monotonic() - t0:.1f} s; "
                    f"{done}/{cells} cells done")  # fmt: skip
                break
            made += 1
            r.kills += 1
            r.delays.append(delay)
            r.partly += 0 < done < cells
            r.cut += cut > 0
            log(f"{r.folder.name} run {r.runs}: killed at {delay:.1f} s; {done}/{cells} cells done, "
                f"{cut} fine-tuning cell(s) cut")  # fmt: skip
    return rounds


@dataclass
class Comparison:
    cells: int  # cells in the compared results
    identical: bool  # val / test rows equal the reference's bitwise, in order
    missing: list[tuple]  # cells of the reference without rows
    duplicated: list[tuple]  # cells with a score or cost metric twice (or extra cells)
    cost_ok: bool  # each cell has the reference's cost metrics, each once
    store_ok: bool  # every cell done in benchmark.sqlite, with the rows of results.csv
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.identical and not self.missing and not self.duplicated and self.cost_ok and self.store_ok


def split_table(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``OUT/results.csv`` as its score rows (val / test) and its cost rows."""
    table = pd.read_csv(out / "results.csv")
    scores = table[table["split"].isin(SCORE_SPLITS)].reset_index(drop=True)
    cost = table[table["split"] == "cost"].reset_index(drop=True)
    other = set(table["split"]) - {*SCORE_SPLITS, "cost"}
    if other:
        raise ValueError(f"{out / 'results.csv'}: unexpected splits {sorted(other)}")
    return scores, cost


def _cell_id(values) -> tuple:
    dataset, backbone, run, seed, fold = values
    return (dataset, backbone, run, int(seed), None if fold is None or pd.isna(fold) else int(fold))


def _cells(table: pd.DataFrame) -> dict[tuple, int]:
    return {_cell_id(k): n for k, n in table.groupby(CELL, dropna=False).size().items()}


def compare(ref: Path, out: Path) -> Comparison:
    """``out``'s results against the reference's: see the module doc."""
    ref_scores, ref_cost = split_table(ref)
    scores, cost = split_table(out)
    problems = []
    ref_cells, cells = (
        set(_cells(ref_scores)) | set(_cells(ref_cost)),
        set(_cells(scores)) | set(_cells(cost)),
    )
    missing = sorted(ref_cells - set(_cells(scores)) | ref_cells - set(_cells(cost)), key=str)
    twice = scores[scores.duplicated([*CELL, "split", "metric"], keep=False)]
    twice_cost = cost[cost.duplicated([*CELL, "metric"], keep=False)]
    duplicated = sorted({_cell_id(k) for k in [*twice[CELL].itertuples(index=False),
                                               *twice_cost[CELL].itertuples(index=False)]}
                        | (cells - ref_cells), key=str)  # fmt: skip
    identical = scores.shape == ref_scores.shape and scores.equals(ref_scores)
    if not identical:
        problems.append(_first_difference(ref_scores, scores))
    cost_ok = _cost_metrics(cost) == _cost_metrics(ref_cost)
    if not cost_ok:
        problems.append("the cost rows differ from the reference's in which metrics each cell has")
    store_ok = True
    with sqlite3.connect(out / "benchmark.sqlite") as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM cells GROUP BY status").fetchall())
        stored = con.execute("SELECT c.dataset, c.backbone, c.method, c.seed, c.fold, count(*) FROM results r "
                             "JOIN cells c ON c.key = r.key GROUP BY r.key").fetchall()  # fmt: skip
    if statuses != {"done": len(ref_cells)}:
        store_ok = False
        problems.append(f"the store's cells are {statuses}, not all {len(ref_cells)} done")
    in_store = {_cell_id(row[:5]): row[5] for row in stored}
    in_csv = _cells(pd.concat([scores, cost], ignore_index=True))
    if in_store != in_csv:
        store_ok = False
        problems.append("the store's results rows per cell differ from results.csv's")
    return Comparison(len(cells), identical, missing, duplicated, cost_ok, store_ok, problems)


def _cost_metrics(cost: pd.DataFrame) -> dict[tuple, list[str]]:
    return {_cell_id(k): v for k, v in cost.groupby(CELL, dropna=False)["metric"].apply(sorted).items()}


def _first_difference(ref: pd.DataFrame, new: pd.DataFrame) -> str:
    if list(ref.columns) != list(new.columns):
        return f"val/test columns differ: {list(ref.columns)} vs {list(new.columns)}"
    if len(ref) != len(new):
        return f"{len(new)} val/test rows, the reference has {len(ref)}"
    for i in range(len(ref)):
        a, b = ref.iloc[i], new.iloc[i]
        for c in ref.columns:
            if not (a[c] == b[c] or (pd.isna(a[c]) and pd.isna(b[c]))):
                return f"row {i} ({', '.join(str(a[k]) for k in CELL)}, {a['split']} {a['metric']}): {c} {a[c]!r} vs {b[c]!r}"  # fmt: skip
    return "val/test rows differ (dtypes)"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def table(rounds: list[Round], comparisons: list[Comparison]) -> str:
    lines = ["| round | kills | reruns | cells | identical val/test rows | missing cells | duplicated cells | "
             "cost rows once per cell | store all done |", "|---|---:|---:|---:|---|---:|---:|---|---|"]  # fmt: skip
    for r, c in zip(rounds, comparisons):
        lines.append(f"| {r.folder.name} | {r.kills} | {r.reruns} | {c.cells} | {_yes(c.identical)} | "
                     f"{len(c.missing)} | {len(c.duplicated)} | {_yes(c.cost_ok)} | {_yes(c.store_ok)} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, type=Path, help="the grid file")
    parser.add_argument("--data-root", help="folder of the dataset files (passed to medadapt benchmark)")
    parser.add_argument(
        "--out", required=True, type=Path, help="a new folder: ref/, killed/ and their caches"
    )
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs in all (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--min-partly", type=int, default=1,
                        help="go on killing (up to 3 x --kills) until this many kills have left the grid partly "
                        "done (default 1)")  # fmt: skip
    args = parser.parse_args(argv)
    if os.name != "posix":
        parser.error("needs POSIX process groups and SIGKILL")
    ref = args.out / "ref"
    if ref.exists() or (args.out / "killed").exists():
        parser.error(f"{args.out} holds an earlier check (ref/ or killed/); give a new --out")

    def cmd_for(out: Path) -> list[str]:
        return benchmark_command(args.grid, out, workers=args.workers, data_root=args.data_root)

    t0 = time.monotonic()
    try:
        run_grid(cmd_for(ref), benchmark_env(ref))
        length = time.monotonic() - t0
        cells = cell_count(ref)
        print(
            f"reference: {cells} cells in {length:.1f} s; kill moments uniform in [0.5, {0.9 * length:.1f}] s"
        )
        rounds = kill_rounds(cmd_for, benchmark_env, args.out, length=length, kills=args.kills, cells=cells,
                             seed=args.seed, min_partly=args.min_partly, max_kills=3 * args.kills)  # fmt: skip
    except (RuntimeError, TimeoutError) as e:  # a run that failed or hung: a finding in itself
        print(f"problem: {e}", file=sys.stderr)
        return 1
    comparisons = [compare(ref, r.folder) for r in rounds]
    print()
    print(table(rounds, comparisons))
    partly, cut = sum(r.partly for r in rounds), sum(r.cut for r in rounds)
    print(f"\n{sum(r.kills for r in rounds)} kills: {partly} left the grid partly done, {cut} left a fine-tuning "
          f"cell cut between epochs; reference {length:.1f} s, all {time.monotonic() - t0:.0f} s")  # fmt: skip
    for c in comparisons:
        for p in c.problems:
            print(f"problem: {p}", file=sys.stderr)
    return 0 if all(c.ok for c in comparisons) else 1


if __name__ == "__main__":
    sys.exit(main())
