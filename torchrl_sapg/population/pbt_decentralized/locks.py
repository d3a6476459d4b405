"""Owner locks of the decentralised PBT workspace: one live process per member slot."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import sys
import time
import warnings
from typing import Any, Mapping

from torchrl_sapg.population.pbt_decentralized.records import TMP_MAX_AGE_S, remove_temp_files
from torchrl_sapg.runtime import read_owner_file, try_exclusive_lock, write_owner_file

__all__ = ["LAUNCH_ID_ENV", "LOCK_DIR", "MemberLock", "WorkspaceBusyError", "claim_owner_lock", "held_lock",
           "member_owner", "owner_lock_path"]

LOCK_DIR = "locks"
LAUNCH_ID_ENV = "TORCHRL_SAPG_PBT_LAUNCH_ID"


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


def _busy_message(root: pathlib.Path, member_id: int, path: pathlib.Path, owner: Mapping[str, Any]) -> str:
    who = (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started', '?')}, "
           f"launch id {owner.get('launch_id', '?')})") if owner else "a process that has not written its details yet"
    return (
        f"PBT member {member_id} of workspace {str(root)!r} is already running: {who} holds its owner lock "
        f"{str(path)!r}. Two runs on one member slot would mix their checkpoints in member_{member_id:03d}/. "
        "Stop the other run, or start this one with another workspace (a new directory: pbt.workspace= / "
        "--workspace) or other member ids (pbt.member_id= / --member-ids)."
    )


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
        got = try_exclusive_lock(fd)
        if got is False:
            return read_owner_file(fd)
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


def held_lock(path: str | os.PathLike) -> MemberLock | None:
    """This process's live claim on the lock file ``path``, or ``None``."""
    held = _HELD.get(str(path))
    return held if held is not None and held.held else None


def claim_owner_lock(root: pathlib.Path, member_id: int, member_dir: pathlib.Path, *,
                     launch_id: str | None = None, wait_s: float = 1.0) -> MemberLock:
    """Take member ``member_id``'s owner lock, then remove stale temp files from ``member_dir``
    (see :meth:`~torchrl_sapg.population.pbt_decentralized.PBTWorkspace.claim`)."""
    path = owner_lock_path(root, member_id)
    held = held_lock(path)
    if held is not None:
        return held
    fd = _open_lock_file(path)
    got = None if fd is None else try_exclusive_lock(fd)
    deadline = time.monotonic() + float(wait_s)
    while got is False and time.monotonic() < deadline:
        time.sleep(0.05)
        got = try_exclusive_lock(fd)
    if got is False:
        owner = read_owner_file(fd)
        os.close(fd)
        raise WorkspaceBusyError(_busy_message(root, member_id, path, owner))
    if got is None and fd is not None:
        warnings.warn(
            f"PBT member {member_id}: cannot lock {str(path)!r} (no flock on this filesystem, e.g. NFS "
            "mounted with 'nolock'); a second run on the same member id will not be refused. The owner "
            "file is informational only.",
            stacklevel=3,
        )
    owner = _owner_info(member_id, launch_id)
    if fd is not None:
        write_owner_file(fd, owner)
    # with the lock, nobody else writes this folder: every temp file in it is a dead writer's
    removed = remove_temp_files(member_dir, None if got else TMP_MAX_AGE_S)
    lock = MemberLock(path=path, member_id=member_id, owner=owner, enforced=bool(got),
                      removed_temp_files=removed, fd=fd if got else None)
    if fd is not None and not got:
        os.close(fd)
    if got:
        _HELD[str(path)] = lock
    return lock


def _open_lock_file(path: pathlib.Path) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        warnings.warn(f"cannot open the PBT owner lock {str(path)!r} ({err}); running without it.", stacklevel=4)
        return None

