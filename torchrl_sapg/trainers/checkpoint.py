"""Checkpoint files: atomic, validated, rotated, and loaded without running code from the file.

Loading uses ``torch.load(weights_only=True)``: the unpickler builds only tensors, containers and
primitives, plus the NumPy array types allow-listed in :data:`LEGACY_SAFE_GLOBALS` (the NumPy RNG
state of checkpoints written before 2026-12). A file that asks for anything else is refused before
any of it runs. Reasoning and the fault table: ``docs/reliability.md``.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import pathlib
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: what a checkpoint written before safe loading holds besides tensors: NumPy's RNG state array
LEGACY_SAFE_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]
#: the state entries whose floating tensors must be finite (weights, normalisers, optimiser moments)
FINITE_ENTRIES = (("trainer", "loss_module"), ("trainer", "optimizer"))
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted: unreadable, unsafe, corrupted or non-finite."""


# ---------------------------------------------------------------------------------------- validation
def _leaves(obj: Any, prefix: str = ""):
    """``(path, leaf)`` pairs of a nested dict/list/tuple, in a deterministic order."""
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _leaves(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes and every other leaf's repr (``"checksum"`` excluded).

    Args:
        state: the checkpoint dict.
    """
    h = hashlib.sha256()
    for path, leaf in _leaves({k: v for k, v in state.items() if k != "checksum"}):
        h.update(path.encode())
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(leaf, np.ndarray):
            h.update(np.ascontiguousarray(leaf).tobytes())
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


def nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    """The paths of floating tensors under :data:`FINITE_ENTRIES` holding NaN or inf.

    Args:
        state: the checkpoint dict.
    """
    bad = []
    for entry in FINITE_ENTRIES:
        sub: Any = state
        for key in entry:
            sub = sub.get(key) if isinstance(sub, Mapping) else None
        for path, leaf in _leaves(sub, "/".join(entry)):
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and not torch.isfinite(leaf).all():
                bad.append(path)
    return bad


def validate_state(state: Any, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a dict whose checksum matches and whose weights are finite.

    Args:
        state: the loaded checkpoint.
        source: the file it came from, for the message.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {source!r} holds a {type(state).__name__}, not a torchrl-sapg checkpoint dict.")
    expected = state.get("checksum")
    if expected is not None and state_checksum(state) != expected:
        raise CheckpointError(
            f"checkpoint {source!r} is corrupted: its tensors do not match the checksum written with them "
            "(flipped bytes on disk or in transfer). Resume from an older checkpoint in the same folder."
        )
    bad = nonfinite_entries(state)
    if bad:
        raise CheckpointError(f"checkpoint {source!r} holds non-finite weights or optimiser state at {bad[:3]}.")


# ---------------------------------------------------------------------------------------- writing
def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full_error(err: OSError, path: pathlib.Path) -> OSError:
    free = shutil.disk_usage(path.parent).free
    return OSError(
        err.errno,
        f"no space left to write checkpoint {str(path)!r} ({free / 2**20:.1f} MiB free on its filesystem); the "
        "previous checkpoint is intact. Free space, or point hydra.run.dir at a larger disk, then resume.",
    )


def _atomic_write(state: Mapping[str, Any], path: pathlib.Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            raise _disk_full_error(err, path) from err
        raise
    _fsync_dir(path.parent)


def history_path(path: pathlib.Path, frames: int) -> pathlib.Path:
    """The rotated copy of ``path`` at ``frames``: ``last.pt`` -> ``last.000000012288.pt``.

    Args:
        path: the checkpoint path (``.../last.pt``).
        frames: the frame count the copy was written at.
    """
    return path.with_name(f"{path.stem}.{int(frames):012d}{path.suffix}")


def history(path: str | os.PathLike) -> list[pathlib.Path]:
    """The rotated copies of ``path`` beside it, newest first.

    Args:
        path: the checkpoint path (``.../last.pt``).
    """
    path = pathlib.Path(path)
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{12})" + re.escape(path.suffix) + "$")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.*{path.suffix}") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike, *, keep_last: int = 0) -> pathlib.Path:
    """Validate ``state``, add its checksum and write it to ``path`` atomically (temp file, fsync, rename).

    A reader never sees a partial file; a crash or a full disk mid-write leaves the previous checkpoint.

    Args:
        state: the checkpoint dict (tensors, containers and primitives only: it is loaded with ``weights_only``).
        path: the file to (re)place, e.g. ``checkpoints/last.pt``.
        keep_last: ``> 0``: also keep this many rotated copies ``last.<frames>.pt`` (``state["frames"]``) beside it,
            so a resume can fall back to an older one; ``0``: only ``path``.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> _ = save_checkpoint({"frames": 10}, p)
        >>> load_checkpoint(p)["frames"]
        10
    """
    path = pathlib.Path(path)
    bad = nonfinite_entries(state)
    if bad:
        raise CheckpointError(
            f"refusing to write checkpoint {str(path)!r}: non-finite weights or optimiser state at {bad[:3]}. "
            "The previous checkpoint is kept; resume from it with a lower learning rate or fix the env's data."
        )
    state = {**state, "checksum": state_checksum(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_last <= 0:
        _atomic_write(state, path)
        return path
    copy = history_path(path, state.get("frames", 0))
    _atomic_write(state, copy)
    _replace_with_link(copy, path)
    for old in history(path)[keep_last:]:
        old.unlink(missing_ok=True)
    return path


def _replace_with_link(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link, or a copy where links are unsupported)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[str]:
    """Delete the ``.*.tmp`` files an interrupted :func:`save_checkpoint` left in ``folder``; return their names.

    Args:
        folder: a checkpoint folder owned by the calling run (never a folder another process may be writing).
    """
    folder = pathlib.Path(folder)
    removed = []
    for p in folder.glob(".*.tmp") if folder.is_dir() else ():
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


# ---------------------------------------------------------------------------------------- reading
def _load_one(path: pathlib.Path, map_location: Any) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(LEGACY_SAFE_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated, foreign or unsafe files
        text = str(err)
        if text.startswith("Weights only load failed"):
            why = next((line for line in text.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise CheckpointError(
                f"refused to load checkpoint {str(path)!r}: it asks the unpickler for objects other than tensors, "
                f"containers and numbers ({why.strip()[:200]}). Loading it could run code from the file. "
                "If you wrote it yourself with an older torchrl-sapg and trust it, convert it once with "
                f"`python -m torchrl_sapg.trainers.checkpoint migrate {path}`."
            ) from err
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({type(err).__name__}: {text[:200]}). It may be truncated or "
            "not a torchrl-sapg checkpoint."
        ) from err
    validate_state(state, str(path))
    return state


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`; never runs code from the file.

    Args:
        path: a checkpoint file, or a folder: its ``last.pt``, else the newest valid rotated copy (with a warning).
        map_location: where tensors are loaded (``torch.load``'s argument).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: unreadable, refused (unsafe content), corrupted (checksum) or non-finite.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        last = path / "last.pt"
        candidates = [last] if last.is_file() else []
        candidates += history(last)
        if not candidates:
            raise FileNotFoundError(f"no checkpoint in {str(path)!r}: pass resume=<run dir>/checkpoints/last.pt.")
        errors = []
        for candidate in candidates:
            try:
                state = _load_one(candidate, map_location)
            except CheckpointError as err:
                errors.append(str(err))
                continue
            if errors:
                warnings.warn(f"skipped {len(errors)} unusable checkpoint(s) ({errors[0]}); loaded {candidate}.", stacklevel=2)
            return state
        raise CheckpointError(f"no usable checkpoint in {str(path)!r}: " + " | ".join(errors))
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}: pass resume=<run dir>/checkpoints/last.pt (or the run's "
            "checkpoint folder)."
        )
    try:
        return _load_one(path, map_location)
    except CheckpointError as err:
        older = [p.name for p in history(path)]
        hint = (f" Older checkpoints beside it: {older[:3]}; resume=<its folder> picks the newest usable one."
                if older else "")
        raise CheckpointError(f"{err}{hint}") from err


def migrate_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """Rewrite a trusted pre-2026-12 checkpoint in the safe format (NumPy state as tensors, a checksum); in place.

    Args:
        path: the checkpoint file. It is unpickled with ``weights_only=False``: only for files you wrote yourself.
    """
    path = pathlib.Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state.get("rng"), Mapping):
        state["rng"] = {**state["rng"], "numpy": _numpy_state_to_tensors(state["rng"]["numpy"])}
    return save_checkpoint(state, path)


# ---------------------------------------------------------------------------------------- random state
def _numpy_state_to_tensors(state: Any) -> Any:
    if isinstance(state, tuple) and len(state) == 5:  # np.random.get_state(): (name, keys, pos, has_gauss, cached)
        name, keys, pos, has_gauss, cached = state
        return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def _numpy_state_from_tensors(state: Any) -> Any:
    if isinstance(state, Mapping):
        return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                state["cached_gaussian"])
    return state


def rng_state() -> dict[str, Any]:
    """Every global random-number state a training run consumes (torch, CUDA, numpy, random), weights_only-safe."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output (or a legacy one holding the NumPy tuple)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="torchrl-sapg checkpoint tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("migrate", help="rewrite trusted pre-2026-12 checkpoints in the safe format (in place)")
    m.add_argument("paths", nargs="+")
    c = sub.add_parser("check", help="load and validate checkpoints (safe: never runs code from the file)")
    c.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    for p in args.paths:
        if args.cmd == "migrate":
            print(f"migrated {migrate_checkpoint(p)}")
        else:
            state = load_checkpoint(p)
            print(f"ok {p}: {state.get('format')} at {state.get('frames')} frames")


if __name__ == "__main__":
    _main()
