"""Batched, pure-torch ports of four continuous classic-control tasks.

Every environment simulates ``num_envs`` independent copies of a Gymnasium
classic-control task with one batch of tensor operations per step, on any
device. The physics, constants, reset distributions, rewards, termination
rules and time limits follow Gymnasium (``Pendulum-v1``,
``MountainCarContinuous-v0``, ``Acrobot-v1``, ``CartPole-v1``); Acrobot and
CartPole take a continuous action instead of Gymnasium's discrete one.

All environments are stateful TorchRL :class:`~torchrl.envs.EnvBase`
subclasses: the physical state lives in ``env.state`` (``[num_envs, state_dim]``)
and the episode step counter in ``env.elapsed_steps`` (``[num_envs]``). They
honour TorchRL's partial-reset mask (``"_reset"``), so collectors and
``env.rollout(..., break_when_any_done=False)`` reset finished envs in place.

Output keys (``env.step(td)["next"]``): ``"observation"`` ``[N, obs_dim]``,
``"reward"`` ``[N, 1]``, ``"done"``/``"terminated"``/``"truncated"``
``[N, 1]`` (bool; ``done = terminated | truncated``, and both can be true on
the same step, as with Gymnasium's ``TimeLimit``) and, for the tasks that end
in success (mountain car, acrobot), ``"success"`` ``[N, 1]`` (bool).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

__all__ = [
    "AcrobotEnv",
    "BatchedClassicControlEnv",
    "CartPoleEnv",
    "EMBEDDED_TASKS",
    "MountainCarContinuousEnv",
    "PendulumEnv",
]

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


def _wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Gymnasium's ``acrobot.wrap(x, -pi, pi)`` (repeated +-2pi shifts), vectorised."""
    two_pi = 2.0 * math.pi
    x = torch.where(x > math.pi, x - two_pi * torch.ceil((x - math.pi) / two_pi), x)
    return torch.where(x < -math.pi, x + two_pi * torch.ceil((-math.pi - x) / two_pi), x)


