"""Where a grid's cells run: ``local`` (persistent worker processes on this machine) or ``slurm`` (submitit).

An executor is called as ``executor(cells, out, *, options, started, finished)`` and returns when every
cell has finished; ``started(key, host)`` and ``finished(key)`` let the driver keep the store and the
progress bar (only the driver writes the store: workers write their cell folders). Adding one is a
function and its ``EXECUTORS.register`` line.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._registry import Registry
from ..errors import ConfigError
from .grid import CellSpec
from .worker import WorkerState, execute_cell

__all__ = ["EXECUTORS", "run_local", "run_slurm", "CellJob", "SLURM_OPTIONS"]

log = logging.getLogger(__name__)

Started = Callable[[str, str], None]
Finished = Callable[[str, str | None], None]
EXECUTORS: Registry[Callable[..., None]] = Registry("executor")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ local
@EXECUTORS.register("local")
def run_local(cells: Sequence[CellSpec], out: Path, *, options: dict[str, Any], started: Started,
              finished: Finished) -> None:  # fmt: skip
    """``workers`` persistent processes (0: in this process), the CPU threads divided between them; on GPUs
    each worker sees one device (``CUDA_VISIBLE_DEVICES``), so one cell runs per device."""
    workers = int(options.get("workers", 1))
    if workers <= 0:
        state = WorkerState()
        for cell in cells:
            started(cell.key, socket.gethostname())
            finished(cell.key, execute_cell(vars(cell), out, state=state))
        return
    gpus = options.get("gpus")
    if all(str(c.config.get("device", "auto")) == "cpu" for c in cells):
        gpus = 0  # cells on the CPU: GPUs the machine has do not bound the workers
    _Pool(out, workers, gpus).run(cells, started, finished)


class _Pool:
    def __init__(self, out: Path, workers: int, gpus: int | None) -> None:
        import torch

        self.out, self.workers = out, workers
        self.gpus = torch.cuda.device_count() if gpus is None else int(gpus)
        if self.gpus and workers > self.gpus:
            raise ConfigError(
                f"--workers {workers} is more than the {self.gpus} GPU(s): one cell runs per device"
            )
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.ctx = mp.get_context("spawn")  # safe with CUDA and threads, unlike fork
        self.tasks, self.results = self.ctx.Queue(), self.ctx.Queue()
        self.procs: dict[int, Any] = {}

    def _start(self, slot: int) -> None:
        env = dict(os.environ)
        if self.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        try:
            p = self.ctx.Process(target=_worker_main, args=(str(self.out), self.tasks, self.results, self.threads, slot),
                                 daemon=True)  # fmt: skip
            p.start()
        finally:
            os.environ.clear()
            os.environ.update(env)
        self.procs[slot] = p

    def run(self, cells: Sequence[CellSpec], started: Started, finished: Finished) -> None:
        for cell in cells:
            self.tasks.put(vars(cell))
        for slot in range(self.workers):
            self._start(slot)
        running: dict[int, str] = {}  # slot -> key
        left = len(cells)
        try:
            while left:
                try:
                    kind, slot, key, value = self.results.get(timeout=1.0)
                except queue.Empty:
                    left -= self._check_alive(running, finished)
                    continue
                if kind == "start":
                    running[slot] = key
                    started(key, value)
                else:
                    running.pop(slot, None)
                    finished(key, value)
                    left -= 1
        finally:
            for _ in self.procs:
                self.tasks.put(None)
            for p in self.procs.values():
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()

    def _check_alive(self, running: dict[int, str], finished: Finished) -> int:
        """A worker killed mid-cell (out of memory) fails its cell and is replaced; returns cells ended."""
        ended = 0
        for slot, p in list(self.procs.items()):
            if p.is_alive():
                continue
            key = running.pop(slot, None)
            if key is not None:
                finished(key, f"worker process died (exit code {p.exitcode}) while running the cell")
                ended += 1
            self._start(slot)
        return ended


def _worker_main(out: str, tasks, results, threads: int, slot: int) -> None:
    """A worker process: cells from ``tasks`` until ``None``; dies with the driver (Linux)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the driver, which then stops the workers
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state, host = WorkerState(), socket.gethostname()
    while True:
        spec = tasks.get()
        if spec is None:
            return
        results.put(("start", slot, spec["key"], host))
        status = execute_cell(spec, out, state=state)
        results.put(("end", slot, spec["key"], status))


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the driver dies (``prctl(PR_SET_PDEATHSIG)``): a killed grid
    leaves no orphan writing its folders. Elsewhere a no-op (the cell folder locks still keep cells apart)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() == 1:  # the driver died before the request took effect
        os._exit(1)


# ------------------------------------------------------------------------------------------------ slurm
#: Grid-file / flag options of the slurm executor and the submitit parameters they set.
SLURM_OPTIONS = {"partition": "slurm_partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
                 "mem_gb": "mem_gb", "time": "timeout_min", "array_parallelism": "slurm_array_parallelism",
                 "account": "slurm_account", "qos": "slurm_qos"}  # fmt: skip


class CellJob:
    """A submitit job that runs one cell; on its time limit (or pre-emption) it is requeued and resumes
    (submitit calls :meth:`checkpoint`): a fine-tuning cell continues from its last checkpoint."""

    def __init__(self, out: str) -> None:
        self.out = out

    def __call__(self, spec: dict[str, Any]) -> str:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return execute_cell(spec, self.out, state=WorkerState())

    def checkpoint(self, spec: dict[str, Any]):
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.out), spec)


@EXECUTORS.register("slurm")
def run_slurm(cells: Sequence[CellSpec], out: Path, *, options: dict[str, Any], started: Started,
              finished: Finished) -> None:  # fmt: skip
    """One submitit job array of the cells; waits for them, ingesting each as it finishes.

    ``options["cluster"]`` picks submitit's backend (``None``: SLURM where ``sbatch`` exists; ``"local"``:
    submitit's local executor, which the tests use, so that submitit's own code runs).
    """
    from .._optional import require

    submitit = require("submitit", extra="slurm")
    unknown = sorted(set(options) - {*SLURM_OPTIONS, "cluster", "workers", "poll", "kind"})
    if unknown:
        raise ConfigError(f"executor: unknown slurm option(s) {unknown}; valid: {sorted(SLURM_OPTIONS)}")
    executor = submitit.AutoExecutor(folder=str(out / "slurm" / "%j"), cluster=options.get("cluster"))
    params = {SLURM_OPTIONS[k]: v for k, v in options.items() if k in SLURM_OPTIONS and v is not None}
    params.setdefault("timeout_min", 60)
    executor.update_parameters(name="medadapt-grid", **params)
    specs = [vars(c) for c in cells]
    jobs = executor.map_array(CellJob(str(out)), specs)
    log.info("submitted %d cells as job array %s", len(jobs), jobs[0].job_id if jobs else "-")
    for cell, job in zip(cells, jobs):
        started(cell.key, f"slurm:{job.job_id}")
    _wait(list(zip(cells, jobs)), finished, poll=float(options.get("poll", 5.0)))


def _wait(pending: list, finished: Finished, *, poll: float) -> None:
    import time

    while pending:
        still = []
        for cell, job in pending:
            if job.done():
                try:
                    status = job.result()
                except Exception as e:  # the job itself failed (killed, node failure): the cell failed
                    status = (
                        f"job {job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
                    )
                finished(cell.key, status)
            else:
                still.append((cell, job))
        pending = still
        if pending:
            time.sleep(poll)
