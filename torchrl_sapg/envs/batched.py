"""The base of the embedded simulator: N copies of a task stepped by one batch of tensor ops.

Stateful TorchRL :class:`~torchrl.envs.EnvBase`: the physical state is ``env.state``
(``[num_envs, state_dim]``), the episode step counter ``env.elapsed_steps`` (``[num_envs]``);
TorchRL's partial-reset mask (``"_reset"``) resets finished envs in place. Subclasses give the
physics, the reset distribution, the reward and the termination rule
(``envs/classic_control.py``, ``envs/exploration.py``).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

__all__ = ["BatchedClassicControlEnv"]

_MAX_SEED = 2**64


class BatchedClassicControlEnv(EnvBase):
    """Shared base class of the batched classic-control environments.

    A subclass sets the class attributes below and implements
    :meth:`_sample_initial_state`, :meth:`_observation` and :meth:`_dynamics`;
    the base class handles specs, seeding, time limits, partial resets and the
    TorchRL plumbing.

    Args:
        num_envs: number of environments simulated in one batch (``batch_size``).

    Keyword Args:
        device: device holding the state and producing every output.
        seed: seed of the environment's own ``torch.Generator`` (reset noise
            only). ``None`` draws a random seed. ``env.set_seed(s)`` reseeds.
        dtype: floating dtype of the state, observations, actions and rewards.
            ``torch.float64`` makes every computation float64.
        max_episode_steps: time limit; ``None`` uses Gymnasium's registered
            ``max_episode_steps`` for the task.

    The physical state starts at zero: call ``env.reset()`` (as with any
    TorchRL env) to draw initial states.

    Examples:
        >>> from torchrl_sapg.envs.classic_control import PendulumEnv
        >>> env = PendulumEnv(num_envs=4, seed=0)
        >>> td = env.reset()
        >>> td["action"] = env.action_spec.rand()
        >>> data, td = env.step_and_maybe_reset(td)
        >>> data["next", "observation"].shape
        torch.Size([4, 3])
        >>> env.state.shape, env.elapsed_steps.tolist()
        (torch.Size([4, 2]), [1, 1, 1, 1])
    """

    #: Gymnasium id the task is ported from.
    gym_id: ClassVar[str] = ""
    #: Gymnasium's ``max_episode_steps`` (TimeLimit) for the task.
    default_max_episode_steps: ClassVar[int] = 0
    state_dim: ClassVar[int] = 0
    obs_dim: ClassVar[int] = 0
    action_dim: ClassVar[int] = 1
    action_low: ClassVar[float] = -1.0
    action_high: ClassVar[float] = 1.0
    #: Observation bounds (per dimension); ``None`` gives an Unbounded spec.
    obs_low: ClassVar[tuple[float, ...] | None] = None
    obs_high: ClassVar[tuple[float, ...] | None] = None
    #: Whether the task emits a ``"success"`` key (episodes that end in success).
    has_success: ClassVar[bool] = False
    #: Whether the task emits a float ``"true_objective"`` key (e.g. a success count).
    has_true_objective: ClassVar[bool] = False

    def __init__(
        self,
        num_envs: int,
        *,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        max_episode_steps: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if max_episode_steps is None:
            max_episode_steps = self.default_max_episode_steps
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs = int(num_envs)
        self.dtype = dtype
        self.max_episode_steps = int(max_episode_steps)
        self._make_specs()
        self.rng: torch.Generator | None = None
        self._set_seed(seed)
        self.state = torch.zeros(
            self.num_envs, self.state_dim, dtype=dtype, device=self.device
        )
        self.elapsed_steps = torch.zeros(
            self.num_envs, dtype=torch.int64, device=self.device
        )

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        n, dev, dt = self.num_envs, self.device, self.dtype
        obs_shape = (n, self.obs_dim)
        if self.obs_low is None:
            obs_spec = Unbounded(shape=obs_shape, dtype=dt, device=dev)
        else:
            low = torch.tensor(self.obs_low, dtype=dt, device=dev).expand(obs_shape)
            high = torch.tensor(self.obs_high, dtype=dt, device=dev).expand(obs_shape)
            obs_spec = Bounded(
                low=low.clone(), high=high.clone(), shape=obs_shape, dtype=dt, device=dev
            )
        bool_spec = Categorical(n=2, shape=(n, 1), dtype=torch.bool, device=dev)
        obs = {"observation": obs_spec}
        if self.has_success:
            obs["success"] = bool_spec.clone()
        if self.has_true_objective:
            obs["true_objective"] = Unbounded(shape=(n, 1), dtype=dt, device=dev)
        self.observation_spec = Composite(obs, shape=(n,), device=dev)
        self.action_spec = Bounded(
            low=self.action_low,
            high=self.action_high,
            shape=(n, self.action_dim),
            dtype=dt,
            device=dev,
        )
        self.reward_spec = Unbounded(shape=(n, 1), dtype=dt, device=dev)
        self.full_done_spec = Composite(
            done=bool_spec.clone(),
            terminated=bool_spec.clone(),
            truncated=bool_spec.clone(),
            shape=(n,),
            device=dev,
        )

    # --------------------------------------------------------------- seeding
    def _set_seed(self, seed: int | None) -> None:
        rng = torch.Generator(device=self.device)
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(int(seed) % _MAX_SEED)
        self.rng = rng

    def to(self, device: torch.device | str) -> BatchedClassicControlEnv:
        old_device = self.device
        super().to(device)
        if self.device != old_device:
            self.state = self.state.to(self.device)
            self.elapsed_steps = self.elapsed_steps.to(self.device)
            # A generator cannot change device: continue with a seed drawn from it.
            seed = torch.randint(
                0, 2**62, (), generator=self.rng, device=old_device
            ).item()
            self._set_seed(seed)
        return self

    # ----------------------------------------------------------------- state
    def set_state(
        self, state: torch.Tensor, env_ids: torch.Tensor | list[int] | None = None
    ) -> None:
        """Overwrites the physical state (all envs, or those in ``env_ids``).

        ``state`` is ``[state_dim]`` (broadcast) or ``[len(env_ids) or N, state_dim]``;
        ``env_ids`` is an index tensor/list or a bool mask of shape ``[N]``.
        The episode step counters are left unchanged.
        """
        state = torch.as_tensor(state, dtype=self.dtype, device=self.device)
        if env_ids is None:
            self.state = state.expand(self.num_envs, self.state_dim).clone()
            return
        env_ids = torch.as_tensor(env_ids, device=self.device)
        new_state = self.state.clone()
        new_state[env_ids] = state
        self.state = new_state

    def _uniform(self, high: torch.Tensor) -> torch.Tensor:
        """``[N, len(high)]`` samples of U(-high, high) from the env's generator."""
        u = torch.rand(
            self.num_envs,
            high.shape[-1],
            generator=self.rng,
            dtype=self.dtype,
            device=self.device,
        )
        return (2.0 * u - 1.0) * high

    # ----------------------------------------------------------- subclass API
    def _sample_initial_state(self) -> torch.Tensor:
        """Returns fresh initial states for all ``N`` envs, ``[N, state_dim]``."""
        raise NotImplementedError

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        """Maps states ``[N, state_dim]`` to observations ``[N, obs_dim]``."""
        raise NotImplementedError

    def _dynamics(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One transition: ``(next_state [N, S], reward [N], terminated [N] or None)``.

        ``action`` is the raw (unclipped) ``[N, action_dim]`` action; ``None``
        for ``terminated`` means the task never terminates.
        """
        raise NotImplementedError

    def _success(self, state: torch.Tensor, terminated: torch.Tensor | None) -> torch.Tensor:
        """``"success"`` ``[N]`` (bool) after a step; by default the task succeeds by terminating."""
        return terminated.clone()

    def _true_objective(self, state: torch.Tensor) -> torch.Tensor:
        """``"true_objective"`` ``[N]`` after a step or reset (tasks with ``has_true_objective``)."""
        raise NotImplementedError

    # ------------------------------------------------------------ EnvBase API
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        # Draw for every env and select with the mask: no host sync, one op.
        new_state = self._sample_initial_state()
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            self.state = new_state
            self.elapsed_steps = torch.zeros_like(self.elapsed_steps)
        else:
            mask = mask.reshape(self.num_envs)
            self.state = torch.where(mask.unsqueeze(-1), new_state, self.state)
            self.elapsed_steps = self.elapsed_steps.masked_fill(mask, 0)
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        out = {
            "observation": self._observation(self.state),
            "done": false,
            "terminated": false.clone(),
            "truncated": false.clone(),
        }
        if self.has_success:
            out["success"] = false.clone()
        if self.has_true_objective:
            out["true_objective"] = self._true_objective(self.state).unsqueeze(-1)
        return TensorDict._new_unsafe(out, batch_size=self.batch_size, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        if action.dtype != self.dtype:
            action = action.to(self.dtype)
        old_state = self.state
        new_state, reward, terminated = self._dynamics(old_state, action)
        elapsed = self.elapsed_steps + 1
        step_mask = tensordict.get("_step", None)
        if step_mask is not None:  # TorchRL partial step: freeze the other envs
            step_mask = step_mask.reshape(self.num_envs)
            new_state = torch.where(step_mask.unsqueeze(-1), new_state, old_state)
            elapsed = torch.where(step_mask, elapsed, self.elapsed_steps)
        self.state = new_state
        self.elapsed_steps = elapsed
        truncated = (elapsed >= self.max_episode_steps).unsqueeze(-1)
        if terminated is None:
            terminated = torch.zeros_like(truncated)
            done = truncated.clone()
        else:
            terminated = terminated.unsqueeze(-1)
            done = terminated | truncated
        out = {
            "observation": self._observation(new_state),
            "reward": reward.unsqueeze(-1),
            "done": done,
            "terminated": terminated,
            "truncated": truncated,
        }
        if self.has_success:
            out["success"] = self._success(new_state, terminated.squeeze(-1)).unsqueeze(-1)
        if self.has_true_objective:
            out["true_objective"] = self._true_objective(new_state).unsqueeze(-1)
        return TensorDict._new_unsafe(out, batch_size=self.batch_size, device=self.device)
