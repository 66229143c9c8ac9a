"""``medadapt benchmark``: run a grid, resumably, and report where it stands.

The driver validates the whole grid, refuses cells whose settings changed since they ran, ingests cell
folders finished by an earlier (killed) invocation, hands the remaining cells to the executor, ingests each as
it finishes and ends with ``DIR/results.csv`` and a summary. The same command after a kill continues where
it stopped; ``retry_failed`` reruns the cells that raised.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ConfigError, MedadaptError
from .executors import EXECUTORS
from .grid import CellSpec, Grid, load_grid
from .store import CELLS, DONE_FILE, ERROR_FILE, Store

__all__ = ["run_benchmark", "plan", "Plan", "grid_status", "GridSummary"]

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a grid needs: its cells with their status, and how many backbone passes the unfinished ones cost."""

    grid: Grid
    status: dict[str, str]  # key -> pending / done / failed / running
    extractions: int  # frozen-feature extractions (one per dataset × backbone × preprocessing) still needed
    trainings: int  # fine-tuning cells still to run (each its own backbone passes)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.status.values()))

    def lines(self) -> list[str]:
        width = max(len(c.key) for c in self.grid.cells)
        out = [f"{c.key:<{width}}  {self.status[c.key]}" for c in self.grid.cells]
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        out.append(f"{len(self.grid.cells)} cells ({counts}); to run: {self.extractions} feature extraction(s) "
                   f"shared by the probe cells, {self.trainings} fine-tuning run(s)")  # fmt: skip
        return out


@dataclass
class GridSummary:
    out: Path
    counts: dict[str, int]
    failed: dict[str, str]  # key -> error
    results: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.counts.get("pending", 0) == 0


def _folder_status(out: Path, cell: CellSpec) -> str | None:
    folder = out / CELLS / cell.folder
    if (folder / DONE_FILE).is_file():
        return "done"
    if (folder / ERROR_FILE).is_file():
        return "failed"
    return None


def plan(grid_file: str | Path, out: str | Path, *, overrides: dict[str, Any] | None = None) -> Plan:
    """The grid's cells and what is left to do, read-only (``--dry-run``): nothing is written."""
    grid = load_grid(grid_file, overrides=overrides)
    out = Path(out).expanduser()
    store = Store(out)
    store.check_settings(grid.cells)
    known = store.statuses()
    status = {}
    for cell in grid.cells:
        row = known.get(cell.key, {})
        status[cell.key] = row.get("status") if row.get("status") in ("done",) else (
            _folder_status(out, cell) or row.get("status") or "pending")  # fmt: skip
    todo = [c for c in grid.cells if status[c.key] != "done"]
    passes = {_extraction_key(c) for c in todo if c.driver == "probe"}
    return Plan(grid, status, len(passes), sum(c.driver != "probe" for c in todo))


def _extraction_key(cell: CellSpec) -> tuple:
    """What a probe cell's features depend on (its fold and seed do not: one pass serves them all)."""
    c = cell.config
    return (c["dataset"], c["backbone"], c.get("weights"), c.get("pretrained"), c.get("img_size"), c.get("size"),
            c.get("resize_mode"), c.get("interpolation"), c.get("channel_mode"), c.get("backbone_seed"))  # fmt: skip


def run_benchmark(
    grid_file: str | Path,
    out: str | Path,
    *,
    executor: str | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    overrides: dict[str, Any] | None = None,
    executor_options: dict[str, Any] | None = None,
    show_progress: bool = False,
) -> GridSummary:
    """Run every unfinished cell of the grid into ``out``; see the module doc. Never raises for a failed cell:
    the summary lists them (and the CLI exits non-zero)."""
    grid = load_grid(grid_file, overrides=overrides)
    out = Path(out).expanduser()
    store = Store(out)
    store.check_settings(grid.cells)  # before anything is written
    options = {**grid.executor, **{k: v for k, v in (executor_options or {}).items() if v is not None}}
    kind = executor or options.pop("kind", None) or "local"
    options.pop("kind", None)
    if workers is not None:
        options["workers"] = workers
    run = EXECUTORS.get(kind)
    out.mkdir(parents=True, exist_ok=True)
    _record_grid(grid, out)
    store.register(grid.cells)
    store.reset_running()
    _note_groups(grid, overrides)
    statuses = store.statuses()
    for cell in grid.cells:  # folders finished after the last ingest (a killed driver, a slurm job)
        if statuses[cell.key]["status"] != "done":
            store.ingest(cell)
    statuses = store.statuses()
    todo = [c for c in grid.cells if statuses[c.key]["status"] == "pending"
            or (retry_failed and statuses[c.key]["status"] == "failed")]  # fmt: skip
    keys = _keys(grid)
    failed_before = {k: v["error"] for k, v in statuses.items() if v["status"] == "failed" and k in keys}
    if retry_failed:
        for cell in todo:
            (out / CELLS / cell.folder / ERROR_FILE).unlink(missing_ok=True)
    progress = _Progress(len(grid.cells), sum(v["status"] == "done" for k, v in statuses.items() if k in keys),
                         len([k for k in failed_before if not retry_failed]), show_progress)  # fmt: skip
    by_key = {c.key: c for c in grid.cells}

    def started(key: str, host: str) -> None:
        store.started(key, host, _now())
        progress.start()

    def finished(key: str, status: str | None) -> None:
        result = store.ingest(by_key[key])
        if result is None:  # the worker died before its folder said anything
            store.mark(key, "failed", error=status or "the cell ended without results", ended=_now())
            result = "failed"
        progress.end(result)

    try:
        first = [c for c in todo if not c.depends]
        if first:
            run(first, out, options=options, started=started, finished=finished)
        then = _ready([c for c in todo if c.depends], store, progress)  # distillations, after their teachers
        if then:
            run(then, out, options=options, started=started, finished=finished)
    finally:
        progress.close()
        store.reset_running()
        results = store.write_csv(_keys(grid))
    statuses = store.statuses()
    counts = collections.Counter(statuses[c.key]["status"] for c in grid.cells)
    failed = {
        c.key: statuses[c.key]["error"] or "" for c in grid.cells if statuses[c.key]["status"] == "failed"
    }
    return GridSummary(out, dict(counts), failed, results)


