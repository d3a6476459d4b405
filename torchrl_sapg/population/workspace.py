"""DexPBT's decentralised population: a shared directory and a trainer hook per member.

Paper: DexPBT, Sec. III-D "Decentralized PBT" and Fig. 2. There is no orchestrator: every
member is an ordinary training run (``recipes/train.py pbt=decentralized ...``) that, every
``interval_frames`` env frames, writes its checkpoint and a small JSON record into its own
folder of a shared workspace, reads its peers' records, and decides *for itself* (Alg. 1)
whether to continue, mutate its hyperparameters, or replace itself with a top member. The
workspace can be any directory every member sees (local disk, NFS, sshfs, an S3 mount).

Layout (``<root>`` is the shared directory)::

    <root>/member_000/record_000000012.json   # PBT round 12 of member 0 (JSON, written atomically)
    <root>/member_000/ckpt_000000012.pt       # its full trainer checkpoint (written atomically, first)
    <root>/member_001/...

A record::

    {"format": "torchrl-sapg-pbt/1", "member_id": 0, "iteration": 12, "frames": 245760,
     "trainer_iteration": 480, "objective": -183.2, "hyperparameters": {"lr": 0.0003, ...},
     "checkpoint": "member_000/ckpt_000000012.pt", "wall_time": 1790000000.0,
     "replacements": 2, "last_source": [1, 9]}

``iteration`` is the **PBT round index** ``frames // interval_frames``: the amount of
experience the member had collected, identical across members that share ``interval_frames``
(the paper's "same amount of collected experience"; the reference code's ``pbt_iteration``).
The checkpoint path is relative to ``<root>``, so members may mount the workspace at
different paths.

Each member slot has an owner lock, ``<root>/locks/member_000.lock``: a process that runs member
``k`` holds ``flock(LOCK_EX)`` on it for its whole life (the kernel drops it when the process
dies, SIGKILL included) and writes its pid, host, start time and launch id into it. A second
process that claims the same slot gets a :class:`WorkspaceBusyError` naming the owner, so two
runs never mix their checkpoints in one member folder. See ``docs/pbt.md``.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import pathlib
import random
import re
import socket
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.trainers import TrainerHookBase

from torchrl_sapg.population.pbt import (
    HyperparameterSpec,
    PBTDecision,
    _resolve_callable,
    get_hyperparameters,
    mutate_hyperparameters,
    parse_hyperparameter_specs,
    pbt_decision,
    set_hyperparameters,
)
from torchrl_sapg.trainers.checkpoint import load_checkpoint, save_checkpoint

try:
    import fcntl
except ImportError:  # not POSIX: the owner file is informational only
    fcntl = None

__all__ = [
    "LAUNCH_ID_ENV",
    "MemberLock",
    "PBTMember",
    "PBTReport",
    "PBTWorkspace",
    "RECORD_FORMAT",
    "WorkspaceBusyError",
    "adopt_checkpoint",
    "atomic_write_json",
    "member_owner",
    "owner_lock_path",
    "read_record",
]

RECORD_FORMAT = "torchrl-sapg-pbt/1"
_RECORD_RE = re.compile(r"^record_(\d+)\.json$")
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
_MEMBER_RE = re.compile(r"^member_(\d+)$")
_TMP_MAX_AGE_S = 600.0
LOCK_DIR = "locks"
LAUNCH_ID_ENV = "TORCHRL_SAPG_PBT_LAUNCH_ID"
_BUSY_ERRNOS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


# ---------------------------------------------------------------------------------- files
def atomic_write_json(path: str | os.PathLike, data: Mapping[str, Any], *, fsync: bool = True) -> pathlib.Path:
    """Write ``data`` as JSON to ``path`` so that no reader ever sees a partial file.

    The JSON goes to a hidden temp file in the same folder (``.<name>.<random>.tmp``), is
    flushed (and fsync'ed), then ``os.replace``'d over ``path``: on POSIX filesystems (and
    NFSv4) a rename is atomic, so a concurrent reader opens either the old or the new file.
    NaN / inf are not valid JSON and are refused.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, allow_nan=False, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A PBT record, or ``None`` if the file is missing, unreadable, partial or malformed.

    Never raises: a member must survive whatever its peers (or a full disk) left behind.
    """
    return _read_record(path)[0]


def _read_record(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)``, ``(None, None)`` for a missing file (pruned: normal), or
    ``(None, why)`` for a file that exists but is not a valid record (worth a warning)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{type(err).__name__}: {err}"
    try:
        data = json.loads(text)
    except ValueError as err:  # json.JSONDecodeError: a partial or foreign file
        return None, f"not valid JSON ({err}; {len(text)} characters)"
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return None, f"not a {RECORD_FORMAT} record"
    try:
        data["member_id"] = int(data["member_id"])
        data["iteration"] = int(data["iteration"])
        data["frames"] = int(data["frames"])
        obj = data.get("objective")
        data["objective"] = None if obj is None or not math.isfinite(float(obj)) else float(obj)
        if not isinstance(data.get("hyperparameters", {}), dict) or not isinstance(data.get("checkpoint"), str):
            return None, "malformed record (hyperparameters or checkpoint)"
    except (KeyError, TypeError, ValueError) as err:
        return None, f"malformed record ({type(err).__name__}: {err})"
    return data, None


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------- owner locks
class WorkspaceBusyError(RuntimeError):
    """Another live process already runs this member slot of the workspace."""


def owner_lock_path(root: str | os.PathLike, member_id: int) -> pathlib.Path:
    """``<root>/locks/member_<id>.lock``: the owner lock of one member slot (``recipes/pbt_launch.py``
    probes the same path)."""
    return pathlib.Path(root).expanduser().absolute() / LOCK_DIR / f"member_{int(member_id):03d}.lock"


def _owner_info(member_id: int, launch_id: str | None) -> dict[str, Any]:
    """What a new owner writes into the lock file (for the error message of a second claimant)."""
    now = time.time()
    return {
        "member_id": int(member_id),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": now,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
        "launch_id": launch_id or os.environ.get(LAUNCH_ID_ENV) or f"{socket.gethostname()}-{os.getpid()}-{int(now)}",
        "command": " ".join(sys.argv)[:400],
    }


def _read_owner_fd(fd: int) -> dict[str, Any]:
    """The owner information in an open lock file (``{}`` if it is empty or being rewritten)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(root: pathlib.Path, member_id: int, path: pathlib.Path, owner: Mapping[str, Any]) -> str:
    who = (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started', '?')}, "
           f"launch id {owner.get('launch_id', '?')})") if owner else "a process that has not written its details yet"
    return (
        f"PBT member {member_id} of workspace {str(root)!r} is already running: {who} holds its owner lock "
        f"{str(path)!r}. Two runs on one member slot would mix their checkpoints in member_{member_id:03d}/. "
        "Stop the other run, or start this one with another workspace (a new directory: pbt.workspace= / "
        "--workspace) or other member ids (pbt.member_id= / --member-ids)."
    )


def _try_flock(fd: int) -> bool | None:
    """``True``: locked; ``False``: another open file holds it; ``None``: no locking on this filesystem."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in _BUSY_ERRNOS:
            return False
        return None  # ENOLCK (NFS without a lock manager), EOPNOTSUPP, ...


def member_owner(root: str | os.PathLike, member_id: int) -> dict[str, Any] | None:
    """Who holds member ``member_id``'s slot right now: its owner information (``{}`` if not yet
    written), or ``None`` when the slot is free (or locks are unsupported). Never takes the lock
    for longer than the probe."""
    path = owner_lock_path(root, member_id)
    held = _HELD.get(str(path))
    if held is not None and held.held:
        return dict(held.owner)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        got = _try_flock(fd)
        if got is False:
            return _read_owner_fd(fd)
        return None
    finally:
        os.close(fd)  # also releases a probe lock


@dataclasses.dataclass
class MemberLock:
    """This process's claim on one member slot (see :meth:`PBTWorkspace.claim`).

    Attributes:
        path: the lock file.
        member_id: the member slot.
        owner: what was written into the lock file (pid, host, start time, launch id, command).
        enforced: ``False`` when the filesystem refused ``flock`` (NFS without a lock manager):
            the owner file is then informational only and exclusivity is not enforced.
        removed_temp_files: the stale temp files removed from the member's folder at the claim.
    """

    path: pathlib.Path
    member_id: int
    owner: dict[str, Any]
    enforced: bool
    removed_temp_files: list[str] = dataclasses.field(default_factory=list)
    fd: int | None = None
    pid: int = dataclasses.field(default_factory=os.getpid)

    @property
    def held(self) -> bool:
        """Whether this process still holds the claim (a forked child does not)."""
        return self.fd is not None and self.pid == os.getpid()

    def release(self) -> None:
        """Give the slot back now (normally the kernel does it when the process exits)."""
        if _HELD.get(str(self.path)) is self:
            del _HELD[str(self.path)]
        if self.fd is not None and self.pid == os.getpid():
            try:
                os.close(self.fd)  # closing the only descriptor drops the flock
            except OSError:
                pass
        self.fd = None


_HELD: dict[str, MemberLock] = {}  # lock path -> this process's claim (a claim is per process)


def _remove_temp_files(folder: pathlib.Path, max_age_s: float | None) -> list[str]:
    """Delete the hidden temp files (``.<name>.<random>.tmp``) of ``folder`` older than
    ``max_age_s`` (``None``: all). Errors are ignored. Returns the deleted names."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    now = time.time()
    deleted = []
    for name in names:
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        path = folder / name
        try:
            if max_age_s is None or now - path.stat().st_mtime > max_age_s:
                path.unlink()
                deleted.append(name)
        except OSError:
            pass
    return sorted(deleted)


