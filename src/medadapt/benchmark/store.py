"""The results store of a grid: ``DIR/benchmark.sqlite`` (stdlib ``sqlite3``), written by the driver alone.

Tables: ``cells`` (key, folder, names, settings hash and settings, status, attempts, host, start / end,
seconds, error) and ``results`` (the tidy rows of every finished cell, extra id columns in ``extra`` as
JSON). Workers never open it: each writes its cell folder (``results.csv``, then ``done.json`` last, or
``error.json``), and the driver ingests finished folders (:func:`ingest`), so the database never lives on a
network file system's locks. ``DIR/results.csv`` is the tidy table of every finished cell, in grid order.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_write
from ..errors import ConfigError
from ..reporting.results import RESULT_COLUMNS, RUN_DIR, read_results
from .grid import CellSpec

__all__ = ["Store", "CELLS", "DONE_FILE", "ERROR_FILE", "STORE_FILE", "STATUSES"]

STORE_FILE = "benchmark.sqlite"
#: The folder under a grid's ``DIR`` that holds one folder per cell.
CELLS = "cells"
DONE_FILE, ERROR_FILE, CELL_RESULTS = "done.json", "error.json", "results.csv"
STATUSES = ("pending", "running", "done", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, position INTEGER, folder TEXT NOT NULL, dataset TEXT, backbone TEXT, method TEXT,
    seed INTEGER, fold INTEGER, settings_hash TEXT NOT NULL, settings TEXT, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, host TEXT, started TEXT, ended TEXT, seconds REAL, error TEXT
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT NOT NULL, row INTEGER NOT NULL, run TEXT, dataset TEXT, backbone TEXT, strategy TEXT, head TEXT,
    seed INTEGER, fold INTEGER, split TEXT, metric TEXT, value REAL, extra TEXT, PRIMARY KEY (key, row)
);
"""


