"""One per-policy fitness window, shared by EPO, in-process PBT and decentralised PBT."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["PolicyFitnessWindow", "next_key"]


def next_key(key: NestedKey) -> tuple[str, ...]:
    """``("next", *key)``: where a collected batch holds ``key`` after the step."""
    return ("next", key) if isinstance(key, str) else ("next", *key)


class PolicyFitnessWindow:
    """Per-policy sums and counts of a finished-episode statistic, kept on the device.

    Args:
        num_policies: ``M``, the number of policies (rows of the window).
        device: where the ``[M]`` float64 sums and counts live.
        decay: each batch multiplies the window by ``decay`` before adding (1.0: a plain sum).
        off_policy_key: rows where this batch key is true are skipped (``None``: no filter).
        sync: a ``DistributedSync`` (``sum_``, ``broadcast_``): each batch's sums and counts are
            summed over ranks before they are added, and :meth:`mean` is rank 0's.
        all_reduce_on_read: keep the window rank-local and sum it over ``torch.distributed``
            ranks in :meth:`totals` / :meth:`mean` instead.
        empty_value: :meth:`mean` of a policy with no episode.

    Examples:
        >>> w = PolicyFitnessWindow(3)
        >>> w.add(torch.tensor([0, 0, 2, 1]), torch.tensor([1.0, 3.0, 5.0, 7.0]),
        ...       torch.tensor([True, True, True, False]))
        >>> w.mean().tolist()
        [2.0, nan, 5.0]
    """

    def __init__(
        self,
        num_policies: int,
        *,
        device: torch.device | str | None = None,
        decay: float = 1.0,
        off_policy_key: NestedKey | None = "off_policy",
        sync: Any = None,
        all_reduce_on_read: bool = False,
        empty_value: float = float("nan"),
    ):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}.")
        self.num_policies = int(num_policies)
        self.decay = float(decay)
        self.off_policy_key = off_policy_key
        self.sync = sync
        self.all_reduce_on_read = bool(all_reduce_on_read)
        self.empty_value = float(empty_value)
        self.sums = torch.zeros(self.num_policies, dtype=torch.float64, device=device)
        self.counts = torch.zeros(self.num_policies, dtype=torch.float64, device=device)

    @property
    def device(self) -> torch.device:
        return self.sums.device

    # ------------------------------------------------------------------ adding
    @torch.no_grad()
    def add(self, policy_id: torch.Tensor, value: torch.Tensor, valid: torch.Tensor) -> None:
        """Add ``value`` to its policy's sum and 1 to its count where ``valid`` (same shapes)."""
        pid = policy_id.reshape(-1).to(device=self.device, dtype=torch.long)
        valid = valid.reshape(-1).to(device=self.device, dtype=torch.bool)
        value = value.reshape(-1).to(device=self.device, dtype=torch.float64)
        add_sum = torch.zeros_like(self.sums).index_add_(0, pid, torch.where(valid, value, 0.0))
        add_count = torch.zeros_like(self.counts).index_add_(0, pid, valid.to(torch.float64))
        self.accumulate(add_sum, add_count)

    @torch.no_grad()
    def accumulate(self, add_sum: torch.Tensor, add_count: torch.Tensor) -> None:
        """Sum ``[M]`` batch totals over ranks (with :attr:`sync`), decay the window, add them."""
        if self.sync is not None:
            self.sync.sum_([add_sum, add_count])
        if self.decay != 1.0:
            self.sums.mul_(self.decay)
            self.counts.mul_(self.decay)
        self.sums.add_(add_sum)
        self.counts.add_(add_count)

    @torch.no_grad()
    def observe(
        self,
        batch: TensorDictBase,
        value_key: NestedKey,
        *,
        policy_id_key: NestedKey = "policy_id",
        done_key: NestedKey = ("next", "done"),
        mask: torch.Tensor | None = None,
    ) -> None:
        """Add the episodes that end in ``batch`` (``done``, not off-policy, ``mask`` if given).

        ``value_key`` and ``done_key`` are full keys (``("next", "episode_reward")``); each
        column is read per batch element (a trailing singleton dim is dropped). Without a
        ``policy_id_key`` column every episode counts for policy 0.
        """
        n = batch.numel()
        keys = set(batch.keys(True, True))
        valid = batch.get(done_key).reshape(n, -1)[:, 0].bool()
        if self.off_policy_key is not None and self.off_policy_key in keys:
            valid = valid & ~batch.get(self.off_policy_key).reshape(n, -1)[:, 0].bool()
        if mask is not None:
            valid = valid & mask.reshape(n).to(valid.device)
        value = batch.get(value_key).reshape(n, -1)[:, 0]
        if policy_id_key in keys:
            pid = batch.get(policy_id_key).reshape(n, -1)[:, 0]
        else:
            pid = torch.zeros(n, dtype=torch.long, device=value.device)
        self.add(pid, value, valid)

    # ------------------------------------------------------------------ reading
    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the ``[M]`` sums and counts (over all ranks with ``all_reduce_on_read``)."""
        s, c = self.sums.clone(), self.counts.clone()
        if self.all_reduce_on_read and _world_size() > 1:
            torch.distributed.all_reduce(s)
            torch.distributed.all_reduce(c)
        return s, c

    def mean(self) -> torch.Tensor:
        """The ``[M]`` mean per policy on :attr:`device` (``empty_value`` where count is 0)."""
        s, c = self.totals()
        out = torch.where(c > 0, s / c.clamp_min(1e-300), self.empty_value)
        if self.sync is not None:
            self.sync.broadcast_([out])
        return out

    def reset(self, policies: Sequence[int] | torch.Tensor | None = None) -> None:
        """Empty the window (only ``policies`` when given)."""
        if policies is None:
            self.sums.zero_()
            self.counts.zero_()
        else:
            idx = torch.as_tensor(policies, dtype=torch.long, device=self.device)
            self.sums.index_fill_(0, idx, 0.0)
            self.counts.index_fill_(0, idx, 0.0)

    # ------------------------------------------------------------------ state
    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix + "sum": ..., prefix + "count": ...}`` (copies)."""
        return {f"{prefix}sum": self.sums.clone(), f"{prefix}count": self.counts.clone()}

    def load_state_dict(self, state_dict: Mapping[str, Any] | Sequence[torch.Tensor], prefix: str = "") -> None:
        """Load :meth:`state_dict` output, or an older ``(sum, count)`` pair."""
        if isinstance(state_dict, Mapping):
            s, c = state_dict[f"{prefix}sum"], state_dict[f"{prefix}count"]
        else:
            s, c = state_dict
        self.sums.copy_(torch.as_tensor(s))
        self.counts.copy_(torch.as_tensor(c))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_policies={self.num_policies}, decay={self.decay}, device={self.device})"


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1
