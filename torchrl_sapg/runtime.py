"""The process's place in a torchrun launch: rank, local rank, world size, per-rank seeds.

The lowest layer of the package (it imports nothing from it), so env backends, population
methods and trainers can all read it; the collectives live in ``trainers/distributed.py``.
"""
from __future__ import annotations

import os

__all__ = ["RANK_SEED_STRIDE", "rank_seed", "world_info"]

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
