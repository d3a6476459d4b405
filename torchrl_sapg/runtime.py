"""The process's place in a torchrun launch: rank, local rank, world size, per-rank seeds; the
process-wide setting of the C allocator for large CPU tensors; the owner-file primitives that
run folders and PBT member slots lock with; and the one helper for an argument that was renamed.

The lowest layer of the package (it imports nothing from it), so env backends, population
methods and trainers can all read it; the collectives live in ``trainers/distributed.py``.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import warnings
from typing import Any, Mapping

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, an owner file is informational only
    fcntl = None

__all__ = ["RANK_SEED_STRIDE", "keep_freed_host_memory", "rank_seed", "read_owner_file", "renamed_argument",
           "try_exclusive_lock", "world_info", "write_owner_file"]

RANK_SEED_STRIDE = 1_000_003

# flock's errnos when another open file description holds the lock; any other errno means no locking here
_BUSY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})
# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def rank_seed(seed: int, rank: int | None = None) -> int:
    """Rank ``rank``'s seed for its envs and action noise: ``seed + rank * 1_000_003``.

    Rank 0 keeps ``seed``, so a one-process run is unchanged. Population decisions (genetic
    step, PBT) must use the plain ``seed`` on every rank: they have to agree.

    Examples:
        >>> rank_seed(7, 0), rank_seed(7, 2)
        (7, 2000013)
    """
    rank = world_info()[0] if rank is None else rank
    return int(seed) + RANK_SEED_STRIDE * int(rank)


def world_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` without it)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def keep_freed_host_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's ``malloc`` keep freed memory for the next large CPU tensor instead of unmapping it.

    glibc gives every block over its mmap threshold (at most 32 MiB) pages of its own and returns
    them to the kernel on ``free``; a training loop that allocates the same large activations every
    minibatch then page-faults on each first write. This serves large blocks from the heap
    (``M_MMAP_MAX = 0``) and trims the heap only when more than ``trim_threshold`` bytes at its top
    are free. Process-wide and lasting; a no-op where the C library is not glibc. Measured in
    ``docs/throughput.md`` ("Host memory").

    Args:
        trim_threshold: free bytes at the heap's top above which glibc returns memory to the kernel.

    Returns:
        ``True`` if glibc accepted both settings, ``False`` otherwise (another C library, or a refusal).

    Examples:
        >>> import platform
        >>> keep_freed_host_memory() == (platform.libc_ver()[0] == "glibc")
        True
    """
    if int(trim_threshold) < 0:
        raise ValueError(f"trim_threshold={trim_threshold}: pass a byte count >= 0.")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trim = min(int(trim_threshold), 2**31 - 1)  # mallopt takes an int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, trim) == 1


def try_exclusive_lock(fd: int) -> bool | None:
    """Try to take an exclusive, non-blocking ``flock`` on the open file ``fd``.

    The kernel drops the lock when the last descriptor closes, the owner's death by SIGKILL
    included, so a lock never outlives its process.

    Args:
        fd: an open file descriptor of the lock file.

    Returns:
        ``True``: this process holds it; ``False``: another open file holds it; ``None``: this
        filesystem or platform has no locking (NFS without a lock manager, Windows), so nothing is
        enforced.

    Examples:
        >>> import os, tempfile
        >>> fd = os.open(os.path.join(tempfile.mkdtemp(), "x.lock"), os.O_RDWR | os.O_CREAT)
        >>> try_exclusive_lock(fd)
        True
        >>> os.close(fd)
    """
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        return False if err.errno in _BUSY_ERRNOS else None  # ENOLCK, EOPNOTSUPP, ...: no locking


def read_owner_file(fd: int) -> dict[str, Any]:
    """The JSON owner record in the open lock file ``fd`` (``{}`` if empty, being rewritten or not JSON).

    Args:
        fd: an open file descriptor of the lock file.

    Examples:
        >>> import os, tempfile
        >>> fd = os.open(os.path.join(tempfile.mkdtemp(), "x.lock"), os.O_RDWR | os.O_CREAT)
        >>> read_owner_file(fd)
        {}
        >>> write_owner_file(fd, {"pid": 42})
        >>> read_owner_file(fd)
        {'pid': 42}
        >>> os.close(fd)
    """
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_owner_file(fd: int, owner: Mapping[str, Any]) -> None:
    """Replace the content of the open lock file ``fd`` with ``owner`` as one JSON line (best effort).

    Args:
        fd: an open file descriptor of the lock file, locked by this process.
        owner: what a second claimant's error message should show (pid, host, start time...).

    Examples:
        >>> import os, tempfile
        >>> fd = os.open(os.path.join(tempfile.mkdtemp(), "x.lock"), os.O_RDWR | os.O_CREAT)
        >>> write_owner_file(fd, {"pid": 1, "host": "a-long-host-name"})
        >>> write_owner_file(fd, {"pid": 2})  # replaces the record, never appends
        >>> read_owner_file(fd)
        {'pid': 2}
        >>> os.close(fd)
    """
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(dict(owner), sort_keys=True) + "\n").encode(), 0)
    except OSError:
        pass  # informational only


def renamed_argument(owner: str, old: str, new: str, old_value: Any, new_value: Any, default: Any = None) -> Any:
    """The value of argument ``new``, taking a caller's deprecated ``old`` (with a ``DeprecationWarning``).

    Args:
        owner: the function or class, for the message.
        old: the deprecated argument's name.
        new: the argument's name now.
        old_value: what the caller passed as ``old`` (``None``: not passed).
        new_value: what the caller passed as ``new``.
        default: ``new``'s default; passing both ``old`` and a non-default ``new`` is a ``TypeError``.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     renamed_argument("f", "beta", "prob", 0.3, 0.2, default=0.2)
        0.3
        >>> str(caught[0].message)
        'f(beta=...) is deprecated; use f(prob=...).'
    """
    if old_value is None:
        return new_value
    if new_value is not default and new_value != default:
        raise TypeError(f"{owner}() got both {old}= and {new}=; {old} is the deprecated name of {new}: pass only {new}.")
    warnings.warn(f"{owner}({old}=...) is deprecated; use {owner}({new}=...).", DeprecationWarning, stacklevel=3)
    return old_value
