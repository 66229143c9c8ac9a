"""A benchmark grid killed with SIGKILL at random moments, again and again, ends with the results of an
uninterrupted run; two worker processes writing at once lose nothing.

``test_benchmark.py`` fakes a kill by deleting a finished cell's files. Here the real ``medadapt benchmark``
command runs in a process group of its own (the driver and its two spawned workers). The whole group is
killed with ``SIGKILL`` (no clean-up runs) at moments drawn over the length of an uninterrupted run: while
the driver starts, while a worker extracts features, between (or during) the epochs of a fine-tuning cell,
while the driver ingests a folder or writes ``results.csv``. The same command then reruns, until one
invocation ends by itself. The running and killing is ``scripts/grid_kill_check.py``'s, which does the same
on real data.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
from script_loader import load_script
from test_benchmark import TINIER, TINY, grid_dict, write_csv_dataset, write_grid

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and process groups")

MIN_KILLS = 10


@pytest.fixture(scope="module")
def check():
    return load_script("grid_kill_check")


def _assert_same_results(check, ref: Path, out: Path, n_cells: int) -> None:
    """``out`` ends as ``ref``: val / test rows bitwise, cost rows once per cell, the store all done."""
    ref_scores, _ = check.split_table(ref)
    scores, cost = check.split_table(out)
    pd.testing.assert_frame_equal(scores, ref_scores, check_exact=True)  # every score and id, in grid order
    result = check.compare(ref, out)
    assert result.cells == n_cells and not result.missing and not result.duplicated, result
    assert result.identical and result.cost_ok and result.store_ok, result.problems
    assert {"wall_seconds", "peak_memory_bytes"} <= set(cost["metric"])
    with sqlite3.connect(out / "benchmark.sqlite") as con:
        assert con.execute("SELECT status, count(*) FROM cells GROUP BY status").fetchall() == [
            ("done", n_cells)
        ]


@pytest.mark.timeout(900)  # about 6 runs of the grid's length; on a loaded 2-core machine a few minutes
def test_a_grid_killed_at_random_moments_ends_with_the_uninterrupted_results(tmp_path, check):
    csv = write_csv_dataset(tmp_path / "data", n=480)  # fine-tuning epochs long enough to be cut between
    finetune = {
        "name": "full",
        "finetune": "full",
        "train": {"epochs": 4, "batch_size": 16, "checkpoint_every": 1},
    }
    tiny = [{"address": TINY, "name": "tiny"}]
    grid = write_grid(
        tmp_path / "grid.yaml", grid_dict(csv, methods=["linear", "knn", finetune], backbones=tiny)
    )
    n_cells = 3 * 2 * 2  # methods x seeds x folds

    def cmd_for(out: Path) -> list[str]:
        return check.benchmark_command(grid, out, workers=2)

    ref = tmp_path / "ref"
    t0 = time.monotonic()
    assert check.run_grid(cmd_for(ref), check.benchmark_env(ref)) == 0
    length = time.monotonic() - t0

    # past MIN_KILLS only while no kill has left the grid partly done (a loaded machine's start-up is long)
    rounds = check.kill_rounds(cmd_for, check.benchmark_env, tmp_path, length=length, kills=MIN_KILLS,
                               cells=n_cells, seed=0, min_partly=1, max_kills=3 * MIN_KILLS)  # fmt: skip
    print(f"reference {length:.1f} s; {sum(r.kills for r in rounds)} kills in {len(rounds)} round(s); "
          f"{sum(r.partly for r in rounds)} left the grid partly done, {sum(r.cut for r in rounds)} a fine-tuning "
          "cell cut")  # fmt: skip
    assert sum(r.kills for r in rounds) >= MIN_KILLS
    assert sum(r.partly for r in rounds), "no kill landed while the grid was partly done: the test is vacuous"
    for r in rounds:
        _assert_same_results(check, ref, r.folder, n_cells)


def test_two_workers_writing_at_once_lose_nothing(tmp_path, check):
    csv = write_csv_dataset(tmp_path / "data", n=32)
    backbones = [{"address": TINY, "name": "tiny"}, {"address": TINIER, "name": "tinier"}]
    settings = {"pretrained": False, "img_size": 28, "ks": [1, 3]}
    g = grid_dict(csv, methods=["knn"], backbones=backbones, seeds=[0, 1, 2, 3, 4], settings=settings)
    grid = write_grid(tmp_path / "grid.yaml", g)
    n_cells = 2 * 5 * 2  # backbones x seeds x folds
    serial, pool = tmp_path / "serial", tmp_path / "pool"
    for out, workers in ((serial, 0), (pool, 2)):
        cmd = check.benchmark_command(grid, out, workers=workers)
        assert check.run_grid(cmd, check.benchmark_env(out)) == 0
    _assert_same_results(check, serial, pool, n_cells)
    table = pd.read_csv(pool / "results.csv")
    assert len(table.groupby(check.CELL)) == n_cells
    pids = {json.loads(p.read_text())["pid"] for p in (pool / "cells").rglob("done.json")}
    assert len(pids) == 2, "the cells did not run in two worker processes"
