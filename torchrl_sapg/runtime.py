"""The process's place in a torchrun launch: rank, local rank, world size, per-rank seeds; and
the one helper for an argument that was renamed.

The lowest layer of the package (it imports nothing from it), so env backends, population
methods and trainers can all read it; the collectives live in ``trainers/distributed.py``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["RANK_SEED_STRIDE", "rank_seed", "renamed_argument", "world_info"]

RANK_SEED_STRIDE = 1_000_003


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
