"""A batched TorchRL env over an `EnvPool <https://github.com/sail-sg/envpool>`_ pool.

:class:`EnvPoolEnv` runs ``num_envs`` copies of a continuous-action EnvPool task
(Gymnasium MuJoCo ``HalfCheetah-v4``/``Ant-v5``/..., dm_control ``CheetahRun-v1``,
Shadow hand ``HandManipulateBlock-v1``, ``LeapCubeReorient-v1``, ...) in EnvPool's
C++ thread pool (synchronous mode: every ``step`` moves all ``N`` envs) and
exposes them with this library's env conventions:

* batch ``[N]``; ``"observation"`` float32 ``[N, obs_dim]``; ``"action"``
  float32 ``Bounded [N, act_dim]`` (the task's action bounds); ``"reward"``
  float32 ``[N, 1]``; ``"done"``/``"terminated"``/``"truncated"`` bool ``[N, 1]``
  (``done = terminated | truncated``); ``"success"`` bool ``[N, 1]`` when the task
  reports one (``info["is_success"]`` or ``info["success"]``).
* Dict observations (dm_control, Shadow hand, LEAP) are flattened per key and
  concatenated, in the order of the Gymnasium ``Dict`` space's keys (or of
  ``obs_keys``); ``env.observation_layout`` lists ``(key, start, stop)``.
* Partial resets (``"_reset"``) use EnvPool's ``reset(env_id=...)``, so the
  observation after a ``done`` is the first one of a new episode and no
  transition spans two episodes (see :meth:`EnvPoolEnv._reset`).

EnvPool is an optional dependency (``pip install "torchrl-sapg[envpool]"``) and
is imported only when an :class:`EnvPoolEnv` is built.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

__all__ = ["EnvPoolEnv", "import_envpool", "ENVPOOL_PREFIX"]

#: ``make_env`` name prefix that selects this backend, e.g. ``"envpool:HalfCheetah-v4"``.
ENVPOOL_PREFIX = "envpool:"

_INSTALL_HINT = (
    'EnvPoolEnv needs the optional dependency envpool: pip install "torchrl-sapg[envpool]" '
    "(envpool 1.2.5 serves Python 3.11; newer envpool releases need Python >= 3.12)."
)
_RESERVED = ("env_type", "num_envs", "batch_size", "seed")
_SUCCESS_INFO_KEYS = ("is_success", "success")


def import_envpool():
    """Imports and returns the ``envpool`` module, or raises an ImportError naming the extra."""
    try:
        module = importlib.import_module("envpool")
    except ImportError as err:  # also raised when sys.modules["envpool"] is None
        raise ImportError(_INSTALL_HINT) from err
    if module is None:  # pragma: no cover - defensive
        raise ImportError(_INSTALL_HINT)
    return module


def _flat_boxes(space, obs_keys: Sequence[str] | None) -> list[tuple[str | None, tuple[int, ...]]]:
    """``[(key or None, shape), ...]`` of the Box leaves that make up the flat observation."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        if obs_keys is not None:
            raise ValueError("obs_keys applies only to tasks with Dict observations.")
        return [(None, tuple(space.shape))]
    if not isinstance(space, spaces.Dict):
        raise TypeError(f"EnvPoolEnv supports Box or Dict observation spaces, got {space}.")
    leaves: list[tuple[str | None, tuple[int, ...]]] = []

    def walk(sp, prefix: str) -> None:
        for key, sub in sp.spaces.items():
            name = f"{prefix}{key}"
            if isinstance(sub, spaces.Dict):
                walk(sub, name + "/")
            elif isinstance(sub, spaces.Box):
                leaves.append((name, tuple(sub.shape)))
            else:
                raise TypeError(f"observation {name!r}: unsupported space {sub}.")

    walk(space, "")
    if obs_keys is not None:
        by_name = dict(leaves)
        missing = [k for k in obs_keys if k not in by_name]
        if missing:
            raise KeyError(f"obs_keys {missing} not in the task's observations {list(by_name)}.")
        leaves = [(k, by_name[k]) for k in obs_keys]
    return leaves


def _get_leaf(obs: Any, key: str | None) -> np.ndarray:
    if key is None:
        return obs
    for part in key.split("/"):
        obs = obs[part]
    return obs


