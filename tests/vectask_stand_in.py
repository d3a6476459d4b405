"""A stand-in of IsaacGymEnvs' ``VecTask`` interface (see ``tests/test_isaacgym_env.py`` for what it honours).

A plain module, not a test file: ``tests/test_isaacgym_env.py`` uses the class directly, and the recipe test
there writes a fake ``isaacgymenvs`` package whose ``make`` returns it.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

OBS_DIM, STATE_DIM, ACT_DIM = 3, 2, 2


class VecTaskStandIn:
    """Env i gets reward ``i + 1`` per step, fails after ``fail_at[i]`` steps and times out at step
    ``max_episode_length - 1`` (IsaacGymEnvs' convention); feature 0 of ``obs`` is the step count."""

    def __init__(self, num_envs=4, max_episode_length=6, fail_at=None, device="cpu"):
        self.num_envs, self.num_obs, self.num_states, self.num_actions = num_envs, OBS_DIM, STATE_DIM, ACT_DIM
        self.device = self.rl_device = device
        self.max_episode_length = max_episode_length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,))
        self.state_space = gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,))
        pattern = torch.tensor([2, 99, 3, 99])  # envs 0 and 2 (mod 4) fail after 2 and 3 steps, the others time out
        self.fail_at = torch.as_tensor(fail_at if fail_at is not None else pattern.repeat(num_envs)[:num_envs]).to(device)
        self.obs_buf = torch.zeros(num_envs, OBS_DIM, device=device)
        self.rew_buf = torch.zeros(num_envs, device=device)
        self.reset_buf = torch.ones(num_envs, dtype=torch.long, device=device)
        self.progress_buf = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.extras: dict = {}
        self.obs_dict: dict = {}
        self.reset_calls: list[list[int]] = []

    def _observations(self):
        self.obs_dict["obs"] = self.obs_buf.clone()
        self.obs_dict["states"] = 10 * self.obs_buf[:, :STATE_DIM]
        return self.obs_dict

    def reset(self):
        return self._observations()

    def step(self, actions):
        env_ids = self.reset_buf.nonzero(as_tuple=False).flatten()  # pre_physics_step: reset what was flagged
        if len(env_ids) > 0:
            self.reset_calls.append(env_ids.tolist())
            self.progress_buf[env_ids] = 0
            self.obs_buf[env_ids] = 0
        self.progress_buf += 1
        self.obs_buf[:, 0] = self.progress_buf.float()
        self.rew_buf = torch.arange(1.0, self.num_envs + 1, device=self.device) + 0 * actions.sum(-1)
        failed = self.progress_buf >= self.fail_at
        self.reset_buf = (failed | (self.progress_buf >= self.max_episode_length - 1)).long()
        self.extras["time_outs"] = (self.progress_buf >= self.max_episode_length - 1) & (self.reset_buf != 0)
        return self._observations(), self.rew_buf, self.reset_buf, self.extras
