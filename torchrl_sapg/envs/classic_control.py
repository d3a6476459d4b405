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

import torch

from torchrl_sapg.envs.batched import BatchedClassicControlEnv

__all__ = [
    "AcrobotEnv",
    "BatchedClassicControlEnv",
    "CartPoleEnv",
    "EMBEDDED_TASKS",
    "MountainCarContinuousEnv",
    "PendulumEnv",
]


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