class EnvPoolEnv(EnvBase):
    """``num_envs`` copies of an EnvPool task as one batched TorchRL env.

    Args:
        task_id: EnvPool task id (``envpool.list_all_envs()``), e.g. ``"HalfCheetah-v4"``,
            ``"Ant-v5"``, ``"CheetahRun-v1"``, ``"HandManipulateBlock-v1"``,
            ``"LeapCubeReorient-v1"``. Continuous (Box) action spaces only.
        num_envs: batch size ``N``.

    Keyword Args:
        device: device of every output tensor (EnvPool itself runs on the CPU).
        seed: EnvPool seed (env ``i`` is seeded ``seed + i`` by EnvPool). ``None`` draws
            one from torch's global RNG. EnvPool fixes seeds at creation, so
            ``env.set_seed(s)`` rebuilds the pool.
        num_threads: EnvPool worker threads (``None``: EnvPool's default).
        obs_keys: for Dict observations, the keys (``"a/b"`` for nested ones) to
            concatenate, in order; ``None`` keeps every key in the space's order.
        **envpool_kwargs: forwarded to ``envpool.make`` (``max_episode_steps``,
            ``frame_skip``, task options, ...).

    Examples:
        >>> env = EnvPoolEnv("HalfCheetah-v4", 4, seed=0, max_episode_steps=10)  # doctest: +SKIP
        >>> env.rollout(25, break_when_any_done=False)["next", "done"].sum().item()  # doctest: +SKIP
        8
    """

    def __init__(
        self,
        task_id: str,
        num_envs: int,
        *,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        num_threads: int | None = None,
        obs_keys: Sequence[str] | None = None,
        **envpool_kwargs: Any,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
        bad = [k for k in _RESERVED if k in envpool_kwargs]
        if bad:
            raise TypeError(f"EnvPoolEnv sets {bad} itself; pass num_envs/seed as arguments.")
        self._envpool = import_envpool()
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.task_id = task_id
        self.num_envs = num_envs
        self.num_threads = num_threads
        self.envpool_kwargs = dict(envpool_kwargs)
        if num_threads is not None:
            self.envpool_kwargs["num_threads"] = int(num_threads)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.envpool_seed = int(seed)
        self._pool = self._make_pool(self.envpool_seed)
        self._inspect_spaces(obs_keys)
        self._make_specs()
        self._obs = torch.zeros(num_envs, self.obs_dim, dtype=torch.float32, device=self.device)
        self._success = torch.zeros(num_envs, 1, dtype=torch.bool, device=self.device)
        # envs whose episode ended and that were not reset yet (EnvPool would auto-reset them
        # on the next step, ignoring the action and returning reward 0)
        self._pending = np.zeros(num_envs, dtype=bool)

    # ------------------------------------------------------------------ pool
    def _make_pool(self, seed: int):
        return self._envpool.make(
            self.task_id,
            env_type="gymnasium",
            num_envs=self.num_envs,
            batch_size=self.num_envs,
            seed=seed,
            **self.envpool_kwargs,
        )

    def _inspect_spaces(self, obs_keys: Sequence[str] | None) -> None:
        from gymnasium import spaces

        act = self._pool.action_space
        if not isinstance(act, spaces.Box):
            raise TypeError(
                f"EnvPoolEnv supports continuous (Box) action spaces; {self.task_id} has {act}."
            )
        self._act_space = act
        self._leaves = _flat_boxes(self._pool.observation_space, obs_keys)
        layout, start = [], 0
        for key, shape in self._leaves:
            size = int(math.prod(shape))
            layout.append((key, start, start + size))
            start += size
        #: ``[(key, start, stop), ...]``: where each observation key sits in ``"observation"``
        #: (``key`` is ``None`` for a Box observation space).
        self.observation_layout = layout
        self.obs_dim = start
        # does the task report success in its info dict? (read from the spec, so that no
        # reset is spent here and the pool's RNG stream matches a fresh envpool.make)
        state_keys = getattr(self._pool.spec, "_state_keys", None)
        if state_keys is not None:
            info_keys = {k[len("info:"):] for k in state_keys if k.startswith("info:")}
        else:  # pragma: no cover - other envpool versions
            info_keys = set(self._pool.reset()[1])
        self._success_key = next((k for k in _SUCCESS_INFO_KEYS if k in info_keys), None)

    def _make_specs(self) -> None:
        n, dev = self.num_envs, self.device
        obs = {"observation": Unbounded(shape=(n, self.obs_dim), dtype=torch.float32, device=dev)}
        bool_spec = Categorical(n=2, shape=(n, 1), dtype=torch.bool, device=dev)
        if self._success_key is not None:
            obs["success"] = bool_spec.clone()
        self.observation_spec = Composite(obs, shape=(n,), device=dev)
        low = torch.as_tensor(np.asarray(self._act_space.low, dtype=np.float32).reshape(-1))
        high = torch.as_tensor(np.asarray(self._act_space.high, dtype=np.float32).reshape(-1))
        self.action_dim = int(low.numel())
        self.action_spec = Bounded(
            low=low.expand(n, self.action_dim).clone(),
            high=high.expand(n, self.action_dim).clone(),
            shape=(n, self.action_dim),
            dtype=torch.float32,
            device=dev,
        )
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=dev)
        self.full_done_spec = Composite(
            done=bool_spec.clone(),
            terminated=bool_spec.clone(),
            truncated=bool_spec.clone(),
            shape=(n,),
            device=dev,
        )

    def _set_seed(self, seed: int | None) -> None:
        # Called by EnvBase.set_seed. EnvPool's seeds are fixed at creation: rebuild the pool.
        if seed is None or not hasattr(self, "_pool"):
            return
        self.envpool_seed = int(seed)
        if hasattr(self._pool, "close"):
            self._pool.close()
        self._pool = self._make_pool(self.envpool_seed)
        self._pending[:] = False

    # ------------------------------------------------------------ conversions
    def _flatten(self, obs: Any) -> np.ndarray:
        parts = [
            np.asarray(_get_leaf(obs, key), dtype=np.float32).reshape(-1, stop - start)
            for key, start, stop in self.observation_layout
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _to_tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array)).to(device=self.device, dtype=dtype)

    def _success_from(self, info: dict) -> np.ndarray | None:
        if self._success_key is None:
            return None
        return np.asarray(info[self._success_key]).reshape(-1).astype(bool)

    def _reset_ids(self, env_ids: np.ndarray) -> None:
        """Resets the envs ``env_ids`` in EnvPool and writes their first observations."""
        obs, info = self._pool.reset(env_ids.astype(np.int32))
        ids = torch.as_tensor(np.asarray(info["env_id"], dtype=np.int64), device=self.device)
        self._obs[ids] = self._to_tensor(self._flatten(obs), torch.float32)
        success = self._success_from(info)
        if success is not None:
            self._success[ids] = self._to_tensor(success, torch.bool).unsqueeze(-1)
        self._pending[np.asarray(info["env_id"])] = False

    # ------------------------------------------------------------ EnvBase API
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        """Full reset, or reset of the envs flagged by ``tensordict["_reset"]``.

        EnvPool (sync mode, 1.2.5) auto-resets an env on the ``step`` *after* the one that
        ended its episode: that step ignores the action, returns the first observation of
        the new episode with reward 0 and ``done=False``. Collecting that step would give a
        transition that spans two episodes. Instead we reset flagged envs explicitly with
        ``pool.reset(env_id)``, which returns their fresh observation now; EnvPool then steps
        them normally on the next ``step``. Unflagged envs keep their current observation.
        """
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            self._reset_ids(np.arange(self.num_envs))
        else:
            ids = np.flatnonzero(mask.reshape(self.num_envs).cpu().numpy())
            if ids.size:
                self._reset_ids(ids)
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        out = {
            "observation": self._obs.clone(),
            "done": false,
            "terminated": false.clone(),
            "truncated": false.clone(),
        }
        if self._success_key is not None:
            out["success"] = self._success.clone()
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._pending.any():
            # Stepped past a done without a reset (e.g. a plain env.step loop): reset those
            # envs now so EnvPool's auto-reset step never swallows an action.
            self._reset_ids(np.flatnonzero(self._pending))
        action = tensordict.get("action").detach().to("cpu").reshape(self.num_envs, -1)
        action = action.numpy().astype(self._act_space.dtype, copy=False)
        obs, reward, terminated, truncated, info = self._pool.step(action)
        order = np.asarray(info["env_id"])
        if not np.array_equal(order, np.arange(self.num_envs)):  # sync mode: always in order
            inv = np.argsort(order)
            obs = self._flatten(obs)[inv]
            reward, terminated, truncated = reward[inv], terminated[inv], truncated[inv]
        else:
            obs = self._flatten(obs)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        self._pending = done.copy()
        self._obs = self._to_tensor(obs, torch.float32)
        out = {
            "observation": self._obs.clone(),
            "reward": self._to_tensor(np.asarray(reward).reshape(-1, 1), torch.float32),
            "done": self._to_tensor(done.reshape(-1, 1), torch.bool),
            "terminated": self._to_tensor(terminated.reshape(-1, 1), torch.bool),
            "truncated": self._to_tensor(truncated.reshape(-1, 1), torch.bool),
        }
        success = self._success_from(info)
        if success is not None:
            if not np.array_equal(order, np.arange(self.num_envs)):
                success = success[np.argsort(order)]
            self._success = self._to_tensor(success, torch.bool).unsqueeze(-1)
            out["success"] = self._success.clone()
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def close(self, *, raise_if_closed: bool = True) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and hasattr(pool, "close"):
            try:
                pool.close()
            except Exception:  # pragma: no cover - best effort
                pass
        super().close(raise_if_closed=raise_if_closed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task_id={self.task_id!r}, num_envs={self.num_envs}, "
            f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, device={self.device})"
        )