def _ready(cells: list[CellSpec], store: Store, progress: _Progress) -> list[CellSpec]:
    """The dependent cells whose cell to wait for is done; the others fail, saying which cell they needed."""
    statuses = store.statuses()
    ready = []
    for cell in cells:
        if statuses.get(cell.depends, {}).get("status") == "done":
            ready.append(cell)
        else:
            store.mark(
                cell.key, "failed", error=f"its teacher cell {cell.depends} did not finish", ended=_now()
            )
            progress.end("failed")
    return ready


def _keys(grid: Grid) -> set[str]:
    return {c.key for c in grid.cells}


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _record_grid(grid: Grid, out: Path) -> None:
    """``DIR/grid.yaml`` (the file as last run; earlier versions in ``grid.earlier/``) and ``env.json``."""
    from ..reporting.results import environment_info, write_environment

    src = Path(grid.source)
    dest = out / "grid.yaml"
    if src.is_file() and not (dest.is_file() and dest.read_bytes() == src.read_bytes()):
        if dest.is_file():
            earlier = out / "grid.earlier"
            earlier.mkdir(exist_ok=True)
            shutil.copy2(dest, earlier / f"grid.{len(list(earlier.iterdir()))}.yaml")
        shutil.copy2(src, dest)
    write_environment(environment_info(seed=None, device=grid.cells[0].config.get("device", "auto")), out)


def _note_groups(grid: Grid, overrides: dict[str, Any] | None) -> None:
    """Say once per dataset when cross-validation folds have no patient ids to group by."""
    from .. import config as configs
    from ..data.folds import patient_ids, pooled
    from ..data.tables import pooled_splits
    from ..driver import load_splits

    seen = set()
    for cell in grid.cells:
        if cell.dataset in seen or grid.folds[cell.dataset].k is None:
            continue
        seen.add(cell.dataset)
        cfg = configs.ProbeConfig(**{k: v for k, v in cell.config.items()
                                     if k in {f.name for f in dataclasses.fields(configs.RunConfig)}})  # fmt: skip
        try:
            with pooled_splits():
                pool = pooled(load_splits(cfg))
        except Exception as e:  # noqa: BLE001 - the cells will fail with it and record it
            log.warning("dataset %s: %s", cell.dataset, e)
            continue
        if patient_ids(pool) is None:
            log.warning("dataset %s has no patient_id column: in the %d folds every row is its own group "
                        "(patient-level grouping needs one)", cell.dataset, grid.folds[cell.dataset].k)  # fmt: skip


class _Progress:
    """One grid-level bar: done / running / failed / left, with tqdm's ETA."""

    def __init__(self, total: int, done: int, failed: int, show: bool) -> None:
        self.done, self.failed, self.running = done, failed, 0
        self.total = total
        self.bar = tqdm(total=total, initial=done + failed, desc="grid", unit="cell", disable=not show)
        self._post()

    def _post(self) -> None:
        left = self.total - self.done - self.failed - self.running
        self.bar.set_postfix_str(
            f"done {self.done}, running {self.running}, failed {self.failed}, left {left}"
        )

    def start(self) -> None:
        self.running += 1
        self._post()

    def end(self, status: str) -> None:
        self.running = max(0, self.running - 1)
        if status == "done":
            self.done += 1
        else:
            self.failed += 1
        self.bar.update(1)
        self._post()

    def close(self) -> None:
        self.bar.close()


def _current_keys(out: Path) -> set[str] | None:
    """The cells of the grid file as last run (``DIR/grid.yaml``), or ``None`` if it cannot be read."""
    try:
        return _keys(load_grid(out / "grid.yaml"))
    except MedadaptError as e:
        log.info("status of every cell in the store: %s", e)
        return None


def grid_status(out: str | Path) -> tuple[list[str], dict[str, int]]:
    """``medadapt benchmark status DIR``: counts by status and the failed cells, from the store and the
    folders finished since its last ingest (read-only: a running driver owns the store)."""
    out = Path(out).expanduser()
    store = Store(out)
    if not store.exists():
        raise ConfigError(
            f"{out} holds no benchmark ({store.path.name} is missing); run medadapt benchmark GRID.yaml --out {out}"
        )
    rows = store.statuses()
    current = _current_keys(out)
    if current is not None:  # cells an edited grid file no longer has (include / exclude) are not counted
        rows = {k: v for k, v in rows.items() if k in current}
    counts: collections.Counter = collections.Counter()
    lines = []
    for key, row in rows.items():
        status = row["status"]
        if status != "done":
            folder = out / CELLS / row["folder"]
            status = (
                "done"
                if (folder / DONE_FILE).is_file()
                else "failed"
                if (folder / ERROR_FILE).is_file()
                else status
            )
        counts[status] += 1
        if status == "failed":
            lines.append(f"failed  {key}: {(row['error'] or '(see its error.json)').splitlines()[0]}")
        elif status == "running":
            lines.append(f"running {key} (attempt {row['attempts']}, {row['host']}, since {row['started']})")
    seconds = [r["seconds"] for r in rows.values() if r["seconds"] is not None]
    total = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{len(rows)} cells: {total}; {sum(seconds) / 3600:.2f} h of cell time so far")
    return lines, dict(counts)
