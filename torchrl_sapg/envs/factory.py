"""``make_env``: one entry point for the embedded tasks (and, later, the real simulators)."""
from __future__ import annotations

from typing import Any

import torch
from torchrl.envs import EnvBase

from torchrl_sapg.envs.classic_control import EMBEDDED_TASKS
from torchrl_sapg.envs.exploration import EXPLORATION_TASKS


def available_envs() -> list[str]:
    """Names :func:`make_env` accepts."""
    return sorted({**EMBEDDED_TASKS, **EXPLORATION_TASKS})


def make_env(
    name: str,
    num_envs: int,
    *,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    **kwargs: Any,
) -> EnvBase:
    """Build ``num_envs`` batched copies of task ``name`` on ``device``.

    Embedded tasks (pure torch, no extra install): ``"pendulum"``, ``"mountain_car"``,
    ``"acrobot"``, ``"cartpole"`` and the hard-exploration tasks ``"point_maze_u"``,
    ``"point_maze_medium"``, ``"point_maze_large"``, ``"reach_grasp_carry"``,
    ``"sparse_mountain_car"``. Extra keyword arguments go to the task's constructor
    (e.g. ``max_episode_steps``, ``reward_type="sparse"`` for a maze).

    Examples:
        >>> env = make_env("pendulum", 16, seed=0)
        >>> env.batch_size
        torch.Size([16])
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
    if name.lower().startswith("envpool:"):  # optional EnvPool backend, e.g. "envpool:HalfCheetah-v4"
        from torchrl_sapg.envs.envpool_env import EnvPoolEnv

        return EnvPoolEnv(name[len("envpool:"):], num_envs, device=device, seed=seed, **kwargs)
    if name.lower().startswith("isaaclab:"):  # optional Isaac Lab backend, e.g. "isaaclab:allegro"
        from torchrl_sapg.envs.isaaclab import make_isaaclab_env

        return make_isaaclab_env(name[len("isaaclab:"):], num_envs, device=device, seed=seed, **kwargs)
    if name.lower().startswith("playground:"):  # optional MuJoCo Playground backend, e.g. "playground:CheetahRun"
        from torchrl_sapg.envs.playground import make_playground_env

        return make_playground_env(name[len("playground:"):], num_envs, device=device, seed=seed, **kwargs)
    if name.lower().startswith("isaacgym:"):  # optional Isaac Gym Preview 4 backend, e.g. "isaacgym:AllegroHand"
        from torchrl_sapg.envs.isaacgym import make_isaacgym_env

        return make_isaacgym_env(name[len("isaacgym:"):], num_envs, device=device, seed=seed, **kwargs)
    key = name.lower().replace("-", "_")
    if key in EMBEDDED_TASKS:
        return EMBEDDED_TASKS[key](num_envs, device=device, seed=seed, **kwargs)
    if key in EXPLORATION_TASKS:
        return EXPLORATION_TASKS[key](num_envs, device=device, seed=seed, **kwargs)
    raise ValueError(f"unknown env name={name!r}; available: {', '.join(available_envs())}.")
