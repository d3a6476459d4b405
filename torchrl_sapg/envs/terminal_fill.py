"""Finite ``("next", ...)`` entries at the rows TorchRL's native auto-reset path blanks.

Used by the Isaac Lab backend (terminal observation lost: filled with the pre-step one) and the Isaac
Gym backend (terminal observation known: put back as it was).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.envs import EnvBase, Transform

__all__ = ["TerminalObservationFill"]


class TerminalObservationFill(Transform):
    """Repair the ``("next", ...)`` entries TorchRL's native auto-reset blanks at finished rows.

    With ``native_autoreset`` TorchRL marks *every* observation entry of a finished row's
    ``("next", ...)`` as missing (NaN for floats, 0 for integers), since Isaac Lab never
    returns the terminal observation. That also erases values that are known exactly: the
    episode return of ``RewardSum``, ``StepCounter``'s count, a constant ``"policy_id"``.
    This transform, placed after ``RewardSum`` / ``StepCounter``, records the true next values
    in ``_step`` and, in the hook that runs after ``step_mdp`` in ``step_and_maybe_reset``
    (what collectors call), writes them back at finished rows. Keys appended after it (e.g.
    ``"policy_id"``) get the pre-step value. The simulator's own observation keys
    (``env_obs_keys``) get the pre-step observation when ``fill="previous"``: a critic then
    bootstraps a truncated row with V(s_t) instead of the unknown V(s_{t+1}), as Isaac Lab's
    rl_games / rsl_rl runners do; a terminated row is not bootstrapped at all. With
    ``fill="nan"`` they keep TorchRL's marker. With no ``env_obs_keys`` every entry gets its
    recorded value back: the Isaac Gym backend, whose terminal observation is the true one.

    Args:
        env_obs_keys: the simulator's observation keys whose terminal value is unknown.
        fill: ``"previous"`` (the pre-step value) or ``"nan"`` (TorchRL's marker) for those keys.
    """

    def __init__(self, env_obs_keys: Sequence[NestedKey], fill: str = "previous"):
        if fill not in ("previous", "nan"):
            raise ValueError(f"fill must be 'previous' or 'nan', got {fill!r}.")
        super().__init__()
        self.env_obs_keys = [k if isinstance(k, str) else tuple(k) for k in env_obs_keys]
        self.fill = fill
        self._stash: dict = {}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        self._stash = {
            k: next_tensordict.get(k) for k in next_tensordict.keys(True, True) if k not in self.env_obs_keys
        }
        return next_tensordict

    def _outer_observation_keys(self) -> list:
        c = self.container
        while c is not None and not isinstance(c, EnvBase):
            c = getattr(c, "container", None)
        spec = c.observation_spec if c is not None else None
        return list(spec.keys(True, True)) if spec is not None else list(self._stash)

    def _post_step_mdp_hooks(self, tensordict: TensorDictBase, tensordict_: TensorDictBase):
        nxt = tensordict.get("next", None)
        done = None if nxt is None else nxt.get("done", None)
        if done is None:
            return tensordict, tensordict_
        # `done.any()` is a host sync on an accelerator; there the masked writes always run
        # (they change nothing when no row is done).
        if done.device.type == "cpu" and not done.any():
            return tensordict, tensordict_
        done = done.reshape(nxt.batch_size)
        for key in self._outer_observation_keys():
            new = nxt.get(key, None)
            if new is None:
                continue
            if key in self.env_obs_keys:
                if self.fill == "nan":
                    continue
                good = tensordict.get(key, None)
            else:
                good = self._stash.get(key, None)
                if good is None:
                    good = tensordict.get(key, None)
            if good is None or good.shape != new.shape:
                continue
            mask = done.reshape(*done.shape, *([1] * (new.ndim - done.ndim)))
            nxt.set(key, torch.where(mask, good.to(new.device, new.dtype), new))
        return tensordict, tensordict_