class PendulumEnv(BatchedClassicControlEnv):
    """Batched ``Pendulum-v1``: swing a pendulum up and hold it upright.

    * state ``[theta, theta_dot]``; reset ``theta ~ U(-pi, pi)``, ``theta_dot ~ U(-1, 1)``
    * observation ``[cos theta, sin theta, theta_dot]`` in ``[-1, -1, -8] .. [1, 1, 8]``
    * action: torque in ``[-2, 2]`` (clipped)
    * reward ``-(angle_normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)``
    * never terminates; truncated after 200 steps.

    Examples:
        >>> import torch
        >>> from torchrl_sapg.envs.classic_control import PendulumEnv
        >>> env = PendulumEnv(num_envs=4, seed=0)
        >>> data = env.rollout(250, break_when_any_done=False)
        >>> data.shape
        torch.Size([4, 250])
        >>> bool(data["next", "truncated"][:, 199].all())
        True
    """

    gym_id = "Pendulum-v1"
    default_max_episode_steps = 200
    state_dim = 2
    obs_dim = 3
    action_low = -2.0
    action_high = 2.0
    obs_low = (-1.0, -1.0, -8.0)
    obs_high = (1.0, 1.0, 8.0)

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    l = 1.0  # noqa: E741

    def __init__(self, num_envs: int, **kwargs) -> None:
        super().__init__(num_envs, **kwargs)
        self._reset_high = torch.tensor([math.pi, 1.0], dtype=self.dtype, device=self.device)

    def _sample_initial_state(self) -> torch.Tensor:
        return self._uniform(self._reset_high)

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        th, thdot = state[:, 0], state[:, 1]
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1)

    def _dynamics(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        th, thdot = state[:, 0], state[:, 1]
        u = action[:, 0].clamp(-self.max_torque, self.max_torque)
        th_norm = torch.remainder(th + math.pi, 2.0 * math.pi) - math.pi
        costs = th_norm.square() + 0.1 * thdot.square() + 0.001 * u.square()
        # Same constant folding and evaluation order as Gymnasium (float64-exact).
        sin_coef = 3 * self.g / (2 * self.l)
        u_coef = 3.0 / (self.m * self.l**2)
        newthdot = thdot + (sin_coef * torch.sin(th) + u_coef * u) * self.dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * self.dt
        return torch.stack((newth, newthdot), dim=-1), costs.neg(), None


class MountainCarContinuousEnv(BatchedClassicControlEnv):
    """Batched ``MountainCarContinuous-v0``: drive an under-powered car up a hill.

    * state = observation ``[position, velocity]`` in ``[-1.2, -0.07] .. [0.6, 0.07]``;
      reset ``position ~ U(-0.6, -0.4)``, ``velocity = 0``
    * action: force in ``[-1, 1]`` (clipped for the dynamics)
    * reward ``-0.1 a^2`` (+100 on reaching the goal); as in Gymnasium the
      penalty uses the *unclipped* action
    * terminated (and ``"success"``) when ``position >= 0.45`` and
      ``velocity >= 0``; truncated after 999 steps.

    Examples:
        >>> import torch
        >>> from torchrl_sapg.envs.classic_control import MountainCarContinuousEnv
        >>> env = MountainCarContinuousEnv(num_envs=2, seed=0)
        >>> td = env.reset()
        >>> for _ in range(300):  # pump energy: push along the velocity
        ...     td["action"] = torch.sign(td["observation"][:, 1:]) + (td["observation"][:, 1:] == 0)
        ...     data, td = env.step_and_maybe_reset(td)
        ...     if data["next", "success"].any():
        ...         break
        >>> bool(data["next", "success"].any()), float(data["next", "reward"].max()) > 99
        (True, True)
    """

    gym_id = "MountainCarContinuous-v0"
    default_max_episode_steps = 999
    state_dim = 2
    obs_dim = 2
    action_low = -1.0
    action_high = 1.0
    obs_low = (-1.2, -0.07)
    obs_high = (0.6, 0.07)
    has_success = True

    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    goal_velocity = 0.0
    power = 0.0015

    def _sample_initial_state(self) -> torch.Tensor:
        pos = torch.rand(
            self.num_envs, generator=self.rng, dtype=self.dtype, device=self.device
        )
        pos = pos * 0.2 - 0.6
        return torch.stack((pos, torch.zeros_like(pos)), dim=-1)

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        return state.clone()

    def _dynamics(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        pos, vel = state[:, 0], state[:, 1]
        a = action[:, 0]
        force = a.clamp(self.action_low, self.action_high)
        vel = vel + (force * self.power - 0.0025 * torch.cos(3 * pos))
        vel = vel.clamp(-self.max_speed, self.max_speed)
        pos = (pos + vel).clamp(self.min_position, self.max_position)
        vel = vel.masked_fill((pos == self.min_position) & (vel < 0), 0.0)
        terminated = (pos >= self.goal_position) & (vel >= self.goal_velocity)
        reward = terminated.to(self.dtype) * 100.0 - a.square() * 0.1
        return torch.stack((pos, vel), dim=-1), reward, terminated


class AcrobotEnv(BatchedClassicControlEnv):
    """Batched Acrobot swing-up with a continuous torque (``Acrobot-v1`` physics).

    * state ``[theta1, theta2, dtheta1, dtheta2]``; reset each ``~ U(-0.1, 0.1)``
    * observation ``[cos t1, sin t1, cos t2, sin t2, dt1, dt2]``, velocities
      bounded by ``4 pi`` and ``9 pi``
    * action: torque on the middle joint in ``[-1, 1]`` (clipped). Gymnasium's
      discrete actions ``{0, 1, 2}`` are the torques ``{-1, 0, 1}``.
    * dynamics: Gymnasium's "book" equations, one RK4 step of ``dt = 0.2``,
      angles wrapped to ``[-pi, pi]``, velocities clipped
    * reward -1 per step, 0 on the step the tip rises above the line
      ``-cos t1 - cos(t1 + t2) > 1``, which terminates (``"success"``);
      truncated after 500 steps.

    Examples:
        >>> from torchrl_sapg.envs.classic_control import AcrobotEnv
        >>> env = AcrobotEnv(num_envs=8, seed=0)
        >>> data = env.rollout(10, break_when_any_done=False)
        >>> data["next", "observation"].shape, data["next", "success"].dtype
        (torch.Size([8, 10, 6]), torch.bool)
        >>> bool((data["next", "reward"] == -1).all())
        True
    """

    gym_id = "Acrobot-v1"
    default_max_episode_steps = 500
    state_dim = 4
    obs_dim = 6
    action_low = -1.0
    action_high = 1.0
    obs_low = (-1.0, -1.0, -1.0, -1.0, -4 * math.pi, -9 * math.pi)
    obs_high = (1.0, 1.0, 1.0, 1.0, 4 * math.pi, 9 * math.pi)
    has_success = True

    dt = 0.2
    link_length_1 = 1.0
    link_mass_1 = 1.0
    link_mass_2 = 1.0
    link_com_pos_1 = 0.5
    link_com_pos_2 = 0.5
    link_moi = 1.0
    max_vel_1 = 4 * math.pi
    max_vel_2 = 9 * math.pi
    gravity = 9.8

    def __init__(self, num_envs: int, **kwargs) -> None:
        super().__init__(num_envs, **kwargs)
        self._reset_high = torch.full((4,), 0.1, dtype=self.dtype, device=self.device)

    def _sample_initial_state(self) -> torch.Tensor:
        return self._uniform(self._reset_high)

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        t1, t2 = state[:, 0], state[:, 1]
        return torch.stack(
            (torch.cos(t1), torch.sin(t1), torch.cos(t2), torch.sin(t2), state[:, 2], state[:, 3]),
            dim=-1,
        )

    def _dsdt(self, s: tuple[torch.Tensor, ...], a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Gymnasium's AcrobotEnv._dsdt ("book"), same evaluation order.
        m1, m2 = self.link_mass_1, self.link_mass_2
        l1 = self.link_length_1
        lc1, lc2 = self.link_com_pos_1, self.link_com_pos_2
        i1 = i2 = self.link_moi
        g = self.gravity
        theta1, theta2, dtheta1, dtheta2 = s
        cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + i2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2.square() * sin2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (
            a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1.square() * sin2 - phi2
        ) / (m2 * lc2**2 + i2 - d2.square() / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    def _dynamics(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        torque = action[:, 0].clamp(self.action_low, self.action_high)
        y0 = state.unbind(-1)
        dt, dt2 = self.dt, self.dt / 2.0
        k1 = self._dsdt(y0, torque)
        k2 = self._dsdt(tuple(y + dt2 * k for y, k in zip(y0, k1)), torque)
        k3 = self._dsdt(tuple(y + dt2 * k for y, k in zip(y0, k2)), torque)
        k4 = self._dsdt(tuple(y + dt * k for y, k in zip(y0, k3)), torque)
        t1, t2, v1, v2 = (
            y + dt / 6.0 * (a + 2 * b + 2 * c + d)
            for y, a, b, c, d in zip(y0, k1, k2, k3, k4)
        )
        t1, t2 = _wrap_angle(t1), _wrap_angle(t2)
        v1 = v1.clamp(-self.max_vel_1, self.max_vel_1)
        v2 = v2.clamp(-self.max_vel_2, self.max_vel_2)
        terminated = -torch.cos(t1) - torch.cos(t2 + t1) > 1.0
        reward = terminated.to(self.dtype) - 1.0
        return torch.stack((t1, t2, v1, v2), dim=-1), reward, terminated


class CartPoleEnv(BatchedClassicControlEnv):
    """Batched CartPole with a continuous force (``CartPole-v1`` physics).

    * state = observation ``[x, x_dot, theta, theta_dot]``; reset each ``~ U(-0.05, 0.05)``
    * action in ``[-1, 1]`` (clipped), force = ``10 * action``. Gymnasium's
      discrete actions ``{0, 1}`` are the actions ``{-1, 1}``.
    * dynamics: Gymnasium's equations with explicit Euler, ``tau = 0.02``
    * reward +1 per step (including the terminating step, as Gymnasium)
    * terminated when ``|x| > 2.4`` or ``|theta| > 12 deg``; truncated after 500 steps.

    Examples:
        >>> import torch
        >>> from torchrl_sapg.envs.classic_control import CartPoleEnv
        >>> env = CartPoleEnv(num_envs=16, seed=0)
        >>> td = env.reset()
        >>> td["action"] = torch.ones(16, 1)  # always push right: falls in a few dozen steps
        >>> for _ in range(100):
        ...     data, td = env.step_and_maybe_reset(td)
        ...     td["action"] = torch.ones(16, 1)
        >>> int(env.elapsed_steps.max()) < 100
        True
    """

    gym_id = "CartPole-v1"
    default_max_episode_steps = 500
    state_dim = 4
    obs_dim = 4
    action_low = -1.0
    action_high = 1.0
    obs_low = None  # velocities are unbounded
    obs_high = None

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, num_envs: int, **kwargs) -> None:
        super().__init__(num_envs, **kwargs)
        self._reset_high = torch.full((4,), 0.05, dtype=self.dtype, device=self.device)

    def _sample_initial_state(self) -> torch.Tensor:
        return self._uniform(self._reset_high)

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        return state.clone()

    def _dynamics(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, x_dot, theta, theta_dot = state.unbind(-1)
        force = action[:, 0].clamp(self.action_low, self.action_high) * self.force_mag
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        reward = torch.ones_like(x)
        return torch.stack((x, x_dot, theta, theta_dot), dim=-1), reward, terminated


EMBEDDED_TASKS: dict[str, type[BatchedClassicControlEnv]] = {
    "pendulum": PendulumEnv,
    "mountain_car": MountainCarContinuousEnv,
    "acrobot": AcrobotEnv,
    "cartpole": CartPoleEnv,
}
