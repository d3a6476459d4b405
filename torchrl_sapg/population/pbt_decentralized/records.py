"""Files of the decentralised PBT workspace: atomic JSON records, temp-file cleanup, rank helpers."""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
import tempfile
import time
from typing import Any, Mapping

import torch

__all__ = [
    "RECORD_FORMAT",
    "atomic_write_json",
    "broadcast_object",
    "dist_rank_world",
    "finite_or_none",
    "read_record",
    "read_record_or_reason",
    "remove_temp_files",
]

RECORD_FORMAT = "torchrl-sapg-pbt/1"
RECORD_RE = re.compile(r"^record_(\d+)\.json$")
CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
MEMBER_RE = re.compile(r"^member_(\d+)$")
TMP_MAX_AGE_S = 600.0


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
    return read_record_or_reason(path)[0]


def read_record_or_reason(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None]:
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


def finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------- owner locks


def remove_temp_files(folder: pathlib.Path, max_age_s: float | None) -> list[str]:
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


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast_object(obj: Any) -> Any:
    rank, world = dist_rank_world()
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
