"""Atomic file writes and an inter-process lock, shared by every stage that persists results, caches or checkpoints."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "cache_home", "exclusive_lock", "folder_lock"]

StrPath = str | os.PathLike
log = logging.getLogger(__name__)


def cache_home() -> Path:
    """Where medadapt keeps what it computes (features, md5 records): ``$MEDADAPT_CACHE``, else
    ``~/.cache/medadapt/features``. Never the data folders: those may be read-only or shared."""
    env = os.environ.get("MEDADAPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medadapt" / "features"


def atomic_write(path: StrPath, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders.

    ``data`` is bytes, a str (UTF-8 encoded) or a function that writes into the open binary file (e.g.
    ``lambda f: torch.save(state, f)``). Readers see the old file or the new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write = (
        data
        if callable(data)
        else (lambda f: f.write(data.encode("utf-8") if isinstance(data, str) else data))
    )
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def leftover_temporaries(path: StrPath) -> list[Path]:
    """Temporary files of :func:`atomic_write` for ``path`` that a process killed mid-write left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: The lock file of a locked directory.
LOCK_FILE = ".medadapt.lock"


@contextlib.contextmanager
def exclusive_lock(path: StrPath) -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX ``flock``) on ``path``: a directory (through its
    :data:`LOCK_FILE`), or a lock file, made if missing.

    Processes that share an output folder or a cache (seeds run in parallel) take turns in the locked
    section. The file is opened for writing: NFS emulates ``flock`` with ``fcntl`` locks, which need it.
    Without ``fcntl`` (Windows), or where the file system refuses the lock, it runs unlocked, with a warning.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    p = Path(path)
    fd = os.open(p / LOCK_FILE if p.is_dir() else p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("could not lock %s (%s): processes writing there at once may lose updates", p, e)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def folder_lock(folder: StrPath) -> Iterator[Path]:
    """:func:`exclusive_lock` on ``folder``, made first (a missing path would become a lock file); yields it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder):
        yield folder