class Store:
    """The grid's SQLite store (one connection per call: the driver is its only writer)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / STORE_FILE
        self._schema_done = False

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.out.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        try:
            if not self._schema_done:  # once per Store: every cell opens a connection or two
                con.executescript(_SCHEMA)
                self._schema_done = True
            with con:  # one transaction: committed on success, rolled back on error
                yield con
        finally:
            con.close()

    def exists(self) -> bool:
        return self.path.is_file()

    # ---------------------------------------------------------------------------------------- cells
    def check_settings(self, cells: Sequence[CellSpec]) -> None:
        """Refuse cells whose key exists with other settings: their results would be pooled under one name."""
        if not self.exists():
            return
        with self._db() as con:
            old = dict(con.execute("SELECT key, settings FROM cells").fetchall())
        changed = [c for c in cells if c.key in old and json.loads(old[c.key] or "{}") != c.hashed_settings()]
        if changed:
            first = changed[0]
            before, now = json.loads(old[first.key] or "{}"), first.hashed_settings()
            diff = "; ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} now"
                             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k))  # fmt: skip
            raise ConfigError(
                f"{len(changed)} cell(s) of this grid ran before with other settings, e.g. {first.key} ({diff}); "
                "the results would be pooled under one name: rename the method (or backbone / dataset) in the grid "
                "file, or use another --out"
            )

    def register(self, cells: Sequence[CellSpec]) -> None:
        """Add new cells as ``pending`` (known ones keep their status), in grid order."""
        with self._db() as con:
            for i, c in enumerate(cells):
                con.execute(
                    "INSERT INTO cells (key, position, folder, dataset, backbone, method, seed, fold, settings_hash,"
                    " settings, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT(key) DO UPDATE"
                    " SET position = excluded.position",
                    (c.key, i, c.folder, c.dataset, c.backbone, c.method, c.seed, c.fold, c.settings_hash,
                     json.dumps(c.hashed_settings(), sort_keys=True)),
                )  # fmt: skip

    def statuses(self) -> dict[str, dict[str, Any]]:
        if not self.exists():
            return {}
        with self._db() as con:
            con.row_factory = sqlite3.Row
            return {r["key"]: dict(r) for r in con.execute("SELECT * FROM cells ORDER BY position")}

    def mark(self, key: str, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as con:
            con.execute(f"UPDATE cells SET status = ?{', ' + sets if sets else ''} WHERE key = ?",
                        (status, *fields.values(), key))  # fmt: skip

    def started(self, key: str, host: str, when: str) -> None:
        with self._db() as con:
            con.execute("UPDATE cells SET status = 'running', attempts = attempts + 1, host = ?, started = ?, "
                        "ended = NULL, error = NULL WHERE key = ?", (host, when, key))  # fmt: skip

    def reset_running(self) -> int:
        """Cells left ``running`` by a killed driver are pending again (their folders resume them)."""
        with self._db() as con:
            return con.execute("UPDATE cells SET status = 'pending' WHERE status = 'running'").rowcount

    # ---------------------------------------------------------------------------------------- ingest
    def ingest(self, cell: CellSpec) -> str | None:
        """Record a finished cell folder (``done.json`` or ``error.json``); its status, or ``None`` if unfinished."""
        folder = self.out / CELLS / cell.folder
        done, error = folder / DONE_FILE, folder / ERROR_FILE
        if done.is_file():
            info = json.loads(done.read_text())
            rows = read_results(folder / CELL_RESULTS)
            with self._db() as con:
                con.execute("DELETE FROM results WHERE key = ?", (cell.key,))
                con.executemany(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(cell.key, i, *_row(r)) for i, r in enumerate(rows.to_dict("records"))],
                )
                con.execute("UPDATE cells SET status = 'done', host = ?, started = ?, ended = ?, seconds = ?, "
                            "error = NULL WHERE key = ?",
                            (info.get("host"), info.get("started"), info.get("ended"), info.get("seconds"),
                             cell.key))  # fmt: skip
            return "done"
        if error.is_file():
            info = json.loads(error.read_text())
            self.mark(
                cell.key, "failed", error=info.get("error"), host=info.get("host"), ended=info.get("ended")
            )
            return "failed"
        return None

    def results(self, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """The tidy results of finished cells (extra id columns expanded), in grid order."""
        if not self.exists():
            return pd.DataFrame(columns=list(RESULT_COLUMNS))
        with self._db() as con:
            rows = con.execute(
                "SELECT c.folder, r.* FROM results r JOIN cells c ON c.key = r.key WHERE c.status = 'done' "
                "ORDER BY c.position, r.row"
            ).fetchall()
        records = []
        for folder, key, _, *values in rows:
            if keys is not None and key not in keys:
                continue
            record = dict(zip(RESULT_COLUMNS, values[:-1]))
            record.update(json.loads(values[-1] or "{}"))
            record[RUN_DIR] = f"{CELLS}/{folder}"
            records.append(record)
        table = pd.DataFrame(records)
        if table.empty:
            return pd.DataFrame(columns=list(RESULT_COLUMNS))
        extras = [c for c in table.columns if c not in RESULT_COLUMNS]
        return table.reindex(columns=[*RESULT_COLUMNS, *extras])

    def write_csv(self, keys: Sequence[str] | None = None) -> Path:
        """``DIR/results.csv``: today's tidy format, every finished cell of the grid (``keys``), in grid order."""
        buffer = io.StringIO()
        self.results(keys).to_csv(buffer, index=False)
        return atomic_write(self.out / CELL_RESULTS, buffer.getvalue())


def _row(record: dict[str, Any]) -> tuple:
    values = [None if _missing(record.get(c)) else record.get(c) for c in RESULT_COLUMNS]
    extra = {k: (None if _missing(v) else v) for k, v in record.items() if k not in RESULT_COLUMNS}
    for i in (5, 6):  # seed, fold: integers (CSV reads them back as floats where a column has blanks)
        values[i] = None if values[i] is None else int(values[i])
    return (*values, json.dumps(extra, sort_keys=True, default=str))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)
