"""Screening a collected batch for NaN/inf before anything learns from it (docs/reliability.md)."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["screen_nonfinite"]


def screen_nonfinite(
    batch: TensorDictBase,
    keys: list[NestedKey],
    *,
    mode: str,
    where: str,
    blocks: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[TensorDictBase, int]:
    """Raise on, or drop, the env rows of an ``[N, T]`` batch whose ``keys`` hold NaN/inf; one host sync.

    Args:
        batch: the collected batch, env rows first.
        keys: the entries to check (observations, next observations, rewards).
        mode: ``"raise"`` (a ``FloatingPointError`` naming keys, rows and ``where``) or ``"drop"`` (each bad
            row is replaced by a copy of a random finite row of the same policy block).
        where: the frame range / iteration, for the message.
        blocks: policy blocks (equal, contiguous runs of env rows); drops stay inside a block.
        generator: draws the replacement rows.

    Returns:
        the (possibly refilled) batch and the number of rows dropped.

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"observation": torch.tensor([[1.0], [float("nan")], [2.0], [3.0]])}, [4])
        >>> out, n = screen_nonfinite(td, ["observation"], mode="drop", where="here", blocks=2)
        >>> n, out["observation"][0:2].flatten().tolist()
        (1, [1.0, 1.0])
    """
    rows = batch.shape[0]
    bad_by_key = {key: ~torch.isfinite(batch.get(key).reshape(rows, -1)).all(-1) for key in keys}
    if not bad_by_key:
        return batch, 0
    bad = torch.stack(list(bad_by_key.values())).any(0)
    if not bool(bad.any()):
        return batch, 0
    names = [k for k, b in bad_by_key.items() if bool(b.any())]
    idx = bad.nonzero().flatten().tolist()
    if mode == "raise":
        raise FloatingPointError(
            f"non-finite values in {names} of the collected batch at {where}: env rows {idx[:8]}"
            f"{' ...' if len(idx) > 8 else ''} ({len(idx)} of {rows}). Nothing was trained on them and no "
            "checkpoint was written. Fix the env, or pass nonfinite='drop' (recipe: train.nonfinite=drop) to "
            "drop such rows and count them in train/nonfinite_rows."
        )
    good = (~bad).reshape(blocks, -1).float()
    if not bool(good.sum(-1).gt(0).all()):
        raise FloatingPointError(
            f"non-finite values in {names} at {where} in every env row of a policy: nothing left to train that "
            "policy on. Fix the env."
        )
    block = rows // blocks
    pick = torch.multinomial(good, block, replacement=True, generator=generator)
    source = pick + torch.arange(blocks, device=pick.device).unsqueeze(-1) * block
    source = torch.where(bad.reshape(blocks, block), source, torch.arange(rows, device=bad.device).reshape(blocks, block))
    return batch[source.reshape(-1)], len(idx)
