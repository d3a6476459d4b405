"""A run folder owned by one process: a lock, no fresh start over an old run, logs trimmed on resume.

Why and what each fault does: ``docs/reliability.md``.
"""
from __future__ import annotations

import csv
import io
import os
import pathlib
import socket
import time
import warnings

from torchrl_sapg.runtime import read_owner_file, try_exclusive_lock, write_owner_file

#: what marks a folder as holding a run: a summary or a checkpoint (a run killed before its first checkpoint
#: leaves only config.yaml and log rows, which a fresh start replaces and trims)
RUN_MARKERS = ("summary.json", "checkpoints/last.pt", "checkpoints/last.*.pt")
LOCK_NAME = ".owner.lock"


class RunFolderError(RuntimeError):
    """The run folder is owned by another live process, or already holds a run."""


class RunFolderLock:
    """An exclusive, process-lifetime lock on a run folder (``fcntl.flock`` on ``<folder>/.owner.lock``).

    The kernel drops the lock when the process dies, SIGKILL included, so a killed run's folder can be
    resumed at once, while a second live process on the same folder is refused.

    Args:
        folder: the run folder.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> lock = RunFolderLock(d).acquire()
        >>> lock.release()
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = pathlib.Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        got = try_exclusive_lock(fd)
        if got is False:
            holder = read_owner_file(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}" if holder else "details not written yet"
            raise RunFolderError(
                f"run folder {str(self.folder)!r} is in use by another process ({who}). Wait for it, stop it, "
                "or give this run its own folder (hydra.run.dir=...)."
            )
        if got is None:
            warnings.warn(
                f"cannot lock {str(self.path)!r} (no flock on this filesystem, e.g. NFS mounted with 'nolock'); a "
                "second run in the same folder will not be refused.",
                stacklevel=2,
            )
        write_owner_file(fd, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def check_fresh_start(folder: str | os.PathLike) -> None:
    """Raise :class:`RunFolderError` if ``folder`` already holds a run (so a fresh start would mix two runs).

    Args:
        folder: the run folder a new (not resumed) run is about to write to.
    """
    folder = pathlib.Path(folder)
    found = [m for m in RUN_MARKERS if any(folder.glob(m))]
    if found:
        raise RunFolderError(
            f"run folder {str(folder)!r} already holds a run ({', '.join(found)}). Continue it with "
            f"resume={folder / 'checkpoints'} (same hydra.run.dir), or start a new run in another folder."
        )


def _rows_to_keep(text: str, max_step: int) -> tuple[str, int]:
    """The CSV text without rows past ``max_step`` or unparsable (a row cut by a kill); and how many were dropped."""
    kept, dropped = io.StringIO(), 0
    writer = csv.writer(kept, lineterminator="\n")
    for row in csv.reader(io.StringIO(text)):
        ok = len(row) == 2
        try:
            ok = ok and int(row[0]) <= max_step and float(row[1]) == float(row[1])  # NaN values are never logged
        except ValueError:
            ok = False
        if ok:
            writer.writerow(row)
        else:
            dropped += 1
    return kept.getvalue(), dropped


def trim_csv_logs(log_dir: str | os.PathLike, max_step: int) -> int:
    """Drop the rows logged after step ``max_step`` from every TorchRL CSV log under ``log_dir``; return how many.

    After a crash, the rows between the last checkpoint and the crash are logged again by the resumed run.

    Args:
        log_dir: the run folder (the CSV logger writes ``<exp_name>/scalars/**.csv`` under it).
        max_step: the resumed checkpoint's frame count.
    """
    dropped = 0
    for path in pathlib.Path(log_dir).glob("*/scalars/**/*.csv"):
        text = path.read_text()
        kept, n = _rows_to_keep(text, max_step)
        if n:
            tmp = path.with_name(f".{path.name}.trim.tmp")
            tmp.write_text(kept)
            os.replace(tmp, path)
            dropped += n
    return dropped