class PBTWorkspace:
    """One member's view of the shared PBT directory.

    A member writes only into its own folder ``<root>/member_<id>``; it reads every folder.
    Every read tolerates missing, partial, foreign or concurrently deleted files (they are
    skipped, with one warning per file for a file that exists but cannot be used); writes are
    atomic (temp file + ``os.replace``; checkpoints through
    :func:`~torchrl_sapg.trainers.checkpoint.save_checkpoint`). A record whose checkpoint failed
    to load is skipped by later reads until that checkpoint file changes. :meth:`claim` takes the
    slot's owner lock (:class:`PBTMember` does it when training starts).

    Args:
        root: the shared directory (created if missing).
        member_id: this member's id (``>= 0``).
        keep_last: how many of its newest (record, checkpoint) pairs a member keeps; older
            pairs are deleted by :meth:`prune`. A peer that is more than ``keep_last`` rounds
            ahead then has no record a late member may compare against, and ranks last for it.
        fsync: fsync records before the rename (durability after a machine crash; the
            atomicity against concurrent readers comes from the rename alone).

    Examples:
        >>> import tempfile
        >>> ws = PBTWorkspace(tempfile.mkdtemp(), member_id=0)
        >>> rec = ws.write(3, state={"weights": 1}, objective=2.5, frames=300, hyperparameters={"lr": 1e-3})
        >>> ws.newest_record(0)["objective"], ws.newest_record(0, max_iteration=2)
        (2.5, None)
        >>> ws.load_checkpoint(rec)["weights"]
        1
    """

    def __init__(self, root: str | os.PathLike, member_id: int, *, keep_last: int = 10, fsync: bool = True):
        if int(member_id) < 0:
            raise ValueError(f"member_id must be >= 0, got {member_id}.")
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}.")
        self.root = pathlib.Path(root).expanduser().absolute()
        self.member_id = int(member_id)
        self.keep_last = int(keep_last)
        self.fsync = bool(fsync)
        self.member_dir().mkdir(parents=True, exist_ok=True)
        self._bad_checkpoints: dict[tuple[int, int], tuple[int, int] | None] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ ownership
    def owner_lock_path(self) -> pathlib.Path:
        """This member slot's lock file, ``<root>/locks/member_<id>.lock``."""
        return owner_lock_path(self.root, self.member_id)

    def claim(self, *, launch_id: str | None = None, wait_s: float = 1.0) -> MemberLock:
        """Take this member slot's owner lock for the life of the process, then remove the stale
        temp files a killed predecessor left in the member's folder.

        A second claim in the same process returns the same lock. The lock is ``flock(LOCK_EX)``
        on the lock file, which the kernel drops when the process dies (SIGKILL included), so a
        restarted member re-acquires its slot at once.

        Args:
            launch_id: written into the lock file for the error message of a second claimant;
                default the ``TORCHRL_SAPG_PBT_LAUNCH_ID`` environment variable (set by
                ``recipes/pbt_launch.py``), else ``<host>-<pid>-<time>``.
            wait_s: how long to retry while the lock is taken (covers a launcher's probe).

        Raises:
            WorkspaceBusyError: another live process holds the slot (the message names it).
        """
        path = self.owner_lock_path()
        held = _HELD.get(str(path))
        if held is not None and held.held:
            return held
        fd = self._open_lock_file(path)
        got = None if fd is None else _try_flock(fd)
        deadline = time.monotonic() + float(wait_s)
        while got is False and time.monotonic() < deadline:
            time.sleep(0.05)
            got = _try_flock(fd)
        if got is False:
            owner = _read_owner_fd(fd)
            os.close(fd)
            raise WorkspaceBusyError(_busy_message(self.root, self.member_id, path, owner))
        if got is None and fd is not None:
            warnings.warn(
                f"PBT member {self.member_id}: cannot lock {str(path)!r} (no flock on this filesystem, e.g. NFS "
                "mounted with 'nolock'); a second run on the same member id will not be refused. The owner "
                "file is informational only.",
                stacklevel=2,
            )
        owner = _owner_info(self.member_id, launch_id)
        if fd is not None:
            self._write_owner(fd, owner)
        # with the lock, nobody else writes this folder: every temp file in it is a dead writer's
        removed = _remove_temp_files(self.member_dir(), None if got else _TMP_MAX_AGE_S)
        lock = MemberLock(path=path, member_id=self.member_id, owner=owner, enforced=bool(got),
                          removed_temp_files=removed, fd=fd if got else None)
        if fd is not None and not got:
            os.close(fd)
        if got:
            _HELD[str(path)] = lock
        return lock

    @staticmethod
    def _open_lock_file(path: pathlib.Path) -> int | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            warnings.warn(f"cannot open the PBT owner lock {str(path)!r} ({err}); running without it.", stacklevel=3)
            return None

    @staticmethod
    def _write_owner(fd: int, owner: Mapping[str, Any]) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner, sort_keys=True) + "\n").encode(), 0)
        except OSError:
            pass  # informational only

    def _lock(self) -> MemberLock | None:
        held = _HELD.get(str(self.owner_lock_path()))
        return held if held is not None and held.held else None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # ------------------------------------------------------------------ paths
    def member_dir(self, member_id: int | None = None) -> pathlib.Path:
        return self.root / f"member_{self.member_id if member_id is None else int(member_id):03d}"

    def record_path(self, iteration: int, member_id: int | None = None) -> pathlib.Path:
        return self.member_dir(member_id) / f"record_{int(iteration):09d}.json"

    def checkpoint_path(self, iteration: int, member_id: int | None = None) -> pathlib.Path:
        return self.member_dir(member_id) / f"ckpt_{int(iteration):09d}.pt"

    def resolve(self, relative: str) -> pathlib.Path:
        """A record's checkpoint path (relative to the root; absolute paths are kept)."""
        p = pathlib.Path(relative)
        return p if p.is_absolute() else self.root / p

    # ------------------------------------------------------------------ listing
    def members(self) -> list[int]:
        """Ids of every member folder in the workspace (own included once it exists)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return [self.member_id]
        ids = {self.member_id}
        for name in names:
            m = _MEMBER_RE.match(name)
            if m:
                ids.add(int(m.group(1)))
        return sorted(ids)

    def iterations(self, member_id: int | None = None) -> list[int]:
        """Round indices of ``member_id``'s record files, newest first (no file is opened)."""
        try:
            names = os.listdir(self.member_dir(member_id))
        except OSError:
            return []
        its = [int(m.group(1)) for m in map(_RECORD_RE.match, names) if m]
        return sorted(set(its), reverse=True)

    def newest_record(self, member_id: int | None = None, max_iteration: int | None = None) -> dict[str, Any] | None:
        """The newest *readable* record of ``member_id`` with ``iteration <= max_iteration``.

        Unreadable or partial files, records whose content disagrees with their file name or
        folder, and records whose checkpoint failed to load (:meth:`load_checkpoint`) are
        skipped, with one warning per file (the next older record is tried). Never raises,
        never waits.
        """
        mid = self.member_id if member_id is None else int(member_id)
        for it in self.iterations(mid):
            if max_iteration is not None and it > max_iteration:
                continue
            path = self.record_path(it, mid)
            rec, why = _read_record(path)
            if rec is not None and (rec["member_id"] != mid or rec["iteration"] != it):
                rec, why = None, f"its content is member {rec['member_id']} round {rec['iteration']}"
            if rec is None:
                if why is not None:
                    self._warn_once(str(path), f"PBT: skipping unreadable record {str(path)!r}: {why}.")
                continue
            if self._checkpoint_known_bad(mid, it, rec):
                continue
            return rec
        return None

    def _checkpoint_signature(self, record: Mapping[str, Any]) -> tuple[int, int] | None:
        try:
            st = os.stat(self.resolve(record["checkpoint"]))
        except (OSError, KeyError, TypeError):
            return None
        return st.st_size, st.st_mtime_ns

    def _checkpoint_known_bad(self, member_id: int, iteration: int, record: Mapping[str, Any]) -> bool:
        """Whether this record's checkpoint failed to load and has not been rewritten since."""
        key = (member_id, iteration)
        if key not in self._bad_checkpoints:
            return False
        if self._checkpoint_signature(record) == self._bad_checkpoints[key]:
            return True
        del self._bad_checkpoints[key]  # rewritten (e.g. by the restarted member): try it again
        return False

    def peer_records(
        self,
        max_iteration: int,
        members: Iterable[int] | None = None,
        *,
        stale_seconds: float | None = None,
        now: float | None = None,
    ) -> dict[int, dict[str, Any] | None]:
        """Each member's newest readable record not ahead of ``max_iteration`` (``None``: none).

        With ``stale_seconds``, a member whose newest record of *any* iteration was written more
        than that many seconds ago (by its ``wall_time``) is treated as crashed: ``None``. Only
        files are read: a dead or silent member never makes the caller wait.
        """
        now = time.time() if now is None else now
        out: dict[int, dict[str, Any] | None] = {}
        for m in (self.members() if members is None else members):
            m = int(m)
            if stale_seconds is not None:
                latest = self.newest_record(m)
                if latest is None or now - float(latest.get("wall_time", 0.0)) > float(stale_seconds):
                    out[m] = None
                    continue
            out[m] = self.newest_record(m, max_iteration)
        return out

    # ------------------------------------------------------------------ writing
    def write(
        self,
        iteration: int,
        *,
        state: Mapping[str, Any],
        objective: float | None,
        frames: int,
        hyperparameters: Mapping[str, float | int],
        trainer_iteration: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write this member's checkpoint, then its record (both atomically); return the record.

        The checkpoint is written first, so a record never names a checkpoint that was not
        completely written. When this process holds the slot (:meth:`claim`), the record carries
        the owner's ``launch_id``.
        """
        ckpt = self.checkpoint_path(iteration)
        save_checkpoint(dict(state), ckpt)
        record = {
            "format": RECORD_FORMAT,
            "member_id": self.member_id,
            "iteration": int(iteration),
            "frames": int(frames),
            "trainer_iteration": None if trainer_iteration is None else int(trainer_iteration),
            "objective": _finite_or_none(objective),
            "hyperparameters": {k: (int(v) if isinstance(v, int) and not isinstance(v, bool) else float(v))
                                for k, v in hyperparameters.items()},
            "checkpoint": str(ckpt.relative_to(self.root)),
            "wall_time": time.time(),
        }
        lock = self._lock()
        if lock is not None:
            record["launch_id"] = str(lock.owner.get("launch_id"))
        if extra:
            record.update(dict(extra))
        atomic_write_json(self.record_path(iteration), record, fsync=self.fsync)
        return record

    def prune(self) -> list[str]:
        """Delete this member's (record, checkpoint) pairs older than its ``keep_last`` newest,
        orphan checkpoints (no record) older than the oldest kept record, and temp files left by
        a crash more than 10 minutes ago. Only this member's folder is touched. Returns the
        deleted file names; errors are ignored (a peer may be reading; we retry next round)."""
        folder = self.member_dir()
        try:
            names = os.listdir(folder)
        except OSError:
            return []
        records = sorted((int(m.group(1)) for m in map(_RECORD_RE.match, names) if m), reverse=True)
        kept = set(records[: self.keep_last])
        oldest_kept = min(kept) if kept else None
        deleted = []
        for it in records[self.keep_last:]:
            for path in (self.record_path(it), self.checkpoint_path(it)):  # the record first
                try:
                    path.unlink()
                    deleted.append(path.name)
                except OSError:
                    pass
        for name in names:
            m = _CKPT_RE.match(name)
            path = folder / name
            if m and oldest_kept is not None and int(m.group(1)) < oldest_kept and int(m.group(1)) not in kept:
                if not path.exists():
                    continue
                try:
                    path.unlink()
                    deleted.append(name)
                except OSError:
                    pass
        deleted.extend(_remove_temp_files(folder, _TMP_MAX_AGE_S))
        return deleted

    def load_checkpoint(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Load the checkpoint a record names (raises if it vanished or is unreadable).

        A failure warns once and marks the record: :meth:`newest_record` and
        :meth:`peer_records` skip it until its checkpoint file is rewritten.
        """
        path = self.resolve(record["checkpoint"])
        try:
            return load_checkpoint(path)
        except Exception as err:
            key = (int(record["member_id"]), int(record["iteration"]))
            self._bad_checkpoints[key] = self._checkpoint_signature(record)
            why = ("is missing (pruned by its owner, or never written)" if isinstance(err, FileNotFoundError)
                   else f"cannot be loaded ({type(err).__name__}: {err})")
            self._warn_once(f"ckpt:{path}", f"PBT: skipping member {key[0]}'s round {key[1]}: its checkpoint "
                                            f"{str(path)!r} {why}.")
            raise


# ---------------------------------------------------------------------------------- adoption
def adopt_checkpoint(trainer, state: Mapping[str, Any], *, keep_modules: Iterable[str] = ("pbt",)) -> list[str]:
    """Replace ``trainer``'s learned state with a peer's checkpoint, keeping its own identity.

    **Taken from the peer** (what makes the peer's agent the agent it is):

    * the loss module's state: actor and critic weights, latents and log-stds, the running
      observation normalisers (they are buffers of the actor/critic) and the loss buffers
      (``clip_epsilon``, ``entropy_coeff``, ...; PBT overwrites the mutated ones right after);
    * the optimiser state (Adam moments, step counts, current learning rates);
    * every module registered on the trainer except those named in ``keep_modules`` (the
      learning-rate schedule, EPO's genetic scheduler...);
    * the collector's copy of the policy weights.

    **Kept** (what makes this member *this* run): the frame counter, the trainer iteration and
    optimiser-step counters, the collector's own counters, env state and episode statistics,
    the minibatch generator, the global RNG states, the metric history and logger, the
    checkpoint schedule, and the PBT hook's own state (member id, round counters, mutation RNG).

    Returns the names of the trainer state entries that were taken.
    """
    if state.get("format") is not None and not str(state.get("format")).startswith("torchrl-sapg/"):
        raise RuntimeError(f"not a torchrl-sapg trainer checkpoint (format={state.get('format')!r}).")
    tsd = state["trainer"]
    keep = set(keep_modules)
    taken = []
    trainer.loss_module.load_state_dict(tsd["loss_module"])
    taken.append("loss_module")
    optimizer = getattr(trainer, "optimizer", None)
    if optimizer is not None and tsd.get("optimizer"):
        optimizer.load_state_dict(tsd["optimizer"])
        taken.append("optimizer")
    for key, item in getattr(trainer, "_modules", {}).items():
        if key == "optimizer" or key in keep or key not in tsd:
            continue
        item.load_state_dict(tsd[key])
        taken.append(key)
    collector = getattr(trainer, "collector", None)
    peer_collector = tsd.get("collector") or {}
    if collector is not None and "policy_state_dict" in peer_collector and hasattr(collector, "state_dict"):
        own = collector.state_dict()
        if "policy_state_dict" in own:
            own["policy_state_dict"] = peer_collector["policy_state_dict"]
            collector.load_state_dict(own)
            taken.append("collector.policy_state_dict")
    return taken


# ---------------------------------------------------------------------------------- distributed helpers
def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _broadcast_object(obj: Any) -> Any:
    rank, world = _dist_rank_world()
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------- the member hook
@dataclasses.dataclass
class PBTReport:
    """What one PBT round of a :class:`PBTMember` saw and did.

    Attributes:
        iteration: the round index (``frames // interval_frames``).
        frames: env frames at the round.
        objective: this member's objective (``None``: unknown).
        action: ``"continue"``, ``"mutate"``, ``"replace"`` or ``"skip"`` (no decision made).
        reason: the :class:`~torchrl_sapg.population.pbt.PBTDecision` reason, or why the round
            was skipped: ``"start_delay"``, ``"burn_in"``, ``"write_failed"``,
            ``"source_unreadable"``.
        group, rank, num_members, num_known: the ranking (``None`` when skipped).
        source, source_iteration: the member (and its round) whose weights were loaded.
        hyperparameters_before / hyperparameters_after: the values in effect before / after.
        changed: names whose value changed.
        objectives: every member's objective used for ranking.
        error: the exception text of a failed write or load.
    """

    iteration: int
    frames: int
    objective: float | None
    action: str
    reason: str
    group: str | None = None
    rank: int | None = None
    num_members: int | None = None
    num_known: int | None = None
    source: int | None = None
    source_iteration: int | None = None
    hyperparameters_before: dict[str, float | int] = dataclasses.field(default_factory=dict)
    hyperparameters_after: dict[str, float | int] = dataclasses.field(default_factory=dict)
    changed: list[str] = dataclasses.field(default_factory=list)
    objectives: dict[int, float | None] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PBTReport":
        data = dict(data)
        data["objectives"] = {int(k): v for k, v in data.get("objectives", {}).items()}
        return cls(**data)


_GROUP_CODE = {"top": 0.0, "middle": 1.0, "bottom": 2.0}


class PBTMember(TrainerHookBase):
    """One member of a decentralised DexPBT population, as a trainer hook.

    ``register(trainer)`` wires the member into an
    :class:`~torchrl_sapg.trainers.OnPolicyTrainer`:

    * ``register_module("pbt", self)`` — its state is in every checkpoint;
    * a ``"setup"`` op (start of ``train()``): claim the member slot (:meth:`claim`: a second
      process on the same workspace and member id raises :class:`WorkspaceBusyError`), resume
      from this member's newest readable checkpoint in the workspace when it is ahead of the
      trainer (a restarted member continues where it was, frames included), then optionally
      mutate the initial hyperparameters once;
    * a ``"batch_process"`` op that accumulates the objective from each batch's finished
      episodes (returns the batch unchanged);
    * a ``"post_steps"`` op (after the update of each iteration) that runs a **round** every
      ``interval_frames`` env frames;
    * a ``"post_steps_log"`` op returning ``pbt/*`` metrics.

    A round (Alg. 1 for this member):

    1. the objective is the mean of the objective statistic over the episodes that ended since
       the previous round (the previous value if none did);
    2. the trainer checkpoint and a record are written to the workspace (every round, also
       during the start delay and burn-in: peers compare against them); old pairs are pruned;
    3. no decision before ``start_frames`` frames (N_start) nor within ``burn_in_frames``
       (N_adapt) of this member's last mutation or replacement;
    4. each peer's newest record whose round is not ahead of this member's is read
       (``None`` for members with none, unreadable files, or — with ``stale_seconds`` —
       members that stopped writing); ``pbt_decision`` ranks the ``num_members`` members;
    5. ``"mutate"``: own hyperparameters mutated (Alg. 2) and applied; ``"replace"``: the
       source's checkpoint is adopted (:func:`adopt_checkpoint`: weights, optimiser,
       normalisers — own frames, iteration, RNG and identity kept) and a mutated copy of the
       source's recorded hyperparameters is applied. Any filesystem error skips the round.

    Hyperparameters are applied to the running trainer with
    :func:`~torchrl_sapg.population.pbt.set_hyperparameters` (in place) and re-applied when a
    checkpoint is loaded (GAE's gamma / lambda and ``num_epochs`` live outside the trainer's
    state dict).

    Args:
        workspace: a :class:`PBTWorkspace` or the shared directory.
        member_id: this member's id (needed when ``workspace`` is a path).
        hyperparameters: the mutable hyperparameters, as :class:`HyperparameterSpec` s or data
            (see :func:`~torchrl_sapg.population.pbt.parse_hyperparameter_specs`).
        interval_frames: env frames between rounds (N_iter; paper 2e7).
        start_frames: no decision before (N_start; paper 2e8).
        burn_in_frames: no decision for this long after a mutation / replacement (N_adapt; 5e7).
        num_members: the population size ``P``; members without a record rank last. ``None``:
            the members that have a folder in the workspace.
        selection, top_fraction, bottom_fraction, mutate_middle, gap_rule, gap_sigma, gap_abs,
            sigma_drop_worst, min_known, coin_hyperparameters: :func:`pbt_decision`.
        mutation_prob, mu_min, mu_max: Alg. 2 (beta_mut 0.2 (reference 0.15), 1.1, 1.5).
        objective: a per-policy statistic of the collector (``"return"``, ``"length"``,
            ``"success"``, ``"true_objective"``, or any key the env writes at episode end) or a
            callable ``objective(trainer) -> float | None`` (an import path string works),
            evaluated at each round (e.g. wrapping :func:`~torchrl_sapg.population.pbt.meta_objective`).
        objective_policy: which policy's statistic: an id, ``"mean"`` (over all episodes),
            ``"max"`` (best policy), or ``None`` (the trainer's ``headline_policy``).
        stale_seconds: treat a peer whose newest record is older than this as crashed (rank
            last). ``None`` (paper): use its newest record whatever its age.
        mutate_initial: mutate the hyperparameters once at a fresh start (the reference code
            does; Alg. 1 samples the initial population).
        resume: resume from the workspace at setup.
        keep_last, fsync: :class:`PBTWorkspace`.
        seed: seeds the member's ``random.Random`` (mixed with ``member_id``).
        verbose: print one line per round.
    """

    def __init__(
        self,
        workspace: PBTWorkspace | str | os.PathLike,
        member_id: int | None = None,
        *,
        hyperparameters: Any = (),
        interval_frames: int,
        start_frames: int = 0,
        burn_in_frames: int = 0,
        num_members: int | None = None,
        selection: Literal["paper", "reference"] = "paper",
        top_fraction: float = 0.3,
        bottom_fraction: float | None = None,
        mutate_middle: bool | None = None,
        gap_rule: bool | None = None,
        gap_sigma: float = 0.5,
        gap_abs: float = 0.05,
        sigma_drop_worst: float = 0.2,
        min_known: int | None = None,
        coin_hyperparameters: bool | None = None,
        mutation_prob: float = 0.2,
        mu_min: float = 1.1,
        mu_max: float = 1.5,
        objective: str | Callable[[Any], float | None] = "return",
        objective_policy: int | Literal["mean", "max"] | None = None,
        stale_seconds: float | None = None,
        mutate_initial: bool = False,
        resume: bool = True,
        keep_last: int = 10,
        fsync: bool = True,
        seed: int = 0,
        verbose: bool = True,
    ):
        if isinstance(workspace, PBTWorkspace):
            if member_id is not None and int(member_id) != workspace.member_id:
                raise ValueError(f"member_id={member_id} disagrees with the workspace's {workspace.member_id}.")
        else:
            if member_id is None:
                raise ValueError("give member_id when workspace is a path.")
            workspace = PBTWorkspace(workspace, int(member_id), keep_last=keep_last, fsync=fsync)
        if not int(interval_frames) > 0:
            raise ValueError(f"interval_frames must be > 0, got {interval_frames}.")
        for name, value in (("start_frames", start_frames), ("burn_in_frames", burn_in_frames)):
            if int(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if num_members is not None and int(num_members) <= workspace.member_id:
            raise ValueError(f"member_id={workspace.member_id} must be < num_members={num_members}.")
        if selection not in ("paper", "reference"):
            raise ValueError(f"selection={selection!r}: choose 'paper' or 'reference'.")
        if isinstance(objective_policy, str) and objective_policy not in ("mean", "max"):
            raise ValueError(f"objective_policy={objective_policy!r}: an int, 'mean', 'max' or None.")
        self.workspace = workspace
        self.member_id = workspace.member_id
        self.specs: list[HyperparameterSpec] = parse_hyperparameter_specs(hyperparameters)
        self.interval_frames = int(interval_frames)
        self.start_frames = int(start_frames)
        self.burn_in_frames = int(burn_in_frames)
        self.num_members = None if num_members is None else int(num_members)
        self.decision_kwargs = dict(
            selection=selection, top_fraction=top_fraction, bottom_fraction=bottom_fraction,
            mutate_middle=mutate_middle, gap_rule=gap_rule, gap_sigma=gap_sigma, gap_abs=gap_abs,
            sigma_drop_worst=sigma_drop_worst, min_known=min_known, coin_hyperparameters=coin_hyperparameters,
        )
        self.mutation_prob = float(mutation_prob)
        self.mu_min = float(mu_min)
        self.mu_max = float(mu_max)
        if callable(objective) or (isinstance(objective, str) and ":" in objective):
            self.objective_fn = _resolve_callable(objective, "objective")
            self.objective_key = None
        else:
            self.objective_fn = None
            self.objective_key = str(objective)
        self.objective_policy = objective_policy
        self.stale_seconds = None if stale_seconds is None else float(stale_seconds)
        self.mutate_initial = bool(mutate_initial)
        self.resume = bool(resume)
        self.verbose = bool(verbose)
        self.rng = random.Random(f"torchrl-sapg-pbt/{int(seed)}/{self.member_id}")

        self._trainer = None
        self.lock: MemberLock | None = None
        self._hp_cache: dict[str, float | int] = {}
        self.last_round: int | None = None
        self.last_change_frames: int | None = None
        self.last_objective: float | None = None
        self.last_report: PBTReport | None = None
        self.initialized = False
        self.num_rounds = 0
        self.num_decisions = 0
        self.num_mutations = 0
        self.num_replacements = 0
        self.num_skipped: dict[str, int] = {}
        self.lineage: list[dict[str, Any]] = []
        self._sum: torch.Tensor | None = None  # [M] float64, objective window
        self._count: torch.Tensor | None = None
        self._warned_missing = False
        # batch keys (adopted from a PopulationCollector at register)
        self.policy_id_key: NestedKey = "policy_id"
        self.episode_reward_key: NestedKey = "episode_reward"
        self.step_count_key: NestedKey = "step_count"
        self.off_policy_key: NestedKey = "off_policy"

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, seed: int = 0, **overrides) -> "PBTMember":
        """Build from the ``pbt`` Hydra group (``recipes/conf/pbt/decentralized.yaml``)."""
        if hasattr(cfg, "_get_node"):  # an OmegaConf node: mandatory '???' values come back as '???'
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        c = {str(k): v for k, v in cfg.items()}
        c.pop("enabled", None)
        for key in ("interval_frames", "start_frames", "burn_in_frames"):
            if c.get(key) is not None:
                c[key] = int(float(c[key]))
        if c.get("workspace") in (None, "", "???"):
            raise ValueError("pbt.workspace is required: the shared directory of the population.")
        if c.get("member_id") in (None, "???"):
            raise ValueError("pbt.member_id is required (0 .. num_members - 1).")
        workspace = c.pop("workspace")
        member_id = int(c.pop("member_id"))
        c["hyperparameters"] = c.get("hyperparameters") or {}
        c.update(overrides)
        return cls(workspace, member_id, seed=seed, **c)

    # ------------------------------------------------------------------ hyperparameters
    def current_hyperparameters(self) -> dict[str, float | int]:
        """The mutable hyperparameters in effect (read live from the trainer)."""
        if self._trainer is None:
            return dict(self._hp_cache)
        values = get_hyperparameters(self._trainer, self._specs_with_cache())
        self._hp_cache.update(values)
        return values

    def _specs_with_cache(self) -> list[HyperparameterSpec]:
        # a setter-only hyperparameter (no getter) reports the last value PBT set
        out = []
        for s in self.specs:
            if s.getter is None and s.setter is not None and s.name in self._hp_cache:
                s = dataclasses.replace(s, init=self._hp_cache[s.name])
            out.append(s)
        return out

    def apply_hyperparameters(self, values: Mapping[str, float | int]) -> None:
        """Set ``values`` on the trainer (in place) and remember them."""
        by_name = {s.name: s for s in self.specs}
        values = {k: (by_name[k].cast(v) if k in by_name else v) for k, v in values.items()}
        if self._trainer is not None:
            set_hyperparameters(self._trainer, values, self.specs)
        self._hp_cache.update(values)

    def mutate(self, values: Mapping[str, float | int]) -> dict[str, float | int]:
        """Alg. 2 on ``values`` with this member's generator and settings."""
        return mutate_hyperparameters(values, self.specs, prob=self.mutation_prob, generator=self.rng,
                                      mu_min=self.mu_min, mu_max=self.mu_max)

    # ------------------------------------------------------------------ objective
    def _objective_column(self, key: str) -> NestedKey:
        if key == "return":
            name = self.episode_reward_key
        elif key == "length":
            name = self.step_count_key
        else:
            name = key
        return ("next", name) if isinstance(name, str) else ("next", *name)

    @torch.no_grad()
    def observe(self, batch: TensorDictBase) -> None:
        """Add the episodes that end in ``batch`` to the objective window (statistic objectives)."""
        if self.objective_key is None:
            return
        keys = batch.keys(True, True)
        column = self._objective_column(self.objective_key)
        if column not in keys or ("next", "done") not in keys:
            if not self._warned_missing:
                self._warned_missing = True
                warnings.warn(
                    f"PBT objective {self.objective_key!r}: the batch has no {column!r} (or ('next', 'done')); "
                    "the objective stays unknown. Use a PopulationCollector, or an env that writes the key "
                    "at episode end, or an objective callable.",
                    stacklevel=2,
                )
            return
        n = batch.numel()
        done = batch.get(("next", "done")).reshape(n, -1)[:, 0].bool()
        if self.off_policy_key in keys:
            done = done & ~batch.get(self.off_policy_key).reshape(n, -1)[:, 0].bool()
        values = batch.get(column).reshape(n, -1)[:, 0].to(torch.float64)
        if self.policy_id_key in keys:
            pid = batch.get(self.policy_id_key).reshape(n, -1)[:, 0].long()
        else:
            pid = torch.zeros(n, dtype=torch.long, device=values.device)
        M = self._num_policies()
        if self._sum is None or self._sum.device != values.device:
            self._sum = torch.zeros(M, dtype=torch.float64, device=values.device)
            self._count = torch.zeros(M, dtype=torch.float64, device=values.device)
        w = done.to(torch.float64)
        self._sum.index_add_(0, pid, torch.where(done, values, 0.0))
        self._count.index_add_(0, pid, w)

    def _num_policies(self) -> int:
        collector = getattr(self._trainer, "collector", None)
        return int(getattr(collector, "num_policies", 1) or 1)

    def _window_objective(self) -> float | None:
        if self._sum is None:
            return None
        s, c = self._sum.clone(), self._count.clone()
        if _dist_rank_world()[1] > 1:
            torch.distributed.all_reduce(s)
            torch.distributed.all_reduce(c)
        s, c = s.cpu(), c.cpu()
        policy = self.objective_policy
        if policy is None:
            policy = int(getattr(self._trainer, "headline_policy", 0) or 0)
        if policy == "mean":
            total = float(c.sum())
            return float(s.sum()) / total if total > 0 else None
        if policy == "max":
            means = [float(s[i] / c[i]) for i in range(len(c)) if c[i] > 0]
            return max(means) if means else None
        policy = int(policy)
        if not 0 <= policy < len(c):
            raise ValueError(f"objective_policy={policy} is outside the {len(c)} policies.")
        return float(s[policy] / c[policy]) if c[policy] > 0 else None

    def compute_objective(self) -> float | None:
        """This round's objective: the callable's value, else the window mean (the previous
        round's value when no episode ended in the window)."""
        if self.objective_fn is not None:
            value = self.objective_fn(self._trainer)
            value = None if value is None else float(value)
        else:
            value = self._window_objective()
        if value is not None and not math.isfinite(value):
            value = None
        if value is None:
            value = self.last_objective
        return value

    def _reset_window(self) -> None:
        if self._sum is not None:
            self._sum.zero_()
            self._count.zero_()

    # ------------------------------------------------------------------ the round
    def _population(self) -> list[int]:
        if self.num_members is not None:
            return list(range(self.num_members))
        return self.workspace.members()

    def claim(self) -> MemberLock | None:
        """Take this member's slot in the workspace (:meth:`PBTWorkspace.claim`) on rank 0.

        Collective under ``torch.distributed``: every rank raises :class:`WorkspaceBusyError`
        when the slot is taken. Returns the lock on rank 0, ``None`` on the other ranks.
        """
        if self.lock is not None and (self.lock.held or not self.lock.enforced):
            return self.lock  # held, or the filesystem cannot lock (warned once)
        rank, _ = _dist_rank_world()
        error = None
        if rank == 0:
            try:
                self.lock = self.workspace.claim()
            except WorkspaceBusyError as err:
                error = str(err)
        error = _broadcast_object(error)
        if error is not None:
            raise WorkspaceBusyError(error)
        if rank == 0 and self.verbose and self.lock.removed_temp_files:
            names = self.lock.removed_temp_files
            print(f"[pbt member {self.member_id}] removed {len(names)} temp file(s) a killed writer left in "
                  f"{self.workspace.member_dir()}: {', '.join(names)}", flush=True)
        return self.lock

    def run_round(self, iteration: int | None = None) -> PBTReport:
        """Run one PBT round now (``post_steps`` calls this every ``interval_frames``)."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("register the PBTMember on a trainer first (member.register(trainer)).")
        rank, world = _dist_rank_world()
        if world == 1:
            self.claim()  # a round forced before train(): the setup op claims otherwise
        frames = int(trainer.collected_frames)
        k = frames // self.interval_frames if iteration is None else int(iteration)
        objective = self.compute_objective()
        self.last_objective = objective
        self.last_round = k
        self.num_rounds += 1
        before = self.current_hyperparameters()
        plan: dict[str, Any] = {}
        state = trainer.checkpoint_state()  # on every rank: a collective under a torchrun trainer (sync)
        if rank == 0:
            plan = self._decide(k, frames, objective, before, state)
        plan = _broadcast_object(plan)
        report: PBTReport = plan["report"]
        if plan.get("state") is not None:
            adopt_checkpoint(trainer, plan["state"], keep_modules=self._own_module_names())
            self.num_replacements += 1
            self.lineage.append({"frames": frames, "iteration": k, "source": report.source,
                                 "source_iteration": report.source_iteration})
            self.lineage = self.lineage[-100:]
            self.last_objective = plan.get("source_objective", objective)
        if plan.get("new_hyperparameters") is not None:
            self.apply_hyperparameters(plan["new_hyperparameters"])
            if report.action == "mutate":
                self.num_mutations += 1
            self.last_change_frames = frames
        if report.action in ("continue", "mutate", "replace"):
            self.num_decisions += 1
        else:
            self.num_skipped[report.reason] = self.num_skipped.get(report.reason, 0) + 1
        report.hyperparameters_after = self.current_hyperparameters()
        report.changed = [k2 for k2 in report.hyperparameters_after
                          if report.hyperparameters_after[k2] != before.get(k2)]
        self._reset_window()
        self.last_report = report
        if self.verbose and rank == 0:
            print(self._describe(report), flush=True)
        return report

    def _own_module_names(self) -> list[str]:
        names = [name for name, module in getattr(self._trainer, "_modules", {}).items() if module is self]
        return names or ["pbt"]

    def _decide(self, k: int, frames: int, objective: float | None, before: dict, state: dict) -> dict[str, Any]:
        """Rank 0: write ``state``, read, decide, and (for a replacement) load the source checkpoint."""
        trainer = self._trainer
        ws = self.workspace
        report = PBTReport(iteration=k, frames=frames, objective=objective, action="skip", reason="",
                           hyperparameters_before=dict(before))
        try:
            # the round runs in post_steps, before OnPolicyTrainer counts the finished iteration
            if "iteration" in state:
                state["iteration"] = int(state["iteration"]) + 1
            ws.write(k, state=state, objective=objective, frames=frames, hyperparameters=before,
                     trainer_iteration=state.get("iteration"),
                     extra={"replacements": self.num_replacements,
                            "last_source": [self.lineage[-1]["source"], self.lineage[-1]["source_iteration"]]
                            if self.lineage else None})
        except Exception as err:  # a full disk or a vanished mount must not kill training
            report.reason, report.error = "write_failed", f"{type(err).__name__}: {err}"
            return {"report": report}
        try:
            ws.prune()
        except Exception:
            pass
        if frames < self.start_frames:
            report.reason = "start_delay"
            return {"report": report}
        if self.last_change_frames is not None and frames - self.last_change_frames < self.burn_in_frames:
            report.reason = "burn_in"
            return {"report": report}
        members = self._population()
        if self.member_id not in members:
            members = sorted(set(members) | {self.member_id})
        peers = [m for m in members if m != self.member_id]
        records = ws.peer_records(k, peers, stale_seconds=self.stale_seconds)
        objectives: dict[int, float | None] = {m: (None if r is None else r["objective"]) for m, r in records.items()}
        objectives[self.member_id] = objective
        decision: PBTDecision = pbt_decision(self.member_id, objectives, generator=self.rng, **self.decision_kwargs)
        report.action, report.reason = decision.action, decision.reason
        report.group, report.rank = decision.group, decision.rank
        report.num_members, report.num_known = decision.num_members, decision.num_known
        report.objectives = dict(objectives)
        plan: dict[str, Any] = {"report": report}
        if decision.action == "mutate":
            plan["new_hyperparameters"] = self.mutate(before)
        elif decision.action == "replace":
            src = records[decision.source]
            try:
                peer_state = ws.load_checkpoint(src)
            except Exception as err:  # pruned or unreadable: keep training as we are
                report.action, report.reason = "skip", "source_unreadable"
                report.error = f"{type(err).__name__}: {err}"
                return plan
            base = dict(before)
            if decision.hyperparameters_from == decision.source:
                base.update({k2: v for k2, v in src.get("hyperparameters", {}).items() if k2 in base})
            plan["state"] = peer_state
            plan["new_hyperparameters"] = self.mutate(base)
            plan["source_objective"] = src["objective"]
            report.source, report.source_iteration = decision.source, src["iteration"]
        return plan

    def _describe(self, r: PBTReport) -> str:
        obj = "n/a" if r.objective is None else f"{r.objective:.4g}"
        head = f"[pbt member {self.member_id}] round {r.iteration} @ {r.frames} frames: objective {obj}"
        if r.action == "skip":
            return f"{head}; no decision ({r.reason}{': ' + r.error if r.error else ''})"
        what = r.action
        if r.action == "replace":
            what = f"replace with member {r.source} (round {r.source_iteration})"
        changes = ", ".join(f"{n} {r.hyperparameters_before.get(n)!r}->{r.hyperparameters_after[n]!r}" for n in r.changed)
        return (f"{head}; rank {r.rank + 1}/{r.num_members} ({r.group}, {r.num_known} known) -> {what}"
                + (f"; {changes}" if changes else ""))

    # ------------------------------------------------------------------ resume
    def resume_from_workspace(self) -> str | None:
        """Load this member's newest readable workspace checkpoint if it is ahead of the trainer.

        Returns the checkpoint path loaded, or ``None``. Unreadable records and checkpoints (a
        kill mid-write on a filesystem without atomic renames, a truncated copy) are skipped with
        a warning: the next older one is tried.
        """
        trainer = self._trainer
        rank, world = _dist_rank_world()
        state = None
        loaded = None
        if rank == 0:
            state, loaded = self._newest_loadable_state(int(trainer.collected_frames))
        state, loaded = _broadcast_object((state, loaded))
        if state is None:
            return None
        self._load_trainer_state(state, loaded)
        if rank == 0:
            print(f"[pbt member {self.member_id}] resumed from workspace checkpoint {loaded} at "
                  f"{trainer.collected_frames} frames (round {self.last_round})", flush=True)
        return loaded

    def _newest_loadable_state(self, frames: int) -> tuple[dict[str, Any] | None, str | None]:
        """The newest own checkpoint ahead of ``frames`` that loads, and its path."""
        ws = self.workspace
        max_iteration = None
        while True:
            rec = ws.newest_record(max_iteration=max_iteration)
            if rec is None or rec["frames"] <= frames:
                return None, None
            path = ws.resolve(rec["checkpoint"])
            try:
                return ws.load_checkpoint(rec), str(path)
            except Exception as err:
                print(f"[pbt member {self.member_id}] skipping unreadable checkpoint {path}: {err}", flush=True)
                max_iteration = rec["iteration"] - 1

    def _load_trainer_state(self, state: dict[str, Any], path: str) -> None:
        """``OnPolicyTrainer.restore`` of a state already read (every rank has it in memory)."""
        self._trainer.restore(state, source=str(path))

    # ------------------------------------------------------------------ trainer hook
    def register(self, trainer, name: str = "pbt") -> None:
        """Wire into an :class:`~torchrl_sapg.trainers.OnPolicyTrainer` (see the class doc).

        Register it after the algorithm's own hooks, before ``trainer.load``/``train``.
        """
        collector = getattr(trainer, "collector", None)
        for attr in ("policy_id_key", "episode_reward_key", "step_count_key"):
            if hasattr(collector, attr):
                setattr(self, attr, getattr(collector, attr))
        self._trainer = trainer
        self.current_hyperparameters()  # fail early on a hyperparameter the trainer does not have
        trainer.register_module(name, self)
        trainer.register_op("setup", self._on_setup)
        trainer.register_op("batch_process", self._on_batch)
        trainer.register_op("post_steps", self._on_post_steps)
        trainer.register_op("post_steps_log", self._on_log)

    def _on_setup(self) -> None:
        self.claim()
        if self.resume:
            self.resume_from_workspace()
        trainer = self._trainer
        if self.last_round is None:
            self.last_round = int(trainer.collected_frames) // self.interval_frames
        if not self.initialized:
            self.initialized = True
            if self.mutate_initial and int(trainer.collected_frames) == 0:
                # the same draw on every rank: the generator is seeded identically
                self.apply_hyperparameters(self.mutate(self.current_hyperparameters()))

    def _on_batch(self, batch: TensorDictBase) -> TensorDictBase:
        self.observe(batch)
        return batch

    def _on_post_steps(self) -> None:
        frames = int(self._trainer.collected_frames)
        k = frames // self.interval_frames
        if self.last_round is None:
            self.last_round = (frames - 1) // self.interval_frames
        if k > self.last_round:
            self.run_round(k)

    def _on_log(self, batch: TensorDictBase) -> dict[str, float]:
        return {k: v for k, v in self.metrics().items() if not math.isnan(v)}

    def metrics(self) -> dict[str, float]:
        """``pbt/*`` scalars: the last round and the hyperparameters in effect."""
        r = self.last_report
        nan = float("nan")
        known = [v for v in (r.objectives.values() if r else []) if v is not None]
        out = {
            "pbt/objective": nan if self.last_objective is None else float(self.last_objective),
            "pbt/rank": nan if r is None or r.rank is None else float(r.rank),
            "pbt/group": nan if r is None or r.group is None else _GROUP_CODE[r.group],
            "pbt/num_known": nan if r is None or r.num_known is None else float(r.num_known),
            "pbt/best_objective": max(known) if known else nan,
            "pbt/replaced": float(r is not None and r.action == "replace"),
            "pbt/mutated": float(r is not None and r.action == "mutate"),
            "pbt/source": nan if r is None or r.source is None else float(r.source),
            "pbt/num_rounds": float(self.num_rounds),
            "pbt/num_decisions": float(self.num_decisions),
            "pbt/num_mutations": float(self.num_mutations),
            "pbt/num_replacements": float(self.num_replacements),
        }
        for name, value in self._hp_cache.items():
            out[f"pbt/hp/{name}"] = float(value)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "hyperparameters": self.current_hyperparameters(),
            "last_round": self.last_round,
            "last_change_frames": self.last_change_frames,
            "last_objective": self.last_objective,
            "initialized": self.initialized,
            "num_rounds": self.num_rounds,
            "num_decisions": self.num_decisions,
            "num_mutations": self.num_mutations,
            "num_replacements": self.num_replacements,
            "num_skipped": dict(self.num_skipped),
            "lineage": list(self.lineage),
            "rng": self.rng.getstate(),
            "window": None if self._sum is None else (self._sum.clone(), self._count.clone()),
            "last_report": None if self.last_report is None else self.last_report.to_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if int(state_dict["member_id"]) != self.member_id:
            warnings.warn(
                f"loading PBT state of member {state_dict['member_id']} into member {self.member_id}: the "
                "identity, counters and mutation RNG stay this member's; only the hyperparameters are taken.",
                stacklevel=2,
            )
            self.apply_hyperparameters(dict(state_dict["hyperparameters"]))
            return
        self.last_round = state_dict["last_round"]
        self.last_change_frames = state_dict["last_change_frames"]
        self.last_objective = state_dict["last_objective"]
        self.initialized = bool(state_dict["initialized"])
        self.num_rounds = int(state_dict["num_rounds"])
        self.num_decisions = int(state_dict["num_decisions"])
        self.num_mutations = int(state_dict["num_mutations"])
        self.num_replacements = int(state_dict["num_replacements"])
        self.num_skipped = dict(state_dict["num_skipped"])
        self.lineage = list(state_dict["lineage"])
        self.rng.setstate(state_dict["rng"])
        window = state_dict.get("window")
        if window is None:
            self._sum = self._count = None
        else:
            self._sum, self._count = window[0].clone(), window[1].clone()
        report = state_dict.get("last_report")
        self.last_report = None if report is None else PBTReport.from_dict(report)
        # GAE's gamma / lambda, num_epochs, env coefficients live outside the trainer's state dict
        self.apply_hyperparameters(dict(state_dict["hyperparameters"]))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(member_id={self.member_id}, workspace={str(self.workspace.root)!r}, "
                f"interval_frames={self.interval_frames}, hyperparameters={[s.name for s in self.specs]}, "
                f"rounds={self.num_rounds})")
