"""Atomic checkpoint files and the random-number state that makes a resume exact."""
from __future__ import annotations

import os
import pathlib
import random
import tempfile
from typing import Any

import numpy as np
import torch


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    A reader never sees a partial file, and a crash mid-write leaves the previous checkpoint.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> _ = save_checkpoint({"frames": 10}, p)
        >>> load_checkpoint(p)["frames"]
        10
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error if unreadable."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}: pass resume=<run dir>/checkpoints/last.pt (or the run's "
            "checkpoint folder)."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RuntimeError(
            f"checkpoint {str(path)!r} is unreadable ({type(err).__name__}: {err}). It may be truncated "
            "or not a torchrl-sapg checkpoint; resume from another file in the checkpoint folder."
        ) from err


def rng_state() -> dict[str, Any]:
    """Every global random-number state a training run consumes (torch, CUDA, numpy, random)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
