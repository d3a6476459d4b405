"""One member's view of the decentralised PBT workspace, and adopting a peer's checkpoint.

Directory layout, record format and owner locks: ``docs/pbt.md`` ("The shared directory").
"""
from __future__ import annotations

import os
import pathlib
import time
import warnings
from typing import Any, Iterable, Mapping

from torchrl_sapg.population.pbt_decentralized.locks import MemberLock, claim_owner_lock, held_lock, owner_lock_path
from torchrl_sapg.population.pbt_decentralized.records import (
    CKPT_RE,
    MEMBER_RE,
    RECORD_FORMAT,
    RECORD_RE,
    TMP_MAX_AGE_S,
    atomic_write_json,
    finite_or_none,
    read_record_or_reason,
    remove_temp_files,
)
from torchrl_sapg.trainers.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["PBTWorkspace", "adopt_checkpoint"]


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
        return claim_owner_lock(self.root, self.member_id, self.member_dir(), launch_id=launch_id, wait_s=wait_s)

    def _lock(self) -> MemberLock | None:
        return held_lock(self.owner_lock_path())

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
            m = MEMBER_RE.match(name)
            if m:
                ids.add(int(m.group(1)))
        return sorted(ids)

    def iterations(self, member_id: int | None = None) -> list[int]:
        """Round indices of ``member_id``'s record files, newest first (no file is opened)."""
        try:
            names = os.listdir(self.member_dir(member_id))
        except OSError:
            return []
        its = [int(m.group(1)) for m in map(RECORD_RE.match, names) if m]
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
            rec, why = read_record_or_reason(path)
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
            "objective": finite_or_none(objective),
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
        records = sorted((int(m.group(1)) for m in map(RECORD_RE.match, names) if m), reverse=True)
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
            m = CKPT_RE.match(name)
            path = folder / name
            if m and oldest_kept is not None and int(m.group(1)) < oldest_kept and int(m.group(1)) not in kept:
                if not path.exists():
                    continue
                try:
                    path.unlink()
                    deleted.append(name)
                except OSError:
                    pass
        deleted.extend(remove_temp_files(folder, TMP_MAX_AGE_S))
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
